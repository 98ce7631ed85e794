"""Host locks: the per-agent singleton (``<state_dir>/agents/<id>.lock``, held for life) and
named locks such as the rebalance lock (``<state_dir>/rebalance.lock``), each a plain flock.

A named lock's file also carries a stamp (an integer, e.g. the time of the last attempt on
this host), read and written while the lock is held.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from aster_agents.errors import AlreadyRunning
from aster_agents.fsutil import is_disk_full, make_private_dir


class AgentLock:
    """Hold ``<state_dir>/agents/<agent_id>.lock``; a second holder gets ``AlreadyRunning``."""

    def __init__(self, state_dir: Path, agent_id: str) -> None:
        self.agent_id = agent_id
        self.path = Path(state_dir) / "agents" / f"{agent_id}.lock"
        self._fd = -1

    def acquire(self) -> None:
        make_private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(
                f"agent {self.agent_id} is already running (pid {holder}; lock {self.path}): "
                "stop that process first, or check it with `aster-agent status`"
            ) from None
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:  # the pid is only shown to a second copy: a full disk may skip it
            if not is_disk_full(exc):
                raise

    def release(self, *, clean: bool = False) -> None:
        """Let go; ``clean`` (a normal stop) empties the file so `status` can tell a stop
        from a crash, which leaves the pid in it."""
        if self._fd >= 0:
            if clean:
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = -1

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def __enter__(self) -> AgentLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release(clean=exc_type is None)


class NamedLock:
    """A flock on ``path``, taken blocking or not; its file holds an integer stamp."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1

    def acquire(self, *, wait: bool = True) -> bool:
        """Take the lock; False (not held) when ``wait`` is off and another holder has it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def stamp(self) -> int:
        """The integer in the lock file (0 when empty or not a number)."""
        raw = os.pread(self._fd, 32, 0).decode(errors="replace").strip()
        return int(raw) if raw.isdigit() else 0

    def set_stamp(self, value: int) -> None:
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{value}\n".encode(), 0)


def lock_holder(state_dir: Path, agent_id: str) -> int | None:
    """The pid holding ``agent_id``'s singleton lock, or None when nobody holds it.

    Probes with a shared lock, which conflicts only with a holder's exclusive one; the file
    is never created here.
    """
    path = Path(state_dir) / "agents" / f"{agent_id}.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def stopped_cleanly(state_dir: Path, agent_id: str) -> bool:
    """True when the agent's last run ended normally: its lock file is there and empty."""
    path = Path(state_dir) / "agents" / f"{agent_id}.lock"
    try:
        return path.stat().st_size == 0 and lock_holder(state_dir, agent_id) is None
    except OSError:
        return False
