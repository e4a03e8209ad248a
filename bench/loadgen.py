"""A small HTTP/1.1 load generator for the benchmark: open loop at a fixed rate, or closed loop.

Open loop: request ``i`` is due at ``t0 + i / rate`` whatever happened to earlier requests. A
dispatcher puts due requests, stamped with their scheduled time, on a queue; a pool of keep-alive
connections takes them off and sends them. Latency is ``response complete - scheduled time``, so
the time a request waits because the server (or every connection) is busy is counted: no
coordinated omission. The pool only bounds how many requests the server sees at once.

Cheap on purpose, since it shares the machine with the server: requests are pre-encoded bytes,
responses are parsed just enough to find the status and the body length, due requests are
handed straight to an idle connection (no queue wake-ups), and the schedule is driven by a
``timerfd`` so the generator's own lateness stays in the tens of microseconds (it is recorded
per tick and reported, so a generator that falls behind shows).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from array import array
from collections import Counter, deque
from dataclasses import dataclass, field


def encode_post(host: str, port: int, path: str, body: bytes) -> bytes:
    """One complete HTTP/1.1 keep-alive POST."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


def encode_get(host: str, port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode("ascii")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Status, body, and whether the server will close the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    close = b"\r\nconnection: close" in lower
    i = lower.find(b"\r\ncontent-length:")
    if i >= 0:
        j = lower.index(b"\r\n", i + 2)
        body = await reader.readexactly(int(lower[i + 17 : j]))
    elif b"\r\ntransfer-encoding: chunked" in lower:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers from this server
                break
            parts.append(await reader.readexactly(size + 2))
        body = b"".join(p[:-2] for p in parts)
    else:
        body = await reader.read()
        close = True
    return status, body, close


@dataclass
class Result:
    """One load phase."""

    name: str
    rate: float | None  # requests per second offered; None for closed loop
    duration: float  # seconds of sending (scheduled), or of the closed loop
    connections: int
    latencies: array = field(default_factory=lambda: array("d"))  # seconds, 2xx responses
    statuses: Counter = field(default_factory=Counter)  # HTTP status -> count
    errors: Counter = field(default_factory=Counter)  # connection errors, timeouts -> count
    error_samples: list[str] = field(default_factory=list)
    sent: int = 0
    scheduled: int = 0
    elapsed: float = 0.0  # first send to last response
    aborted: str | None = None  # why the phase stopped early
    dropped: int = 0  # due requests dropped unsent after waiting too long (drop_late)
    dispatch_lags: array = field(default_factory=lambda: array("d"))  # generator timer lateness, s
    gen_cpu_seconds: float = 0.0
    _sorted: list = field(default_factory=list, repr=False)

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def failed(self) -> int:
        return sum(n for s, n in self.statuses.items() if not 200 <= s < 300) + sum(self.errors.values())

    @property
    def unanswered(self) -> int:
        return self.scheduled - self.ok - self.failed

    @property
    def throughput(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile in ms over every scheduled request: failed or unanswered ones
        count as infinitely slow, so a phase with errors cannot report a flattering tail."""
        n = self.scheduled if self.rate is not None else self.ok + self.failed
        if n == 0:
            return math.nan
        rank = max(1, math.ceil(q / 100 * n))
        if rank > self.ok:
            return math.inf
        return self.sorted_latencies()[rank - 1] * 1e3

    def sorted_latencies(self) -> list[float]:
        if len(self._sorted) != self.ok:
            self._sorted = sorted(self.latencies)
        return self._sorted

    def lag_ms(self, q: float) -> float:
        """Percentile of the generator's own lateness (timer wake-up after a due time), ms."""
        if not self.dispatch_lags:
            return math.nan
        lags = sorted(self.dispatch_lags)
        return lags[min(len(lags) - 1, max(0, math.ceil(q / 100 * len(lags)) - 1))] * 1e3

    def mean_ms(self) -> float:
        return (sum(self.latencies) / self.ok * 1e3) if self.ok else math.nan


class _Conn:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(data)
        status, body, close = await read_response(self.reader)
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _exchange(conn: _Conn, data: bytes, result: Result, since: float) -> None:
    """Send one request and record its answer (latency counted from ``since``, loop time) or
    its failure (the connection is closed and reopened by the next request)."""
    try:
        status, body = await conn.request(data)
        _record(result, status, body, None, asyncio.get_running_loop().time() - since)
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        conn.close()
        _record(result, None, None, exc, 0.0)


def _record(result: Result, status: int | None, body: bytes | None, exc: BaseException | None, latency: float) -> None:
    if exc is not None:
        key = type(exc).__name__
        result.errors[key] += 1
        if len(result.error_samples) < 5:
            result.error_samples.append(f"{key}: {exc}"[:300])
        return
    result.statuses[status] += 1
    if 200 <= status < 300:
        result.latencies.append(latency)
    elif len(result.error_samples) < 5:
        result.error_samples.append(f"HTTP {status}: {body[:300]!r}")


class _Ticker:
    """Wakes the event loop every ``period`` seconds from ``start`` (``loop.time()`` clock).

    A Linux ``timerfd`` (through libc) registered as a reader: epoll returns within tens of
    microseconds of the deadline, where ``asyncio.sleep`` and uvloop's timers round to whole
    milliseconds, and that rounding alone would add half a millisecond on average to every latency
    measured from the scheduled send time. Falls back to ``call_at`` timers.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, start: float, period: float, callback) -> None:
        self.loop, self.callback, self.fd = loop, callback, -1
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)

            class timespec(ctypes.Structure):
                _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

            class itimerspec(ctypes.Structure):
                _fields_ = [("it_interval", timespec), ("it_value", timespec)]

            def ts(x: float) -> timespec:
                sec = int(x)
                return timespec(sec, int(round((x - sec) * 1e9)))

            fd = libc.timerfd_create(1, os.O_NONBLOCK | os.O_CLOEXEC)  # CLOCK_MONOTONIC
            if fd < 0:
                raise OSError(ctypes.get_errno(), "timerfd_create")
            # TFD_TIMER_ABSTIME: the first expiry at `start` on the monotonic clock = loop.time()
            if libc.timerfd_settime(fd, 1, ctypes.byref(itimerspec(ts(period), ts(start))), None) != 0:
                os.close(fd)
                raise OSError(ctypes.get_errno(), "timerfd_settime")
            self.fd = fd
            loop.add_reader(fd, self._on_timerfd)
        except (OSError, AttributeError, NotImplementedError):
            self.fd = -1
            self.period, self.next = period, start
            self.handle = loop.call_at(start, self._on_timer)

    def _on_timerfd(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            return
        self.callback()

    def _on_timer(self) -> None:
        self.next += self.period
        self.handle = self.loop.call_at(self.next, self._on_timer)
        self.callback()

    def close(self) -> None:
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
        elif hasattr(self, "handle"):
            self.handle.cancel()
            del self.handle


class _OpenLoop:
    """The state of one open-loop phase: a dispatcher driven by the ticker hands due requests to
    idle connections (or queues them), and one worker per connection sends them."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        result: Result,
        requests: list[bytes],
        rate: float,
        max_backlog_seconds: float,
        drop_late: bool,
    ) -> None:
        self.loop, self.result, self.requests, self.rate = loop, result, requests, rate
        self.max_backlog, self.drop_late = max_backlog_seconds, drop_late
        self.total = result.scheduled
        self.backlog: deque[tuple[float, bytes]] = deque()  # due, waiting for a free connection
        self.idle: deque[asyncio.Future] = deque()  # connections waiting for work
        self.next = self.pending = 0
        self.stopped = False
        self.all_sent = loop.create_future()
        self.finished = loop.create_future()
        self.t0 = loop.time() + 0.02

    def hand_out(self, item: tuple[float, bytes] | None) -> bool:
        while self.idle:
            fut = self.idle.popleft()
            if not fut.done():
                fut.set_result(item)
                return True
        return False

    def tick(self) -> None:
        """Dispatch every request due by now, then deal with a backlog that waited too long."""
        if self.stopped:
            return
        now = self.loop.time()
        i = self.next
        due = min(self.total, int((now - self.t0) * self.rate) + 1)
        if due > i:
            self.result.dispatch_lags.append(now - (self.t0 + i / self.rate))
            for j in range(i, due):
                item = (self.t0 + j / self.rate, self.requests[j % len(self.requests)])
                if not self.hand_out(item):
                    self.backlog.append(item)
            self.pending += due - i
            self.next = i = due
        if self.backlog and now - self.backlog[0][0] > self.max_backlog:
            i = self._shed(now, i)
        if i >= self.total:
            self.stopped = True
            if not self.all_sent.done():
                self.all_sent.set_result(None)

    def _shed(self, now: float, i: int) -> int:
        """Drop requests that waited too long (``drop_late``), or stop sending altogether."""
        if self.drop_late:
            dropped = 0
            while self.backlog and now - self.backlog[0][0] > self.max_backlog:
                self.backlog.popleft()
                dropped += 1
            self.pending -= dropped
            self.result.dropped += dropped
            return i
        self.result.aborted = (
            f"stopped after {now - self.t0:.1f} s: requests waited over "
            f"{self.max_backlog:g} s for one of {self.result.connections} connections"
        )
        self.pending -= len(self.backlog)
        self.backlog.clear()
        return self.total

    async def worker(self, conn: _Conn) -> None:
        while True:
            if self.backlog:
                item = self.backlog.popleft()
            elif self.stopped:
                return
            else:
                fut = self.loop.create_future()
                self.idle.append(fut)
                item = await fut
                if item is None:
                    return
            scheduled, data = item
            await _exchange(conn, data, self.result, since=scheduled)
            self.pending -= 1
            if self.stopped and self.pending <= 0 and not self.finished.done():
                self.finished.set_result(None)


async def open_loop(
    host: str,
    port: int,
    requests: list[bytes],
    rate: float,
    duration: float,
    *,
    name: str = "",
    connections: int = 64,
    drain_timeout: float = 15.0,
    max_backlog_seconds: float = 2.0,
    drop_late: bool = False,
) -> Result:
    """``rate`` requests a second for ``duration`` seconds, cycling through ``requests``.

    Latency is measured from each request's scheduled time. When due requests have waited
    ``max_backlog_seconds`` for a free connection (the server is far past saturation) the phase
    stops sending, or with ``drop_late`` keeps going and drops those requests (so a long phase
    keeps the server saturated without an ever-growing backlog here). Requests never sent, dropped,
    or not answered within ``drain_timeout`` seconds of the end count as unanswered: an infinite
    latency in the percentiles.
    """
    loop = asyncio.get_running_loop()
    result = Result(name, rate, duration, connections)
    result.scheduled = max(1, int(round(rate * duration)))
    state = _OpenLoop(loop, result, requests, rate, max_backlog_seconds, drop_late)
    cpu0 = time.process_time()
    conns = [_Conn(host, port) for _ in range(connections)]
    tasks = [asyncio.ensure_future(state.worker(c)) for c in conns]
    ticker = _Ticker(loop, state.t0, max(1.0 / rate, 0.0002), state.tick)
    try:
        await state.all_sent
        ticker.close()
        result.sent = result.ok + result.failed + state.pending
        if state.pending > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(state.finished), drain_timeout)
    finally:
        ticker.close()
        result.elapsed = loop.time() - state.t0
        while state.hand_out(None):
            pass
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in conns:
            c.close()
    result.gen_cpu_seconds = time.process_time() - cpu0
    return result


