"""The request-timeout middleware at the ASGI level: a late request is answered 504, a request
that ends leaves no deadline behind, and a request's own TimeoutError is not mistaken for one."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import orjson
import pytest

from serving.middleware import RequestTimeoutMiddleware

SCOPE = {"type": "http", "path": "/predict", "method": "POST", "headers": []}


class Sent:
    """The messages an app sent, as an ASGI server would receive them."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return self.messages[0]["status"]

    @property
    def body(self) -> dict[str, Any]:
        return orjson.loads(b"".join(m.get("body", b"") for m in self.messages[1:]))


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _answer(send: Any, status: int = 200, body: bytes = b"{}") -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _pending_timers(loop: asyncio.AbstractEventLoop) -> list[Any]:
    return [h for h in getattr(loop, "_scheduled", []) if not h.cancelled()]


def test_a_request_past_its_timeout_is_cancelled_and_answered_504():
    cancelled = []

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        await _answer(send)

    async def run() -> Sent:
        sent = Sent()
        await RequestTimeoutMiddleware(slow, timeout=0.05)(SCOPE, _receive, sent)
        return sent

    sent = asyncio.run(run())
    assert sent.status == 504
    assert sent.body == {"error": "not able to process the request in 0.05 s"}
    assert cancelled == [True]


def test_a_request_that_ends_leaves_no_deadline_and_nothing_of_it_alive():
    """BentoML 1.4.40's own middleware left a timer per request for the whole timeout, holding the
    request's future and what it references: at 1,000 req/s and a 60 s timeout, 60,000 of them."""

    class Payload:  # something the request made, to watch whether anything keeps it alive
        pass

    made: list[weakref.ref[Payload]] = []

    async def fast(scope: Any, receive: Any, send: Any) -> None:
        payload = Payload()
        made.append(weakref.ref(payload))
        await _answer(send, body=b'{"ok": true}')
        scope["payload"] = payload  # reachable from the request only

    async def run() -> tuple[Sent, list[Any]]:
        sent = Sent()
        await RequestTimeoutMiddleware(fast, timeout=60)(dict(SCOPE), _receive, sent)
        await asyncio.sleep(0)
        gc.collect()
        return sent, _pending_timers(asyncio.get_running_loop())

    sent, pending = asyncio.run(run())
    assert sent.status == 200 and sent.body == {"ok": True}
    assert pending == [], f"{len(pending)} timers still scheduled after the request ended"
    assert made and made[0]() is None, "the request's objects outlive it"


def test_a_timeout_error_of_the_request_itself_is_not_turned_into_a_504():
    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise TimeoutError("the online store did not answer")

    async def run() -> Sent:
        sent = Sent()
        await RequestTimeoutMiddleware(failing, timeout=60)(SCOPE, _receive, sent)
        return sent

    with pytest.raises(TimeoutError, match="the online store did not answer"):
        asyncio.run(run())


def test_a_response_already_started_is_not_followed_by_a_504():
    async def stalls_mid_body(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(5)

    sent = Sent()

    async def run() -> None:
        await RequestTimeoutMiddleware(stalls_mid_body, timeout=0.05)(SCOPE, _receive, sent)

    with pytest.raises((TimeoutError, asyncio.CancelledError)):  # the server closes the connection
        asyncio.run(run())
    assert [m["type"] for m in sent.messages] == ["http.response.start"]


def test_other_scopes_pass_through_untouched():
    seen = []

    async def lifespan(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    asyncio.run(RequestTimeoutMiddleware(lifespan, timeout=0.01)({"type": "lifespan"}, _receive, Sent()))
    assert seen == ["lifespan"]
