"""A process on a terminal, as a shell starts it and as a terminal reads it.

A shell starts a command with Ctrl-C (SIGINT) at its default action and not blocked; a child
of a test worker would inherit whatever that worker's earlier tests left (an ignored or
blocked signal survives fork and exec), so ``shell_like`` sets it as a shell would. A child
writing to a pseudo-terminal nobody reads blocks once the pty's buffer is full, and then
cannot even exit (its last frame waits too), so ``interrupt_reading`` keeps reading.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from pathlib import Path


def shell_like() -> None:
    """``preexec_fn``: SIGINT and SIGTERM at their default action and unblocked."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _signal_state(pid: int) -> str:
    """The kernel's view of ``pid``'s signals (blocked, ignored, caught) and where it sleeps."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        wchan = Path(f"/proc/{pid}/wchan").read_text()
    except OSError as exc:
        return f"(no /proc state: {exc})"
    keep = [line for line in status if line.startswith(("State", "SigBlk", "SigIgn", "SigCgt"))]
    return "; ".join([*keep, f"wchan {wchan}"])


def interrupt_reading(proc: subprocess.Popen[bytes], master: int, timeout: float = 20) -> int:
    """Ctrl-C to ``proc`` (SIGINT), then read its terminal ``master`` as a real terminal
    would until it exits; its exit code. After ``timeout`` seconds, an AssertionError with
    the child's signal state."""
    proc.send_signal(signal.SIGINT)
    end = time.monotonic() + timeout
    while proc.poll() is None:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no exit {timeout:.0f}s after SIGINT: {_signal_state(proc.pid)}")
        if select.select([master], [], [], min(left, 0.1))[0]:
            try:
                os.read(master, 65536)
            except OSError:  # EIO: the child closed its side; it is exiting
                break
    return proc.wait(timeout=max(end - time.monotonic(), 1))
