"""A request timeout that lets go of each request when it ends.

BentoML 1.4.40's own ``TimeoutMiddleware`` schedules ``loop.call_later(timeout, ...)`` per request
and never cancels it: each timer keeps the request's future (and through it the context and the
OpenTelemetry span) alive for the whole timeout, 60 s by default. At a thousand requests a second
that is 60,000 live requests' worth of objects, growing memory and garbage-collection pauses.
BentoML requires a positive timeout and builds its middleware from that module attribute when the
app is created, so the service replaces the class (same constructor) before that happens.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.responses import JSONResponse


class RequestTimeoutMiddleware:
    def __init__(self, app: Any, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def _send(message: dict) -> None:
            nonlocal started
            started = True
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, _send))
        timer = asyncio.get_running_loop().call_later(self.timeout, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            if started or not task.cancelled():
                raise
            await JSONResponse({"error": f"not able to process the request in {self.timeout} s"}, status_code=504)(
                scope, receive, send
            )
        finally:
            timer.cancel()


def install_request_timeout_fix() -> None:
    """Make BentoML build :class:`RequestTimeoutMiddleware` where it builds its leaking one."""
    from bentoml._internal.server.http import traffic

    traffic.TimeoutMiddleware = RequestTimeoutMiddleware  # type: ignore[misc]