async def closed_loop(
    host: str, port: int, requests: list[bytes], duration: float, *, name: str = "", connections: int = 2
) -> Result:
    """Each connection sends its next request as soon as the previous answer is in (saturation
    throughput; latency here is per request, queueing excluded by construction).

    Connections open one after another, each once the previous one has had its first answer, as
    clients arriving over time do. BentoML's workers share one listening socket, and a burst of
    simultaneous connects is accepted by whichever worker wakes first: measured here, all 16 of
    them landed on one of two workers in 2 of 5 runs, halving the throughput."""
    loop = asyncio.get_running_loop()
    result = Result(name, None, duration, connections)
    cpu0 = time.process_time()
    t0 = loop.time()
    end = t0 + duration
    counter = 0
    opened = [asyncio.Event() for _ in range(connections)]

    async def worker(k: int) -> None:
        nonlocal counter
        if k:
            await opened[k - 1].wait()
        conn = _Conn(host, port)
        while loop.time() < end:
            data = requests[counter % len(requests)]
            counter += 1
            await _exchange(conn, data, result, since=loop.time())
            opened[k].set()  # the next connection may open
        opened[k].set()
        conn.close()

    await asyncio.gather(*(worker(k) for k in range(connections)))
    result.elapsed = loop.time() - t0
    result.sent = result.scheduled = result.ok + result.failed
    result.gen_cpu_seconds = time.process_time() - cpu0
    return result


