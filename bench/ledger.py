"""Ledger benchmark: N real processes reserve and release against one ledger.

    python bench/ledger.py --procs 10 --json
    python bench/ledger.py --procs 50 --think-ms 200 --json
    python bench/ledger.py --procs 10 --url postgresql://user@host/db --json

``--url``: the same run against a PostgreSQL ledger; the bench creates a fresh schema there
(``ledger_bench_<pid>``), points every worker at it (``ASTER_AGENTS_LEDGER_URL`` with a
``search_path``) and drops it afterwards; ``backend`` in the JSON says which one ran.

Each process is one agent (accounts of up to 5 agents); a reservation is one ``reserve`` call
(one ``BEGIN IMMEDIATE`` transaction, committed before the call returns), followed after the
think time by a ``release``. Neither is synced on its own: the write an agent makes durable
before an order goes out is ``mark_sent``, whose sync covers the reservation too.
``--mark-sent`` adds that durable write to every loop (reserve, mark_sent, release), which is
the cost of a reservation that reaches the wire (``marked_sent`` counts them); the targets are
for plain reservations.
Each worker makes one reservation before the clock starts (a process's first write warms its
connection up: on PostgreSQL the ledger functions are compiled and planned then, tens of ms
on a loaded machine, once per process; not a running agent's latency).
Violations come from the independent journal check in ``tests/kit/ledger_worker.py``.
Targets: 0 violations; p99 <= 5 ms with 50 processes at 200 ms think time;
>= 3,000 committed reservations/s with 10 processes and no think time.
Runs last 15 s by default: at 50 processes and 200 ms think time that is about 3,800
reservations, enough for a p99 that other work on the machine does not swing by itself.
``loadavg_1m_start`` / ``loadavg_1m`` are the machine's load before and after the run: other
work on the machine shows there, and the figures are only comparable at similar loads.
``mean_in_lock_us`` is how long a granted reservation held the writer flock, and
``cpu_us_per_loop`` the CPU time (user + system, all workers) per loop (one reserve and its
release): on a small machine these two decide the throughput, and they are far less noisy
than it, so compare them when trying a change. On PostgreSQL (a server on this machine)
``server_cpu_us_per_loop`` is the same for the server processes serving the workers, over the
same timed loops (read from /proc; the connections' start-up and the WAL writer not counted).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aster_agents.ledger import Ledger  # noqa: E402
from tests.kit.ledger_worker import Limits, check_journal  # noqa: E402

AGENTS_PER_ACCOUNT = 5
MAX_POSITIONS = 3
SYMBOLS_PER_AGENT = 6


def setup(state: Path, procs: int) -> list[tuple[str, str, str]]:
    """Register the agents; returns (agent, user, symbols) per process."""
    ledger = Ledger(state)
    plan = []
    for i in range(procs):
        agent, user = f"b{i:03d}", f"user{i // AGENTS_PER_ACCOUNT}"
        ledger.set_account_limits(
            user,
            max_total_positions=AGENTS_PER_ACCOUNT * MAX_POSITIONS,
            max_gross_leverage=Decimal(1000),
            equity=Decimal(10**6),
        )
        ledger.register_agent(agent, user, max_positions=MAX_POSITIONS, capital=Decimal(10**6))
        symbols = ",".join(f"S{i}X{k}" for k in range(SYMBOLS_PER_AGENT))
        plan.append((agent, user, symbols))
    ledger.close()
    return plan


@contextlib.contextmanager
def postgres_schema(url: str | None) -> Iterator[None]:
    """Run the block with ``ASTER_AGENTS_LEDGER_URL`` on a fresh schema of ``url`` (if any)."""
    if url is None:
        yield
        return
    import psycopg

    schema = f"ledger_bench_{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE".encode())
        admin.execute(f"CREATE SCHEMA {schema}".encode())
        sep = "&" if "?" in url else "?"
        os.environ["ASTER_AGENTS_LEDGER_URL"] = f"{url}{sep}options=-csearch_path%3D{schema}"
        try:
            yield
        finally:
            del os.environ["ASTER_AGENTS_LEDGER_URL"]
            admin.execute(f"DROP SCHEMA {schema} CASCADE".encode())


def run(
    procs: int, think_ms: float, seconds: float, mark_sent: bool, url: str | None = None
) -> dict[str, object]:
    with postgres_schema(url):
        result = _run(procs, think_ms, seconds, mark_sent)
    result["backend"] = "sqlite" if url is None else "postgresql"
    return result


def _run(procs: int, think_ms: float, seconds: float, mark_sent: bool) -> dict[str, object]:
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        state, journal = Path(tmp) / "state", Path(tmp) / "journal"
        plan = setup(state, procs)
        go = Path(tmp) / "go"
        workers = []
        for i, (agent, user, symbols) in enumerate(plan):
            out = Path(tmp) / f"out{i}.json"
            cmd = [
                sys.executable,
                "-m",
                "tests.kit.ledger_worker",
                "bench",
                str(state),
                str(journal),
            ]
            cmd += [agent, user, symbols, "--seed", str(i), "--seconds", str(seconds)]
            cmd += ["--think-ms", str(think_ms), "--go-file", str(go), "--out", str(out)]
            cmd += ["--mark-sent"] if mark_sent else []
            workers.append(
                (subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True), out)
            )
        for proc, _ in workers:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        tmp_go = go.with_suffix(".tmp")
        tmp_go.write_text(str(time.time() + 0.3))
        tmp_go.rename(go)
        lat: list[int] = []
        holds: list[int] = []
        denied = sent = 0
        cpu_ns = 0
        server_ns: int | None = None
        for proc, out in workers:
            proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"bench worker failed with exit code {proc.returncode}")
            data = json.loads(out.read_text())
            lat += data["latencies_ns"]
            holds += data["holds_ns"]
            denied += data["denied"]
            sent += data["sent"]
            cpu_ns += data["cpu_ns"]
            if "server_cpu_ns" in data:
                server_ns = (server_ns or 0) + data["server_cpu_ns"]
        check = check_journal(
            journal, [], Limits(MAX_POSITIONS, AGENTS_PER_ACCOUNT * MAX_POSITIONS)
        )
        result = summary(procs, think_ms, seconds, lat, denied, len(check.violations))
        result["marked_sent"] = sent
        holds.sort()
        result["p99_in_lock_ms"] = round(holds[int(0.99 * len(holds))] / 1e6, 3) if holds else 0.0
        result["mean_in_lock_us"] = round(sum(holds) / len(holds) / 1e3, 1) if holds else 0.0
        result["cpu_us_per_loop"] = round(cpu_ns / max(1, len(lat)) / 1e3, 1)
        if server_ns is not None:
            result["server_cpu_us_per_loop"] = round(server_ns / max(1, len(lat)) / 1e3, 1)
        result["loadavg_1m_start"] = round(load_start, 2)
        result["loadavg_1m"] = round(os.getloadavg()[0], 2)
        return result


def summary(
    procs: int, think_ms: float, seconds: float, lat: list[int], denied: int, violations: int
) -> dict[str, object]:
    lat.sort()

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] / 1e6, 3) if lat else 0.0

    return {
        "version": 1,
        "procs": procs,
        "think_ms": think_ms,
        "seconds": seconds,
        "reservations": len(lat) - denied,
        "denied": denied,
        "reservations_per_s": round((len(lat) - denied) / seconds, 1),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(lat[-1] / 1e6, 3) if lat else 0.0,
        "violations": violations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--procs", type=int, default=10)
    parser.add_argument("--think-ms", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--mark-sent", action="store_true", help="also mark each one sent")
    parser.add_argument("--url", help="a PostgreSQL server to run against (default: SQLite)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.procs, args.think_ms, args.seconds, args.mark_sent, args.url)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")


if __name__ == "__main__":
    main()
