"""``aster-agent backtest``: the real runner in-process over a recording, with no look-ahead."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest

from aster_agents.config.schema import FleetConfig, load_fleet
from aster_agents.errors import AsterAgentsError, ConfigError
from aster_agents.fleet.backtest import Turns, independent_groups, run_backtest, share_out
from aster_agents.ledger import Ledger
from aster_agents.models import Kline
from aster_agents.sim.recording import load_recording
from aster_agents.sim.sources import ReplayMarket
from aster_agents.strategies import Action, MarketSnapshot, PositionView, Signal
from tests.kit.wait import wait_for

FIXTURE = Path(__file__).parent / "data" / "replay" / "xrp"
PINNED = FIXTURE.parent / "xrp-backtest.json"  # rewritten by tests/data/replay/pin.py
HOUR = 3_600_000
FIVE_MIN = 300_000
START = 1_637_180_400_000  # the fixture's first candle + 100 (the replay's default start)


def write_fleet(root: Path, strategies: tuple[str, ...] = ("trend", "mean_reversion")) -> Path:
    """An agents.d with one agent per strategy on XRPUSDT 5m, each on its own account."""
    d = root / "agents.d"
    d.mkdir(parents=True, exist_ok=True)
    (d / "_portfolio.yaml").write_text("state_dir: state\n")
    for i, strategy in enumerate(strategies, 1):
        (d / f"bt-{i}.yaml").write_text(
            f"id: bt-{i}\nname: backtest {i}\nexchange:\n"
            f'  user: "0x{i:040x}"\n  signer: "0x{i + 100:040x}"\n'
            f"  signer_key_env: BT_{i}_KEY\n  base_url: http://127.0.0.1:1\n"
            f"trading:\n  strategy: {strategy}\n  symbols: [XRPUSDT]\n  interval: 5m\n"
            "  scan_interval_seconds: 60\n  max_positions: 1\n  min_confidence: 0.5\n"
            "  position_size_pct: 0.1\n  leverage: 3\n  stop_loss_pct: 0.01\n"
            "  take_profit_pct: 0.02\nallocation:\n  capital_pct: 0.5\n"
        )
    return d


def _fleet(tmp_path: Path, *strategies: str) -> FleetConfig:
    return load_fleet(write_fleet(tmp_path, strategies or ("trend", "mean_reversion")))


def test_backtest_runs_the_agents_and_books_round_trips_inside_the_window(tmp_path: Path) -> None:
    """Fills land inside --from/--to, in market time; the summary counts them per agent."""
    result = run_backtest(_fleet(tmp_path), FIXTURE, from_ms=START, to_ms=START + 10 * HOUR)
    assert result.fills and {f.agent_id for f in result.fills} <= {"bt-1", "bt-2"}
    assert all(START <= f.time_ms <= START + 10 * HOUR for f in result.fills)
    assert result.agent_ticks == 2 * (10 * 60 + 1)  # every 60 market seconds, both ends included
    summary = {a.agent_id: a for a in result.agents}
    assert sum(a.trips for a in summary.values()) >= 1
    assert all(a.capital == Decimal("5000.00") for a in summary.values())


def test_two_backtests_of_the_same_recording_are_identical(tmp_path: Path) -> None:
    """Same agents, same recording, same window: the same fills, trade for trade."""
    fleet = _fleet(tmp_path)
    one = run_backtest(fleet, FIXTURE, to_ms=START + 8 * HOUR)
    two = run_backtest(fleet, FIXTURE, to_ms=START + 8 * HOUR)
    assert one.fills and one.fills == two.fills


def test_a_backtest_freezing_the_gc_books_what_one_on_the_plain_gc_books(tmp_path: Path) -> None:
    """The run's objects kept out of the GC's passes (and released at the end) change no
    trade; a caller that froze objects itself gets the plain GC and keeps its freeze."""
    fleet = _fleet(tmp_path, "trend", "scalper")
    frozen = run_backtest(fleet, FIXTURE, to_ms=START + 8 * HOUR)
    assert gc.get_freeze_count() == 0  # released: the run's objects are collectable
    gc.freeze()  # as a caller with objects of its own frozen
    try:
        kept = gc.get_freeze_count()
        plain = run_backtest(fleet, FIXTURE, to_ms=START + 8 * HOUR)
        assert 0 < gc.get_freeze_count() <= kept  # neither released nor added to
    finally:
        gc.unfreeze()
    assert frozen.fills and frozen.fills == plain.fills
    assert frozen.agents == plain.agents and frozen.agent_ticks == plain.agent_ticks


def pinned_run(root: Path, strategies: list[str], start: int, end: int) -> dict[str, object]:
    """A backtest's trades and books as pinned in ``PINNED`` (no timings, no paths)."""
    fleet = load_fleet(write_fleet(root, tuple(strategies)))
    doc = run_backtest(fleet, FIXTURE, from_ms=start, to_ms=end).to_json()
    kept = ("from", "to", "agent_ticks", "agents", "fills")
    return {"strategies": strategies, **{k: doc[k] for k in kept}}


