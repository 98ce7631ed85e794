"""Distrusting the exchange and the model: a hostile proxy in front of the simulator (issue 23)."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path

import pytest

from aster_agents.agent.reconcile import reconcile_account
from aster_agents.agent.runner import AgentRunner
from aster_agents.agent.sizing import entry_size
from aster_agents.config.schema import load_fleet
from aster_agents.errors import TransientExchangeError
from aster_agents.exchange import parse
from aster_agents.exchange.http import AsterClient
from aster_agents.ledger import Ledger, MarketDataCache, facts
from aster_agents.models import Kline, SymbolFilters
from aster_agents.signing import NonceSource, Signer
from aster_agents.sim.model import ModelServer
from aster_agents.sim.server import SimConfig, SimServer
from aster_agents.strategies import FLAT, Action, MarketSnapshot, PositionView, Signal, get_strategy
from tests.kit.agents import Fleet, make_fleet
from tests.kit.hostile import HostileProxy, Seen, padded
from tests.plugins.sim import SignedClient

MiB = 1 << 20


class Scripted:
    """A test strategy that plays a fixed list of actions, one per decision."""

    name = "scripted"
    min_klines = 1

    def __init__(self, actions: Sequence[Action]) -> None:
        self.actions = list(actions)

    def decide(self, market: MarketSnapshot, position: PositionView) -> Signal:
        action = self.actions.pop(0) if self.actions else Action.HOLD
        return Signal(action, 1.0, f"scripted {action.value}")


@pytest.fixture
def sim() -> Iterator[SimServer]:
    server = SimServer(SimConfig(port=0, seed=7))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def closing() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def proxied_runner(
    fleet: Fleet,
    proxy: HostileProxy,
    strategy: object,
    closing: ExitStack,
    agent_id: str = "agent-1",
) -> tuple[AgentRunner, Ledger]:
    """An in-process runner of ``agent_id`` whose client talks to ``proxy``; started."""
    config = load_fleet(fleet.config_dir)
    agent = config.agent(agent_id)
    ledger = closing.enter_context(Ledger(fleet.state_dir))
    slot = ledger.register_agent(agent.id, agent.exchange.user, max_positions=3)
    client = AsterClient(
        proxy.base_url,
        user=fleet.user,
        signer=Signer(fleet.keys[agent_id]),
        nonces=NonceSource(slot),
        backoff_base=0.0,
    )
    closing.enter_context(client)
    runner = AgentRunner(
        config,
        agent,
        client=client,
        ledger=ledger,
        cache=MarketDataCache(fleet.state_dir),
        strategy=strategy,  # type: ignore[arg-type]
    )
    runner.start()
    return runner, ledger


# ---------------------------------------------------------------------- non-finite numbers


def nan_closes(seen: Seen) -> bytes:
    rows = seen.doc()
    for row in rows:
        row[4] = "NaN"
    return json.dumps(rows).encode()


def test_nan_prices_are_a_malformed_answer_and_no_order_is_sent(
    sim: SimServer, tmp_path: Path, closing: ExitStack
) -> None:
    """Klines with NaN closes fail the tick as a malformed answer (retry later), never an order."""
    fleet = make_fleet(tmp_path, sim, ["agent-1"], symbols=["BTCUSDT"])
    proxy = closing.enter_context(HostileProxy(sim.base_url))
    proxy.rule("GET", "/fapi/v3/klines", nan_closes)
    runner, _ = proxied_runner(fleet, proxy, Scripted([Action.LONG]), closing)
    with pytest.raises(parse.MalformedPayload, match="not a finite number"):
        runner.tick()
    assert proxy.count("POST", "/fapi/v3/order") == 0


@pytest.mark.parametrize("value", ["NaN", "nan", "Infinity", "-Infinity", float("nan"), 1e999])
def test_non_finite_numbers_never_leave_the_parser(value: object) -> None:
    """Every non-finite spelling of a price is refused by the parser, as a transient error."""
    with pytest.raises(parse.MalformedPayload):
        parse.premium_index({"symbol": "BTCUSDT", "markPrice": value})


def test_sizing_skips_a_price_that_is_not_a_number() -> None:
    """entry_size given a NaN price skips with a reason instead of raising InvalidOperation."""
    d = Decimal
    filters = SymbolFilters(
        *(d("0.1"), d(0), d(0), d("0.001"), d("0.001"), d(1000)),
        *(d("0.001"), d("0.001"), d(1000), d(5), d(0), d(0)),
    )
    sizing = entry_size(Decimal(1000), 0.1, 3, Decimal("NaN"), filters)
    assert sizing.qty == 0 and sizing.skip_reason == "price or capital is not a number"


# ---------------------------------------------------------------------- unbounded answers


def test_exchange_answer_is_read_only_up_to_the_cap(sim: SimServer) -> None:
    """A 50 MiB answer is cut off at 8 MiB as a transient error; memory stays far below it."""
    with HostileProxy(sim.base_url) as proxy:
        proxy.rule("GET", "/fapi/v3/time", lambda s: padded(s.doc(), 50 * MiB))
        client = AsterClient(proxy.base_url, user=None, signer=None, nonces=NonceSource(0))
        tracemalloc.start()
        try:
            with client, pytest.raises(TransientExchangeError, match="answer larger than"):
                client.server_time()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 24 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_llm_answer_is_read_only_up_to_the_cap() -> None:
    """A 10 MiB chat completion is not read past 1 MiB: the strategy holds, memory stays low."""
    completion = {
        "choices": [
            {
                "message": {
                    "content": json.dumps({"action": "long", "confidence": 0.9, "reason": "x"})
                }
            }
        ]
    }
    with ModelServer("hold") as model, HostileProxy(model.base_url.removesuffix("/v1")) as proxy:
        proxy.rule("POST", "/v1/chat/completions", lambda s: padded(completion, 10 * MiB))
        strategy = get_strategy("llm", {"base_url": proxy.base_url + "/v1", "model": "m"})
        c = Decimal(100)
        klines = tuple(Kline(i * 60_000, c, c, c, c, c, i * 60_000 + 59_999) for i in range(40))
        market = MarketSnapshot("BTCUSDT", "1m", klines, c, 40 * 60_000)
        tracemalloc.start()
        try:
            signal = strategy.decide(market, FLAT)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            strategy.close()  # type: ignore[attr-defined]
    assert signal.action is Action.HOLD and "answer larger than" in signal.reason
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB"


# ---------------------------------------------------------------------- wasted weight


def test_margin_type_is_asked_once_per_account_and_symbol(
    sim: SimServer, tmp_path: Path, closing: ExitStack
) -> None:
    """Two agents on one account, each started twice: one marginType call per symbol in all."""
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    fleet = make_fleet(tmp_path, sim, ["agent-1", "agent-2"], symbols=symbols)
    proxy = closing.enter_context(HostileProxy(sim.base_url))
    for agent_id in ("agent-1", "agent-2", "agent-1", "agent-2"):
        with ExitStack() as stack:
            proxied_runner(fleet, proxy, Scripted([]), stack, agent_id)
    assert proxy.count("POST", "/fapi/v3/marginType") == len(symbols)


# ---------------------------------------------------------------------- fills checked


def foreign_and_extra_trades(seen: Seen) -> bytes:
    """Each trade, plus a copy of it on another symbol, a copy past the order's quantity and
    a trade of an order nobody placed (new trade ids for all)."""
    trades = seen.doc()
    out = list(trades)
    for n, t in enumerate(trades):
        out.append({**t, "id": t["id"] + 10**9, "symbol": "ETHUSDT"})
        out.append({**t, "id": t["id"] + 2 * 10**9})
        out.append({**t, "id": t["id"] + 3 * 10**9, "orderId": 777_000 + n})
    return json.dumps(out).encode()


def test_foreign_and_excess_trades_are_not_booked(
    sim: SimServer, tmp_path: Path, closing: ExitStack
) -> None:
    """userTrades carrying other symbols' trades and more than the order executed: only the
    order's own fills are booked; the rest is counted as distrusted."""
    fleet = make_fleet(tmp_path, sim, ["agent-1"], symbols=["BTCUSDT"])
    proxy = closing.enter_context(HostileProxy(sim.base_url))
    runner, ledger = proxied_runner(fleet, proxy, Scripted([Action.LONG]), closing)
    proxy.rule("GET", "/fapi/v3/userTrades", foreign_and_extra_trades)
    assert runner.tick().opened == ["BTCUSDT"]
    assert fleet.ledger_positions() == fleet.exchange_positions()
    assert set(fleet.exchange_positions()) == {"BTCUSDT"}
    assert runner.distrusted >= 2 and facts.distrusted_count(ledger, "agent-1") == runner.distrusted


