"""The service's ASGI middleware: what happens to a request before the API method sees it.

- BentoML 1.4.40's own request-timeout middleware schedules ``loop.call_later(timeout, ...)`` per
  request and never cancels it: each timer keeps the request's future (and through it the context
  and the OpenTelemetry span) alive for the whole timeout. Its concurrency limit answers 429 "Too
  many requests" with no hint when to retry. BentoML builds both from module attributes when the
  app is created, so :func:`install_traffic_middleware` replaces the classes (same constructors)
  before that happens: a timeout that lets go of each request when it ends, and load shedding that
  answers 503 with ``Retry-After``.
- :class:`BodyLimitMiddleware` refuses a body over the limit before it is read, let alone parsed.
- :class:`BearerTokenMiddleware` requires ``Authorization: Bearer <token>`` on the API paths when
  a token is configured.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from starlette.responses import JSONResponse

# Probes and metrics never wait behind predictions, and are never shed.
UNLIMITED_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})


class RequestTimeoutMiddleware:
    """A request not answered within ``timeout`` seconds is cancelled and answered 504 (unless its
    response has started). The request runs in the server's own task under ``asyncio.timeout``:
    no task of its own, whose start and end would each wait a turn of a busy event loop, and the
    deadline is cancelled when the request ends, so nothing of it outlives it."""

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

        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                await self.app(scope, receive, _send)
        except TimeoutError:
            if started or not deadline.expired():  # the request's own TimeoutError, or too late for a 504
                raise
            await JSONResponse({"error": f"not able to process the request in {self.timeout} s"}, status_code=504)(
                scope, receive, send
            )


class LoadSheddingMiddleware:
    """At most ``max_concurrency`` requests in progress in this worker; the next one is answered
    503 at once (with ``Retry-After``) instead of queueing behind work it would time out in."""

    def __init__(self, app: Any, max_concurrency: int, skip_paths: list[str] | None = None) -> None:
        self.app = app
        self.max_concurrency = max_concurrency
        self.in_progress = 0
        self.skip_paths = frozenset([*(skip_paths or []), *UNLIMITED_PATHS])

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.skip_paths:
            await self.app(scope, receive, send)
            return
        if self.in_progress >= self.max_concurrency:
            response = JSONResponse(
                {
                    "error": f"overloaded: {self.in_progress} requests in progress in this worker, the limit is "
                    f"{self.max_concurrency} (FLIGHT_DELAY_MAX_CONCURRENCY); retry shortly"
                },
                status_code=503,
                headers={"Retry-After": "1"},
            )
            await response(scope, receive, send)
            return
        self.in_progress += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1


def install_traffic_middleware() -> None:
    """Make BentoML build :class:`RequestTimeoutMiddleware` and :class:`LoadSheddingMiddleware`
    where it builds its own timeout and concurrency middleware."""
    from bentoml._internal.server.http import traffic

    traffic.TimeoutMiddleware = RequestTimeoutMiddleware  # type: ignore[misc]
    traffic.MaxConcurrencyMiddleware = LoadSheddingMiddleware  # type: ignore[misc]


async def _refuse(send: Any, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = JSONResponse({"error": message}, status_code=status, headers=headers)
    await body({"type": "http"}, None, send)


class BodyLimitMiddleware:
    """Requests whose body is over ``max_bytes`` get 413: by their ``Content-Length`` before
    anything is read; a body without one (chunked) is read up to the limit here, refused past it,
    and handed on whole."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", ())).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                await self._refuse(send)
                return
            await self.app(scope, receive, send)  # the HTTP server holds the body to its length
            return
        chunks, size = [], 0
        while True:
            event = await receive()
            if event["type"] != "http.request":
                await self.app(scope, _replay([event]), send)
                return
            size += len(event.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(event.get("body", b""))
            if not event.get("more_body", False):
                break
        await self.app(
            scope, _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}], receive), send
        )

    async def _refuse(self, send: Any) -> None:
        await _refuse(
            send,
            413,
            f"request body over {self.max_bytes} bytes (FLIGHT_DELAY_MAX_BODY_BYTES); send fewer flights per call",
        )


def _replay(events: list[dict], then: Any = None) -> Any:
    """A ``receive`` that gives ``events`` first, then defers to ``then`` (a disconnect, say)."""
    pending = list(events)

    async def receive() -> dict:
        if pending:
            return pending.pop(0)
        if then is None:
            return {"type": "http.disconnect"}
        return await then()

    return receive


class BearerTokenMiddleware:
    """With a token configured, the API paths need ``Authorization: Bearer <token>``; probes,
    metrics and the documentation stay open."""

    def __init__(self, app: Any, token: str, paths: frozenset[str]) -> None:
        self.app = app
        self._token = token.encode()
        self.paths = paths

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] in self.paths:
            given = dict(scope.get("headers", ())).get(b"authorization", b"")
            scheme, _, credential = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(credential.strip(), self._token):
                await _refuse(
                    send,
                    401,
                    "missing or wrong bearer token (Authorization: Bearer <token>)",
                    {"WWW-Authenticate": 'Bearer realm="flight_delay"'},
                )
                return
        await self.app(scope, receive, send)