def test_a_short_backtest_books_the_pinned_trades_and_books(tmp_path: Path) -> None:
    """Four strategies over 12 hours of the fixture: the pinned fills and sleeves, exactly."""
    pinned = json.loads(PINNED.read_text())
    got = pinned_run(tmp_path, pinned["strategies"], pinned["from"], pinned["to"])
    assert got["fills"] == pinned["fills"]  # the trades first: the clearest diff
    assert got == pinned


@dataclass
class Peeker:
    """Trades on the *next* candle of the recording, which it read from disk itself."""

    future: dict[int, Decimal]  # open time -> close, the whole recording
    name: str = "peeker"
    min_klines: int = 1
    seen: list[tuple[int, tuple[Kline, ...], Decimal]] = field(default_factory=list)

    def decide(self, market: MarketSnapshot, position: PositionView) -> Signal:
        self.seen.append((market.time_ms, market.klines, market.mark_price))
        nxt = self.future.get(market.klines[-1].close_time + 1 + FIVE_MIN)
        if nxt is None or position.qty != 0:
            return Signal(Action.CLOSE if position.qty else Action.HOLD, 1.0, "peek")
        action = Action.LONG if nxt > market.mark_price else Action.SHORT
        return Signal(action, 1.0, "peeked at the next candle")


def test_a_strategy_sees_only_closed_klines_and_fills_at_the_price_of_its_moment(
    tmp_path: Path,
) -> None:
    """No look-ahead: every kline closed before the decision; fills happen then, at that price."""
    recording = load_recording(FIXTURE)
    series = recording.symbols["XRPUSDT"].klines
    future = {series.first_open + i * FIVE_MIN: Decimal(str(c)) for i, c in enumerate(series.c)}
    peeker = Peeker(future)
    fleet = _fleet(tmp_path, "trend")
    result = run_backtest(fleet, FIXTURE, to_ms=START + 6 * HOUR, strategies={"bt-1": peeker})
    assert len(peeker.seen) == 6 * 60 + 1
    for now, klines, _ in peeker.seen:
        assert klines[-1].close_time < now  # closed before the decision
        assert klines[-1].close_time >= now - FIVE_MIN  # and the latest one that has closed
    decided = {now for now, _, _ in peeker.seen}
    prices = ReplayMarket(recording, reference_ms=recording.start_ms)
    opens = [f for f in result.fills if f.kind == "open"]
    assert opens
    for fill in opens:
        assert fill.time_ms in decided  # the same simulated instant as the decision
        bid, ask = prices.book("XRPUSDT", fill.time_ms)
        assert fill.price == (ask if fill.qty > 0 else bid)  # the book then, not the future


def test_an_agent_trading_a_symbol_the_recording_lacks_is_refused(tmp_path: Path) -> None:
    """An agent on BTCUSDT over an XRPUSDT recording: ConfigError naming its file and symbol."""
    d = write_fleet(tmp_path, ("trend",))
    path = d / "bt-1.yaml"
    path.write_text(path.read_text().replace("[XRPUSDT]", "[BTCUSDT]"))
    with pytest.raises(ConfigError, match=r"bt-1.yaml: trading.symbols: BTCUSDT not in"):
        run_backtest(load_fleet(d), FIXTURE)


