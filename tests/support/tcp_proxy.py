"""A TCP proxy for fault tests: forwards to a real server until it is told to stall, then accepts
connections and holds every byte (a half-open peer, as a hung host or a dropped route looks to
a client)."""

from __future__ import annotations

import contextlib
import socket
import threading


class StallingProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = (host, target_port)
        self.listener = socket.create_server((host, port))
        self.port = self.listener.getsockname()[1]
        self.stalled = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def stall(self) -> None:
        """From now on nothing more is forwarded, either way; connections stay open."""
        self.stalled.set()

    def resume(self) -> None:
        """Forward again; what arrived meanwhile is dropped with the stalled connections."""
        self.stalled.clear()
        for s in list(self._sockets):
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        self.resume()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            if self.stalled.is_set():
                continue  # accepted, never answered
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self._sockets.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                sink.close()
                return
            while self.stalled.is_set() and not self._closed.is_set():
                self._closed.wait(0.05)
            if self._closed.is_set():
                return
            try:
                sink.sendall(data)
            except OSError:
                return
