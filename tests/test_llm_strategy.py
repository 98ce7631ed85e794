"""The llm strategy: prompt, answer validation, clamping, call budget, and calls to a fake model."""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from aster_agents.agent.sizing import MIN_PROTECTIVE_PCT, clamp_distance, scaled_size_pct
from aster_agents.errors import ConfigError, CredentialError
from aster_agents.logs import logger
from aster_agents.models import Kline
from aster_agents.sim.model import ModelServer, Reply, house_answer
from aster_agents.strategies import (
    FLAT,
    Action,
    MarketSnapshot,
    PositionView,
    RiskLimits,
    get_strategy,
)
from aster_agents.strategies.llm import (
    BadAnswer,
    CallBudget,
    LlmParams,
    LlmStrategy,
    build_messages,
    parse_answer,
    parse_completion,
)

API_KEY = "sk-test-8f3a1c0d9e7b6a5f4e3d2c1b0a998877"
LIMITS = RiskLimits(0.1, 3, 0.02, 0.04, 0.6)


def market(n: int = 40, step: float = 0.001, symbol: str = "ETHUSDT") -> MarketSnapshot:
    """``n`` closed 1m klines trending by ``step`` per candle."""
    closes = [Decimal(f"{2000 * (1 + step) ** i:.2f}") for i in range(n)]
    klines = tuple(
        Kline(i * 60_000, c, c, c, c, Decimal("12.5"), i * 60_000 + 59_999)
        for i, c in enumerate(closes)
    )
    return MarketSnapshot(symbol, "1m", klines, closes[-1], n * 60_000)


def params(**extra: object) -> LlmParams:
    """Valid params pointing at an unused loopback URL, with ``extra`` on top."""
    base: dict[str, object] = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}
    return LlmParams.model_validate({**base, **extra})


def user_doc(messages: list[dict[str, str]]) -> dict[str, object]:
    """The user message's JSON document."""
    doc = json.loads(messages[-1]["content"])
    assert isinstance(doc, dict)
    return doc


# ---------------------------------------------------------------------- the prompt


def test_prompt_holds_the_snapshot_position_style_and_limits() -> None:
    """The user message is compact JSON of the last N klines, mark, position, style and limits."""
    snap = market(40)
    position = PositionView(Decimal("-0.5"), Decimal("2010.5"), 123)
    msgs = build_messages(snap, position, params(klines_in_prompt=12, style="patient"), LIMITS)
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert '"action"' in msgs[0]["content"] and "confidence" in msgs[0]["content"]
    doc = user_doc(msgs)
    mkt = doc["market"]
    assert isinstance(mkt, dict)
    assert (mkt["symbol"], mkt["interval"], mkt["mark_price"]) == (
        "ETHUSDT",
        "1m",
        str(snap.mark_price),
    )
    assert len(mkt["klines"]) == 12
    assert mkt["klines"][-1][4] == str(snap.klines[-1].close)
    assert doc["position"] == {
        "side": "short",
        "qty": "-0.5",
        "entry_price": "2010.5",
        "opened_at_ms": 123,
    }
    assert doc["style"] == "patient"
    assert doc["limits"] == {
        "position_size_pct_of_capital": 0.1,
        "leverage": 3,
        "max_stop_loss_pct": 0.02,
        "max_take_profit_pct": 0.04,
        "acts_only_when_confidence_at_least": 0.6,
    }


def test_prompt_never_holds_keys_env_names_or_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """No API key, env var name or value, address or file path ends up in the prompt."""
    monkeypatch.setenv("LLM_TEST_KEY", API_KEY)
    p = params(api_key_env="LLM_TEST_KEY", style="swing trader")
    text = json.dumps(build_messages(market(), FLAT, p, LIMITS))
    for secret in (API_KEY, "LLM_TEST_KEY", "sk-", "0x", "/tmp", "state", "agents.d"):
        assert secret not in text


def test_house_rule_reads_the_prompt() -> None:
    """The fake model's house rule goes long on a rising prompt, short on a falling one."""

    def body(step: float, position: PositionView = FLAT) -> str:
        return json.dumps({"messages": build_messages(market(step=step), position, params())})

    assert house_answer(body(0.001))["action"] == "long"
    assert house_answer(body(-0.001))["action"] == "short"
    assert house_answer(body(0.0))["action"] == "hold"
    assert house_answer(body(-0.001, PositionView(Decimal(1), Decimal(1), 0)))["action"] == "close"
    assert house_answer("not json")["action"] == "hold"


# ---------------------------------------------------------------------- the answer

