"""``aster-agent trades``: round trips from the ledger, their CSV and JSON, the close log line."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from aster_agents.ledger import Ledger
from aster_agents.ledger.reports import ForcedClose, FundingRow, StateChange, TradeFill
from aster_agents.portfolio.trades import read_trips, round_trips
from aster_agents.sim.server import SimConfig, SimServer
from tests.kit.agents import make_fleet
from tests.kit.books import AGENTS, build_books, copy_config
from tests.kit.cli import run_cli
from tests.kit.wait import wait_for

ZERO = Decimal(0)


def fill(
    t: int, qty: str, price: str, kind: str | None = "open", note: str = "", pnl: str = "0"
) -> TradeFill:
    return TradeFill(
        "a",
        t,
        f"c{t}",
        "BTCUSDT",
        Decimal(qty),
        Decimal(price),
        Decimal(pnl),
        Decimal("0.3"),
        t,
        kind,
        note,
    )


@pytest.fixture
def books(tmp_path: Path) -> list[str]:
    """The kit's ledger; the global options that point at it."""
    config = copy_config(tmp_path)
    build_books(tmp_path / "state")
    return ["--config-dir", str(config), "--state-dir", str(tmp_path / "state")]


# ---------------------------------------------------------------------- pairing (pure)


def test_round_trips_average_in_flip_and_split_the_commission() -> None:
    """Adds average the entry; a flip closes one trip (its P&L, part of the fee) and opens
    the next with the rest; open trips come first, then newest first."""
    trips = round_trips(
        [
            fill(1, "1", "100", note="go long"),
            fill(2, "1", "110"),
            fill(3, "-3", "120", kind="close", note="flip", pnl="30"),
            fill(4, "1", "115", kind="protect", note="take profit", pnl="5"),
        ]
    )
    assert [t.closed_by for t in trips] == ["take_profit", "signal"]
    long, short = trips[1], trips[0]
    assert (long.side, long.qty, long.entry_price, long.exit_price) == ("long", 2, 105, 120)
    assert (long.realized_pnl, long.fees, long.reason) == (30, Decimal("0.8"), "go long")
    assert (short.side, short.qty, short.entry_price, short.exit_price) == ("short", 1, 120, 115)
    assert (short.fees, short.reason, short.entry_ms, short.exit_ms) == (
        Decimal("0.4"),
        "flip",
        3,
        4,
    )
    assert sum(t.fees for t in trips) == Decimal("1.2")


def test_round_trips_classify_every_way_a_position_closes() -> None:
    """Stop by note or by a loss, a crossed stop, kill switch, foreign close, still open."""
    fills = [
        fill(1, "1", "100"),
        fill(2, "-1", "99", kind="protect", pnl="-1"),
        fill(3, "1", "100"),
        fill(4, "-1", "97", kind="close", note="stop already crossed"),
        fill(5, "1", "100"),
        fill(7, "-1", "90", kind="close", note="exit", pnl="-10"),
        fill(8, "1", "100"),
        fill(10, "1", "100"),
    ]
    killed = [StateChange(6, "a", "disabled", "kill switch: drawdown 30% >= 20%")]
    forced = [ForcedClose(9, "a", "BTCUSDT", "flat on the exchange")]
    funding = [FundingRow("a", "BTCUSDT", Decimal("-0.5"), 8), FundingRow("a", "ETHUSDT", ZERO, 8)]
    trips = round_trips(fills, funding, killed, forced)
    assert [t.closed_by for t in trips] == ["open", "foreign", "kill_switch", "stop", "stop"]
    assert trips[1].funding == Decimal("-0.5") and trips[1].exit_price is None
    assert trips[0].exit_ms is None and trips[0].duration_ms is None


# ---------------------------------------------------------------------- the CLI


