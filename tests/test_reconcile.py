"""``aster-agent reconcile`` against the simulator over loopback HTTP, with a real ledger."""

from __future__ import annotations

import json
import signal
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from aster_agents.ledger import Ledger
from aster_agents.sim.server import SimConfig, SimServer
from tests.kit.agents import Fleet, make_fleet
from tests.kit.cli import run_cli
from tests.kit.wait import wait_for
from tests.plugins.sim import SignedClient

CENT = Decimal("0.01")
# The shared rate budget (every signed call moves it) and the metrics counters (every ledger
# transaction adds its lock wait): bookkeeping of the process, not of the books.
BUDGET_TABLES = ("budgets", "host_pause", "counters")


@pytest.fixture
def sim() -> Iterator[SimServer]:
    server = SimServer(SimConfig(port=0, seed=7, speed=60.0))
    server.start()
    yield server
    server.stop()


def keys_env(monkeypatch: pytest.MonkeyPatch, *fleets: Fleet) -> None:
    for fleet in fleets:
        for agent_id, key in fleet.keys.items():
            monkeypatch.setenv(agent_id.upper().replace("-", "_") + "_PRIVATE_KEY", key)


def reconcile(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, dict[str, Any]]:
    """Run ``aster-agent reconcile --json ARGS`` in-process; (exit code, JSON document)."""
    argv = ["--config-dir", str(fleet.config_dir), "--state-dir", str(fleet.state_dir)]
    code, out, err = run_cli([*argv, "reconcile", "--json", *args], capsys)
    return code, json.loads(out) if out.strip() else {"stderr": err}


def web_ui_order(fleet: Fleet, symbol: str, qty: str) -> None:
    """A market order placed on the account directly (the main wallet), not by an agent."""
    client = SignedClient(fleet.sim.base_url, fleet.main, fleet.user)
    try:
        order = {
            "symbol": symbol,
            "side": "BUY",
            "type": "MARKET",
            "quantity": qty,
            "newClientOrderId": "web_ui_1",
        }
        client.ok("POST", "/fapi/v3/order", order)
    finally:
        client.close()


def fills(fleet: Fleet) -> int:
    with Ledger(fleet.state_dir) as ledger:
        return sum(1 for e in ledger.audit(limit=100_000) if e.event == "fill")


