"""Is a process still alive? ``os.kill(pid, 0)`` plus a zombie check, cached briefly."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Final

RECHECK_S: Final = 2.0


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a killed child nobody has waited for)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    state = stat.rsplit(")", 1)[-1].split()[0:1]
    return state not in (["Z"], ["X"])


class PidLiveness:
    """Caches "alive" for ``RECHECK_S``; "dead" is never cached.

    A pid can be reused by a new process as soon as it dies: a cached "dead" would let the
    reaper free the reservations of the live newcomer. A dead owner's reservations are
    reaped the first time it is seen dead, so there is nothing to gain from caching that.
    """

    def __init__(self) -> None:
        self._seen: dict[int, tuple[bool, float]] = {}

    def alive(self, pid: int) -> bool:
        now = time.monotonic()
        cached = self._seen.get(pid)
        if cached is not None and now - cached[1] < RECHECK_S:
            return cached[0]
        alive = pid_alive(pid)
        if len(self._seen) > 4096:
            self._seen.clear()
        if alive:
            self._seen[pid] = (alive, now)
        else:
            self._seen.pop(pid, None)
        return alive
