"""llm agents end to end: real agent processes, the simulator and the fake model server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path

import pytest

from aster_agents.agent.sizing import entry_size
from aster_agents.sim.model import GARBAGE, ModelServer, Reply
from aster_agents.sim.server import SimConfig, SimServer
from aster_agents.strategies import Action, MarketSnapshot, PositionView, Signal
from tests.kit.agents import Fleet, make_fleet
from tests.kit.wait import wait_for
from tests.test_runner import in_process, open_orders

API_KEY = "sk-e2e-5b1f0c9d8e7a6b5c4d3e2f1a0b9c8d7e"
KEY_ENV = "LLM_E2E_API_KEY"


@pytest.fixture
def sim() -> Iterator[SimServer]:
    server = SimServer(SimConfig(port=0, seed=11, speed=60.0))
    server.start()
    yield server
    server.stop()


def llm_fleet(root: Path, sim: SimServer, model: ModelServer, **params: object) -> Fleet:
    """One llm agent on BTCUSDT and ETHUSDT pointed at ``model``."""
    extra = "".join(f", {k}: {v}" for k, v in params.items())
    return make_fleet(
        root,
        sim,
        ["agent-1"],
        strategy="llm",
        params=f'{{base_url: "{model.base_url}", model: test-model, klines_in_prompt: 20{extra}}}',
        symbols=("BTCUSDT", "ETHUSDT"),
        scan_interval=0.3,
    )


def agent_orders(fleet: Fleet) -> list[str]:
    return [c for c in fleet.coids() if c.startswith("agent-1-")]


def logs(fleet: Fleet) -> str:
    path = fleet.state_dir / "logs" / "agent-1.log"
    return fleet.stderr("agent-1") + (path.read_text(errors="replace") if path.exists() else "")


def test_house_model_trades_and_no_secret_leaves_the_agent(sim: SimServer, tmp_path: Path) -> None:
    """An llm agent trades on the house model; no key in prompts or logs, API key only as header."""
    with ModelServer("house") as model:
        fleet = llm_fleet(tmp_path, sim, model, api_key_env=KEY_ENV, timeout_seconds=5)
        fleet.start("agent-1", {KEY_ENV: API_KEY})
        wait_for(lambda: agent_orders(fleet), timeout=90, what="an order from the llm agent")
        assert fleet.stop_all() == {"agent-1": 0}
        requests = model.completions()
    private_key = fleet.keys["agent-1"].lower().removeprefix("0x")
    addresses = (fleet.user.lower(), fleet.signers["agent-1"].address.lower())
    assert requests
    for request in requests:
        assert request.headers["Authorization"] == f"Bearer {API_KEY}"
        body = request.body.lower()
        assert API_KEY not in request.body and KEY_ENV.lower() not in body
        assert private_key not in body and not any(a.removeprefix("0x") in body for a in addresses)
        assert str(tmp_path).lower() not in body
    text = logs(fleet)
    assert "opened" in text
    assert API_KEY not in text and private_key not in text.lower()


def test_garbage_answers_never_produce_an_order(sim: SimServer, tmp_path: Path) -> None:
    """Invalid JSON, HTTP errors, timeouts and out-of-range values: many ticks, zero orders."""
    with ModelServer("garbage") as model:
        fleet = llm_fleet(tmp_path, sim, model, timeout_seconds=1)
        fleet.start("agent-1")
        wait_for(
            lambda: len(model.completions()) >= len(GARBAGE) + 2,
            timeout=90,
            what="every kind of garbage answer to be served",
        )
        assert fleet.stop_all() == {"agent-1": 0}
    assert agent_orders(fleet) == []
    text = logs(fleet)
    for why in ("llm: HTTP 500", "llm: invalid JSON", "llm: timeout after 1s", "out of range"):
        assert why in text


def test_sigterm_interrupts_a_slow_model_call(sim: SimServer, tmp_path: Path) -> None:
    """A SIGTERM while the agent waits on a slow model ends the process cleanly (exit 0)."""
    with ModelServer("hold") as model:
        model.script(*[Reply.slow(100.0)] * 4)
        fleet = llm_fleet(tmp_path, sim, model, timeout_seconds=100)
        fleet.start("agent-1")
        wait_for(lambda: model.completions(), timeout=60, what="a call to the model")
        assert fleet.stop_all(timeout=15) == {"agent-1": 0}
    assert agent_orders(fleet) == []


class Suggesting:
    """A strategy that proposes a LONG with oversized and undersized suggestions."""

    name = "suggesting"
    min_klines = 1

    def __init__(self) -> None:
        self.prices: list[Decimal] = []

    def decide(self, market: MarketSnapshot, position: PositionView) -> Signal:
        self.prices.append(market.mark_price)
        if position.qty != 0:
            return Signal(Action.HOLD, 0.0, "holding")
        return Signal(Action.LONG, 1.0, "suggests", 0.5, 0.9, 0.0001)


def test_runner_clamps_suggested_size_and_stops(sim: SimServer, tmp_path: Path) -> None:
    """Size shrinks by size_pct; stop/take-profit distances are clamped into the config."""
    fleet = make_fleet(
        tmp_path, sim, ["agent-1"], symbols=["BTCUSDT"], stop_loss_pct=0.2, take_profit_pct=0.5
    )
    strategy = Suggesting()
    with ExitStack() as closing:
        runner, ledger = in_process(fleet, "agent-1", strategy, closing)
        row = ledger.agent("agent-1")
        assert row is not None
        assert runner.tick().opened == ["BTCUSDT"]
        position = runner._position("BTCUSDT")
        filters = runner._symbol("BTCUSDT").filters
    assert position is not None
    expected = entry_size(row.capital, 0.05 * 0.5, 2, strategy.prices[0], filters)
    assert position.qty == expected.qty
    acct = sim.engine.account(fleet.user)
    with sim.engine.lock:
        stops = {o.type: o.stop_price for o in acct.open_orders.values() if o.symbol == "BTCUSDT"}
    entry = position.entry_price
    assert len(open_orders(fleet, "BTCUSDT")) == 2
    assert abs(stops["STOP_MARKET"] / entry - Decimal("0.8")) < Decimal("0.001")
    assert abs(stops["TAKE_PROFIT_MARKET"] / entry - Decimal("1.001")) < Decimal("0.0001")
