"""A read-only, missing or full state dir: one line naming the directory, exit 1, no traceback."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
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


def _full(full: Path) -> str:
    return (
        f"mount -t tmpfs -o size=64k tmpfs {full}\n"
        f"dd if=/dev/zero of={full}/filler bs=4k 2>/dev/null || true"
    )


@needs_mount
def test_full_state_dir_is_one_line_for_a_one_shot_command(project: Path) -> None:
    """A command that must write its state dir (agents disable) on a full disk: one line, exit 1."""
    full = project / "full"
    full.mkdir(exist_ok=True)
    done = cli(project, f"--state-dir {full} agents disable --id agent-1", setup=_full(full))
    lines = [line for line in done.stderr.splitlines() if not line.startswith("loaded ")]
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert len(lines) == 1 and str(full) in lines[0], done.stderr
    assert "No space left on device" in lines[0] or "state dir full" in lines[0], done.stderr


@needs_mount
def test_full_state_dir_makes_run_wait_saying_so_in_one_line(project: Path) -> None:
    """`run` on a full disk does not crash-loop: it says "state dir full" and waits (issue 23)."""
    full = project / "full-run"
    full.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASTER_AGENTS_")}
    command = f"{shlex.quote(BIN)} --state-dir {full} run --id agent-1"
    proc = subprocess.Popen(
        ["unshare", "-m", "sh", "-ec", f"{_full(full)}\nexec {command}"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = threading.Timer(60, proc.kill)  # a silent hang fails the test, not the suite
    deadline.start()
    try:
        for line in proc.stderr:  # ends when the process ends
            seen.append(line)
            if "state dir full" in line:
                break
        assert proc.poll() is None, "".join(seen)  # still there: waiting, not crashed
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[1]
    finally:
        deadline.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(seen) + rest
    assert proc.returncode == 0, text
    assert "Traceback" not in text and "Record was" not in text, text
    assert sum("state dir full" in line for line in text.splitlines()) >= 1
