"""Governance over a real ledger: kill switches, operator enable/disable, rebalance CLI, runner."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aster_agents.cli.main import build_app, main
from aster_agents.config.schema import FleetConfig, load_fleet
from aster_agents.fleet.backtest import run_backtest
from aster_agents.ledger import AgentRow, Ledger, LedgerPosition
from aster_agents.ledger.readonly import open_readonly
from aster_agents.ledger.rows import DB_NAME
from aster_agents.models import Side, now_ms
from aster_agents.portfolio.governance import (
    Governor,
    _TickReads,
    auto_rebalance,
    capital_moves,
    check_kill_switches,
    fleet_metrics,
    nav_points,
    operator_set,
    review,
)
from aster_agents.portfolio.metrics import CombinedNav
from aster_agents.signing import Signer, generate_private_key
from aster_agents.sim.server import SimConfig, SimServer
from tests.kit.agents import Fleet, make_fleet
from tests.kit.books import Trader
from tests.kit.wait import wait_for

HOUR = 3_600_000
FIXTURE = Path(__file__).parent / "data" / "replay" / "xrp"
BT_START = 1_637_180_400_000  # the fixture's first candle + 100 (the replay's default start)
USER = Signer(generate_private_key()).address
PORTFOLIO = """state_dir: state
rebalance:
  enabled: {enabled}
  interval_minutes: 60
  lookback_days: 30
  min_track_record_days: 1
  cooldown_hours: 24
  hysteresis: 0.02
  max_step: 0.05
  floor: 0.02
  cap: 0.5
  probation_drawdown: 0.10
  kill_drawdown: 0.20
  portfolio_kill_drawdown: {portfolio_kill}
