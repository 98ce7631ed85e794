"""``aster-agent backtest`` throughput: agent-ticks per second and memory peak.

    python bench/backtest.py --json               # 10 agents, 1-minute klines, 30 days
    python bench/backtest.py --days 0.25 --json   # a quick run
    python bench/backtest.py --days 0.25 --process-minutes 10 --json   # and as processes

Writes a recording of ``--days`` days of 1-minute klines and 8-hourly funding for the symbols
the agents trade (from the seeded generator, in the project's recording format), ten agents
(the rule strategies, one per main account, each on one symbol, 1m interval, ticking every 60
market seconds), then runs ``run_backtest`` and reports agent-ticks per second (target >= 5,000
on the project's 2-core machine) and the peak RSS of its largest process. The ten accounts are
independent, so ``--jobs`` processes (default: one per core) run them at once; ``--jobs 1``
gives the one-process figure a fleet on a single main account gets. On a shared machine read
``cpu_ms_per_agent_tick`` / ``agent_ticks_per_cpu_s`` (CPU time, not wall time) with
``load_average_1m``.

For comparison, the first ``--process-minutes`` market minutes of the same recording are
replayed by the same agents as processes (``aster-agent run`` over loopback HTTP) on a lockstep
simulator (``sim --market replay --lockstep``), timed from the first turn to the last, and
backtested again: ``process_*`` figures, and whether both booked the same fills.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
from typing import Any  # noqa: E402

from aster_agents.config.schema import load_fleet  # noqa: E402
from aster_agents.fleet.backtest import run_backtest, usable_cores  # noqa: E402
from aster_agents.ledger import Ledger  # noqa: E402
from aster_agents.signing import Signer, generate_private_key  # noqa: E402
from aster_agents.sim.accounts import accounts_from_pairs  # noqa: E402
from aster_agents.sim.market import Market  # noqa: E402
from aster_agents.sim.recording import FUNDING_COLUMNS, KLINE_COLUMNS, write_csv  # noqa: E402
from aster_agents.sim.server import SimConfig, SimServer  # noqa: E402
from aster_agents.sim.symbols import SYMBOLS  # noqa: E402

TARGET = 5000.0
DAY = 86_400_000
START = 1_767_225_600_000  # 2026-01-01 00:00 UTC
STRATEGIES = (
    "trend",
    "mean_reversion",
    "breakout",
    "momentum",
    "scalper",
    "swing",
    "conservative",
    "aggressive",
    "trend",
    "mean_reversion",
)


def write_recording(out: Path, days: float) -> int:
    """1m klines and funding for every simulator symbol; returns the candle count per symbol."""
    minutes = int(days * 1440) + 100  # + the replay's warm-up
    # genesis at START (a UTC midnight), the clock frozen at the end: every minute in between
    market = Market(seed=11, start_ms=START, history_minutes=0)
    market.freeze(START + minutes * 60_000 - 1)
    for symbol in sorted(set(traded())):
        rows, t = [], START
        while t < START + minutes * 60_000:
            batch = market.klines(symbol, "1m", start=t, limit=1500)
            rows += [[str(r[0]), *(str(x) for x in r[1:6])] for r in batch]
            t = int(str(batch[-1][0])) + 60_000
        write_csv(out / f"{symbol}-1m-klines.csv", KLINE_COLUMNS, rows)
        times = range(START, START + minutes * 60_000, 8 * 3_600_000)
        funding = [[str(f), str(market.funding_rate(symbol, f))] for f in times]
        write_csv(out / f"{symbol}-fundingRate.csv", FUNDING_COLUMNS, funding)
    return minutes


def peak_rss_kb() -> int:
    """The peak RSS of this process or of any backtest worker it has waited for (read it
    before ``--process-minutes`` starts agent processes, children too)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def traded() -> list[str]:
    """Each agent's symbol, in agent order (the simulator's symbols in turn)."""
    symbols = sorted(SYMBOLS)
    return [symbols[i % len(symbols)] for i in range(1, len(STRATEGIES) + 1)]


def write_fleet(
    root: Path, keys: dict[int, str] | None = None, base_url: str = "http://127.0.0.1:1"
) -> Path:
    """Ten agents; with ``keys`` (agent number -> private key) each signs for itself."""
    d = root / "agents.d"
    d.mkdir(parents=True)
    (d / "_portfolio.yaml").write_text("state_dir: state\n")
    symbols = traded()
    for i, strategy in enumerate(STRATEGIES, 1):
        user, signer = f"0x{i:040x}", f"0x{i + 100:040x}"
        if keys is not None:  # a main account signing for itself
            user = signer = Signer(keys[i]).address
        (d / f"bench-{i}.yaml").write_text(
            f"id: bench-{i}\nname: bench {i}\nexchange:\n"
            f'  user: "{user}"\n  signer: "{signer}"\n'
            f"  signer_key_env: BENCH_{i}_KEY\n  base_url: {base_url}\n"
            f"trading:\n  strategy: {strategy}\n  symbols: [{symbols[i - 1]}]\n"
            "  interval: 1m\n  scan_interval_seconds: 60\n  max_positions: 1\n"
            "  min_confidence: 0.5\n  position_size_pct: 0.1\n  leverage: 3\n"
            "  stop_loss_pct: 0.01\n  take_profit_pct: 0.02\nallocation:\n  capital_pct: 1.0\n"
        )
    return d