def test_trades_csv_round_trips_and_sums_to_the_books(
    books: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`trades --csv` parses with the csv module; per agent, realized P&L, fees and funding
    add up to the ledger's books exactly; times are ISO-8601 UTC."""
    code, out, err = run_cli([*books, "trades", "--csv"], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 8
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    assert buf.getvalue() == out
    with Ledger(tmp_path / "state") as ledger:
        for agent in AGENTS:
            row = ledger.agent(agent)
            assert row is not None
            mine = [r for r in rows if r["agent"] == agent]
            assert sum(Decimal(r["realized_pnl"]) for r in mine) == row.realized_pnl
            assert sum(Decimal(r["fees"]) for r in mine) == row.fees
            assert sum(Decimal(r["funding"]) for r in mine) == row.funding
    assert {r["closed_by"] for r in rows} == {
        "signal",
        "stop",
        "take_profit",
        "kill_switch",
        "foreign",
        "open",
    }
    for r in rows:
        assert r["entry_time"].endswith("Z") and datetime.fromisoformat(r["entry_time"])
        assert "E" not in r["pnl"] and Decimal(r["pnl"]) == (
            Decimal(r["realized_pnl"]) - Decimal(r["fees"]) + Decimal(r["funding"])
        )
    assert [r["reason"] for r in rows if r["closed_by"] == "stop"] == ["breakout"]


def test_trades_json_filters_limit_and_totals(
    books: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """--id, --symbol and --limit select trips; totals cover every matching trip."""
    code, out, _ = run_cli(
        [*books, "trades", "--id", "agent-1", "--symbol", "btcusdt", "--json"], capsys
    )
    doc = json.loads(out)
    assert code == 0 and doc["version"] == 1
    assert {t["symbol"] for t in doc["trades"]} == {"BTCUSDT"} and len(doc["trades"]) == 4
    code, out, _ = run_cli([*books, "trades", "--id", "agent-1", "--limit", "1", "--json"], capsys)
    doc = json.loads(out)
    assert len(doc["trades"]) == 1 and doc["trades"][0]["reason"] == "reverse"
    assert doc["totals"] == [
        {
            "agent": "agent-1",
            "trips": 5,
            "closed": 5,
            "wins": 4,
            "realized_pnl": "24",
            "fees": "0.18",
            "funding": "0",
            "pnl": "23.82",
        }
    ]
    code, out, _ = run_cli([*books, "trades", "--since", "2999-01-01", "--json"], capsys)
    assert [t["closed_by"] for t in json.loads(out)["trades"]] == ["open"]


def test_trades_table_and_bad_input(books: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """The table lists trips and totals; an unknown agent, a bad date or two formats exit 2
    with one line."""
    code, out, _ = run_cli([*books, "trades", "--limit", "3"], capsys)
    assert code == 0 and "totals per agent" in out and "newest 3 of 8" in out
    code, _, err = run_cli([*books, "trades", "--id", "nobody"], capsys)
    assert code == 2 and "unknown agent 'nobody'" in err and "Traceback" not in err
    code, _, err = run_cli([*books, "trades", "--since", "yesterday"], capsys)
    assert code == 2 and "not a date" in err
    code, _, err = run_cli([*books, "trades", "--json", "--csv"], capsys)
    assert code == 2 and "cannot be combined" in err


def test_trades_without_a_ledger_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No ledger yet: a message, exit 0, and no state dir created."""
    config = copy_config(tmp_path)
    state = tmp_path / "nothing"
    code, out, _ = run_cli(
        ["--config-dir", str(config), "--state-dir", str(state), "trades"], capsys
    )
    assert code == 0 and "no round trips" in out and not state.exists()


# ---------------------------------------------------------------------- a real agent


@pytest.mark.slow
def test_a_real_agent_logs_each_close_with_its_pnl_and_trades_add_up(tmp_path: Path) -> None:
    """An agent against the simulator: its close log lines carry the trip's P&L, which is the
    P&L `trades` shows, and `trades --csv` adds up to the books."""
    # No funding: a settlement booked after a close would change that trip's P&L afterwards.
    with SimServer(SimConfig(port=0, seed=11, speed=60.0, funding_interval_s=0)) as sim:
        fleet = make_fleet(
            tmp_path, sim, ["agent-1"], params="{p_enter: 1.0, p_exit: 0.6}", scan_interval=0.3
        )
        fleet.start("agent-1")
        try:
            wait_for(lambda: fleet.stderr("agent-1").count("; P&L ") >= 2, 60, "two closes")
        finally:
            codes = fleet.stop_all()
    assert codes == {"agent-1": 0}
    done = subprocess.run(
        fleet.command("trades", "--csv"),
        env=fleet.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    with Ledger(fleet.state_dir) as ledger:
        row = ledger.agent("agent-1")
        trips = read_trips(ledger, "agent-1")
    assert row is not None and len(rows) == len(trips) >= 2
    assert sum(Decimal(r["realized_pnl"]) for r in rows) == row.realized_pnl
    assert sum(Decimal(r["fees"]) for r in rows) == row.fees
    logged = [
        Decimal(line.split("; P&L ")[1].split(" USDT")[0])
        for line in fleet.stderr("agent-1").splitlines()
        if "; P&L " in line
    ]
    shown = {Decimal(r["pnl"]) for r in rows if r["closed_by"] != "open"}
    assert logged and set(logged) <= shown
    assert {r["reason"] for r in rows} and all(r["reason"] for r in rows)