GOOD = [
    ('{"action": "long", "confidence": 0.8, "reason": "up"}', Action.LONG, 0.8),
    ('{"action": "SHORT", "confidence": 1, "reason": "down", "extra": 1}', Action.SHORT, 1.0),
    ('{"action": "close", "confidence": 0.9, "reason": "done"}', Action.CLOSE, 0.9),
    ('{"action": "hold", "confidence": 0.7, "reason": "wait"}', Action.HOLD, 0.0),
    ('```json\n{"action": "long", "confidence": 0.75, "reason": "f"}\n```', Action.LONG, 0.75),
    ('Sure:\n```\n{"action": "short", "confidence": 0.6, "reason": "f"}\n```', Action.SHORT, 0.6),
]


@pytest.mark.parametrize(("content", "action", "confidence"), GOOD)
def test_valid_answers_become_signals(content: str, action: Action, confidence: float) -> None:
    """Plain JSON or one fenced block, with the schema's keys, becomes a Signal."""
    signal = parse_answer(content)
    assert (signal.action, signal.confidence) == (action, confidence)
    assert signal.reason.startswith("llm: ")


def test_suggestions_are_carried_and_reason_truncated() -> None:
    """Optional size/stop/take-profit suggestions ride on the signal; long reasons are cut."""
    content = json.dumps(
        {
            "action": "long",
            "confidence": 0.9,
            "reason": "x" * 500,
            "size_pct": 0.5,
            "stop_loss_pct": 0.01,
            "take_profit_pct": 0.03,
        }
    )
    signal = parse_answer(content)
    assert (signal.size_pct, signal.stop_loss_pct, signal.take_profit_pct) == (0.5, 0.01, 0.03)
    assert len(signal.reason) <= len("llm: ") + 200


BAD = [
    ("buy it now", "invalid JSON"),
    ('{"action": "long", "confidence": 0.9, "reason": "cut', "invalid JSON"),
    ("```json\n{}\n```\n```json\n{}\n```", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"action": "buy", "confidence": 0.9, "reason": "r"}', "action must be"),
    ('{"confidence": 0.9, "reason": "r"}', "action must be"),
    ('{"action": "long", "confidence": 1.7, "reason": "r"}', "confidence 1.7 out of range"),
    ('{"action": "long", "confidence": -0.1, "reason": "r"}', "confidence -0.1 out of range"),
    ('{"action": "long", "confidence": "high", "reason": "r"}', "confidence must be a number"),
    ('{"action": "long", "confidence": true, "reason": "r"}', "confidence must be a number"),
    ('{"action": "long", "confidence": NaN, "reason": "r"}', "out of range"),
    ('{"action": "long", "reason": "r"}', "confidence is missing"),
    ('{"action": "long", "confidence": 0.9}', "reason must be a string"),
    ('{"action": "long", "confidence": 0.9, "reason": "r", "size_pct": 3}', "size_pct 3 out"),
    ('{"action": "long", "confidence": 0.9, "reason": "r", "size_pct": 0}', "size_pct 0 out"),
    ('{"action": "long", "confidence": 0.9, "reason": "r", "stop_loss_pct": 1}', "stop_loss_pct"),
    ('{"action": "short", "confidence": 0.9, "reason": "r", "take_profit_pct": -1}', "take_pro"),
]


@pytest.mark.parametrize(("content", "why"), BAD)
def test_invalid_answers_are_refused(content: str, why: str) -> None:
    """Anything off the schema raises BadAnswer naming what is wrong."""
    with pytest.raises(BadAnswer, match=why):
        parse_answer(content)


@pytest.mark.parametrize(
    "body",
    ["", "<html>502</html>", '{"choices": []}', '{"choices": [{"message": {"content": null}}]}'],
)
def test_bodies_that_are_not_completions_are_refused(body: str) -> None:
    """A response body without choices[0].message.content text is a BadAnswer."""
    with pytest.raises(BadAnswer):
        parse_completion(body)


# ---------------------------------------------------------------------- clamping and budget


def test_size_can_only_shrink() -> None:
    """A suggested size fraction scales the configured size down, never up."""
    assert scaled_size_pct(0.1, None) == 0.1
    assert scaled_size_pct(0.1, 0.5) == pytest.approx(0.05)
    assert scaled_size_pct(0.1, 7.0) == 0.1
    assert scaled_size_pct(0.1, -1.0) == 0.1
    assert scaled_size_pct(0.1, float("nan")) == 0.1


