"""A terminal that keeps reading: a child writing to a pseudo-terminal nobody reads blocks
once the pty's buffer is full, and then cannot even exit (its last frame waits too)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time


def interrupt_reading(proc: subprocess.Popen[bytes], master: int, timeout: float = 20) -> int:
    """Ctrl-C to ``proc`` (SIGINT), then read its terminal ``master`` as a real terminal
    would until it exits; its exit code. Raises ``subprocess.TimeoutExpired`` after
    ``timeout`` seconds."""
    proc.send_signal(signal.SIGINT)
    end = time.monotonic() + timeout
    while proc.poll() is None:
        left = end - time.monotonic()
        if left <= 0:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        if select.select([master], [], [], min(left, 0.1))[0]:
            try:
                os.read(master, 65536)
            except OSError:  # EIO: the child closed its side; it is exiting
                break
    return proc.wait(timeout=max(end - time.monotonic(), 1))
