"""Agent fleet costs: market-data weight, tick overhead and memory for 1 and 10 agents.

Starts the simulator in this process and N real ``aster-agent run`` processes on one account,
all reading the same symbols and interval, for the same wall time; then reads the agents'
own logs (one line per exchange request, one timing line per tick at DEBUG) and their RSS.

    python bench/agents.py --json [--seconds 30] [--agents 1 10]

Targets (issue 5): 10 agents cost at most 1.5x the market-data request weight per minute of
one agent; tick overhead excluding network p99 <= 5 ms; RSS <= 80 MiB per agent. The tick
overhead is the tick's CPU time (``time.process_time``): with 10 agents on 2 cores, wall time
minus network also counts waiting for a core, for fsync and for the ledger lock, which is
reported next to it (``tick_wall_minus_network_*``) but is not the tick's own cost.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from aster_agents.signing import Signer, generate_private_key
from aster_agents.sim.server import SimAccount, SimConfig, SimServer

SPEED = 60.0
SYMBOLS = ("BTCUSDT", "ETHUSDT")
REQUEST_RE = re.compile(r"GET /fapi/v3/klines -> 200 w(\d+)")
TICK_RE = re.compile(r"tick [\d.]+ms, network [\d.]+ms, own ([\d.]+)ms, cpu ([\d.]+)ms")


def write_fleet(root: Path, sim: SimServer, n: int) -> dict[str, str]:
    main = Signer(generate_private_key())
    keys = {f"agent-{i}": generate_private_key() for i in range(1, n + 1)}
    signers = {a: Signer(k).address for a, k in keys.items()}
    sim.add_account(SimAccount(main.address, tuple(signers.values()), Decimal(1_000_000)))
    config = root / "agents.d"
    config.mkdir(parents=True)
    (config / "_portfolio.yaml").write_text(
        "state_dir: state\nlimits:\n  max_total_positions: 20\n"
    )
    for agent_id, signer in signers.items():
        (config / f"{agent_id}.yaml").write_text(
            f"id: {agent_id}\nname: Bench {agent_id}\nexchange:\n  user: '{main.address}'\n"
            f"  signer: '{signer}'\n  signer_key_env: KEY_{agent_id.replace('-', '_').upper()}\n"
            f"  base_url: {sim.base_url}\ntrading:\n  strategy: trend\n"
            f"  symbols: [{', '.join(SYMBOLS)}]\n  interval: 1m\n  scan_interval_seconds: 1\n"
            "  max_positions: 1\n  min_confidence: 0.6\n  position_size_pct: 0.02\n"
            f"  leverage: 2\nallocation:\n  capital_pct: {round(0.9 / n, 4)}\n"
        )
    return {f"KEY_{a.replace('-', '_').upper()}": k for a, k in keys.items()}


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run(n: int, seconds: float) -> dict[str, object]:
    with (
        tempfile.TemporaryDirectory(prefix="aa-bench-") as tmp,
        SimServer(SimConfig(port=0, seed=3, speed=SPEED)) as sim,
    ):
        root = Path(tmp)
        sim.start()
        keys = write_fleet(root, sim, n)
        env = {
            **os.environ,
            **keys,
            "ASTER_AGENTS_MARKET_SPEED": str(SPEED),
            "ASTER_AGENTS_LOG_LEVEL": "DEBUG",
        }
        base = [sys.executable, "-m", "aster_agents", "--config-dir", str(root / "agents.d")]
        procs = [
            subprocess.Popen(
                [*base, "run", "--id", f"agent-{i}"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(1, n + 1)
        ]
        started = time.monotonic()
        rss: list[float] = []
        while time.monotonic() - started < seconds:
            time.sleep(1.0)
            rss.extend(rss_mib(p.pid) for p in procs)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(30) for p in procs]
        elapsed = time.monotonic() - started
        weight, own, cpu = 0, [], []
        for log in (root / "state" / "logs").glob("agent-*.log"):
            text = log.read_text()
            weight += sum(int(w) for w in REQUEST_RE.findall(text))
            for wall_ms, cpu_ms in TICK_RE.findall(text):
                own.append(float(wall_ms))
                cpu.append(float(cpu_ms))
    own.sort()
    cpu.sort()
    return {
        "agents": n,
        "seconds": round(elapsed, 1),
        "exit_codes_ok": all(c == 0 for c in codes),
        "market_data_weight_per_min": round(weight / elapsed * 60, 1),
        "ticks": len(own),
        "tick_cpu_p50_ms": _pct(cpu, 0.5),
        "tick_cpu_p99_ms": _pct(cpu, 0.99),
        "tick_wall_minus_network_p50_ms": _pct(own, 0.5),
        "tick_wall_minus_network_p99_ms": _pct(own, 0.99),
        "rss_mib_max": round(max(rss), 1) if rss else None,
    }


def _pct(values: list[float], q: float) -> float | None:
    return round(values[int(q * (len(values) - 1))], 3) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--agents", type=int, nargs="+", default=[1, 10])
    args = parser.parse_args()
    runs = [run(n, args.seconds) for n in args.agents]
    one = next((r for r in runs if r["agents"] == 1), runs[0])
    many = max(runs, key=lambda r: int(str(r["agents"])))
    ratio = float(str(many["market_data_weight_per_min"])) / max(
        1e-9, float(str(one["market_data_weight_per_min"]))
    )
    p99 = max(float(str(r["tick_cpu_p99_ms"] or 0)) for r in runs)
    rss = max(float(str(r["rss_mib_max"] or 0)) for r in runs)
    doc = {
        "version": 1,
        "bench": "agents",
        "runs": runs,
        "market_data_weight_ratio": round(ratio, 2),
        "targets": {"market_data_weight_ratio": 1.5, "tick_cpu_p99_ms": 5.0, "rss_mib": 80},
        "ok": ratio <= 1.5 and p99 <= 5.0 and rss <= 80,
    }
    print(json.dumps(doc, indent=2) if args.json else doc)


if __name__ == "__main__":
    main()
