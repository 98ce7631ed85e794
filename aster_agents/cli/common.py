"""Shared CLI plumbing: global options, config loading, JSON envelope, consoles.

Only typer/rich and the stdlib are imported here: ``status`` must start fast.
"""

from __future__ import annotations

import errno
import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import typer

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from rich.console import Console

    from aster_agents.config.schema import FleetConfig

JSON_VERSION: Final = 1
STATE_DIRS: list[Path] = []  # the state dirs this process resolved, for disk error messages
_DISK_ERRNOS: Final = frozenset(
    {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR}
)


class CliState:
    """The global options, and the fleet once loaded."""

    def __init__(self, config_dir: Path | None = None, state_dir: Path | None = None) -> None:
        self.config_dir = config_dir
        self.state_dir = state_dir
        self._fleet: FleetConfig | None = None

    def fleet(self) -> FleetConfig:
        if self._fleet is None:
            from aster_agents.config.schema import load_fleet

            self._fleet = load_fleet(self.config_dir)
            load_dotenv(self._fleet.root)
        return self._fleet

    def resolved_state_dir(self) -> Path:
        path = self.fleet().state_dir(self.state_dir)
        STATE_DIRS.append(path)
        return path


def load_dotenv(root: Path) -> None:
    """The one ``.env`` rule of every command: ``<dir holding agents.d>/.env``, when it exists,
    is read into this process's environment, its values winning (as ``up`` passes them to
    supervisord). A file readable by others is warned about on stderr.
    """
    path = root / ".env"
    if not path.is_file():
        return
    import os

    from aster_agents.fleet.supervisor import load_env_file

    loaded = load_env_file(path)
    if loaded.warning:
        print(f"warning: {loaded.warning}", file=sys.stderr)
    os.environ.update(loaded.values)


def state(ctx: typer.Context) -> CliState:
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj


def _default(value: object) -> Any:
    if isinstance(value, Decimal):
        from aster_agents.decimals import plain

        return plain(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def emit_json(document: dict[str, Any]) -> None:
    """Print one JSON document with the versioned envelope."""
    payload = {"version": JSON_VERSION, **document}
    sys.stdout.write(json.dumps(payload, default=_default, indent=2, sort_keys=False) + "\n")


PIPE_WIDTH: Final = 1000  # tables keep their natural width when written to a pipe or a file


def console() -> Console:
    """stdout; full width when it is not a terminal (``status | head``, ``status > f``)."""
    return _console(sys.stdout)


def err_console() -> Console:
    return _console(sys.stderr)


def _console(stream: Any) -> Console:
    import os

    from rich.console import Console

    terminal = stream.isatty() if hasattr(stream, "isatty") else False
    width = None if terminal or os.environ.get("COLUMNS") else PIPE_WIDTH
    return Console(file=stream, highlight=False, width=width)


def parse_since(value: str | None) -> int | None:
    """``--since``: an ISO-8601 date or time (UTC unless it names a zone) -> epoch ms."""
    if value is None:
        return None
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS] (UTC)",
            param_hint="--since",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def iso_utc(time_ms: int | None) -> str:
    """Epoch ms as ISO-8601 UTC with milliseconds (``2026-12-06T18:48:25.123Z``); '' for None."""
    if time_ms is None:
        return ""
    from datetime import UTC, datetime

    moment = datetime.fromtimestamp(time_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def plain(value: Decimal | None) -> str:
    """A decimal as a plain string for spreadsheets: no exponent, no trailing zeros; '' for
    None."""
    return "" if value is None else f"{value.normalize():f}"


def write_csv(out: Any, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    import csv

    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)


def disk_problem(exc: BaseException) -> str | None:
    """One line for a state dir that cannot be written (read-only, missing, full), else None.

    An ``OSError`` on a file (read-only file system, permission, no space, a file where a
    directory should be) or SQLite's "disk is full" / "readonly database" is a problem of the
    place, not a bug: it gets one line naming the directory and what to do, never a traceback.
    """
    state_dir = STATE_DIRS[-1] if STATE_DIRS else None
    if isinstance(exc, OSError):
        path = Path(str(exc.filename)) if exc.filename else state_dir
        if path is None:
            return None
        under = state_dir is not None and path.is_relative_to(state_dir)
        if exc.errno not in _DISK_ERRNOS and not (under and exc.errno == errno.ENOENT):
            return None
        where = state_dir if under and state_dir is not None else path.parent
        what = f"{exc.strerror}" if path == where else f"cannot write {path.name}: {exc.strerror}"
        return f"{where}: {what}; {_fix(exc.errno, under)}"
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is not None and isinstance(exc, sqlite3.OperationalError):
        text = str(exc)
        if "disk is full" in text or "readonly" in text or "disk I/O" in text:
            where = state_dir or Path("the state dir")
            code = errno.ENOSPC if "full" in text else errno.EROFS
            return f"{where}: the ledger cannot be written: {text}; {_fix(code, True)}"
    return None


def _fix(code: int | None, state: bool) -> str:
    other = ", or choose another state dir with --state-dir or $ASTER_AGENTS_STATE" if state else ""
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"free some space{other}"
    return f"make it a writable directory{other}"
