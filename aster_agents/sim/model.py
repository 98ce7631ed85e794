"""A small deterministic OpenAI-compatible chat-completions server, for tests and the demo.

``POST /v1/chat/completions`` and ``GET /v1/models`` on 127.0.0.1 (port 0 picks a free one).
What it answers:

* a scripted :class:`Reply` when the queue (:meth:`ModelServer.script`) is not empty: raw
  content, an HTTP status, a malformed body or a delay, so tests can serve garbage;
* otherwise by ``mode``:

  - ``house``: a rule over the market JSON of the last user message (the prompt of
    :mod:`aster_agents.strategies.llm`): flat -> long/short when the last
    :data:`HOUSE_LOOKBACK` closes moved more than :data:`HOUSE_MOVE`, in a position -> close
    when the move turned against it, else hold. Valid JSON, deterministic for a given prompt;
  - ``garbage``: cycles through invalid answers (broken JSON, HTTP 500, slow replies,
    out-of-range values, unknown actions), never a valid one;
  - ``hold``: always a valid hold.

Every request is recorded (path, headers, body) so tests can scan what agents sent.
Standalone: ``python -m aster_agents.sim.model [--port N] [--mode house]`` prints the base URL
(``http://127.0.0.1:N/v1``) as its first stdout line and serves until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import socket
import sys
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, Literal

from aster_agents.errors import ConfigError
from aster_agents.sim.server import is_loopback

Mode = Literal["house", "garbage", "hold"]
MODES: Final[tuple[str, ...]] = ("house", "garbage", "hold")
HOUSE_LOOKBACK: Final = 5
HOUSE_MOVE: Final = 0.0005  # a 0.05% move over the lookback counts as momentum
MODEL_NAME: Final = "aster-house"


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted answer: message ``content`` (status 200), or a raw ``body``/``status``."""

    content: str | None = None
    status: int = 200
    body: str | None = None
    delay: float = 0.0

    @classmethod
    def answer(cls, **fields: object) -> Reply:
        """A 200 whose message content is ``fields`` as JSON."""
        return cls(content=json.dumps(fields))

    @classmethod
    def http(cls, status: int, body: str = '{"error": "scripted failure"}') -> Reply:
        return cls(status=status, body=body)

    @classmethod
    def slow(cls, seconds: float, content: str = '{"action": "hold"}') -> Reply:
        return cls(content=content, delay=seconds)


GARBAGE: Final[tuple[Reply, ...]] = (
    Reply(content="I think you should buy, definitely!"),
    Reply.http(500),
    Reply.answer(action="long", confidence=1.7, reason="very sure"),
    Reply(content='{"action": "long", "confidence": 0.9, "reason": "cut off'),
    Reply.slow(30.0, '{"action": "long", "confidence": 0.99, "reason": "too late"}'),
    Reply.answer(action="buy", confidence=0.9, reason="not an action"),
    Reply(body="<html>502 Bad Gateway</html>"),
    Reply.answer(action="short", confidence=0.9, reason="x", size_pct=3),
    Reply.answer(action="long", confidence="high", reason="not a number"),
    Reply.http(429, '{"error": {"message": "rate limit"}}'),
)


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request as received."""

    method: str
    path: str
    headers: dict[str, str]
    body: str

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class _State:
    mode: Mode
    queue: deque[Reply] = field(default_factory=deque)
    requests: list[Recorded] = field(default_factory=list)
    garbage: Iterator[Reply] = field(default_factory=lambda: itertools.cycle(GARBAGE))
    lock: threading.Lock = field(default_factory=threading.Lock)
    closing: threading.Event = field(default_factory=threading.Event)

    def next_reply(self, request_body: str) -> Reply:
        with self.lock:
            if self.queue:
                return self.queue.popleft()
            if self.mode == "garbage":
                return next(self.garbage)
        if self.mode == "hold":
            return Reply.answer(action="hold", confidence=0.0, reason="hold mode")
        return Reply(content=json.dumps(house_answer(request_body)))


class ModelServer:
    """The fake model endpoint, served from background threads; a context manager."""

    def __init__(self, mode: Mode = "house", *, host: str = "127.0.0.1", port: int = 0) -> None:
        if mode not in MODES:
            raise ConfigError(f"model server: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not is_loopback(host):
            raise ConfigError(f"model server: refusing non-loopback host {host!r}")
        self.state = _State(mode)
        self._address = (host, port)
        self._http: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``: what an llm agent's ``base_url`` param points at."""
        if self._http is None:
            raise RuntimeError("ModelServer.base_url: the server is not started; call start()")
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    @property
    def requests(self) -> list[Recorded]:
        with self.state.lock:
            return list(self.state.requests)

    def completions(self) -> list[Recorded]:
        """The chat-completion requests received so far."""
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def script(self, *replies: Reply) -> None:
        """Queue replies; they are served first, in order, before the mode's answers."""
        with self.state.lock:
            self.state.queue.extend(replies)

    def start(self) -> str:
        self._http = _HttpServer(self._address, self.state)
        self._thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="model-http",
            daemon=True,
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        self.state.closing.set()  # wakes handlers sleeping in a scripted delay
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ModelServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# ---------------------------------------------------------------------- the house rule