"""


def write_config(root: Path, *, enabled: bool = False, portfolio_kill: float = 0.5) -> Path:
    """agents.d with agents a1 and a2 (30% each) on one account; no agent process needed."""
    config = root / "agents.d"
    config.mkdir(parents=True, exist_ok=True)
    for agent_id in ("a1", "a2"):
        signer = Signer(generate_private_key()).address
        (config / f"{agent_id}.yaml").write_text(
            f"id: {agent_id}\nname: {agent_id}\nexchange:\n  user: '{USER}'\n"
            f"  signer: '{signer}'\n  signer_key_env: KEY_{agent_id.upper()}\n"
            "trading:\n  strategy: trend\n  symbols: [BTCUSDT]\n"
            "allocation:\n  capital_pct: 0.3\n"
        )
    (config / "_portfolio.yaml").write_text(
        PORTFOLIO.format(enabled=str(enabled).lower(), portfolio_kill=portfolio_kill)
    )
    return config


def open_ledger(state_dir: Path) -> Ledger:
    """Account of 1000 USDT, a1 and a2 with 300 each, 400 unallocated."""
    ledger = Ledger(state_dir)
    ledger.set_account_limits(
        USER, max_total_positions=5, max_gross_leverage=Decimal(3), equity=Decimal(1000)
    )
    for agent_id in ("a1", "a2"):
        ledger.register_agent(agent_id, USER, max_positions=2, capital=Decimal(300))
    ledger.ensure_account(USER, Decimal(1000))
    return ledger


def snapshots(ledger: Ledger, agent_id: str, navs: list[float], end_ms: int) -> None:
    """Write equity snapshots an hour apart, ending at ``end_ms``, for NAVs (units 300)."""
    for i, nav in enumerate(navs):
        t = end_ms - (len(navs) - 1 - i) * HOUR
        ledger.snapshot_equity(agent_id, Decimal(str(round(300 * nav, 6))), time_ms=t)


def zigzag(hours: int, drift: float) -> list[float]:
    nav, out = 1.0, []
    for i in range(hours):
        out.append(nav)
        nav *= 1 + drift + (0.002 if i % 2 else -0.002)
    return out


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[FleetConfig, Ledger]]:
    fleet = load_fleet(write_config(tmp_path), check_strategies=False)
    ledger = open_ledger(tmp_path / "state")
    yield fleet, ledger
    ledger.close()


def state_of(ledger: Ledger, agent_id: str) -> str:
    row = ledger.agent(agent_id)
    assert row is not None
    return row.state


# ---------------------------------------------------------------------- kill switches


def test_runner_hook_puts_on_probation_then_kills_on_drawdown(
    setup: tuple[FleetConfig, Ledger],
) -> None:
    """Tick by tick: probation at -10% from the NAV peak, disabled at -20%, audited."""
    fleet, ledger = setup
    gov = Governor(fleet, "a1", ledger)
    now = now_ms()
    for i, nav in enumerate([1.0, 1.1, 1.0, 0.98, 0.95, 0.87]):
        snapshots(ledger, "a1", [nav], now + i)
        gov.after_tick(now_ms())
        if i == 3:
            assert state_of(ledger, "a1") == "probation"  # 0.98 / 1.1 = -10.9%
    row = ledger.agent("a1")
    assert row is not None and row.state == "disabled" and not row.enabled
    assert row.state_reason is not None and "kill switch: drawdown 20.9%" in row.state_reason
    events = [e.event for e in ledger.audit(agent_id="a1")]
    assert events.count("agent_state") == 2
    assert state_of(ledger, "a2") == "active"


def test_operator_enable_restarts_the_peak(setup: tuple[FleetConfig, Ledger]) -> None:
    """After `agents enable` the old peak is forgotten: the switch does not fire at once."""
    fleet, ledger = setup
    gov = Governor(fleet, "a1", ledger)
    now = now_ms() - 1000
    snapshots(ledger, "a1", [1.0, 0.7], now)
    gov.after_tick(now_ms())
    assert state_of(ledger, "a1") == "disabled"
    operator_set(ledger, "a1", enabled=True, note="reviewed", now_ms=now_ms())
    gov.after_tick(now_ms())
    assert state_of(ledger, "a1") == "active"
    snapshots(ledger, "a1", [0.7, 0.69], now_ms() + 10)
    gov.after_tick(now_ms())
    assert state_of(ledger, "a1") == "active"
    snapshots(ledger, "a1", [0.55], now_ms() + 20)
    gov.after_tick(now_ms())
    assert state_of(ledger, "a1") == "disabled"


def test_a_disabled_agent_never_re_enables_itself(setup: tuple[FleetConfig, Ledger]) -> None:
    """Recovery does not undo a kill: only an operator does."""
    fleet, ledger = setup
    operator_set(ledger, "a1", enabled=False, note="manual", now_ms=now_ms())
    gov = Governor(fleet, "a1", ledger)
    snapshots(ledger, "a1", [1.0, 1.2, 1.5], now_ms())
    gov.after_tick(now_ms())
    assert state_of(ledger, "a1") == "disabled"


def test_portfolio_kill_switch_disables_every_agent(tmp_path: Path) -> None:
    """Both sleeves down 13%: each only on probation, but the account's 12% limit kills all."""
    fleet = load_fleet(write_config(tmp_path, portfolio_kill=0.12), check_strategies=False)
    with open_ledger(tmp_path / "state") as ledger:
        now = now_ms()
        for agent_id in ("a1", "a2"):
            snapshots(ledger, agent_id, [1.0, 0.95, 0.87], now)
        moved = check_kill_switches(fleet, ledger, now_ms=now)
        assert {(t.agent_id, t.new) for t in moved} == {("a1", "disabled"), ("a2", "disabled")}
        row = ledger.agent("a2")
        assert row is not None and row.state_reason is not None
        assert "portfolio kill switch: combined drawdown 13.0%" in row.state_reason
        gov = Governor(fleet, "a1", ledger)
        operator_set(ledger, "a1", enabled=True, note=None, now_ms=now_ms())
        gov.after_tick(now_ms())
        assert state_of(ledger, "a1") == "active"  # the enable restarted the account's peak


# ---------------------------------------------------------------------- rebalancing