def test_stop_distances_are_clamped_into_the_config() -> None:
    """Suggested stop/take-profit distances land in [0.1%, configured]."""
    assert clamp_distance(0.02, None) == 0.02
    assert clamp_distance(0.02, 0.01) == 0.01
    assert clamp_distance(0.02, 0.5) == 0.02
    assert clamp_distance(0.02, 0.00001) == MIN_PROTECTIVE_PCT
    assert clamp_distance(0.0005, 0.01) == 0.0005
    assert clamp_distance(0.02, float("inf")) == 0.02


def test_call_budget_is_a_rolling_hour() -> None:
    """At most N calls in any 3600 s window; room comes back as old calls age out."""
    now = [0.0]
    budget = CallBudget(3, clock=lambda: now[0])
    assert [budget.take() for _ in range(4)] == [True, True, True, False]
    now[0] = 3599.0
    assert not budget.take()
    now[0] = 3600.0
    assert [budget.take() for _ in range(4)] == [True, True, True, False]


# ---------------------------------------------------------------------- params


def test_params_need_base_url_and_model() -> None:
    """base_url and model are required; bad values name their key."""
    with pytest.raises(ConfigError) as info:
        get_strategy("llm", {})
    assert sorted(p.split(":")[0] for p in info.value.problems) == [
        "trading.params.base_url",
        "trading.params.model",
    ]
    with pytest.raises(ConfigError, match=r"trading\.params\.temperature: must be"):
        get_strategy("llm", {"base_url": "http://x/v1", "model": "m", "temperature": 3})
    with pytest.raises(ConfigError, match=r"trading\.params\.base_url: "):
        get_strategy("llm", {"base_url": "ftp://x", "model": "m"})


@pytest.mark.parametrize(
    "extra", [{"api_key": API_KEY}, {"style": API_KEY}, {"api_key_env": API_KEY}, {"token": "x"}]
)
def test_keys_in_params_are_refused_without_echo(extra: dict[str, object]) -> None:
    """An API key written in params is refused and the message never repeats it."""
    with pytest.raises(ConfigError) as info:
        get_strategy("llm", {"base_url": "http://127.0.0.1:1/v1", "model": "m", **extra})
    text = str(info.value) + " ".join(info.value.problems)
    assert API_KEY not in text and "sk-" not in text
    assert "api_key_env" in text


def test_defaults() -> None:
    """The documented defaults; min_klines is klines_in_prompt."""
    strategy = get_strategy("llm", {"base_url": "http://127.0.0.1:1/v1", "model": "m"})
    assert isinstance(strategy, LlmStrategy)
    p = strategy.params
    assert (p.temperature, p.timeout_seconds, p.max_calls_per_hour) == (0.2, 20.0, 60)
    assert strategy.min_klines == p.klines_in_prompt == 30
    assert "sk-" not in repr(strategy.client)


# ---------------------------------------------------------------------- against the fake model


@pytest.fixture
def model() -> Iterator[ModelServer]:
    with ModelServer("hold") as server:
        yield server


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING", format="{message}")
    yield lines
    logger.remove(sink)


def strategy_for(server: ModelServer, **extra: object) -> LlmStrategy:
    built = get_strategy("llm", {"base_url": server.base_url, "model": "m", **extra})
    assert isinstance(built, LlmStrategy)
    return built


def test_house_answer_round_trip() -> None:
    """Against the house model a rising market gives a LONG with the suggestions."""
    with ModelServer("house") as server:
        strategy = strategy_for(server)
        signal = strategy.decide(market(step=0.002), FLAT)
        strategy.close()
    assert signal.action is Action.LONG and signal.confidence >= 0.6
    assert signal.size_pct == 0.8 and signal.stop_loss_pct == 0.01


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (Reply.http(500), "llm: HTTP 500"),
        (Reply(content="no json here"), "llm: invalid JSON"),
        (
            Reply.answer(action="long", confidence=1.7, reason="x"),
            "llm: confidence 1.7 out of range",
        ),
        (Reply(body="<html>oops</html>"), "llm: not a chat completion"),
        (Reply.slow(5.0), "llm: timeout after 0.3s"),
    ],
)
def test_failures_hold_and_warn(
    model: ModelServer, warnings: list[str], reply: Reply, why: str
) -> None:
    """HTTP errors, garbage and timeouts are a HOLD with the reason, logged once at WARNING."""
    model.script(reply)
    strategy = strategy_for(model, timeout_seconds=0.3)
    signal = strategy.decide(market(), FLAT)
    strategy.close()
    assert signal.action is Action.HOLD and signal.confidence == 0.0
    assert signal.reason.startswith(why)
    assert len(warnings) == 1 and why in warnings[0]


