"""Closes the exchange makes itself (liquidation, ADL), booked to the agent that held them."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from aster_agents.ledger import Ledger
from aster_agents.sim.server import SimAccount, SimConfig, SimServer
from tests.kit.agents import Fleet, make_fleet
from tests.kit.wait import wait_for

D = Decimal
BTC = "BTCUSDT"
CENT = D("0.01")


@pytest.fixture
def sim() -> Iterator[SimServer]:
    server = SimServer(SimConfig(seed=11, insurance_fund=D(0)))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _high_leverage(root: Path, sim: SimServer, agent_id: str, balance: Decimal) -> Fleet:
    """One agent that puts 20x its whole capital in BTC at once and never exits itself."""
    return make_fleet(
        root,
        sim,
        [agent_id],
        params="{p_enter: 1.0, p_exit: 0.0}",
        symbols=(BTC,),
        max_positions=1,
        scan_interval=0.3,
        balance=balance,
        capital_pct=0.9,
        leverage=20,
        position_size_pct=1.0,
        max_gross_leverage=25.0,
    )


def _protected_position(fleet: Fleet) -> Decimal:
    """Wait for the agent's position and both its protective orders; return its amount."""

    def ready() -> Decimal | None:
        amount = fleet.sim.engine.position(fleet.user, BTC)
        orders = fleet.sim.engine.open_orders_of(fleet.user)
        return amount if amount and len(orders) == 2 and fleet.ledger_positions() else None

    return D(wait_for(ready, 30, "a position with its stop and take-profit"))


def _liquidation_price(sim: SimServer, user: str) -> Decimal:
    return D(str(sim.engine.position_risk_json(user, {"symbol": BTC})[0]["liquidationPrice"]))


def _cli(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fleet.command(*args), env=fleet.env(), capture_output=True, text=True, timeout=60
    )


def _state(fleet: Fleet, agent_id: str) -> tuple[str, str]:
    with Ledger(fleet.state_dir) as ledger:
        row = ledger.agent(agent_id)
        assert row is not None
        return row.state, row.state_reason or ""


@pytest.mark.slow
def test_liquidation_is_booked_to_the_agent_and_fires_its_kill_switch(
    tmp_path: Path, sim: SimServer
) -> None:
    """Forced crash past the liquidation price: booked to the agent, books == exchange, killed."""
    fleet = _high_leverage(tmp_path, sim, "lev", D(1000))
    fleet.start("lev")
    try:
        amount = _protected_position(fleet)
        liq = _liquidation_price(sim, fleet.user)
        assert liq > 0
        sim.market.pin(BTC, liq - 50 if amount > 0 else liq + 50)  # the crash (or the spike)
        wait_for(lambda: not fleet.ledger_positions(), 20, "the liquidation booked")
        wait_for(lambda: "kill switch" in _state(fleet, "lev")[1], 20, "the kill switch")
    finally:
        assert fleet.stop_all() == {"lev": 0}, fleet.stderr("lev")
    assert sim.engine.position(fleet.user, BTC) == 0
    assert sim.engine.open_orders_of(fleet.user) == []
    orders = sim.engine.orders
    forced = [
        t
        for t in sim.engine.trades(fleet.user)
        if orders[t.order_id].client_order_id.startswith("autoclose-")
    ]
    assert len(forced) == 1
    with Ledger(fleet.state_dir) as ledger:
        events = [e for e in ledger.audit(limit=10_000) if e.event == "liquidation"]
        assert [e.agent_id for e in events] == ["lev"]
        detail = json.loads(events[0].detail)
        assert (D(detail["realized_pnl"]), D(detail["commission"])) == (
            forced[0].realized_pnl,
            forced[0].commission,
        )
        assert ledger.unresolved_intents("lev") == []  # protective orders settled
        assert not [e for e in ledger.audit(limit=10_000) if e.event == "unowned_trade"]
        state = ledger.agent("lev")
        assert state is not None and state.state == "disabled"
    reconciled = _cli(fleet, "reconcile", "--json")
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    shown = _cli(fleet, "portfolio", "--json")
    equity = D(json.loads(shown.stdout)["portfolio"]["equity"])
    assert abs(equity - sim.account_equity(fleet.user)) < CENT


@pytest.mark.slow
def test_adl_is_booked_to_the_counterparty_agent_and_its_stops_cancelled(
    tmp_path: Path, sim: SimServer
) -> None:
    """A gap past bankruptcy with no insurance fund: the other side's agent is deleveraged."""
    fleet = _high_leverage(tmp_path, sim, "adl", D(1000))
    fleet.start("adl")
    try:
        amount = _protected_position(fleet)
        with Ledger(fleet.state_dir) as ledger:  # no new entries; its position stays protected
            ledger.set_enabled("adl", False, "test: hold the position")
        # an outside trader on another account holds the opposite side at 20x and is wiped out
        victim = "0x" + "ab" * 20
        sim.add_account(SimAccount(victim, (), D(2400)))
        side = "SELL" if amount > 0 else "BUY"
        sim.engine.set_leverage(victim, {"symbol": BTC, "leverage": "20"})
        sim.engine.new_order(
            victim, {"symbol": BTC, "side": side, "type": "MARKET", "quantity": "0.500"}
        )
        gap = D("0.9") if side == "BUY" else D("1.1")
        sim.market.pin(BTC, (sim.market.mark(BTC) * gap).quantize(D("0.1")))
        wait_for(lambda: not fleet.ledger_positions(), 20, "the ADL booked")
        wait_for(lambda: not sim.engine.open_orders_of(fleet.user), 20, "stops cancelled")
    finally:
        assert fleet.stop_all() == {"adl": 0}, fleet.stderr("adl")
    assert sim.engine.position(fleet.user, BTC) == 0 and fleet.ledger_positions() == {}
    with Ledger(fleet.state_dir) as ledger:
        assert [e.agent_id for e in ledger.audit(limit=10_000) if e.event == "adl"] == ["adl"]
    reconciled = _cli(fleet, "reconcile", "--json")
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr


@pytest.mark.slow
def test_reconcile_books_a_liquidation_of_a_dead_agent_to_it(
    tmp_path: Path, sim: SimServer
) -> None:
    """The agent is down when it is liquidated: reconcile books the close to it, not unallocated."""
    fleet = _high_leverage(tmp_path, sim, "gone", D(1000))
    fleet.start("gone")
    amount = _protected_position(fleet)
    fleet.kill("gone")
    liq = _liquidation_price(sim, fleet.user)
    sim.market.pin(BTC, liq - 50 if amount > 0 else liq + 50)
    sim.engine.tick()
    assert sim.engine.position(fleet.user, BTC) == 0
    reconciled = _cli(fleet, "reconcile", "--json")
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    repairs = json.loads(reconciled.stdout)["accounts"][0]["repairs"]
    assert any("(liquidation) to gone" in r for r in repairs), repairs
    assert fleet.ledger_positions() == {}
    with Ledger(fleet.state_dir) as ledger:
        events = [e.event for e in ledger.audit(limit=10_000)]
        assert "liquidation" in events and "unowned_trade" not in events
    again = _cli(fleet, "reconcile", "--json")
    assert json.loads(again.stdout)["accounts"][0]["repairs"] == []