def history(ledger: Ledger, good: str = "a1", bad: str = "a2") -> int:
    """Two days of hourly snapshots: ``good`` rises steadily, ``bad`` drifts down."""
    end = now_ms() - 1000
    snapshots(ledger, good, zigzag(48, 0.001), end)
    snapshots(ledger, bad, zigzag(48, -0.0005), end)
    return end


def test_review_tilts_toward_the_better_sharpe_within_max_step(
    setup: tuple[FleetConfig, Ledger],
) -> None:
    """The better sleeve gains, the worse loses, by at most max_step, sums unchanged."""
    fleet, ledger = setup
    history(ledger)
    rv = review(fleet, ledger, now_ms=now_ms())
    a1, a2 = rv.line("a1"), rv.line("a2")
    assert a1.change == pytest.approx(0.05) and a2.change == pytest.approx(-0.05)
    moves = capital_moves(rv)
    assert moves == {"a1": Decimal("350.00"), "a2": Decimal("250.00")}
    assert rv.to_json()["metrics"]["agents"]["a1"]["sharpe"] > 0


def test_capital_moves_add_up_to_zero_to_the_cent(setup: tuple[FleetConfig, Ledger]) -> None:
    """Rounding to cents never creates or destroys money between sleeves."""
    fleet, ledger = setup
    ledger.set_account_limits(
        USER, max_total_positions=5, max_gross_leverage=Decimal(3), equity=Decimal("1003.37")
    )
    history(ledger)
    rv = review(fleet, ledger, now_ms=now_ms())
    moves = capital_moves(rv)
    assert sum(moves.values()) == Decimal(600)


def test_fleet_metrics_for_the_portfolio_view(setup: tuple[FleetConfig, Ledger]) -> None:
    """Per-agent and per-account metrics from any ledger connection."""
    _, ledger = setup
    history(ledger)
    m = fleet_metrics(ledger, ledger.agent_rows())
    assert set(m.agents) == {"a1", "a2"} and set(m.accounts) == {USER}
    assert m.agents["a1"].total_return is not None and m.agents["a1"].total_return > 0
    assert m.to_json()["accounts"][USER]["points"] > 0


def test_fleet_metrics_from_the_read_only_view_match_the_ledger(
    setup: tuple[FleetConfig, Ledger],
) -> None:
    """The portfolio view's read-only ledger gives the same metrics as the read-write one."""
    _, ledger = setup
    history(ledger)
    ro = open_readonly(ledger.state_dir)
    assert ro is not None
    with ro:
        assert fleet_metrics(ro, ro.agent_rows()) == fleet_metrics(ledger, ledger.agent_rows())
        assert ro.operator_enables(["a1", "a2"]) == ledger.operator_enables(["a1", "a2"])


def test_fills_count_from_their_booking_time_and_older_files_still_read(tmp_path: Path) -> None:
    """Metrics see a fill at the local time it was booked, not the exchange's (a fast
    market's) trade time; a file from before that column reads the trade time, read-only."""
    state_dir = tmp_path / "state"
    market_ms = now_ms() + 30 * 86_400_000  # a x60 market is a month ahead after 12 hours
    with open_ledger(state_dir) as ledger:
        before = now_ms()
        Trader(ledger, "a1", market_ms).order(
            "BTCUSDT", Side.BUY, "0.001", "50000", kind="open", at_min=0
        )
        booked = ledger.fill_records("a1")
        assert [f.time_ms for f in booked if before <= f.time_ms <= now_ms()] == [booked[0].time_ms]
    with closing(sqlite3.connect(state_dir / DB_NAME)) as conn:
        conn.execute("ALTER TABLE fills DROP COLUMN booked_ms")  # as the file was before
        conn.commit()
    ro = open_readonly(state_dir)
    assert ro is not None
    with ro:
        assert [f.time_ms for f in ro.fill_records("a1")] == [market_ms]