def test_unreachable_endpoint_holds(warnings: list[str]) -> None:
    """Nothing listening: a HOLD saying the endpoint cannot be reached."""
    with ModelServer("hold") as server:
        url = server.base_url
    strategy = get_strategy("llm", {"base_url": url, "model": "m", "timeout_seconds": 2})
    signal = strategy.decide(market(), FLAT)
    assert signal.action is Action.HOLD and "cannot reach" in signal.reason


def test_budget_exhausted_holds_without_calling(model: ModelServer, warnings: list[str]) -> None:
    """Past max_calls_per_hour the strategy holds without a request, warning once."""
    strategy = strategy_for(model, max_calls_per_hour=2)
    reasons = [strategy.decide(market(), FLAT).reason for _ in range(4)]
    strategy.close()
    assert reasons[2:] == ["llm: call budget exhausted"] * 2
    assert len(model.completions()) == 2
    assert len(warnings) == 1


def test_budget_survives_a_restart(model: ModelServer, warnings: list[str], tmp_path: Path) -> None:
    """The calls of the last hour are kept in the agent's home: a restart cannot buy more."""
    home = tmp_path / "agents" / "agent-9"
    first = strategy_for(model, max_calls_per_hour=2)
    first.attach(threading.Event(), LIMITS, home)
    for _ in range(2):
        first.decide(market(), FLAT)
    assert len(model.completions()) == 2
    first.close()  # the process dies; a new one starts with the same home
    again = strategy_for(model, max_calls_per_hour=2)
    again.attach(threading.Event(), LIMITS, home)
    assert again.decide(market(), FLAT).reason == "llm: call budget exhausted"
    again.close()
    assert len(model.completions()) == 2
    assert stat.S_IMODE((home / "llm-calls.json").stat().st_mode) == 0o600


def test_budget_file_old_calls_age_out_and_garbage_is_replaced(
    tmp_path: Path, warnings: list[str]
) -> None:
    """Calls older than an hour do not count; an unreadable file is reported, then rewritten."""
    path = tmp_path / "llm-calls.json"
    now = [10_000.0]
    path.write_text(json.dumps({"calls": [now[0] - 3600.0, now[0] - 10.0]}))
    budget = CallBudget(2, clock=lambda: now[0])
    budget.keep_in(path)
    assert [budget.take(), budget.take()] == [True, False]
    assert json.loads(path.read_text())["calls"] == [now[0] - 10.0, now[0]]
    path.write_text("{not json")
    fresh = CallBudget(1, clock=lambda: now[0])
    fresh.keep_in(path)
    assert "unreadable" in warnings[0] and fresh.take() and not fresh.take()
    assert json.loads(path.read_text())["calls"] == [now[0]]


def test_stop_interrupts_a_call_in_flight(model: ModelServer) -> None:
    """Setting the runner's stop event abandons a slow call (hold 'stopping')."""
    model.script(Reply.slow(30.0))
    strategy = strategy_for(model, timeout_seconds=60)
    stop = threading.Event()
    strategy.attach(stop, LIMITS)
    threading.Timer(0.2, stop.set).start()
    signal = strategy.decide(market(), FLAT)
    strategy.close()
    assert signal.action is Action.HOLD and "stopping" in signal.reason


def test_api_key_travels_only_in_the_authorization_header(
    model: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key from api_key_env is a Bearer header; the body has neither key nor env name."""
    monkeypatch.setenv("LLM_TEST_KEY", API_KEY)
    strategy = strategy_for(model, api_key_env="LLM_TEST_KEY")
    strategy.decide(market(), FLAT)
    strategy.close()
    (request,) = model.completions()
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert API_KEY not in request.body and "LLM_TEST_KEY" not in request.body
    sent = request.json()
    assert sent["model"] == "m" and sent["response_format"] == {"type": "json_object"}


def test_missing_api_key_env_is_a_credential_error(model: ModelServer) -> None:
    """api_key_env naming an unset variable stops the agent (exit 2) with what to export."""
    strategy = strategy_for(model, api_key_env="LLM_UNSET_KEY")
    with pytest.raises(CredentialError, match="LLM_UNSET_KEY is not set"):
        strategy.decide(market(), FLAT)


def test_server_without_json_mode_is_asked_again_without_it(model: ModelServer) -> None:
    """A 400 naming response_format gets one retry without it, and it is not sent again."""
    model.script(Reply.http(400, '{"error": "unknown parameter: response_format"}'))
    strategy = strategy_for(model)
    first = strategy.decide(market(), FLAT)
    strategy.decide(market(), FLAT)
    strategy.close()
    assert first.reason == "llm: hold mode"
    bodies = [r.json() for r in model.completions()]
    assert ["response_format" in b for b in bodies] == [True, False, False]