def write_slice(src: Path, out: Path, minutes: int) -> None:
    """The first 100 (warm-up) + ``minutes`` candles of every kline file, and the funding."""
    out.mkdir()
    for path in src.iterdir():
        lines = path.read_text().splitlines()
        keep = lines[: 1 + 100 + minutes] if path.name.endswith("-klines.csv") else lines
        (out / path.name).write_text("\n".join(keep) + "\n")


def process_replay(root: Path, data: Path) -> dict[str, Any]:
    """The agents as processes on a lockstep replay of ``data``; its figures and fills."""
    keys = {i: generate_private_key() for i in range(1, len(STRATEGIES) + 1)}
    ids = tuple(f"bench-{i}" for i in keys)
    config = SimConfig(market="replay", data_dir=data, lockstep=ids)
    with SimServer(config) as sim:
        pairs = [(Signer(k).address,) * 2 for k in keys.values()]
        for account in accounts_from_pairs(pairs):
            sim.add_account(account)
        d = write_fleet(root, keys, sim.base_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASTER_AGENTS_")}
        env.update({f"BENCH_{i}_KEY": k for i, k in keys.items()})
        cmd = [sys.executable, "-m", "aster_agents", "--config-dir", str(d)]
        procs = [
            subprocess.Popen(
                [*cmd, "--state-dir", str(root / "state"), "run", "--id", agent_id],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for agent_id in ids
        ]
        lockstep = sim.app.lockstep
        assert lockstep is not None
        try:
            while lockstep.turns < len(ids):  # every agent has started and had its start-up turn
                time.sleep(0.05)
            started, first = time.perf_counter(), lockstep.turns
            while not lockstep.finished:
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
            timed = lockstep.turns - first  # the turns seen, timed from the first one seen
            ticks = lockstep.turns - len(ids)  # every turn but the start-up ones
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            codes = [proc.wait(60) for proc in procs]
        offset = sim.market.offset_ms  # type: ignore[attr-defined]
    with Ledger(root / "state") as ledger:
        fills = [f._replace(time_ms=f.time_ms - offset) for f in ledger.trade_fills()]
    return {
        "agent_ticks": ticks,
        "timed_agent_ticks": timed,
        "elapsed_s": elapsed,
        "exit_codes_ok": codes == [0] * len(codes),
        "fills": fills,
    }


def compare(root: Path, data: Path, minutes: int) -> dict[str, Any]:
    """Process-mode figures on the first ``minutes`` of ``data``, and the backtest's there."""
    part = root / "slice"
    write_slice(data, part, minutes)
    run = process_replay(root / "processes", part)
    (root / "bt").mkdir()
    bt = run_backtest(load_fleet(write_fleet(root / "bt")), part, state_dir=root / "bt")
    with Ledger(root / "bt") as ledger:
        want = ledger.trade_fills()
    strip = [(f.agent_id, f.symbol, f.qty, f.price, f.time_ms, f.kind) for f in want]
    got = [(f.agent_id, f.symbol, f.qty, f.price, f.time_ms, f.kind) for f in run["fills"]]
    return {
        "process_minutes": minutes,
        "process_agent_ticks": run["agent_ticks"],
        "process_elapsed_s": round(run["elapsed_s"], 2),
        "process_agent_ticks_per_s": round(
            run["timed_agent_ticks"] / max(run["elapsed_s"], 1e-9), 1
        ),
        "process_exit_codes_ok": run["exit_codes_ok"],
        "process_fills": len(got),
        "process_equals_backtest": got == strip and bt.agent_ticks == run["agent_ticks"],
        "backtest_agent_ticks_per_s_same_slice": round(bt.agent_ticks / max(bt.elapsed_s, 1e-9), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="processes at once (0: one per core; the bench's agents are on ten accounts)",
    )
    parser.add_argument(
        "--process-minutes",
        type=int,
        default=0,
        help="also replay this many market minutes with the agents as processes (0: no)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-backtest-") as tmp:
        root = Path(tmp)
        data = root / "recording"
        data.mkdir()
        started = time.perf_counter()
        write_recording(data, args.days)
        prepared = time.perf_counter() - started
        fleet = load_fleet(write_fleet(root))
        result = run_backtest(fleet, data, jobs=args.jobs or usable_cores())
        peak_kb = peak_rss_kb()
        processes = compare(root, data, args.process_minutes) if args.process_minutes else {}
    rate = result.agent_ticks / max(result.elapsed_s, 1e-9)
    cpu_rate = result.agent_ticks / max(result.cpu_s, 1e-9)
    doc = {
        "bench": "backtest",
        "agents": len(STRATEGIES),
        "interval": "1m",
        "days": args.days,
        "workers": result.workers,  # processes that ran it at once
        "agent_ticks": result.agent_ticks,
        "fills": len(result.fills),
        "elapsed_s": round(result.elapsed_s, 2),
        "agent_ticks_per_s": round(rate, 1),
        "cpu_s": round(result.cpu_s, 2),
        "cpu_ms_per_agent_tick": round(1000 / cpu_rate, 3),
        "agent_ticks_per_cpu_s": round(cpu_rate, 1),  # the rate on one idle core
        "target_agent_ticks_per_s": TARGET,
        "ok": rate >= TARGET,
        "load_average_1m": round(os.getloadavg()[0], 2),  # the machine is shared: read with it
        "recording_written_s": round(prepared, 2),
        "peak_rss_mb": round(peak_kb / 1024, 1),  # the largest of its processes
        **processes,
    }
    print(json.dumps(doc) if args.json else json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
