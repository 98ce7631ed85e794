"""``aster-agent data download`` / ``data info`` against a simulator on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from aster_agents.sim.download import PacedBudget
from aster_agents.sim.recording import load_recording
from aster_agents.sim.server import SimConfig, SimServer

DAY = 86_400_000


@pytest.fixture
def sim() -> Iterator[SimServer]:
    server = SimServer(SimConfig(seed=4))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "aster_agents", "data", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_download_records_a_day_that_replays_and_resumes_after_a_cut_row(
    sim: SimServer, tmp_path: Path
) -> None:
    """A day of 5m klines, marks and funding; a row cut by a crash is fetched again, once."""
    since = (int(time.time() * 1000) // DAY - 2) * DAY
    out = tmp_path / "rec"
    args = ["download", "--symbol", "BTCUSDT", "--interval", "5m", "--since", _iso(since)]
    args += ["--until", _iso(since + DAY), "--out", str(out), "--exchange", sim.base_url]
    first = _cli(*args, "--json")
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    assert doc["version"] == 1
    assert [f["rows"] for f in doc["files"]] == [288, 288, 3]
    rec = load_recording(out).symbols["BTCUSDT"]
    assert rec.klines.first_open == since and len(rec.klines.c) == 288
    served = sim.market.klines("BTCUSDT", "5m", start=since, limit=288)
    assert [Decimal(str(r[4])) for r in served] == [Decimal(str(c)) for c in rec.klines.c]
    assert len(rec.funding) == 3
    klines = out / "BTCUSDT-5m-klines.csv"
    klines.write_bytes(klines.read_bytes()[:-7])  # a crash in the middle of the last row
    again = _cli(*args, "--json")
    assert again.returncode == 0, again.stderr
    assert [f["added"] for f in json.loads(again.stdout)["files"]] == [1, 0, 0]
    times = [line.split(",")[0] for line in klines.read_text().splitlines()[1:]]
    assert len(times) == len(set(times)) == 288
    info = _cli("info", str(out), "--json")
    assert info.returncode == 0, info.stderr
    summary = json.loads(info.stdout)["symbols"][0]
    assert (summary["interval"], summary["candles"], summary["mark_klines"]) == ("5m", 288, True)


def test_data_info_on_a_directory_without_a_recording_exits_2_with_one_line(
    tmp_path: Path,
) -> None:
    """data info on an empty directory: one line saying what a recording holds, exit 2."""
    done = _cli("info", str(tmp_path))
    assert done.returncode == 2 and "no SYMBOL-INTERVAL-klines.csv" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_paced_budget_keeps_the_weight_per_minute() -> None:
    """1,200 weight a minute: the first 1,200 pass, the next 600 wait 30 s."""
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    budget = PacedBudget(1200, clock=lambda: now[0], sleep=sleep)
    for _ in range(240):
        budget.acquire(5)
    assert slept == []
    budget.acquire(600)
    assert slept == [pytest.approx(30.0)]
