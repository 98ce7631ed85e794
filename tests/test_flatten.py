"""`aster-agent flatten`: running agents disabled, their orders cancelled, positions closed once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from aster_agents.ledger import Ledger
from aster_agents.sim.server import SimConfig, SimServer
from tests.kit.agents import Fleet, make_fleet
from tests.kit.wait import wait_for

AGENTS = ("fa", "fb")
FLATTENED = "flattened by operator"


@pytest.fixture
def sim() -> Iterator[SimServer]:
    server = SimServer(SimConfig(seed=21))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def trading(root: Path, sim: SimServer) -> Fleet:
    """Two running agents, each holding one protected position (they never exit by themselves)."""
    fleet = make_fleet(
        root,
        sim,
        list(AGENTS),
        params="{p_enter: 1.0, p_exit: 0.0}",
        symbols=("BTCUSDT", "ETHUSDT"),
        max_positions=1,
        scan_interval=0.3,
    )
    for agent_id in AGENTS:
        fleet.start(agent_id)

    def ready() -> bool:
        held = {p.agent_id for p in _positions(fleet)}
        return held == set(AGENTS) and len(sim.engine.open_orders_of(fleet.user)) == 4

    wait_for(ready, 30, "two protected positions")
    return fleet


def _positions(fleet: Fleet) -> list[object]:
    with Ledger(fleet.state_dir) as ledger:
        return list(ledger.positions(user=fleet.user))


def flatten(fleet: Fleet, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        fleet.command("flatten", "--all", "--yes", "--json", *args),
        env=fleet.env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def finished(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def assert_flat(fleet: Fleet) -> None:
    """Nothing of the agents on the exchange, ledger == exchange, every agent disabled."""
    sim = fleet.sim
    assert {s: q for s, q in fleet.exchange_positions().items() if q} == {}
    assert fleet.ledger_positions() == {}
    assert sim.engine.open_orders_of(fleet.user) == []
    with Ledger(fleet.state_dir) as ledger:
        for agent_id in AGENTS:
            row = ledger.agent(agent_id)
            assert row is not None and (row.state, row.state_reason) == ("disabled", FLATTENED)
            assert ledger.unresolved_intents(agent_id) == []
    reconciled = subprocess.run(
        fleet.command("reconcile", "--json"), env=fleet.env(), capture_output=True, text=True
    )
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr


def close_orders(fleet: Fleet) -> dict[str, list[Decimal]]:
    """Executed quantity of every close order the exchange ever accepted, per symbol."""
    out: dict[str, list[Decimal]] = {}
    for o in fleet.sim.engine.all_orders_ever():
        if o.user.lower() == fleet.user.lower() and o.client_order_id.endswith("-close"):
            out.setdefault(o.symbol, []).append(o.executed_qty)
    return out


def assert_every_trade_booked(fleet: Fleet) -> None:
    """Each exchange trade of the account is in the ledger once, with its exact P&L and fee."""
    with Ledger(fleet.state_dir) as ledger:
        for symbol in ("BTCUSDT", "ETHUSDT"):
            booked = ledger.booked_trades(fleet.user, symbol)
            for t in fleet.sim.engine.trades(fleet.user):
                if t.symbol == symbol:
                    assert booked.get(t.id) == (t.realized_pnl, t.commission), t


@pytest.mark.slow
def test_flatten_all_closes_running_agents_and_they_stand_down(
    tmp_path: Path, sim: SimServer
) -> None:
    """flatten --all on running agents: flat, books == exchange, disabled, nothing reopens."""
    fleet = trading(tmp_path, sim)
    try:
        held = {p.symbol: p.qty for p in _positions(fleet)}  # type: ignore[attr-defined]
        code, out, err = finished(flatten(fleet))
        assert code == 0, out + err
        doc = json.loads(out)
        assert doc["version"] == 1 and doc["ok"] is True
        closes = {c["symbol"]: Decimal(c["qty"]) for a in doc["agents"] for c in a["closes"]}
        assert closes == {s: -q for s, q in held.items()}
        assert all(
            "realized_pnl" in c and "commission" in c for a in doc["agents"] for c in a["closes"]
        )
        orders_after = len(sim.engine.all_orders_ever())
        with Ledger(fleet.state_dir) as ledger:
            ticks = {a: ledger.agent(a).ticks for a in AGENTS}  # type: ignore[union-attr]

        def ticked_on() -> bool:
            with Ledger(fleet.state_dir) as ledger:
                return all(ledger.agent(a).ticks >= ticks[a] + 5 for a in AGENTS)  # type: ignore[union-attr]

        wait_for(ticked_on, 20, "five more ticks of each running agent")
        assert len(sim.engine.all_orders_ever()) == orders_after  # stood down: no new order
        assert all(fleet.procs[a].poll() is None for a in AGENTS)
        assert_flat(fleet)
        assert_every_trade_booked(fleet)
    finally:
        fleet.stop_all()


@pytest.mark.slow
def test_sigkilled_flatten_then_rerun_never_closes_twice(tmp_path: Path, sim: SimServer) -> None:
    """SIGKILL at a random time and at each step of a close; reruns: one close each, all booked."""
    fleet = trading(tmp_path, sim)
    try:
        held = {p.symbol: abs(p.qty) for p in _positions(fleet)}  # type: ignore[attr-defined]
        early = flatten(fleet)
        time.sleep(random.uniform(0.0, 0.4))  # a random point: maybe before, maybe mid-close
        early.send_signal(signal.SIGKILL)
        finished(early)
        for step in ("flatten_after_mark_sent", "flatten_after_send", "flatten_after_reserve"):
            code, out, err = finished(flatten(fleet, env={"ASTER_AGENTS_FAILPOINT": step}))
            assert code in (-signal.SIGKILL, 0), out + err
        code, out, err = finished(flatten(fleet))
        assert code == 0, out + err
        assert json.loads(out)["ok"] is True
        executed = close_orders(fleet)
        assert {s: sum(q) for s, q in executed.items()} == held
        assert all(len([q for q in qs if q]) == 1 for qs in executed.values()), executed
        assert_flat(fleet)
        assert_every_trade_booked(fleet)
    finally:
        fleet.stop_all()


def test_flatten_without_a_terminal_needs_yes(tmp_path: Path, sim: SimServer) -> None:
    """No --yes and no terminal: exit 2, one line saying to pass --yes; nothing disabled."""
    fleet = make_fleet(tmp_path, sim, ["fa"])
    done = subprocess.run(
        fleet.command("flatten", "--all"),
        env=fleet.env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: flatten: no terminal to confirm on; pass --yes to go ahead"
    ]
    assert not (fleet.state_dir / "ledger.sqlite3").exists() or _disabled(fleet) == []
    both = subprocess.run(
        fleet.command("flatten", "--all", "--id", "fa", "--yes"),
        env=fleet.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert both.returncode == 2 and "exactly one of" in both.stderr


def _disabled(fleet: Fleet) -> list[str]:
    with Ledger(fleet.state_dir) as ledger:
        return [r.agent_id for r in ledger.agent_rows() if r.state == "disabled"]


def test_enable_after_flatten_lets_the_agent_trade_again(tmp_path: Path, sim: SimServer) -> None:
    """flatten of an idle agent disables it; `agents enable` makes it active again."""
    fleet = make_fleet(tmp_path, sim, ["fa"])
    done = subprocess.run(
        fleet.command("flatten", "--id", "fa", "--yes"),
        env=fleet.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nothing left on the exchange" in done.stdout
    assert _disabled(fleet) == ["fa"]
    enabled = subprocess.run(
        fleet.command("agents", "enable", "--id", "fa"),
        env=fleet.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert enabled.returncode == 0, enabled.stderr
    assert _disabled(fleet) == []
    assert os.environ.get("ASTER_AGENTS_FAILPOINT") is None


@pytest.mark.slow
def test_flatten_all_under_supervisord_leaves_nothing_and_agents_stand_down() -> None:
    """A real supervisord fleet trading: flatten --all -> flat, orders gone, books agree."""
    from tests.test_fleet_e2e import Fleet as SupervisedFleet
    from tests.test_fleet_e2e import _exchange_positions, _running

    fleet = SupervisedFleet()
    try:
        up = fleet.cli("up", "--env-file", str(fleet.env_file))
        assert up.returncode == 0, up.stderr + up.stdout
        wait_for(lambda: _running(fleet.status()), 40, "three agents RUNNING")
        wait_for(lambda: len(_exchange_positions(fleet.sim, fleet.user)) >= 2, 40, "positions")
        done = fleet.cli("flatten", "--all", "--yes", "--json", keys=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["ok"] is True
        orders = len(fleet.sim.engine.all_orders_ever())
        with Ledger(fleet.state) as ledger:
            ticks = {r.agent_id: r.ticks for r in ledger.agent_rows()}

        def ticked_on() -> bool:
            with Ledger(fleet.state) as ledger:
                return all(r.ticks >= ticks[r.agent_id] + 3 for r in ledger.agent_rows())

        wait_for(ticked_on, 30, "three more ticks of every supervised agent")
        assert len(fleet.sim.engine.all_orders_ever()) == orders  # none reopened
        assert _exchange_positions(fleet.sim, fleet.user) == {}
        assert fleet.sim.engine.open_orders_of(fleet.user) == []
        with Ledger(fleet.state) as ledger:
            assert ledger.positions(user=fleet.user) == []
            rows = ledger.agent_rows()
            assert {(r.state, r.state_reason) for r in rows} == {("disabled", FLATTENED)}
        reconciled = fleet.cli("reconcile", "--json", keys=True)
        assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
        assert all(state == "RUNNING" for state, _pid in fleet.status().values())
        down = fleet.cli("down")
        assert down.returncode == 0, down.stderr + down.stdout
    finally:
        fleet.close()


def test_flatten_on_a_terminal_asks_first_and_no_changes_nothing(
    tmp_path: Path, sim: SimServer
) -> None:
    """On a terminal, flatten asks; answering no aborts with nothing disabled."""
    import pty

    fleet = make_fleet(tmp_path, sim, ["fa"])
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            fleet.command("flatten", "--id", "fa"),
            env=fleet.env(),
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.write(master, b"n\n")
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(master)
        os.close(slave)
    assert proc.returncode == 1, out + err
    assert "close their positions at market?" in out + err
    assert not (fleet.state_dir / "ledger.sqlite3").exists() or _disabled(fleet) == []
