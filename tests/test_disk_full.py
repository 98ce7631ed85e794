"""A full state dir: the agent says so in one line, opens nothing, keeps its protective orders,
retries with backoff and resumes by itself when space returns (issue 23).

The state dir is a 16 MiB tmpfs the test mounts (root only, as in CI); the disk is filled
with a filler file while an agent holds a protected position, and the agent is also restarted
while the disk is full (under supervisord a crash there would be a crash loop).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from aster_agents.sim.server import SimConfig, SimServer
from tests.kit.agents import Fleet, make_fleet
from tests.kit.wait import wait_for

FULL_LINE = re.compile(r"state dir full: (.+?), [\d.]+ (bytes|KiB|MiB) free; not opening")


@pytest.fixture
def sim() -> Iterator[SimServer]:
    server = SimServer(SimConfig(port=0, seed=7, speed=60.0))
    server.start()
    yield server
    server.stop()


def mount_small(target: Path) -> None:
    """Mount a 16 MiB tmpfs on ``target``, or skip saying why that is not possible here."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs as the state dir (CI runs as root)")
    target.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(target)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")


def fill(path: Path) -> None:
    """Write ``path`` until the filesystem has no room left."""
    chunk = b"\0" * (1 << 16)
    with path.open("wb", buffering=0) as out:
        while True:
            try:
                out.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return


def full_lines(fleet: Fleet) -> list[str]:
    return [line for line in fleet.stderr("agent-1").splitlines() if FULL_LINE.search(line)]


def open_orders(fleet: Fleet) -> list[str]:
    acct = fleet.sim.engine.account(fleet.user)
    with fleet.sim.engine.lock:
        return sorted(o.client_order_id for o in acct.open_orders.values())


def ticks(fleet: Fleet) -> int:
    with sqlite3.connect(f"file:{fleet.state_dir / 'ledger.sqlite3'}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT ticks FROM agents WHERE agent_id = 'agent-1'").fetchone()
    return int(row[0]) if row else 0


@pytest.mark.slow
def test_full_state_dir_pauses_the_agent_and_it_resumes_by_itself(
    sim: SimServer, tmp_path: Path
) -> None:
    """Disk full while running and at a restart: one line per retry, no traceback, no order,
    protective orders kept; space back: the agent ticks again and the books still agree."""
    fleet = make_fleet(
        tmp_path, sim, ["agent-1"], symbols=["BTCUSDT"], params="{p_enter: 1.0, p_exit: 0.0}"
    )
    mount_small(fleet.state_dir)
    filler = fleet.state_dir / "filler"
    try:
        fleet.start("agent-1")
        wait_for(lambda: len(open_orders(fleet)) == 2, timeout=60, what="a protected position")
        protected, sent = open_orders(fleet), len(fleet.coids())
        fill(filler)
        wait_for(lambda: len(full_lines(fleet)) >= 2, timeout=60, what="two 'state dir full' lines")
        assert fleet.procs["agent-1"].poll() is None, "the agent must wait, not exit"

        fleet.procs["agent-1"].send_signal(signal.SIGTERM)
        assert fleet.procs["agent-1"].wait(30) == 0
        seen = len(full_lines(fleet))
        fleet.start("agent-1")  # a restart on the full disk (supervisord would do this)
        wait_for(lambda: len(full_lines(fleet)) > seen, timeout=60, what="the restart to wait")
        assert fleet.procs["agent-1"].poll() is None, "a restart on a full disk must wait"
        assert open_orders(fleet) == protected and len(fleet.coids()) == sent

        filler.unlink()
        before = ticks(fleet)
        wait_for(lambda: ticks(fleet) > before + 2, timeout=90, what="ticks after space returned")
        wait_for(lambda: fleet.ledger_positions() == fleet.exchange_positions(), timeout=30)
    finally:
        codes = fleet.stop_all()
        subprocess.run(["umount", "-l", str(fleet.state_dir)], check=False)
    assert codes == {"agent-1": 0}
    err = fleet.stderr("agent-1")
    assert "Traceback" not in err and "Record was" not in err, err[-3000:]
    paths = {m.group(1) for m in map(FULL_LINE.search, full_lines(fleet)) if m}
    assert paths == {str(fleet.state_dir)}
