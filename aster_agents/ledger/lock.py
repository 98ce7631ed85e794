"""The per-agent singleton lock: a flock on ``<state_dir>/agents/<id>.lock`` for life."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from aster_agents.errors import AlreadyRunning


class AgentLock:
    """Hold ``<state_dir>/agents/<agent_id>.lock``; a second holder gets ``AlreadyRunning``."""

    def __init__(self, state_dir: Path, agent_id: str) -> None:
        self.agent_id = agent_id
        self.path = Path(state_dir) / "agents" / f"{agent_id}.lock"
        self._fd = -1

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
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
        self.release()
