"""A hostile proxy between an agent and the simulator, over real loopback HTTP.

``HostileProxy(upstream)`` forwards every request to the simulator unchanged and answers
with the simulator's status, ``X-MBX-*`` headers and body, unless a rule registered for the
request's ``(method, path)`` rewrites the answer. A rule gets a :class:`Seen` (the request and
the simulator's answer) and returns the body to send instead: ``bytes``, an iterator of
``bytes`` (streamed with chunked encoding, so a test can send more than it ever holds), or
``None`` to leave the answer alone. Every request is counted per ``(method, path)``.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

Body = bytes | Iterator[bytes] | None


@dataclass(frozen=True)
class Seen:
    """One forwarded request and the simulator's answer to it."""

    method: str
    path: str
    params: dict[str, str]
    status: int
    body: bytes

    def doc(self) -> Any:
        return json.loads(self.body)


Rule = Callable[[Seen], Body]


class HostileProxy:
    """Forwards to ``upstream`` (``http://127.0.0.1:PORT``); rules rewrite chosen answers."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rules: dict[tuple[str, str], Rule] = {}
        self.counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def rule(self, method: str, path: str, rewrite: Rule) -> None:
        self.rules[(method, path)] = rewrite

    def count(self, method: str, path: str) -> int:
        with self._lock:
            return self.counts[(method, path)]

    def __enter__(self) -> HostileProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def forward(self, method: str, target: str, body: bytes, ctype: str | None) -> Reply:
        path, _, query = target.partition("?")
        with self._lock:
            self.counts[(method, path)] += 1
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            headers = {"Content-Type": ctype} if ctype else {}
            conn.request(method, target, body=body or None, headers=headers)
            answer = conn.getresponse()
            status, data = answer.status, answer.read()
            kept = {
                k: v for k, v in answer.getheaders() if k.lower().startswith(("x-mbx", "retry"))
            }
        finally:
            conn.close()
        rule = self.rules.get((method, path))
        raw = query if method == "GET" or not body else body.decode()
        seen = Seen(method, path, dict(parse_qsl(raw)), status, data)
        replaced = rule(seen) if rule is not None else None
        return Reply(status, data if replaced is None else replaced, kept)


@dataclass
class Reply:
    status: int
    body: bytes | Iterator[bytes]
    headers: dict[str, str]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        return

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        reply = self.server.proxy.forward(
            self.command, self.path, body, self.headers.get("Content-Type")
        )
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if isinstance(reply.body, bytes):
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in reply.body:
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client stopped reading: what a capped client does
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], proxy: HostileProxy) -> None:
        super().__init__(address, _Handler)
        self.proxy = proxy

    def handle_error(self, request: object, client_address: object) -> None:
        return  # a client that hangs up mid-answer is the point of some tests


def padded(doc: object, size: int, chunk: int = 1 << 16) -> Iterator[bytes]:
    """``doc`` (a JSON object) with a ``pad`` field of ``size`` bytes, streamed in chunks."""
    head = json.dumps(doc)[:-1].encode() + b', "pad": "'
    yield head
    left = size
    while left > 0:
        n = min(chunk, left)
        yield b"x" * n
        left -= n
    yield b'"}'
