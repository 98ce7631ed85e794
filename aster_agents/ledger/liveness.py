"""Is a process still alive? ``os.kill(pid, 0)`` plus a zombie check, cached briefly."""

from __future__ import annotations

import os
import socket
import time
from typing import Final

RECHECK_S: Final = 2.0
HOST_ENV: Final = "ASTER_AGENTS_HOST"


def host_name() -> str:
    """This host's name in the ledger: ``$ASTER_AGENTS_HOST``, else the system host name.

    Pids are only meaningful on the host that wrote them; the override lets several "hosts"
    share one machine (tests) or gives a host a stable name across renames.
    """
    return os.environ.get(HOST_ENV) or socket.gethostname()


def rate_group(configured: str | None, *, shared: bool) -> str:
    """The group of hosts that share one IP's request-weight budget (and its 429/418 pause).

    One ledger file is one host: ``ip``. On a shared (PostgreSQL) ledger each host is its
    own group unless ``rate_group:`` in ``_portfolio.yaml`` names one (hosts behind one NAT
    give it the same value).
    """
    if not shared:
        return "ip"
    return configured or host_name()


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
    try:  # plain os calls: a third of the cost of Path.read_text, and the reaper calls this
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        stat = os.read(fd, 1024)
    except OSError:
        return True
    finally:
        os.close(fd)
    state = stat.rpartition(b")")[2].split()[0:1]
    return state not in ([b"Z"], [b"X"])


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
