"""A delaying HTTP proxy on loopback: the network between an agent and the simulator.

``HoldingProxy(upstream, hold)`` forwards every request to ``upstream`` and answers with the
upstream's reply, except requests ``hold(method, path, n)`` picks (``n`` counts that
method+path so far, from 1): those wait in the proxy until the test calls ``release()`` on
them, then go on to the exchange, whatever became of the client that sent them (it may have
timed out and hung up long ago), exactly like a request stuck in a slow network::

    proxy = HoldingProxy(sim.base_url, hold=first("POST", "/fapi/v3/order"))
    url = proxy.start()
    ...
    held = proxy.held[0]; held.release(); held.answered.wait(10)

``proxy.cut = True`` makes it drop every connection without an answer (the exchange
unreachable) until it is set back to False.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

Hold = Callable[[str, str, int], bool]
_SKIP_HEADERS = frozenset({"content-length", "connection", "transfer-encoding", "keep-alive"})
MAX_HOLD_S = 300.0


def first(method: str, path: str) -> Hold:
    """Hold the first ``method path`` request only."""
    return lambda m, p, n: m == method and p == path and n == 1


@dataclass
class Held:
    """One request held in the network."""

    method: str
    path: str
    since: float = field(default_factory=time.monotonic)
    go: threading.Event = field(default_factory=threading.Event)
    answered: threading.Event = field(default_factory=threading.Event)
    status: int | None = None
    body: str = ""

    def release(self) -> None:
        self.go.set()

    @property
    def held_s(self) -> float:
        return time.monotonic() - self.since


class HoldingProxy:
    """Forwards to ``upstream``; requests ``hold`` picks wait for ``release()``."""

    def __init__(self, upstream: str, hold: Hold) -> None:
        self.upstream = upstream
        self.hold = hold
        self.held: list[Held] = []
        self.cut = False  # drop every request unanswered: the exchange unreachable
        self.seen: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._http = httpx.Client(base_url=upstream, timeout=30.0)

    def start(self) -> str:
        self._server = _Server(("127.0.0.1", 0), self)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def count(self, method: str, path: str) -> int:
        with self._lock:
            return self.seen[(method, path)]

    def stop(self) -> None:
        for held in self.held:
            held.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._http.close()

    def __enter__(self) -> HoldingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def forward(
        self, method: str, target: str, body: bytes, content_type: str | None
    ) -> tuple[int, bytes, list[tuple[str, str]]]:
        path = target.partition("?")[0]
        with self._lock:
            self.seen[(method, path)] += 1
            n = self.seen[(method, path)]
            held = Held(method, path) if self.hold(method, path, n) else None
            if held is not None:
                self.held.append(held)
        if held is not None:
            held.go.wait(MAX_HOLD_S)
        headers = {"Content-Type": content_type} if content_type else {}
        reply = self._http.request(method, target, content=body, headers=headers)
        if held is not None:
            held.status, held.body = reply.status_code, reply.text
            held.answered.set()
        kept = [(k, v) for k, v in reply.headers.items() if k.lower() not in _SKIP_HEADERS]
        return reply.status_code, reply.content, kept


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:
        return

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.server.proxy.cut:
            self.close_connection = True  # hang up without a status line
            return
        status, content, headers = self.server.proxy.forward(
            self.command, self.path, body, self.headers.get("Content-Type")
        )
        try:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)
            self.wfile.flush()
        except OSError:  # the client gave up on a held request long ago
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], proxy: HoldingProxy) -> None:
        super().__init__(address, _Handler)
        self.proxy = proxy

    def handle_error(self, request: object, client_address: object) -> None:
        return  # hung-up clients are the point of this proxy