def test_auto_rebalance_applies_once_and_only_one_process_at_a_time(tmp_path: Path) -> None:
    """Due -> applied once; busy lock or a recent rebalance -> quietly nothing."""
    fleet = load_fleet(write_config(tmp_path, enabled=True), check_strategies=False)
    state_dir = tmp_path / "state"
    with open_ledger(state_dir) as ledger:
        history(ledger)
        with ledger.rebalance_lock():
            assert auto_rebalance(fleet, ledger, now_ms=now_ms()) is None
        applied = auto_rebalance(fleet, ledger, now_ms=now_ms())
        assert applied is not None and applied.rebalance_id is not None
        assert auto_rebalance(fleet, ledger, now_ms=now_ms()) is None
        row = ledger.agent("a1")
        assert row is not None and row.capital == Decimal("350.00")


# ---------------------------------------------------------------------- the runner's clock

MARKET = BT_START  # a replay's market time, years before the wall clock
MINUTE = 60_000


def test_governor_checks_the_account_and_rebalances_on_the_clock_it_is_given(
    tmp_path: Path,
) -> None:
    """The account's kill switch every 30 s and the automatic rebalance every 60 s of the
    runner's clock (market time here), whatever the wall clock did meanwhile; the rebalance
    is stamped with that time, which times the next one."""
    fleet = load_fleet(
        write_config(tmp_path, enabled=True, portfolio_kill=0.12), check_strategies=False
    )
    with open_ledger(tmp_path / "state") as ledger:
        history(ledger)  # a1 rises, a2 drifts down: the rebalance moves capital
        gov = Governor(fleet, "a1", ledger)
        assert gov.after_tick(MARKET) == []  # the account checked, next at +30 s
        assert gov.after_tick(MARKET + 59_999) == [] and ledger.rebalances() == []  # next +89.999
        gov.after_tick(MARKET + MINUTE)  # the first automatic look, one minute in
        (applied,) = ledger.rebalances()
        assert applied.time_ms == MARKET + MINUTE and applied.reason == "automatic rebalance"
        end = ledger.nav_after("a2")[-1][0]
        snapshots(ledger, "a2", [0.6], end + 1)  # the account falls past 12%
        done = gov.after_tick(MARKET + 89_998)  # a1's own switch only: the account is not due
        assert done == [] and state_of(ledger, "a2") == "active"
        done = gov.after_tick(MARKET + 89_999)
        assert [(t.agent_id, t.new) for t in done] == [("a1", "disabled"), ("a2", "disabled")]
        assert all(t.reason.startswith("portfolio kill switch") for t in done)
        assert len(ledger.rebalances()) == 1  # the next look at +2 min is not due yet


