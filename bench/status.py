"""``aster-agent status --json`` start-up benchmark with the shipped ten agents.

    python bench/status.py --json

Builds a temporary state dir with a populated ledger (the ten agents of the repo's agents.d
registered, positions, equity snapshots, heartbeats from a live and a dead pid), then times
``aster-agent status --json`` as a subprocess against ``python -c "import typer, rich"``, the
median of ``--runs`` runs each, in the same run. Target: ratio <= 1.5.

Both sides load compiled bytecode, as an installed package does: typer and rich have the
``.pyc`` files pip wrote, and the package gets its own from the untimed first run, so the
children run without ``PYTHONDONTWRITEBYTECODE`` (a sandbox that sets it would otherwise
make every timed ``status`` compile its twenty modules from source: 1.8x the baseline in
instructions where the compiled package takes 1.4x). ``bytecode`` in the JSON says so.

For reference it also times a one-command Typer app that does nothing (``typer_noop_s``):
running any Typer command imports pydantic (typer._adapters in the installed Typer), which
``import typer, rich`` alone does not; ``import_ms`` is the cumulative ``-X importtime`` of
the heaviest imports of one status run.
"""

from __future__ import annotations

import argparse
import json
import os
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

from aster_agents.config.schema import load_fleet  # noqa: E402
from aster_agents.ledger import Ledger  # noqa: E402
from aster_agents.models import Side  # noqa: E402

TARGET_RATIO = 1.5
SNAPSHOTS_PER_AGENT = 500
TYPER_NOOP = """import typer
app = typer.Typer()
@app.command()
def noop(as_json: bool = typer.Option(False, "--json")) -> None:
    print("{}")
app()
"""
BREAKDOWN = (
    "typer._adapters",
    "eth_utils",
    "aster_agents.signing",
    "aster_agents.config.schema",
    "aster_agents.ledger",
    "aster_agents.fleet.view",
    "aster_agents.cli.main",
)


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def populate(state: Path, config_dir: Path) -> None:
    """Register every agent, book a position for each, write snapshots and heartbeats."""
    fleet = load_fleet(config_dir, check_strategies=False)
    gone = dead_pid()
    now = time.time_ns() // 1_000_000
    taken: set[str] = set()
    with Ledger(state) as ledger:
        for user in {a.exchange.user for a in fleet.agents}:
            ledger.set_account_limits(
                user, max_total_positions=10, max_gross_leverage=Decimal(3), equity=Decimal(10000)
            )
        for i, agent in enumerate(fleet.agents):
            capital = Decimal(10000) * Decimal(str(agent.allocation.capital_pct))
            ledger.register_agent(
                agent.id,
                agent.exchange.user,
                max_positions=agent.trading.max_positions,
                capital=capital,
            )
            free = [s for s in agent.trading.symbols if s not in taken]
            if free:
                taken.add(free[0])
                open_position(ledger, agent.id, free[0], i + 1, now)
            for k in range(SNAPSHOTS_PER_AGENT):
                t = now - (SNAPSHOTS_PER_AGENT - k) * 60_000
                ledger.snapshot_equity(agent.id, capital + Decimal(k % 37 - 18) / 4, t)
            ledger.heartbeat(agent.id, os.getpid() if i % 3 else gone, tick=True)


def open_position(ledger: Ledger, agent_id: str, symbol: str, trade_id: int, now: int) -> None:
    intent = ledger.reserve(agent_id, symbol, Side.BUY, margin=Decimal(50), notional=Decimal(150))
    ledger.confirm(intent.client_order_id)
    ledger.book_fill(
        intent.client_order_id,
        trade_id=trade_id,
        symbol=symbol,
        side=Side.BUY,
        qty=Decimal("0.01"),
        price=Decimal(15000),
        realized_pnl=Decimal(0),
        commission=Decimal("0.06"),
        time_ms=now,
    )
    ledger.finish_intent(intent.client_order_id, "filled")


def timed(cmd: list[str], runs: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def import_breakdown(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Cumulative import time (ms) of the heaviest top-level imports, from -X importtime."""
    head = [sys.executable, "-X", "importtime", "-m", "aster_agents"]
    done = subprocess.run([*head, *cmd[-6:]], capture_output=True, text=True, env=env, check=True)
    out: dict[str, float] = {}
    for line in done.stderr.splitlines():
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[2] in BREAKDOWN and parts[1].isdigit():
            out[parts[2]] = max(out.get(parts[2], 0.0), int(parts[1]) / 1000)
    return out


def status_command(config_dir: Path, state: Path) -> list[str]:
    script = Path(sys.executable).with_name("aster-agent")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "aster_agents"]
    return [*head, "--config-dir", str(config_dir), "--state-dir", str(state), "status", "--json"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-status-"))
    try:
        config_dir, state = ROOT / "agents.d", tmp / "state"
        populate(state, config_dir)
        env = {**os.environ, "NO_COLOR": "1"}
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # the first run below writes the package's
        cmd = status_command(config_dir, state)
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        agents = len(json.loads(out)["agents"])
        noop = tmp / "typer_noop.py"
        noop.write_text(TYPER_NOOP)
        baseline = timed([sys.executable, "-c", "import typer, rich"], args.runs, env)
        typer_noop = timed([sys.executable, str(noop), "--json"], args.runs, env)
        status_s = timed(cmd, args.runs, env)
        breakdown = import_breakdown(cmd, env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = status_s / baseline
    doc = {
        "version": 1,
        "agents": agents,
        "runs": args.runs,
        "status_s": round(status_s, 4),
        "baseline_s": round(baseline, 4),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "ok": ratio <= TARGET_RATIO,
        "bytecode": True,
        "typer_noop_s": round(typer_noop, 4),
        "noop_ratio": round(typer_noop / baseline, 3),
        "import_ms": {k: round(v, 1) for k, v in sorted(breakdown.items())},
    }
    if args.json:
        print(json.dumps(doc))
    else:
        for key, value in doc.items():
            print(f"{key:>12}: {value}")


if __name__ == "__main__":
    main()