def web_ui_round_trip(fleet: Fleet, symbol: str, qty: str) -> int:
    """A buy and a sell of ``qty`` by the main wallet (not an agent); the buy's order id."""
    client = SignedClient(fleet.sim.base_url, fleet.main, fleet.user)
    try:
        ids = []
        for side in ("BUY", "SELL"):
            order = {"symbol": symbol, "side": side, "type": "MARKET", "quantity": qty}
            ids.append(int(client.ok("POST", "/fapi/v3/order", order)["orderId"]))
        return ids[0]
    finally:
        client.close()


def test_new_order_answer_naming_another_order_books_no_wrong_fill(
    sim: SimServer, tmp_path: Path, closing: ExitStack
) -> None:
    """A new-order answer whose orderId is another order's: that order's fills are not booked
    as ours, our own are, and the ledger equals the exchange."""
    fleet = make_fleet(tmp_path, sim, ["agent-1"], symbols=["BTCUSDT"])
    proxy = closing.enter_context(HostileProxy(sim.base_url))
    runner, _ = proxied_runner(fleet, proxy, Scripted([Action.LONG]), closing)
    other = web_ui_round_trip(fleet, "BTCUSDT", "0.003")

    def swap_id(seen: Seen) -> bytes | None:
        doc = seen.doc()
        if seen.status != 200 or doc.get("type") != "MARKET":
            return None
        return json.dumps({**doc, "orderId": other}).encode()

    proxy.rule("POST", "/fapi/v3/order", swap_id)
    runner.tick()
    assert fleet.ledger_positions() == fleet.exchange_positions()
    assert fleet.exchange_positions()["BTCUSDT"] > 0
    assert runner.distrusted == 1


def test_reconcile_reports_foreign_and_excess_trades_instead_of_booking_them(
    sim: SimServer, tmp_path: Path, closing: ExitStack
) -> None:
    """Reconcile through the same hostile answers books nothing wrong and reports each trade."""
    fleet = make_fleet(tmp_path, sim, ["agent-1"], symbols=["BTCUSDT"])
    proxy = closing.enter_context(HostileProxy(sim.base_url))
    runner, ledger = proxied_runner(fleet, proxy, Scripted([Action.LONG]), closing)
    assert runner.tick().opened == ["BTCUSDT"]
    proxy.rule("GET", "/fapi/v3/userTrades", foreign_and_extra_trades)
    report = reconcile_account(ledger, runner.client, fleet.user)
    assert fleet.ledger_positions() == fleet.exchange_positions()
    notes = [d.note for d in report.differences if d.kind == "fill" and not d.repaired]
    trades = len(sim.engine.account(fleet.user).trades)
    assert len(notes) == 3 * trades, report.to_json()
    assert not report.ok