def test_a_tick_reads_the_agents_snapshots_once_and_answers_as_the_ledger(
    setup: tuple[FleetConfig, Ledger],
) -> None:
    """Both kill switches read the agent's new snapshots: the tick's reads ask the ledger
    once and give every later (or equal) ``after`` exactly the ledger's answer."""
    _, ledger = setup
    now = now_ms()
    for i, nav in enumerate([1.0, 1.1, 1.05, 0.9]):
        snapshots(ledger, "a1", [nav], now + i // 2)  # two snapshots share each time
    snapshots(ledger, "a2", [1.0], now)
    asked = [("a1", now - 1), ("a1", now - 1), ("a1", now), ("a1", now + 1), ("a1", now + 2)]
    asked += [("a2", now - 1), ("a1", None)]  # another agent; then all of a1's again
    expected = [ledger.nav_after(agent, after) for agent, after in asked]
    trace: list[str] = []
    ledger.store.conn.set_trace_callback(trace.append)  # type: ignore[attr-defined]
    reads = _TickReads(ledger)
    assert [reads.nav_after(agent, after) for agent, after in asked] == expected
    assert len(expected[0]) == 4 and len(expected[2]) == 2 and expected[3] == []
    assert len([q for q in trace if "FROM equity" in q]) == 3  # a1 once, a2, a1 from -1


def backtest_fleet(root: Path, portfolio: str, users: tuple[int, ...]) -> FleetConfig:
    """Agents trend, mean_reversion, ... on XRPUSDT 5m, the i-th on account ``users[i]``."""
    d = root / "agents.d"
    d.mkdir(parents=True)
    (d / "_portfolio.yaml").write_text(f"state_dir: state\nrebalance:\n{portfolio}")
    for i, user in enumerate(users, 1):
        strategy = ("trend", "mean_reversion")[(i - 1) % 2]
        (d / f"bt-{i}.yaml").write_text(
            f"id: bt-{i}\nname: backtest {i}\nexchange:\n"
            f'  user: "0x{user:040x}"\n  signer: "0x{i + 100:040x}"\n'
            f"  signer_key_env: BT_{i}_KEY\n  base_url: http://127.0.0.1:1\n"
            f"trading:\n  strategy: {strategy}\n  symbols: [XRPUSDT]\n  interval: 5m\n"
            "  scan_interval_seconds: 60\n  max_positions: 1\n  min_confidence: 0.5\n"
            "  position_size_pct: 0.5\n  leverage: 5\n  stop_loss_pct: 0.01\n"
            "  take_profit_pct: 0.02\nallocation:\n  capital_pct: 0.4\n"
        )
    return load_fleet(d)


def account_drawdowns(state_dir: Path, agent_id: str) -> list[float]:
    """The account's combined drawdown after each of its only sleeve's snapshots."""
    with Ledger(state_dir) as ledger:
        row = ledger.agent(agent_id)
        assert row is not None
        combined, out = CombinedNav(), []
        for point in nav_points(ledger.nav_after(agent_id), row.units):
            combined.add(agent_id, point)
            out.append(combined.drawdown)
        return out


def test_backtest_account_kill_switch_fires_at_the_market_tick_it_is_due(tmp_path: Path) -> None:
    """The account's drawdown first reaches the limit at tick k of a run without the switch;
    with it, the same run trades alike up to that tick's market time and opens nothing
    after it (on the wall clock a fast run checked the account only at its first tick)."""
    loose = "  probation_drawdown: 0.5\n  kill_drawdown: 0.9\n"
    end = BT_START + 12 * HOUR
    free = run_backtest(
        backtest_fleet(tmp_path / "free", loose + "  portfolio_kill_drawdown: 0.95\n", (1,)),
        FIXTURE,
        to_ms=end,
        state_dir=tmp_path / "free" / "state",
    )
    drawdowns = account_drawdowns(tmp_path / "free" / "state", "bt-1")
    assert len(drawdowns) == free.agent_ticks + 1  # start-up's snapshot, then one per tick
    k = next(i for i, d in enumerate(drawdowns) if d >= 0.03)
    due_ms = BT_START + (k - 1) * MINUTE  # snapshot k is the one of tick k - 1
    assert any(f.kind == "open" and f.time_ms > due_ms for f in free.fills)
    killed = run_backtest(
        backtest_fleet(tmp_path / "kill", loose + "  portfolio_kill_drawdown: 0.03\n", (1,)),
        FIXTURE,
        to_ms=end,
        state_dir=tmp_path / "kill" / "state",
    )
    assert [f for f in killed.fills if f.time_ms <= due_ms] == [
        f for f in free.fills if f.time_ms <= due_ms
    ]
    assert not [f for f in killed.fills if f.kind == "open" and f.time_ms > due_ms]
    with Ledger(tmp_path / "kill" / "state") as ledger:
        row = ledger.agent("bt-1")
        assert row is not None and row.state == "disabled"
        assert (row.state_reason or "").startswith("portfolio kill switch")


def test_backtest_automatic_rebalance_looks_at_the_market_times_it_is_due(tmp_path: Path) -> None:
    """Two agents of one account, rebalancing every 60 market minutes: the first look one
    minute into the run, then every interval; the lock's stamp is the last look's market
    time (on the wall clock a run of seconds never looked)."""
    fleet = backtest_fleet(tmp_path, "  enabled: true\n  interval_minutes: 60\n", (1, 1))
    for hours, last in ((2, 61), (6, 301)):
        state_dir = tmp_path / f"state-{hours}"
        run_backtest(fleet, FIXTURE, to_ms=BT_START + hours * HOUR, state_dir=state_dir)
        with Ledger(state_dir) as ledger, ledger.rebalance_lock() as held:
            assert held is not None and held.stamp() == BT_START + last * MINUTE


# ---------------------------------------------------------------------- CLI


def cli(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        build_app(),
        ["--config-dir", str(config), "--state-dir", str(config.parent / "state"), *args],
    )
    return result.exit_code, result.output


def test_rebalance_cli_shows_applies_then_cools_down(tmp_path: Path) -> None:
    """`rebalance --json` proposes, `--apply` moves capital in one go, then cooldown."""
    config = write_config(tmp_path)
    with open_ledger(tmp_path / "state") as ledger:
        history(ledger)
    code, out = cli(config, "rebalance", "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["version"] == 1 and doc["applied"] is False and doc["rebalance_id"] is None
    lines = {x["agent"]: x for x in doc["proposal"]}
    assert lines["a1"]["change"] == pytest.approx(0.05) and lines["a1"]["reason"]
    assert "a1" in doc["metrics"]["agents"] and USER in doc["metrics"]["accounts"]
    code, out = cli(config, "rebalance", "--apply", "--json")
    applied = json.loads(out)
    assert code == 0 and applied["applied"] is True and applied["rebalance_id"] >= 1
    assert applied["moves"] == {"a1": "350.00", "a2": "250.00"}
    with Ledger(tmp_path / "state") as ledger:
        caps = {r.agent_id: r.capital for r in ledger.agent_rows()}
        assert caps == {"a1": Decimal("350.00"), "a2": Decimal("250.00")}
    code, out = cli(config, "rebalance", "--apply")
    assert code == 0 and "cooldown until" in out and "nothing applied" in out


def test_rebalance_cli_table_has_reasons(tmp_path: Path) -> None:
    """The text view shows a row per agent with its reason and the last-rebalance summary."""
    config = write_config(tmp_path)
    with open_ledger(tmp_path / "state"):
        pass
    code, out = cli(config, "rebalance")
    assert code == 0, out
    assert "track record 0.0 d < 1 d" in out and "last rebalance: never" in out


def test_rebalance_cli_before_any_agent_started_says_so(tmp_path: Path) -> None:
    """An empty ledger gets one line saying why there is nothing, not two empty tables."""
    config = write_config(tmp_path)
    code, out = cli(config, "rebalance")
    assert code == 0, out
    assert "no agent in the ledger" in out and "┏" not in out


def test_agents_disable_and_enable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """disable/enable print the new state; an unknown id exits 2; a never-run agent works."""
    config = write_config(tmp_path)
    code, out = cli(config, "agents", "disable", "--id", "a1", "--reason", "too risky")
    assert code == 0 and "a1: disabled (disabled by operator at" in out and "too risky" in out
    with Ledger(tmp_path / "state") as ledger:
        assert state_of(ledger, "a1") == "disabled"
    code, out = cli(config, "agents", "enable", "--id", "a1")
    assert code == 0 and "a1: active (enabled by operator at" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["--config-dir", str(config), "agents", "disable", "--id", "nope"])
    assert exit_info.value.code == 2
    assert "no agent with id 'nope'" in capsys.readouterr().err


# ---------------------------------------------------------------------- a real agent


def test_disabled_running_agent_opens_nothing(tmp_path: Path, sim_server: SimServer) -> None:
    """`agents disable` while the agent runs: no new opening order while it keeps ticking."""
    fleet = make_fleet(tmp_path, sim_server, ["agent-1"], scan_interval=0.3)
    proc = fleet.start("agent-1")
    try:
        wait_for(lambda: _opens(fleet), 60, "a first opening order")
        done = subprocess.run(
            fleet.command("agents", "disable", "--id", "agent-1", "--reason", "test"),
            env=fleet.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        _assert_opens_nothing_more(fleet, since_ticks=_ticks(fleet))
        assert proc.poll() is None
    finally:
        codes = fleet.stop_all()
    assert codes == {"agent-1": 0}
    assert "agent disabled" not in fleet.stderr("agent-1")


def test_running_agent_is_killed_by_its_drawdown_switch(tmp_path: Path) -> None:
    """A tiny kill_drawdown: fees and moves trip it, the agent disables itself, keeps ticking
    and opens nothing more."""
    with SimServer(SimConfig(port=0, seed=7, speed=60.0)) as sim:
        fleet = make_fleet(tmp_path, sim, ["agent-1"], scan_interval=0.3)
        with (fleet.config_dir / "_portfolio.yaml").open("a") as f:
            f.write("rebalance:\n  probation_drawdown: 0.0001\n  kill_drawdown: 0.0003\n")
        fleet.start("agent-1")
        try:
            row = wait_for(lambda: _disabled(fleet), 60, "the kill switch")
            assert row.state_reason is not None
            assert row.state_reason.startswith("kill switch: drawdown ")
            _assert_opens_nothing_more(fleet, since_ticks=row.ticks)
        finally:
            codes = fleet.stop_all()
    assert codes == {"agent-1": 0}
    assert "-> disabled (kill switch: drawdown 0.0" in fleet.stderr("agent-1")


def _assert_opens_nothing_more(fleet: Fleet, since_ticks: int) -> None:
    """Two ticks to let an order already in flight land, then six ticks without a new open."""
    wait_for(lambda: _ticks(fleet) >= since_ticks + 2, 60, "two ticks")
    before, start = _opens(fleet), _ticks(fleet)
    wait_for(lambda: _ticks(fleet) >= start + 6, 60, "six more ticks")
    assert _opens(fleet) == before


def _opens(fleet: Fleet) -> int:
    return sum(1 for c in fleet.coids() if c.endswith("-open"))


def _row(fleet: Fleet) -> AgentRow | None:
    with Ledger(fleet.state_dir) as ledger:
        return ledger.agent("agent-1")


def _disabled(fleet: Fleet) -> AgentRow | None:
    row = _row(fleet)
    return row if row is not None and row.state == "disabled" else None


def _ticks(fleet: Fleet) -> int:
    row = _row(fleet)
    return 0 if row is None else row.ticks


def test_exposure_is_measured_on_one_clock_on_a_fast_simulator(tmp_path: Path) -> None:
    """An agent holding a position the whole time on a x60 market shows exposure near 100%."""
    with SimServer(SimConfig(port=0, seed=7, speed=60.0)) as sim:
        fleet = make_fleet(
            tmp_path,
            sim,
            ["agent-1"],
            symbols=["ETHUSDT"],
            params="{p_enter: 1.0, p_exit: 0.0}",
            max_positions=1,
            scan_interval=0.3,
        )
        fleet.start("agent-1")
        try:
            opened = wait_for(lambda: _held(fleet), 60, "an open position").opened_ms
            first = _snapshot_times(fleet)[0]
            # held (on the local clock) six times as long as the start-up before the entry
            held_until = opened + max(3000, 6 * (opened - first))
            wait_for(lambda: _snapshot_times(fleet)[-1] >= held_until, 60, "snapshots")
        finally:
            codes = fleet.stop_all()
        assert codes == {"agent-1": 0}, fleet.stderr("agent-1")[-2000:]
        done = subprocess.run(
            fleet.command("rebalance", "--json"),
            env=fleet.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert list(fleet.ledger_positions()) == ["ETHUSDT"]  # never closed
    exposure = json.loads(done.stdout)["metrics"]["agents"]["agent-1"]["exposure"]
    assert 0.8 <= exposure <= 1.0, exposure  # 0.0 when fills were on the market's clock


def _held(fleet: Fleet) -> LedgerPosition | None:
    with Ledger(fleet.state_dir) as ledger:
        held = ledger.positions(agent_id="agent-1")
    return held[0] if held else None


def _snapshot_times(fleet: Fleet) -> list[int]:
    with Ledger(fleet.state_dir) as ledger:
        return [t for t, _, _ in ledger.nav_after("agent-1")] or [0]
