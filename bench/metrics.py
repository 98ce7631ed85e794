"""Exporter cost: scrape time and RSS with 50 agents in the ledger.

Builds an agents.d and a ledger of N agents (capital, positions booked from fills, equity
snapshots, audit rows, request counters), starts ``aster-agent metrics --port 0`` as a real
process and scrapes it over HTTP.

    python bench/metrics.py --json [--agents 50] [--scrapes 200] [--snapshots 300]

Targets (issue 19): scrape p99 <= 50 ms with 50 agents; exporter RSS <= 60 MiB. Wall times
depend on the machine's load (reported as ``load_average_1m``); ``scrape_cpu_ms_mean`` is the
exporter's own CPU per scrape, which does not. An agent's
tick overhead is measured by ``bench/agents.py`` (the agents only gained a few counter
upserts inside transactions they already run).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import httpx

from aster_agents.exchange.base import RequestLog
from aster_agents.ledger import Ledger, SharedBudget
from aster_agents.models import Side
from aster_agents.signing import Signer, generate_private_key

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


def build(root: Path, agents: int, snapshots: int) -> tuple[Path, Path]:
    user = Signer(generate_private_key()).address
    config, state = root / "agents.d", root / "state"
    config.mkdir(parents=True)
    (config / "_portfolio.yaml").write_text("state_dir: state\n")
    ids = [f"agent-{n}" for n in range(1, agents + 1)]
    for agent_id in ids:
        signer = Signer(generate_private_key()).address
        (config / f"{agent_id}.yaml").write_text(
            f'id: {agent_id}\nname: {agent_id}\nexchange:\n  user: "{user}"\n'
            f'  signer: "{signer}"\n  signer_key_env: K\ntrading:\n  strategy: trend\n'
            f"  symbols: [{', '.join(SYMBOLS)}]\nallocation:\n  capital_pct: 0.01\n"
        )
    now = int(time.time() * 1000)
    with Ledger(state) as ledger:
        ledger.set_account_limits(user, max_total_positions=1000, max_gross_leverage=Decimal(5))
        ledger.ensure_account(user, Decimal(1_000_000))
        for n, agent_id in enumerate(ids):
            ledger.register_agent(agent_id, user, max_positions=3, capital=Decimal(10_000))
            symbol = f"C{n}USDT"  # one symbol per agent: the policy is exclusive
            intent = ledger.reserve(
                agent_id, symbol, Side.BUY, margin=Decimal(100), notional=Decimal(300)
            )
            ledger.mark_sent(intent.client_order_id)
            ledger.book_fill(
                intent.client_order_id,
                trade_id=n,
                symbol=symbol,
                side=Side.BUY,
                qty=Decimal("0.01"),
                price=Decimal(30_000),
                realized_pnl=Decimal(0),
                commission=Decimal("0.12"),
                time_ms=now,
            )
            for i in range(snapshots):
                t = now - (snapshots - i) * 60_000
                ledger.snapshot_equity(agent_id, Decimal(10_000 + (i % 17) - 8), t)
        ledger.record_marks(user, {f"C{n}USDT": Decimal(30_100) for n in range(agents)})
    budget = SharedBudget(state, user=user, agent_id=ids[0])
    for path in ("/fapi/v3/klines", "/fapi/v3/order", "/fapi/v3/positionRisk"):
        budget.record(RequestLog("GET", path, 200, 5, 12.0, None))
    budget.record(RequestLog("POST", "/fapi/v3/order", 400, 1, 9.0, -2019))
    budget.acquire(1)
    budget.close()
    return config, state


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (load-independent, unlike wall time)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--snapshots", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aster-bench-metrics-") as tmp:
        config, state = build(Path(tmp), args.agents, args.snapshots)
        cmd = [
            sys.executable,
            "-m",
            "aster_agents",
            "--config-dir",
            str(config),
            "--state-dir",
            str(state),
            "metrics",
            "--port",
            "0",
        ]
        env = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "cache")}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert proc.stdout is not None
            select.select([proc.stdout], [], [], 30)
            url = proc.stdout.readline().strip()
            times, size = [], 0
            with httpx.Client(timeout=10) as client:
                client.get(url)  # warm-up: imports, the config cache, the whole equity table
                cpu_before = cpu_s(proc.pid)
                for _ in range(args.scrapes):
                    started = time.perf_counter()
                    size = len(client.get(url).content)
                    times.append((time.perf_counter() - started) * 1000)
            cpu = cpu_s(proc.pid) - cpu_before
            rss = rss_mib(proc.pid)
            load = os.getloadavg()[0]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=10)
    times.sort()
    result = {
        "bench": "metrics",
        "agents": args.agents,
        "snapshots_per_agent": args.snapshots,
        "scrapes": args.scrapes,
        "scrape_ms_p50": round(statistics.median(times), 2),
        "scrape_ms_p99": round(times[int(len(times) * 0.99) - 1], 2),
        "scrape_ms_max": round(times[-1], 2),
        "scrape_cpu_ms_mean": round(cpu * 1000 / args.scrapes, 2),
        "load_average_1m": round(load, 1),
        "cores": os.cpu_count(),
        "exposition_bytes": size,
        "exporter_rss_mib": round(rss, 1),
        "targets": {"scrape_ms_p99": 50, "exporter_rss_mib": 60},
    }
    result["ok"] = result["scrape_ms_p99"] <= 50 and result["exporter_rss_mib"] <= 60
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
