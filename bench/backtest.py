"""``aster-agent backtest`` throughput: agent-ticks per second and memory peak.

    python bench/backtest.py --json               # 10 agents, 1-minute klines, 30 days
    python bench/backtest.py --days 0.25 --json   # a quick run

Writes a recording of ``--days`` days of 1-minute klines and 8-hourly funding for the six
simulator symbols (from the seeded generator, in the project's recording format), ten agents
(the rule strategies, one per main account, each on one symbol, 1m interval, ticking every 60
market seconds), then runs ``run_backtest`` in this process and reports agent-ticks per second
(target >= 5,000 on the project's 2-core machine) and the process's peak RSS.
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

from aster_agents.config.schema import load_fleet  # noqa: E402
from aster_agents.fleet.backtest import run_backtest  # noqa: E402
from aster_agents.sim.market import Market  # noqa: E402
from aster_agents.sim.recording import FUNDING_COLUMNS, KLINE_COLUMNS, write_csv  # noqa: E402
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
    market = Market(seed=11, start_ms=START + minutes * 60_000, history_minutes=0)
    market.freeze(START + minutes * 60_000 - 1)
    for symbol in SYMBOLS:
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


def write_fleet(root: Path) -> Path:
    d = root / "agents.d"
    d.mkdir(parents=True)
    (d / "_portfolio.yaml").write_text("state_dir: state\n")
    symbols = sorted(SYMBOLS)
    for i, strategy in enumerate(STRATEGIES, 1):
        (d / f"bench-{i}.yaml").write_text(
            f"id: bench-{i}\nname: bench {i}\nexchange:\n"
            f'  user: "0x{i:040x}"\n  signer: "0x{i + 100:040x}"\n'
            f"  signer_key_env: BENCH_{i}_KEY\n  base_url: http://127.0.0.1:1\n"
            f"trading:\n  strategy: {strategy}\n  symbols: [{symbols[i % len(symbols)]}]\n"
            "  interval: 1m\n  scan_interval_seconds: 60\n  max_positions: 1\n"
            "  min_confidence: 0.5\n  position_size_pct: 0.1\n  leverage: 3\n"
            "  stop_loss_pct: 0.01\n  take_profit_pct: 0.02\nallocation:\n  capital_pct: 1.0\n"
        )
    return d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-backtest-") as tmp:
        root = Path(tmp)
        data = root / "recording"
        data.mkdir()
        started = time.perf_counter()
        write_recording(data, args.days)
        prepared = time.perf_counter() - started
        fleet = load_fleet(write_fleet(root))
        result = run_backtest(fleet, data)
    rate = result.agent_ticks / max(result.elapsed_s, 1e-9)
    doc = {
        "bench": "backtest",
        "agents": len(STRATEGIES),
        "interval": "1m",
        "days": args.days,
        "agent_ticks": result.agent_ticks,
        "fills": len(result.fills),
        "elapsed_s": round(result.elapsed_s, 2),
        "agent_ticks_per_s": round(rate, 1),
        "target_agent_ticks_per_s": TARGET,
        "ok": rate >= TARGET,
        "recording_written_s": round(prepared, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(doc) if args.json else json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