async def fetch(host: str, port: int, data: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """One request on a fresh connection."""
    conn = _Conn(host, port)
    try:
        return await asyncio.wait_for(conn.request(data), timeout)
    finally:
        conn.close()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The standard loop, not uvloop: uvloop's ``loop.time()`` is libuv's millisecond clock,
    too coarse for latencies of a millisecond or two."""
    return asyncio.new_event_loop()


# -- a trivial server: the generator's own floor ------------------------------------------------
_FIXED = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}"


class _FixedResponse(asyncio.Protocol):
    """Answers every request with ``{}``, doing as little as possible."""

    def connection_made(self, transport) -> None:
        self.transport, self.buf = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            i = head.find(b"content-length:")
            n = int(head[i + 15 :].split(b"\r\n")[0]) if i >= 0 else 0
            if len(self.buf) < end + 4 + n:
                return
            self.buf = self.buf[end + 4 + n :]
            self.transport.write(_FIXED)


def serve_fixed(host: str, port: int) -> None:
    """``python -m bench.loadgen HOST PORT``: the trivial server the benchmark runs its generator
    against first, to show the latency floor the generator itself adds."""

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_FixedResponse, host, port)
        await server.serve_forever()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover
        asyncio.run(main())


if __name__ == "__main__":
    import sys

    serve_fixed(sys.argv[1], int(sys.argv[2]))
