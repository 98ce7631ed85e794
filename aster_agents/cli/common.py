"""Shared CLI plumbing: global options, config loading, JSON envelope, consoles.

Only typer/rich and the stdlib are imported here: ``status`` must start fast.
"""

from __future__ import annotations

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
        return self.fleet().state_dir(self.state_dir)


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
        return str(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def emit_json(document: dict[str, Any]) -> None:
    """Print one JSON document with the versioned envelope."""
    payload = {"version": JSON_VERSION, **document}
    sys.stdout.write(json.dumps(payload, default=_default, indent=2, sort_keys=False) + "\n")


def console() -> Console:
    from rich.console import Console

    return Console(highlight=False)


def err_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


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
