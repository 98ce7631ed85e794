"""llm: ask an OpenAI-compatible chat-completions endpoint, trust nothing it says.

The one strategy that is not pure: ``decide`` sends the market snapshot, the agent's position,
its style and its limits to ``{base_url}/chat/completions`` and expects one JSON object::

    {"action": "long" | "short" | "close" | "hold", "confidence": 0..1, "reason": "...",
     "size_pct": 0..1, "stop_loss_pct": 0..1, "take_profit_pct": 0..1}   # last three optional

Anything else (timeout, HTTP error, no JSON, a missing or out-of-range field, the call budget
spent) is a HOLD with confidence 0 and a reason starting ``llm:``, logged once at WARNING.
The model proposes, the runtime disposes: ``size_pct`` is a fraction of the configured
``position_size_pct`` (it can only shrink a position), leverage is always the configured one,
and suggested stop/take-profit distances are clamped by the runner into the configured ones
(:func:`aster_agents.agent.sizing.clamp_distance`).

Params: ``base_url`` (required, http/https, e.g. ``http://127.0.0.1:11434/v1``), ``model``
(required), ``api_key_env`` (name of the env var holding the API key; none for local servers;
a key written in the YAML is refused), ``temperature`` (0.2, 0..2), ``timeout_seconds`` (20,
at most 120; the whole call, and a SIGTERM interrupts it within 0.1 s), ``max_calls_per_hour``
(60, a sliding window per agent across its symbols, kept in the state dir across restarts),
``style`` (free text: what kind of trader the agent is), ``klines_in_prompt`` (30).

The request asks for ``response_format: {"type": "json_object"}``; a server that answers
400 naming ``response_format`` is asked again once without it, and never with it afterwards.

Pure parts, unit-tested on their own: :func:`build_messages`, :func:`parse_completion`,
:func:`parse_answer`, :class:`CallBudget`. The HTTP call lives in :class:`ChatClient`
(httpx imported lazily: validating a config never loads it).
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from pydantic import Field

from aster_agents.errors import ConfigError, CredentialError
from aster_agents.fsutil import write_private_file
from aster_agents.logs import logger
from aster_agents.strategies.base import (
    PARAMS_PATH,
    Action,
    MarketSnapshot,
    PositionView,
    RiskLimits,
    Signal,
    StrategyParams,
    hold,
    parse_params,
)

if TYPE_CHECKING:
    from pathlib import Path

    import httpx

REASON_MAX: Final = 200
HOUR_S: Final = 3600.0
POLL_S: Final = 0.1  # how fast a stop request interrupts a call in flight
MAX_ANSWER_BYTES: Final = 1 << 20  # a chat completion is a few KiB; more is not an answer
_ENV_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_NAMES: Final = ("api_key", "apikey", "key", "token", "secret", "password", "authorization")
_SECRET_VALUE_RE: Final = re.compile(r"^(sk-|bearer\s)", re.IGNORECASE)
_FENCE_RE: Final = re.compile(r"```(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)
_KEY_HINT: Final = (
    "never put API keys in YAML; set api_key_env to the NAME of an environment variable "
    "that holds it"
)

SYSTEM_PROMPT: Final = """You are one trading agent of an automated crypto perpetual-futures \
portfolio. Each call you get one market as JSON: recent closed klines (oldest first, columns \
named in kline_columns), the mark price, your current position in that market, your style and \
your risk limits. Decide what to do now.

Answer with ONE JSON object and nothing else, with exactly these keys:
{"action": "long" | "short" | "close" | "hold",
 "confidence": number from 0 to 1,
 "reason": short string (under 200 characters),
 "size_pct": optional number in (0, 1]: fraction of your configured position size to use,
 "stop_loss_pct": optional number in (0, 1): stop distance from the entry as a fraction,
 "take_profit_pct": optional number in (0, 1): take-profit distance from the entry}

