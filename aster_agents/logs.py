"""Logging, configured once per process (the only loguru configuration).

Every line carries the agent id; a per-agent file under ``<state_dir>/logs/<id>.log`` rotates
and is pruned; stderr gets the same lines. Under supervisord the agent writes stderr only and
supervisord captures it into that same file, so every agent has one log however it started.
``diagnose=False`` keeps local variables (where keys live) out of tracebacks, and a redaction
filter replaces anything shaped like a private key or a signature before a record is written
anywhere.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from loguru import logger

from aster_agents.fsutil import is_disk_full, make_private_dir

if TYPE_CHECKING:
    from loguru import Record

__all__ = ["logger", "redact", "setup_logging"]

# 130 hex digits = a 65-byte signature; 64 = a private key (or a hash: redacting those is cheap).
_SECRET_RE: Final = re.compile(r"(?i)(0x)?(?<![0-9a-f])([0-9a-f]{130}|[0-9a-f]{64})(?![0-9a-f])")
_FORMAT: Final = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {extra[agent]} | {message}"
ROTATION_BYTES: Final = 10_000_000
RETENTION: Final = 5

_configured = False


class LogFile:
    """The agent's log file: created 0600, rotated at ROTATION_BYTES into ``<name>.1`` ..
    ``<name>.<RETENTION>``, written with one ``write`` per line.

    A line that finds the disk full is dropped and counted (a note says how many once there is
    room again) instead of raising into loguru, which would print the whole record to stderr.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dropped = 0
        self._fd = -1
        self._size = 0

    def write(self, message: str) -> None:
        data = message.encode("utf-8", "replace")
        try:
            if self._fd < 0:
                self._open()
            if self._size and self._size + len(data) > ROTATION_BYTES:
                self._rotate()
            if self.dropped:
                self._put(f"({self.dropped} log lines dropped: disk full)\n".encode())
                self.dropped = 0
            self._put(data)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self.dropped += 1

    def _put(self, data: bytes) -> None:
        self._size += os.write(self._fd, data)

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, 0o600)
        self._size = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        self.close()
        for n in range(RETENTION - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._open()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


_log_file: LogFile | None = None


def redact(text: str) -> str:
    """Replace key- or signature-shaped hex runs with ``<redacted>``."""
    return _SECRET_RE.sub("<redacted>", text)


def _patch(record: Record) -> None:
    record["message"] = redact(record["message"])
    exc = record["exception"]
    if exc is not None and exc.value is not None and _SECRET_RE.search(str(exc.value)):
        record["exception"] = exc._replace(value=_redacted(exc.value))


def _redacted(value: BaseException) -> BaseException:
    """The same exception with key-shaped text replaced (a stand-in if it cannot be rebuilt)."""
    text = redact(str(value))
    try:
        return type(value)(text)
    except Exception:  # its constructor wants more than a message
        return RuntimeError(f"{type(value).__name__}: {text}")


LEVEL_ENV: Final = "ASTER_AGENTS_LOG_LEVEL"
SUPERVISED_ENV: Final = "SUPERVISOR_ENABLED"  # set by supervisord in its children's environment


def setup_logging(
    agent_id: str,
    state_dir: Path | None,
    *,
    json_lines: bool = False,
    level: str | None = None,
    stderr: bool = True,
) -> None:
    """Configure loguru for this process; calling it again replaces the previous setup.

    The level is ``level``, else ``$ASTER_AGENTS_LOG_LEVEL``, else INFO.
    """
    global _configured, _log_file
    level = (level or os.environ.get(LEVEL_ENV) or "INFO").upper()
    logger.remove()
    if _log_file is not None:
        _log_file.close()
        _log_file = None
    logger.configure(extra={"agent": agent_id}, patcher=_patch)
    common: dict[str, Any] = {
        "level": level,
        "format": _FORMAT,
        "serialize": json_lines,
        "backtrace": False,
        "diagnose": False,
    }
    if stderr:
        logger.add(sys.stderr, colorize=False, **common)
    if state_dir is not None and SUPERVISED_ENV not in os.environ:  # else supervisord writes it
        log_dir = state_dir / "logs"
        try:
            make_private_dir(log_dir)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            logger.warning("no log file: {} ({})", log_dir, exc.strerror)
        else:
            _log_file = LogFile(log_dir / f"{agent_id}.log")
            logger.add(_log_file, colorize=False, **common)
    _configured = True