def rows(state_dir: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every ledger table's rows except the rate budget's."""
    with sqlite3.connect(state_dir / "ledger.sqlite3") as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {
            # names come from sqlite_master; some tables have no rowid, so order in Python
            n: sorted(conn.execute(f"SELECT * FROM {n}").fetchall(), key=repr)
            for n in names
            if n not in BUDGET_TABLES
        }


def account(doc: dict[str, Any]) -> dict[str, Any]:
    assert doc["version"] == 1 and len(doc["accounts"]) == 1, doc
    acct: dict[str, Any] = doc["accounts"][0]
    return acct


@pytest.mark.slow
def test_books_agree_after_an_agent_traded_and_stopped(
    sim: SimServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An agent opened and protected a position, stopped: reconcile exits 0, books agree."""
    fleet = make_fleet(
        tmp_path, sim, ["agent-1"], symbols=["ETHUSDT"], params="{p_enter: 1.0, p_exit: 0.0}"
    )
    fleet.start("agent-1")
    try:
        wait_for(
            lambda: (
                fleet.exchange_positions()
                and fleet.exchange_positions() == fleet.ledger_positions()
                and len(sim.engine.account(fleet.user).open_orders) == 2
            ),
            timeout=60,
            what="a protected position",
        )
    finally:
        assert fleet.stop_all() == {"agent-1": 0}, fleet.stderr("agent-1")[-2000:]
    sim.freeze()
    keys_env(monkeypatch, fleet)
    code, doc = reconcile(fleet, capsys)
    acct = account(doc)
    assert code == 0 and doc["ok"] is True and acct["ok"] is True, doc
    assert acct["differences"] == []
    assert abs(Decimal(acct["equity_difference"])) < CENT
    assert Decimal(acct["exchange_equity"]) == sim.account_equity(fleet.user)


@pytest.mark.slow
def test_a_missed_fill_is_booked_once(
    sim: SimServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An agent SIGKILLed after its order filled, before booking: reconcile books it, once."""
    fleet = make_fleet(
        tmp_path, sim, ["agent-1"], symbols=["ETHUSDT"], params="{p_enter: 1.0, p_exit: 0.0}"
    )
    proc = fleet.start("agent-1", {"ASTER_AGENTS_FAILPOINT": "after_confirm"})
    assert proc.wait(60) == -signal.SIGKILL, fleet.stderr("agent-1")[-2000:]
    sim.freeze()
    assert fleet.exchange_positions() and fleet.ledger_positions() == {}
    keys_env(monkeypatch, fleet)
    code, doc = reconcile(fleet, capsys)
    assert code == 0 and doc["ok"] is True, doc
    booked = [r for r in account(doc)["repairs"] if r.startswith("booked trade")]
    assert booked and all("to agent-1" in r for r in booked), doc
    assert fleet.ledger_positions() == fleet.exchange_positions()
    count = fills(fleet)
    assert count == len(booked)
    code, again = reconcile(fleet, capsys)
    assert code == 0 and account(again)["repairs"] == [] and again["ok"] is True, again
    assert fills(fleet) == count


def test_a_position_no_agent_owns_is_reported_and_left_alone(
    sim: SimServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A web-UI order: its trade goes to unallocated, its position is reported, exit 1."""
    fleet = make_fleet(tmp_path, sim, ["agent-1"])
    keys_env(monkeypatch, fleet)
    assert reconcile(fleet, capsys)[0] == 0  # opens the books
    web_ui_order(fleet, "BNBUSDT", "0.05")
    orders = len(sim.engine.all_orders_ever())
    code, doc = reconcile(fleet, capsys)
    acct = account(doc)
    assert code == 1 and doc["ok"] is False, doc
    unowned = [d for d in acct["differences"] if d["kind"] == "unowned_position"]
    assert len(unowned) == 1 and unowned[0]["symbol"] == "BNBUSDT", acct["differences"]
    assert unowned[0]["repaired"] is False and unowned[0]["exchange"] == "0.05"
    assert any("(no agent's order) to unallocated" in r for r in acct["repairs"]), acct
    assert fleet.exchange_positions() == {"BNBUSDT": Decimal("0.05")}
    assert fleet.ledger_positions() == {}
    assert len(sim.engine.all_orders_ever()) == orders  # reconcile placed nothing


def test_dry_run_repairs_nothing(
    sim: SimServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--dry-run reports what it would book and leaves every ledger row as it was."""
    fleet = make_fleet(tmp_path, sim, ["agent-1"])
    keys_env(monkeypatch, fleet)
    assert reconcile(fleet, capsys)[0] == 0
    web_ui_order(fleet, "SOLUSDT", "1")
    before = rows(fleet.state_dir)
    code, doc = reconcile(fleet, capsys, "--dry-run")
    assert code == 1, doc
    assert any(r.startswith("would book trade") for r in account(doc)["repairs"]), doc
    assert rows(fleet.state_dir) == before
    code, doc = reconcile(fleet, capsys)
    assert any(r.startswith("booked trade") for r in account(doc)["repairs"]), doc
    assert rows(fleet.state_dir) != before


def test_id_restricts_to_one_account_and_unknown_id_exits_2(
    sim: SimServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--id reconciles only that agent's account; an unknown --id exits 2 and names it."""
    first = make_fleet(tmp_path, sim, ["agent-1"], capital_pct=0.5)
    second = make_fleet(tmp_path, sim, ["agent-2"], capital_pct=0.5)  # same agents.d
    keys_env(monkeypatch, first, second)
    code, doc = reconcile(second, capsys, "--id", "agent-2")
    assert code == 0 and account(doc)["user"] == second.user, doc
    with Ledger(first.state_dir) as ledger:
        assert ledger.account_books(first.user) is None
        assert ledger.account_books(second.user) is not None
    code, doc = reconcile(first, capsys)
    assert code == 0 and {a["user"] for a in doc["accounts"]} == {first.user, second.user}
    code, doc = reconcile(first, capsys, "--id", "agent-9")
    assert code == 2 and "no agent with id 'agent-9'" in doc["stderr"], doc