Rules: "long"/"short" open a position when you are flat (the opposite of your position closes \
it); "close" exits your position; "hold" does nothing. Only act when the data supports it; \
low confidence is fine. You cannot change leverage; size and stop distances above your limits \
are reduced to them."""


class LlmParams(StrategyParams):
    """Validated params of the llm strategy."""

    base_url: str = Field(pattern=r"^https?://[^\s/?#]+(:\d+)?(/[^\s?#]*)?$")
    model: str = Field(min_length=1, max_length=200)
    api_key_env: str | None = Field(default=None, pattern=_ENV_NAME_RE.pattern)
    temperature: float = Field(0.2, ge=0.0, le=2.0)
    timeout_seconds: float = Field(20.0, gt=0.0, le=120.0)
    max_calls_per_hour: int = Field(60, ge=1, le=100_000)
    style: str = Field("", max_length=1000)
    klines_in_prompt: int = Field(30, ge=2, le=200)


# ---------------------------------------------------------------------- pure: the prompt


def build_messages(
    market: MarketSnapshot,
    position: PositionView,
    params: LlmParams,
    limits: RiskLimits | None = None,
) -> list[dict[str, str]]:
    """System rules and schema, then the market, position, style and limits as compact JSON."""
    doc: dict[str, Any] = {
        "market": _market_doc(market, params.klines_in_prompt),
        "position": _position_doc(position),
        "style": params.style or "a disciplined discretionary trader",
    }
    if limits is not None:
        doc["limits"] = {
            "position_size_pct_of_capital": limits.position_size_pct,
            "leverage": limits.leverage,
            "max_stop_loss_pct": limits.stop_loss_pct,
            "max_take_profit_pct": limits.take_profit_pct,
            "acts_only_when_confidence_at_least": limits.min_confidence,
        }
    user = json.dumps(doc, separators=(",", ":"))
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def _market_doc(market: MarketSnapshot, n: int) -> dict[str, Any]:
    klines = market.klines[-n:]
    return {
        "symbol": market.symbol,
        "interval": market.interval,
        "mark_price": str(market.mark_price),
        "kline_columns": ["open_time", "open", "high", "low", "close", "volume"],
        "klines": [
            [k.open_time, str(k.open), str(k.high), str(k.low), str(k.close), str(k.volume)]
            for k in klines
        ],
    }


def _position_doc(position: PositionView) -> dict[str, Any]:
    side = "flat" if position.qty == 0 else ("long" if position.qty > 0 else "short")
    doc: dict[str, Any] = {"side": side, "qty": str(position.qty)}
    if position.qty != 0:
        doc["entry_price"] = str(position.entry_price)
        doc["opened_at_ms"] = position.opened_at_ms
    return doc


# ---------------------------------------------------------------------- pure: the answer


class BadAnswer(Exception):
    """The model's answer is unusable; the message is the hold reason (without ``llm:``)."""


