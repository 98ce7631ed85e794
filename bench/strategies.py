"""CPU per ``decide`` of each rule strategy, as the runner calls it in a backtest.

    python bench/strategies.py --json               # 1,500 ticks, best of 5 rounds
    python bench/strategies.py --ticks 300 --rounds 2 --json

Candles from the simulator's seeded generator (1-minute XRPUSDT); each strategy gets the
runner's window (``min_klines + 2``, at least 60) moving by one candle per tick, the same
Kline objects from tick to tick, flat, long and short (one strategy object each, as an agent
keeps its own). Reports microseconds of CPU per decide (the best round, the machine being
shared: read the figures against the same run of the other build), per strategy and position,
and their mean over the backtest's fleet mix (``bench/backtest.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backtest import STRATEGIES as FLEET  # noqa: E402  # bench/backtest.py's agents

from aster_agents.agent.runner import KLINE_FLOOR, KLINE_LIMIT_MAX  # noqa: E402  # its window
from aster_agents.models import Kline  # noqa: E402
from aster_agents.sim.market import Market  # noqa: E402
from aster_agents.strategies import (  # noqa: E402
    FLAT,
    MarketSnapshot,
    PositionView,
    Strategy,
    get_strategy,
)

START = 1_767_225_600_000  # 2026-01-01 00:00 UTC
MINUTE = 60_000


def candles(count: int) -> list[Kline]:
    """``count`` closed 1-minute XRPUSDT candles from the seeded simulator market."""
    market = Market(seed=11, start_ms=START, history_minutes=0)
    market.freeze(START + count * MINUTE - 1)
    out: list[Kline] = []
    t = START
    while len(out) < count:
        rows = market.klines("XRPUSDT", "1m", start=t, limit=1500)
        for r in rows:
            o, h, lo, c, v = (Decimal(str(x)) for x in r[1:6])
            out.append(Kline(int(str(r[0])), o, h, lo, c, v, int(str(r[6]))))
        t = out[-1].close_time + 1
    return out[:count]


def window_of(strategy: Strategy) -> int:
    """The runner's kline limit for ``strategy`` (less the forming candle)."""
    return min(KLINE_LIMIT_MAX, max(KLINE_FLOOR, strategy.min_klines + 2)) - 1


def per_decide_us(name: str, klines: list[Kline], position: PositionView, ticks: int) -> float:
    """CPU microseconds per decide of a fresh ``name`` over ``ticks`` moving windows."""
    strategy = get_strategy(name, {})
    width = window_of(strategy)
    markets = [
        MarketSnapshot("XRPUSDT", "1m", w, w[-1].close, w[-1].close_time + 1)
        for w in (tuple(klines[end - width : end]) for end in range(width, width + ticks))
    ]
    decide = strategy.decide
    started = time.process_time()
    for market in markets:
        decide(market, position)
    return (time.process_time() - started) / ticks * 1e6


def measure(ticks: int, rounds: int) -> dict[str, dict[str, float]]:
    """Best-of-``rounds`` microseconds per decide, by strategy then position."""
    klines = candles(ticks + KLINE_LIMIT_MAX)
    entry = klines[0].close
    positions = {
        "flat": FLAT,
        "long": PositionView(Decimal(1), entry, 0),
        "short": PositionView(Decimal(-1), entry, 0),
    }
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(FLEET):
        out[name] = {
            side: round(min(per_decide_us(name, klines, p, ticks) for _ in range(rounds)), 2)
            for side, p in positions.items()
        }
    return out


def main() -> None:
    """Parse arguments, measure, print."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ticks", type=int, default=1500, help="windows per strategy and position")
    ap.add_argument("--rounds", type=int, default=5, help="repeats; the best one is reported")
    ap.add_argument("--json", action="store_true", help="one JSON document")
    args = ap.parse_args()
    us = measure(args.ticks, args.rounds)
    fleet_flat = sum(us[n]["flat"] for n in FLEET) / len(FLEET)
    result = {
        "version": 1,
        "ticks": args.ticks,
        "rounds": args.rounds,
        "us_per_decide": us,
        "fleet_mean_flat_us": round(fleet_flat, 2),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    if args.json:
        print(json.dumps(result))
        return
    for name, row in us.items():
        print(f"{name:15s} " + "  ".join(f"{k} {v:7.2f} us" for k, v in row.items()))
    print(f"fleet mean (flat): {fleet_flat:.2f} us per decide, load {result['load_average_1m']}")


if __name__ == "__main__":
    main()
