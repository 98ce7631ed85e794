"""A read-only, missing or full state dir: one line naming the directory, exit 1, no traceback."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = str(Path(sys.executable).parent / "aster-agent")
COMMANDS = (
    "run --id agent-1",
    "agents disable --id agent-1",
    "reconcile",
    "rebalance --apply",
    "up",
)


def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    return probe.returncode == 0


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs unshare -m (root or userns)")


def cli(root: Path, args: str, *, setup: str = "") -> subprocess.CompletedProcess[str]:
    """``aster-agent ARGS`` in ``root``, after ``setup`` lines in a private mount namespace."""
    command = f"{shlex.quote(BIN)} {args}"
    if setup:
        argv = ["unshare", "-m", "sh", "-ec", f"{setup}\nexec {command}"]
    else:
        argv = shlex.split(command)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASTER_AGENTS_")}
    return subprocess.run(
        argv, cwd=root, env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def project() -> Iterator[Path]:
    """An `init` project whose ledger exists, in a short directory (supervisord's socket).

    The tests only read it (the state dir is mounted read-only or replaced), so it is shared.
    """
    root = Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp"))
    try:
        assert cli(root, "init").returncode == 0
        assert cli(root, "agents disable --id agent-1").returncode == 0
        assert cli(root, "agents enable --id agent-1").returncode == 0
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _one_line(done: subprocess.CompletedProcess[str], where: Path, what: str) -> None:
    lines = [line for line in done.stderr.splitlines() if not line.startswith("loaded ")]
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: {where}: "), done.stderr
    assert what in lines[0]


@needs_mount
@pytest.mark.parametrize("args", COMMANDS)
def test_read_only_state_dir_is_one_line(project: Path, args: str) -> None:
    """run, agents disable, reconcile, rebalance --apply and up on a read-only state dir."""
    state = project / "state"
    setup = f"mount --bind {state} {state}\nmount -o remount,bind,ro {state}"
    done = cli(project, args, setup=setup)
    _one_line(done, state, "Read-only file system")
    assert "--state-dir" in done.stderr


@pytest.mark.parametrize("args", COMMANDS[:2])
def test_state_dir_under_a_file_is_one_line(project: Path, args: str) -> None:
    """A state dir that cannot exist (its parent is a file) is named, exit 1."""
    state = project / "sim-accounts.yaml" / "state"
    _one_line(cli(project, f"--state-dir {state} {args}"), state, "Not a directory")


@needs_mount
def test_full_state_dir_is_one_line(project: Path) -> None:
    """An agent whose state dir has no space left says so in one line."""
    full = project / "full"
    full.mkdir()
    setup = (
        f"mount -t tmpfs -o size=64k tmpfs {full}\n"
        f"dd if=/dev/zero of={full}/filler bs=4k 2>/dev/null || true"
    )
    done = cli(project, f"--state-dir {full} run --id agent-1", setup=setup)
    _one_line(done, full, "No space left on device")