def parse_completion(body: str) -> str:
    """``choices[0].message.content`` of a chat-completions response body."""
    try:
        doc = json.loads(body)
        content = doc["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise BadAnswer(f"not a chat completion: {_clip(body, 80)!r}") from None
    if not isinstance(content, str):
        raise BadAnswer(f"message content is {type(content).__name__}, not text")
    return content


def parse_answer(content: str) -> Signal:
    """Validate the model's text against the schema and turn it into a Signal."""
    doc = _json_object(content)
    action = _action(doc.get("action"))
    confidence = _number(doc, "confidence", lambda x: 0.0 <= x <= 1.0, required=True)
    reason = doc.get("reason")
    if not isinstance(reason, str):
        raise BadAnswer(f"reason must be a string, got {_clip(repr(reason), 40)}")
    reason = f"llm: {_clip(' '.join(reason.split()), REASON_MAX)}"
    if action is Action.HOLD or confidence is None:
        return hold(reason)
    return Signal(
        action,
        confidence,
        reason,
        size_pct=_number(doc, "size_pct", lambda x: 0.0 < x <= 1.0),
        stop_loss_pct=_number(doc, "stop_loss_pct", lambda x: 0.0 < x < 1.0),
        take_profit_pct=_number(doc, "take_profit_pct", lambda x: 0.0 < x < 1.0),
    )


def _json_object(content: str) -> dict[str, Any]:
    text = content.strip()
    if not text.startswith(("{", "[")):
        blocks = _FENCE_RE.findall(text)
        if len(blocks) != 1:
            raise BadAnswer(f"invalid JSON: {_clip(text, 60)!r}")
        text = blocks[0].strip()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadAnswer(f"invalid JSON: {exc.msg} at char {exc.pos}") from None
    if not isinstance(doc, dict):
        raise BadAnswer(f"expected a JSON object, got {type(doc).__name__}")
    return doc


def _action(value: object) -> Action:
    if isinstance(value, str):
        for action in Action:
            if value.strip().lower() == action.value:
                return action
    raise BadAnswer(f"action must be long, short, close or hold, got {_clip(repr(value), 40)}")


def _number(
    doc: Mapping[str, Any], key: str, in_range: Callable[[float], bool], required: bool = False
) -> float | None:
    value = doc.get(key)
    if value is None:
        if required:
            raise BadAnswer(f"{key} is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadAnswer(f"{key} must be a number, got {_clip(repr(value), 40)}")
    if not math.isfinite(value) or not in_range(float(value)):
        raise BadAnswer(f"{key} {value} out of range")
    return float(value)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------- the call budget


class CallBudget:
    """At most ``per_hour`` calls in any rolling hour, across restarts once :meth:`keep_in`.

    The times are wall-clock seconds. With a file, every call is written there (atomically)
    *before* it is made, so a crash loop under supervisord cannot buy more calls than the
    budget: a restarted agent reads the calls of the last hour back. A file that cannot be
    read is reported and replaced (the budget then starts empty); one that cannot be written
    is reported once and the budget carries on in memory.
    """

    def __init__(self, per_hour: int, clock: Callable[[], float] = time.time) -> None:
        self.per_hour = per_hour
        self.clock = clock
        self.calls: deque[float] = deque()
        self.path: Path | None = None
        self._write_failed = False

    def keep_in(self, path: Path) -> None:
        """Load the calls recorded in ``path`` (if any) and record every new one there."""
        self.path = path
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            times = [float(t) for t in raw["calls"]]
        except FileNotFoundError:
            times = []
        except (OSError, ValueError, TypeError, KeyError) as exc:
            logger.warning("llm call budget {} unreadable ({}); starting it empty", path, exc)
            times = []
        now = self.clock()
        kept = sorted({*self.calls, *(t for t in times if now - t < HOUR_S)})
        self.calls = deque(kept)

    def take(self) -> bool:
        """Use one call if the window has room; False when the budget is spent."""
        now = self.clock()
        while self.calls and now - self.calls[0] >= HOUR_S:
            self.calls.popleft()
        if len(self.calls) >= self.per_hour:
            return False
        self.calls.append(now)
        self._save()
        return True

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            write_private_file(
                self.path, json.dumps({"calls": list(self.calls)}).encode(), replace=True
            )
        except OSError as exc:
            if not self._write_failed:
                logger.warning(
                    "llm call budget {} cannot be written ({}); a restart will "
                    "forget this hour's calls",
                    self.path,
                    exc,
                )
                self._write_failed = True


# ---------------------------------------------------------------------- the HTTP call


class CallFailed(Exception):
    """The call did not produce a response body; the message is the hold reason."""


class ChatClient:
    """POSTs to ``{base_url}/chat/completions`` from a worker thread so a stop interrupts it.

    The httpx client is made on first use and reused; :meth:`close` releases it. The API key
    is read from the environment then and only travels in the Authorization header.
    """

    def __init__(self, params: LlmParams, transport: httpx.BaseTransport | None = None) -> None:
        self.params = params
        self.url = params.base_url.rstrip("/") + "/chat/completions"
        self.json_mode = True
        self._transport = transport
        self._http: httpx.Client | None = None
        self._worker: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"ChatClient({self.url!r}, model={self.params.model!r})"

    def complete(self, messages: list[dict[str, str]], stop: threading.Event) -> str:
        """The response body of one call; CallFailed on timeout, stop, HTTP or network errors."""
        if self._worker is not None and self._worker.is_alive():
            raise CallFailed("previous call still running")
        http = self._client()
        box: dict[str, str | CallFailed] = {}

        def work() -> None:
            try:
                box["body"] = self._post(http, messages)
            except CallFailed as exc:
                box["error"] = exc

        self._worker = threading.Thread(target=work, name="llm-call", daemon=True)
        self._worker.start()
        self._wait(self._worker, stop)
        error = box.get("error")
        if isinstance(error, CallFailed):
            raise error
        return str(box["body"])

    def _wait(self, worker: threading.Thread, stop: threading.Event) -> None:
        deadline = time.monotonic() + self.params.timeout_seconds
        while True:
            worker.join(min(POLL_S, max(0.0, deadline - time.monotonic())))
            if not worker.is_alive():
                return
            if stop.is_set():
                raise CallFailed("stopping: call abandoned")
            if time.monotonic() >= deadline:
                raise CallFailed(f"timeout after {self.params.timeout_seconds:g}s")

    def _post(self, http: httpx.Client, messages: list[dict[str, str]]) -> str:
        import httpx

        try:
            status, body = self._call(http, messages)
            if status == 400 and self.json_mode and b"response_format" in body:
                self.json_mode = False  # this server does not do JSON mode: ask without it
                status, body = self._call(http, messages)
        except httpx.TimeoutException:
            raise CallFailed(f"timeout after {self.params.timeout_seconds:g}s") from None
        except httpx.HTTPError as exc:
            raise CallFailed(f"cannot reach {self.url}: {type(exc).__name__}") from None
        if status != 200:
            raise CallFailed(f"HTTP {status} from {self.url}")
        return body.decode("utf-8", "replace")

    def _call(self, http: httpx.Client, messages: list[dict[str, str]]) -> tuple[int, bytes]:
        """(status, body) of one POST, reading at most MAX_ANSWER_BYTES of the body."""
        with http.stream("POST", self.url, json=self._payload(messages)) as response:
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise CallFailed(f"answer larger than {MAX_ANSWER_BYTES} bytes; not read")
            return response.status_code, bytes(body)

    def _payload(self, messages: list[dict[str, str]]) -> dict[str, object]:
        payload: dict[str, object] = {
            "model": self.params.model,
            "messages": messages,
            "temperature": self.params.temperature,
            "stream": False,
        }
        if self.json_mode:
            payload["response_format"] = {"type": "json_object"}
        return payload

    def _client(self) -> httpx.Client:
        if self._http is None:
            import httpx

            headers = {"Content-Type": "application/json"}
            key = self._api_key()
            if key is not None:
                headers["Authorization"] = f"Bearer {key}"
            self._http = httpx.Client(
                headers=headers,
                timeout=httpx.Timeout(self.params.timeout_seconds),
                transport=self._transport,
                trust_env=False,
            )
        return self._http

    def _api_key(self) -> str | None:
        name = self.params.api_key_env
        if name is None:
            return None
        key = os.environ.get(name, "").strip()
        if not key:
            raise CredentialError(
                f"{PARAMS_PATH}.api_key_env: environment variable {name} is not set or empty; "
                f"export it with the API key for {self.params.base_url}"
            )
        return key

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None


def _refuses_json_mode(response: httpx.Response) -> bool:
    return response.status_code == 400 and "response_format" in response.text


# ---------------------------------------------------------------------- the strategy


class LlmStrategy:
    """Asks the model once per ``decide``; every failure is a logged HOLD."""

    name = "llm"

    def __init__(self, params: LlmParams, client: ChatClient | None = None) -> None:
        self.params = params
        self.min_klines = params.klines_in_prompt
        self.client = client or ChatClient(params)
        self.budget = CallBudget(params.max_calls_per_hour)
        self.stop = threading.Event()
        self.limits: RiskLimits | None = None
        self._capped = False

    def attach(self, stop: threading.Event, limits: RiskLimits, home: Path | None = None) -> None:
        """The runner's stop event (interrupts a call in flight), the agent's limits and its
        directory in the state dir, where the call budget is kept across restarts."""
        self.stop = stop
        self.limits = limits
        if home is not None:
            self.budget.keep_in(home / "llm-calls.json")

    def close(self) -> None:
        self.client.close()

    def decide(self, market: MarketSnapshot, position: PositionView) -> Signal:
        """The model's validated answer, or a HOLD that says why not."""
        have = len(market.klines)
        if have < self.min_klines:
            return hold(f"need {self.min_klines} closed klines, have {have}")
        if self.stop.is_set():
            return hold("llm: stopping")
        if not self.budget.take():
            return self._capped_hold()
        self._capped = False
        try:
            body = self.client.complete(
                build_messages(market, position, self.params, self.limits), self.stop
            )
            return parse_answer(parse_completion(body))
        except (CallFailed, BadAnswer) as exc:
            return self._failed(market.symbol, str(exc))

    def _failed(self, symbol: str, why: str) -> Signal:
        reason = f"llm: {why}"
        logger.warning("{} hold: {}", symbol, reason)
        return hold(reason)

    def _capped_hold(self) -> Signal:
        reason = "llm: call budget exhausted"
        if not self._capped:  # once per capped stretch, not once per tick
            logger.warning(
                "{} ({} calls per hour); holding until the window frees up",
                reason,
                self.params.max_calls_per_hour,
            )
            self._capped = True
        return hold(reason)


# ---------------------------------------------------------------------- building it


def build(params: Mapping[str, object], seed: int) -> LlmStrategy:
    """Refuse keys written into params, validate, build (``seed`` is unused)."""
    _refuse_secrets(params)
    return LlmStrategy(parse_params(LlmParams, params))


def _refuse_secrets(params: Mapping[str, object]) -> None:
    """API keys never live in YAML; the problem lines never echo the value."""
    if not isinstance(params, Mapping):
        return  # parse_params reports it
    problems = []
    for key, value in params.items():
        path = f"{PARAMS_PATH}.{key}"
        if str(key).lower() in _SECRET_NAMES:
            problems.append(f"{path}: {_KEY_HINT}")
        elif isinstance(value, str) and _SECRET_VALUE_RE.match(value.strip()):
            problems.append(f"{path}: looks like an API key; {_KEY_HINT}")
        elif key == "api_key_env" and isinstance(value, str) and not _ENV_NAME_RE.match(value):
            problems.append(
                f"{path}: must be the name of an environment variable (letters, digits, _), "
                "not the key itself"
            )
    if problems:
        raise ConfigError("; ".join(problems), problems)
