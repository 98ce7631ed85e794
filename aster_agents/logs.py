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

if TYPE_CHECKING:
    from loguru import Record

__all__ = ["logger", "redact", "setup_logging"]

# 130 hex digits = a 65-byte signature; 64 = a private key (or a hash: redacting those is cheap).
_SECRET_RE: Final = re.compile(r"(?i)(0x)?(?<![0-9a-f])([0-9a-f]{130}|[0-9a-f]{64})(?![0-9a-f])")
_FORMAT: Final = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {extra[agent]} | {message}"
ROTATION: Final = "10 MB"
RETENTION: Final = 5

_configured = False


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
    global _configured
    level = (level or os.environ.get(LEVEL_ENV) or "INFO").upper()
    logger.remove()
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
        log_dir.mkdir(parents=True, exist_ok=True)
        logger.add(
            log_dir / f"{agent_id}.log",
            rotation=ROTATION,
            retention=RETENTION,
            encoding="utf-8",
            enqueue=False,
            **common,
        )
    _configured = True
