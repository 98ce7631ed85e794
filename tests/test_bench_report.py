"""bench/report.py runs end to end and reports what it promises (no timing is asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_report_bench_prints_its_figures() -> None:
    """Two agents, an hour of marks, 21 round trips: the JSON has every documented figure and
    `trades` listed every trip the bench booked."""
    args = ["--agents", "2", "--days", "0.05", "--trips", "21", "--runs", "1", "--json"]
    done = subprocess.run(
        [sys.executable, "bench/report.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for key in ("report_s", "report_cpu_s", "report_bytes", "trades_json_s", "trades_csv_s"):
        assert result[key] > 0, key
    assert (result["agents"], result["snapshots"], result["round_trips"]) == (2, 144, 21)
    assert result["report_bytes"] < 5 * 1024 * 1024
