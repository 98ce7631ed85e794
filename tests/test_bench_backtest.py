"""bench/backtest.py runs end to end and reports what it promises (no timing is asserted here)."""

from __future__ import annotations

import json

from tests.test_bench_ledger import _bench


def test_backtest_bench_splits_its_ten_accounts_and_matches_one_process() -> None:
    """A short run on two processes: every documented figure, ten agents' ticks, and the same
    fills as the agents replayed as processes on the first minutes."""
    args = ("--days", "0.02", "--jobs", "2", "--process-minutes", "3", "--json")
    doc = json.loads(_bench("backtest.py", *args, timeout=240).stdout)
    for key in ("agent_ticks_per_s", "cpu_ms_per_agent_tick", "peak_rss_mb", "load_average_1m"):
        assert doc[key] > 0, key
    assert doc["workers"] == 2 and doc["agents"] == 10
    assert doc["agent_ticks"] == 10 * int(0.02 * 1440)  # each agent every market minute
    assert doc["process_exit_codes_ok"] and doc["process_equals_backtest"]