def house_answer(request_body: str) -> dict[str, object]:
    """The ``house`` decision for a chat-completions request body (never raises)."""
    market, qty = _market_and_position(request_body)
    closes = _closes(market)
    if len(closes) <= HOUSE_LOOKBACK or closes[-1 - HOUSE_LOOKBACK] <= 0:
        return {"action": "hold", "confidence": 0.0, "reason": "house: not enough klines"}
    move = closes[-1] / closes[-1 - HOUSE_LOOKBACK] - 1.0
    state = f"{HOUSE_LOOKBACK}-candle move {move * 100:+.3f}%"
    if qty != 0:
        if move * qty < 0:
            return {"action": "close", "confidence": 1.0, "reason": f"house: turned, {state}"}
        return {"action": "hold", "confidence": 0.0, "reason": f"house: riding it, {state}"}
    if abs(move) < HOUSE_MOVE:
        return {"action": "hold", "confidence": 0.0, "reason": f"house: flat, {state}"}
    confidence = round(min(0.95, 0.6 + abs(move) * 50), 3)
    return {
        "action": "long" if move > 0 else "short",
        "confidence": confidence,
        "reason": f"house: momentum, {state}",
        "size_pct": 0.8,
        "stop_loss_pct": 0.01,
        "take_profit_pct": 0.5,
    }


def _market_and_position(request_body: str) -> tuple[dict[str, Any], float]:
    try:
        messages = json.loads(request_body)["messages"]
        prompt = json.loads(next(m for m in reversed(messages) if m["role"] == "user")["content"])
        market = prompt["market"]
        qty = float(prompt.get("position", {}).get("qty", 0) or 0)
    except (ValueError, KeyError, TypeError, StopIteration, AttributeError):
        return {}, 0.0
    return (market if isinstance(market, dict) else {}), qty


def _closes(market: dict[str, Any]) -> list[float]:
    columns = market.get("kline_columns") or []
    rows = market.get("klines") or []
    index = columns.index("close") if "close" in columns else 4
    try:
        return [float(row[index]) for row in rows]
    except (ValueError, TypeError, IndexError):
        return []


# ---------------------------------------------------------------------- HTTP


def _completion(content: str) -> dict[str, object]:
    return {
        "id": "chatcmpl-sim",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL_NAME,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_GET(self) -> None:
        self._record("")
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, json.dumps({"object": "list", "data": [{"id": MODEL_NAME}]}))
        else:
            self._send(404, '{"error": "not found"}')

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        self._record(body)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, '{"error": "not found"}')
            return
        reply = self.server.state.next_reply(body)
        if reply.delay and self.server.state.closing.wait(reply.delay):
            return
        text = (
            reply.body if reply.body is not None else json.dumps(_completion(reply.content or ""))
        )
        self._send(reply.status, text)

    def _record(self, body: str) -> None:
        entry = Recorded(self.command, self.path, dict(self.headers.items()), body)
        with self.server.state.lock:
            self.server.state.requests.append(entry)

    def _send(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: _State) -> None:
        super().__init__(address, _Handler)
        self.state = state

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: tuple[str, int]
    ) -> None:
        """A client that gave up (timed out) and hung up is normal here."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aster_agents.sim.model",
        description="A fake OpenAI-compatible model server.",
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--mode", choices=MODES, default="house")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _s, _f: stop.set())
    with ModelServer(args.mode, port=args.port) as server:
        print(server.base_url, flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