def test_backtest_cli_prints_the_versioned_json_summary(tmp_path: Path) -> None:
    """aster-agent backtest --json: {"version": 1, "agents": [...], "fills": [...]}, exit 0."""
    d = write_fleet(tmp_path, ("mean_reversion",))
    cmd = [sys.executable, "-m", "aster_agents", "--config-dir", str(d), "backtest"]
    args = ["--data", str(FIXTURE), "--to", "2021-11-18T03:00:00", "--json"]
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["version"] == 1 and [a["agent"] for a in doc["agents"]] == ["bt-1"]
    assert doc["to"] == 1_637_204_400_000 and doc["agent_ticks"] > 0
    bad = subprocess.run(
        [*cmd, "--data", str(tmp_path / "nothing")], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "not a directory" in bad.stderr
    assert "Traceback" not in bad.stderr


def write_accounts(root: Path, accounts: dict[str, tuple[str, ...]]) -> Path:
    """``write_fleet`` with the agents grouped on main accounts (account -> strategies); the
    last agent scans every 50 s, so the processes of a split run tick on other schedules."""
    strategies = tuple(s for group in accounts.values() for s in group)
    d = write_fleet(root, strategies)
    users = [user for user, group in accounts.items() for _ in group]
    for i, user in enumerate(users, 1):
        path = d / f"bt-{i}.yaml"
        text = path.read_text().replace(f'user: "0x{i:040x}"', f'user: "{user}"')
        share = 1 / len(accounts[user])
        text = text.replace("capital_pct: 0.5", f"capital_pct: {share:.2f}")
        if i == len(users):
            text = text.replace("scan_interval_seconds: 60", "scan_interval_seconds: 50")
        path.write_text(text)
    return d


def test_accounts_split_over_processes_book_what_one_process_books(tmp_path: Path) -> None:
    """Five agents on three main accounts: one, two or three processes give the same fills
    and sleeves; the agents of one account always share a process."""
    accounts = {
        f"0x{0xA:040x}": ("trend", "mean_reversion"),
        f"0x{0xB:040x}": ("breakout", "scalper"),
        f"0x{0xC:040x}": ("momentum",),
    }
    fleet = load_fleet(write_accounts(tmp_path, accounts))
    runs = {
        jobs: run_backtest(fleet, FIXTURE, to_ms=START + 8 * HOUR, jobs=jobs)
        for jobs in (1, 2, 3, 8)
    }
    assert [runs[j].workers for j in (1, 2, 3, 8)] == [1, 2, 3, 3]
    one = runs[1]
    assert len({f.agent_id for f in one.fills}) >= 3 and one.agent_ticks > 0
    for jobs in (2, 3, 8):
        assert runs[jobs].fills == one.fills
        assert runs[jobs].agents == one.agents
        assert runs[jobs].agent_ticks == one.agent_ticks


def test_the_automatic_rebalance_keeps_the_whole_fleet_in_one_process(tmp_path: Path) -> None:
    """It moves capital between accounts, so the accounts are not independent."""
    d = write_fleet(tmp_path, ("trend", "mean_reversion"))
    (d / "_portfolio.yaml").write_text(
        "state_dir: state\nrebalance:\n  enabled: true\n  interval_minutes: 60\n"
    )
    fleet = load_fleet(d)
    assert independent_groups(fleet, fleet.agents) == [["bt-1", "bt-2"]]
    result = run_backtest(fleet, FIXTURE, to_ms=START + HOUR, jobs=2)
    assert result.workers == 1 and result.agent_ticks == 2 * 61


@dataclass
class InAWorker:
    """Calls ``act`` in the process it decides in, unless that is ``parent``, and holds."""

    parent: int
    act: Callable[[], None]
    name: str = "in-a-worker"
    min_klines: int = 1

    def decide(self, market: MarketSnapshot, position: PositionView) -> Signal:
        if os.getpid() != self.parent:
            self.act()
        return Signal(Action.HOLD, 0.0, "held")


def _refuse() -> None:
    raise ConfigError("refused in the worker")


def test_a_worker_process_that_dies_fails_the_backtest_with_its_exit_code(tmp_path: Path) -> None:
    """bt-2 runs in the forked worker and kills it: an error naming the exit, no result."""
    fleet = _fleet(tmp_path)
    with pytest.raises(AsterAgentsError, match=r"a worker process died \(exit 3\)"):
        run_backtest(
            fleet,
            FIXTURE,
            to_ms=START + HOUR,
            jobs=2,
            strategies={"bt-2": InAWorker(os.getpid(), lambda: os._exit(3))},
        )


def test_share_out_deals_the_largest_groups_first_to_the_emptiest_bucket() -> None:
    groups = [["a"], ["b", "c", "d"], ["e", "f"], ["g"]]
    assert share_out(groups, 2) == [["b", "c", "d", "g"], ["e", "f", "a"]]  # 4 and 3
    assert share_out(groups, 1) == [["b", "c", "d", "e", "f", "a", "g"]]
    assert share_out(groups, 9) == [["b", "c", "d"], ["e", "f"], ["a"], ["g"]]


def test_turns_go_to_parts_yet_to_run_then_to_the_most_work_left() -> None:
    """Unknown costs first; then the CPU per turn so far times the turns left decides."""
    turns = Turns(4, 2, turns=10)
    assert turns.begin() == [0, 1]
    assert turns.passed(0, 1.0) == 2  # 2 and 3 have not run: they come before 0
    assert turns.passed(1, 4.0) == 3
    assert turns.passed(2, 0.5) == 1  # left: 0 -> 9 s, 1 -> 36 s, 2 -> 4.5 s
    assert turns.left(1) == 36.0 and turns.left(2) == 4.5
    assert turns.finished() == 0  # 3 finished: 0 (9 s left) before 2
    assert turns.finished() == 2
    assert turns.finished() is None


def _makespan(costs: list[float], at_once: int, count: int) -> float:
    """When the last of parts costing ``costs`` CPU s per turn (``count`` turns each) ends,
    on ``at_once`` cores handed out by ``Turns``: a small event simulation."""
    turns = Turns(len(costs), at_once, turns=count)
    done, used = [0] * len(costs), [0.0] * len(costs)
    running = {part: costs[part] for part in turns.begin()}  # part -> when its turn ends
    end = 0.0
    while running:
        part = min(running, key=lambda p: running[p])
        now = running.pop(part)
        done[part] += 1
        used[part] += costs[part]
        end = now
        after = turns.passed(part, used[part]) if done[part] < count else turns.finished()
        if after is not None:
            running[after] = now + costs[after]
    assert done == [count] * len(costs)
    return end


def test_turns_keep_every_core_busy_until_the_last_turns() -> None:
    """Parts of very different costs on two cores end within half a turn of the ideal
    (their total / 2): the cheap parts do not finish first and leave the costly one alone
    on a core (as taking turns first come, first served would: 78 s here for 64)."""
    costs = [0.033, 0.031, 0.025, 0.018]  # CPU s per turn of 64: bench parts of 2-3 agents
    assert _makespan(costs, 2, 64) <= sum(costs) * 64 / 2 + max(costs) / 2
    skewed = [1.0, 0.2, 0.2, 0.2, 0.2, 0.2]  # one part as costly as all others together
    assert _makespan(skewed, 2, 64) <= sum(skewed) * 64 / 2 + max(skewed) / 2


def test_an_error_in_a_worker_process_is_raised_by_the_backtest(tmp_path: Path) -> None:
    """The worker's ConfigError (which stops a runner) reaches the caller as itself."""
    fleet = _fleet(tmp_path)
    with pytest.raises(ConfigError, match="refused in the worker"):
        run_backtest(
            fleet,
            FIXTURE,
            to_ms=START + HOUR,
            jobs=2,
            strategies={"bt-2": InAWorker(os.getpid(), _refuse)},
        )


def test_a_backtest_keeps_its_books_on_the_recording_dates(tmp_path: Path) -> None:
    """Kept books: equity snapshots and fills in market time, inside the run; the account's
    exchange equity noted at the end equals the books (sleeves plus unallocated cash)."""
    fleet = _fleet(tmp_path)
    books = tmp_path / "books"
    books.mkdir()
    result = run_backtest(fleet, FIXTURE, to_ms=START + 4 * HOUR, state_dir=books)
    with Ledger(books) as ledger:
        for agent in ("bt-1", "bt-2"):
            times = [p.time_ms for p in ledger.equity_history(agent)]
            assert len(times) == 4 * 60 + 2  # every tick, and the start-up's
            assert times[0] >= START and times[-1] <= result.end_ms
            assert times == sorted(times)
        assert all(START <= f.time_ms <= result.end_ms for f in ledger.trade_fills())
        for user in ("0x" + "0" * 39 + "1", "0x" + "0" * 39 + "2"):
            account = ledger.account_books(user)
            assert account is not None and account.exchange_equity_ms is not None
            assert START + 4 * HOUR - 60_000 <= account.exchange_equity_ms <= result.end_ms


def test_backtest_cli_writes_the_report_of_its_books(tmp_path: Path) -> None:
    """--report: the fleet report of the run (the recording's dates, the books agreeing with
    the simulated exchange), never the fleet's PostgreSQL ledger (an unreachable URL here)."""
    d = write_fleet(tmp_path, ("trend", "breakout"))
    out = tmp_path / "out" / "report.html"
    out.parent.mkdir()
    cmd = [sys.executable, "-m", "aster_agents", "--config-dir", str(d), "backtest"]
    args = ["--data", str(FIXTURE), "--to", "2021-11-18T06:00:00", "--report", str(out), "--json"]
    env = {**os.environ, "ASTER_AGENTS_LEDGER_URL": "postgresql://nobody@127.0.0.1:1/none"}
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["report"] == str(out) and doc["fills"]
    html = out.read_text()
    assert 'data-difference="0.00000000"' in html and "books agree" in html
    assert "generated 2021-11-18 06:00:00Z" in html  # "now" is the end of the run (--to)
    assert html.count("2021-11-18") > 10 and "2026-" not in html  # no wall-clock date
    assert all(f">{a}<" in html for a in ("bt-1", "bt-2"))  # each sleeve in the table


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_a_worker_process_dies_with_its_killed_parent(tmp_path: Path) -> None:
    """The backtest's process SIGKILLed mid-run: its worker (slowed to run for minutes) is
    gone within seconds, not left trading on alone."""
    d = write_fleet(tmp_path)
    script = tmp_path / "run.py"
    script.write_text(
        "import os, time\n"
        "from pathlib import Path\n"
        "from aster_agents.config.schema import load_fleet\n"
        "from aster_agents.fleet.backtest import run_backtest\n"
        "from tests.test_backtest import FIXTURE, InAWorker\n"
        "slow = InAWorker(os.getpid(), lambda: time.sleep(0.1))\n"
        f"fleet = load_fleet(Path({str(d)!r}))\n"
        "run_backtest(fleet, FIXTURE, jobs=2, strategies={'bt-2': slow})\n"
    )
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen([sys.executable, str(script)], cwd=root, env=env)

    def started() -> list[int]:
        assert proc.poll() is None, f"the backtest exited early ({proc.returncode})"
        return _children(proc.pid)

    try:
        workers = wait_for(started, timeout=60, what="the worker process")
        proc.kill()
        proc.wait(10)
        wait_for(lambda: not any(map(_alive, workers)), timeout=15, what="the worker to die")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_backtest_cli_refuses_a_report_path_that_is_a_directory_before_running(
    tmp_path: Path,
) -> None:
    """--report DIR: exit 2 naming the option, at once (no backtest run, no fills printed)."""
    d = write_fleet(tmp_path, ("trend",))
    cmd = [sys.executable, "-m", "aster_agents", "--config-dir", str(d), "backtest"]
    args = ["--data", str(FIXTURE), "--report", str(tmp_path), "--json"]
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--report" in done.stderr and "is a directory" in done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
