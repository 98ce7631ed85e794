"""``aster-agent report`` and ``aster-agent trades`` on a large ledger.

    python bench/report.py --json                      # 10 agents, 30 days, 10,000 round trips
    python bench/report.py --days 3 --trips 1000 --json  # a quick run

Builds a ledger through the Ledger API: the shipped agents registered on one account, one
equity snapshot a minute per agent for ``--days`` days (``Ledger.import_equity``, one
transaction per agent) and ``--trips`` round trips spread over the agents and the period
(every fill through ``Ledger.book_fill``). The state dir is on /dev/shm when it exists, only
so that building 20,000 durable fills does not take minutes; the timed commands read it.

Then times, as subprocesses (what a user waits for, start-up included), the median of
``--runs`` runs: ``report --out FILE`` (target <= 5 s, file <= 5 MB) and ``trades --json`` /
``trades --csv`` with every trip (target <= 1 s).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aster_agents.ledger import Ledger  # noqa: E402
from aster_agents.models import Side  # noqa: E402

USER = "0xD07531b644C108a916D454E029bE3C61B4A0de72"
MINUTE = 60_000
REPORT_TARGET_S = 5.0
REPORT_MAX_BYTES = 5 * 1024 * 1024
TRADES_TARGET_S = 1.0
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT")


def build(root: Path, agents: int, days: float, trips: int) -> dict[str, float]:
    """An agents.d with ``agents`` shipped agents and their ledger; seconds spent per part."""
    config = root / "agents.d"
    config.mkdir()
    ids = [f"agent-{i}" for i in range(1, agents + 1)]
    for name in ("_portfolio", *ids):
        shutil.copy(ROOT / "agents.d" / f"{name}.yaml", config / f"{name}.yaml")
    now = time.time_ns() // 1_000_000 // MINUTE * MINUTE
    start = now - int(days * 1440) * MINUTE
    took: dict[str, float] = {}
    with Ledger(root / "state") as ledger:
        ledger.set_account_limits(
            USER, max_total_positions=50, max_gross_leverage=Decimal(10), equity=Decimal(100_000)
        )
        for agent in ids:
            ledger.register_agent(agent, USER, max_positions=5, capital=Decimal(10_000))
        ledger.ensure_account(USER, Decimal(100_000), start)
        began = time.perf_counter()
        for k, agent in enumerate(ids):
            ledger.import_equity(agent, _curve(start, now, k))
        took["build_equity_s"] = time.perf_counter() - began
        began = time.perf_counter()
        _trips(ledger, ids, start, now, trips)
        took["build_trades_s"] = time.perf_counter() - began
    return took


def _curve(start: int, end: int, k: int) -> list[tuple[int, Decimal]]:
    """A random-walk-looking but deterministic equity curve, one point a minute."""
    out = []
    value = 10_000.0
    for i, t in enumerate(range(start, end, MINUTE)):
        value *= 1 + ((i * 7919 + k * 104729) % 2001 - 1000) / 2_000_000
        out.append((t, Decimal(f"{value:.2f}")))
    return out


def _trips(ledger: Ledger, ids: list[str], start: int, end: int, trips: int) -> None:
    """``trips`` round trips (one buy, one sell each) through one open and one close intent
    per agent and symbol."""
    step = max(1, (end - start) // max(1, trips // len(ids) + 1))
    trade_id = 0
    for k, agent in enumerate(ids):
        symbol = SYMBOLS[k % len(SYMBOLS)] if len(ids) <= len(SYMBOLS) else f"SYM{k}USDT"
        opening = ledger.reserve(agent, symbol, Side.BUY, margin=Decimal(10), notional=Decimal(20))
        closing = ledger.reserve(
            agent, symbol, Side.SELL, margin=Decimal(0), notional=Decimal(0), kind="close"
        )
        for coid in (opening.client_order_id, closing.client_order_id):
            ledger.mark_sent(coid)
            ledger.confirm(coid)
        count = trips // len(ids) + (1 if k < trips % len(ids) else 0)
        for i in range(count):
            t = start + i * step
            pnl = Decimal((i * 37 + k) % 21 - 10) / 10
            for coid, side, at, realized in (
                (opening.client_order_id, Side.BUY, t, Decimal(0)),
                (closing.client_order_id, Side.SELL, t + step // 2, pnl),
            ):
                trade_id += 1
                ledger.book_fill(
                    coid,
                    trade_id=trade_id,
                    symbol=symbol,
                    side=side,
                    qty=Decimal(1),
                    price=Decimal(100) + realized,
                    realized_pnl=realized,
                    commission=Decimal("0.04"),
                    time_ms=at,
                )


def timed(cmd: list[str], runs: int, out: Path | None = None) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system) of ``cmd`` over ``runs`` runs.

    CPU time moves less than wall time when other processes share the cores."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.perf_counter()
        with (out or Path(os.devnull)).open("wb") as sink:
            subprocess.run(cmd, check=True, stdout=sink, stderr=subprocess.PIPE)
        walls.append(time.perf_counter() - began)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--trips", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="aster-bench-report-", dir=shm if shm.is_dir() else None))
    try:
        took = build(root, args.agents, args.days, args.trips)
        cli = [
            sys.executable,
            "-m",
            "aster_agents",
            "--config-dir",
            str(root / "agents.d"),
            "--state-dir",
            str(root / "state"),
        ]
        html = root / "report.html"
        report_s, report_cpu = timed([*cli, "report", "--out", str(html)], args.runs)
        trades_json_s, json_cpu = timed([*cli, "trades", "--json"], args.runs, root / "t.json")
        trades_csv_s, csv_cpu = timed([*cli, "trades", "--csv"], args.runs, root / "t.csv")
        shown = len(json.loads((root / "t.json").read_text())["trades"])
        result = {
            "bench": "report",
            "agents": args.agents,
            "days": args.days,
            "snapshots": args.agents * int(args.days * 1440),
            "round_trips": shown,
            "report_s": round(report_s, 3),
            "report_cpu_s": round(report_cpu, 3),
            "report_bytes": html.stat().st_size,
            "trades_json_s": round(trades_json_s, 3),
            "trades_json_cpu_s": round(json_cpu, 3),
            "trades_csv_s": round(trades_csv_s, 3),
            "trades_csv_cpu_s": round(csv_cpu, 3),
            "report_ok": report_s <= REPORT_TARGET_S and html.stat().st_size <= REPORT_MAX_BYTES,
            "trades_ok": max(trades_json_s, trades_csv_s) <= TRADES_TARGET_S,
            **{k: round(v, 2) for k, v in took.items()},
            "state_on": "tmpfs" if str(root).startswith(str(shm)) else "disk",
            "load_avg": [round(x, 2) for x in os.getloadavg()],
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>16}: {value}")


if __name__ == "__main__":
    main()
