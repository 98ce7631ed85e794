"""bench/ledger.py runs end to end and reports what it promises (no timing is asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plugins.postgres import PgServer

ROOT = Path(__file__).resolve().parent.parent


def _bench(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``bench/<script>`` from the checkout as a user would; it must exit 0."""
    done = subprocess.run(
        [sys.executable, f"bench/{script}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.parametrize("extra", [[], ["--mark-sent"]])
def test_ledger_bench_prints_its_figures_and_finds_no_violation(extra: list[str]) -> None:
    """Two real worker processes for half a second: the JSON has every documented figure,
    the independent journal check ran and found nothing, and with --mark-sent every
    reservation was marked sent (the durable write an order waits for)."""
    done = _bench("ledger.py", "--procs", "2", "--seconds", "0.5", "--json", *extra)
    result = json.loads(done.stdout)
    for key in ("reservations_per_s", "p50_ms", "p99_ms", "max_ms", "violations"):
        assert key in result
    assert result["procs"] == 2
    assert result["reservations"] > 0
    assert result["violations"] == 0
    assert result["marked_sent"] == (result["reservations"] if extra else 0)
    assert result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]


def test_ledger_bench_runs_against_postgresql(pg_server: PgServer) -> None:
    """--url: the same JSON from a run on the test server, in a schema it drops afterwards."""
    args = ["--procs", "2", "--seconds", "0.5", "--json", "--url", pg_server.uri]
    done = _bench("ledger.py", *args)
    result = json.loads(done.stdout)
    assert result["backend"] == "postgresql" and result["reservations"] > 0
    assert result["violations"] == 0
    left = pg_server.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'ledger_bench_%'")
    assert left == []


def test_side_by_side_bench_starts_its_own_server_and_reports_both() -> None:
    """bench/ledger_pg.py: one JSON line per run, the PostgreSQL one with the server's CPU per
    loop, no violation on either backend."""
    runs = ["pg --procs 2 --seconds 0.5", "sqlite --procs 2 --seconds 0.5"]
    done = _bench("ledger_pg.py", *runs, timeout=180)
    pg, lite = (json.loads(line) for line in done.stdout.splitlines())
    assert (pg["version"], pg["run"], pg["violations"]) == (1, runs[0], 0)
    assert pg["server_cpu_us_per_loop"] > 0 and pg["reservations_per_s"] > 0
    assert lite["violations"] == 0 and "server_cpu_us_per_loop" not in lite
