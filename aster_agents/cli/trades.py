"""``aster-agent trades``: round trips per agent from the ledger, newest first, with totals."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Final

import typer

from aster_agents.cli.common import console, emit_json, iso_utc, parse_since, plain, write_csv

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from rich.console import RenderableType

    from aster_agents.portfolio.trades import RoundTrip, Totals

TABLE_LIMIT: Final = 50  # rows in the table when --limit is not given
CSV_HEADER: Final = (
    "agent",
    "symbol",
    "side",
    "qty",
    "entry_price",
    "exit_price",
    "entry_time",
    "exit_time",
    "duration_s",
    "realized_pnl",
    "fees",
    "funding",
    "pnl",
    "closed_by",
    "reason",
    "fills",
)


def trades(
    ctx: typer.Context,
    agent_id: str | None = typer.Option(None, "--id", help="Only this agent."),
    symbol: str | None = typer.Option(None, "--symbol", help="Only this symbol, e.g. BTCUSDT."),
    since: str | None = typer.Option(
        None, "--since", help="Only trips open or closed since this UTC date/time (ISO-8601)."
    ),
    limit: int | None = typer.Option(
        None, "--limit", min=0, help=f"The newest N trips (0: all; table default {TABLE_LIMIT})."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON document instead of a table."),
    as_csv: bool = typer.Option(False, "--csv", help="CSV on stdout (one row per trip)."),
) -> None:
    """Round trips from the ledger: entry, exit, P&L, fees, funding, reason, how it closed.

    Newest first, open trips on top; totals per agent cover every trip that matches the
    filters (not only the --limit shown). JSON: {"version": 1, "trades": [...], "totals": [...]}.
    """
    if as_json and as_csv:
        raise typer.BadParameter("--json and --csv cannot be combined", param_hint="--csv")
    from aster_agents.cli.status import load
    from aster_agents.portfolio.trades import select, totals

    since_ms = parse_since(since)
    fleet, state_dir = load(ctx)
    trips = select(
        _read(
            state_dir, agent_id, symbol, known=[a.id for a in fleet.agents], url=fleet.ledger_url
        ),
        since_ms=since_ms,
    )
    if limit is None and not (as_json or as_csv):
        limit = TABLE_LIMIT
    shown = trips[:limit] if limit else trips
    sums = totals(trips)
    if as_json:
        emit_json(
            {"trades": [t.to_json() for t in shown], "totals": [s.to_json() for s in sums.values()]}
        )
    elif as_csv:
        write_csv(sys.stdout, CSV_HEADER, (csv_row(t) for t in shown))
    else:
        console().print(render(shown, list(sums.values()), len(trips)))


def _read(
    state_dir: Path,
    agent_id: str | None,
    symbol: str | None,
    *,
    known: Sequence[str],
    url: str | None = None,
) -> list[RoundTrip]:
    from aster_agents.errors import ConfigError
    from aster_agents.ledger.readonly import open_readonly
    from aster_agents.portfolio.trades import read_trips

    ledger = open_readonly(state_dir, url)
    if ledger is None:
        if agent_id is not None and agent_id not in known:
            raise ConfigError(f"unknown agent {agent_id!r} (known: {', '.join(known) or 'none'})")
        return []
    with ledger:
        if agent_id is not None and agent_id not in known:
            in_ledger = [r.agent_id for r in ledger.agent_rows()]
            if agent_id not in in_ledger:
                names = ", ".join(sorted({*known, *in_ledger})) or "none"
                raise ConfigError(f"unknown agent {agent_id!r} (known: {names})")
        return read_trips(ledger, agent_id, symbol.upper() if symbol else None)


def csv_row(t: RoundTrip) -> list[object]:
    return [
        t.agent_id,
        t.symbol,
        t.side,
        plain(t.qty),
        plain(t.entry_price),
        plain(t.exit_price),
        iso_utc(t.entry_ms),
        iso_utc(t.exit_ms),
        "" if t.duration_ms is None else f"{t.duration_ms / 1000:.3f}",
        plain(t.realized_pnl),
        plain(t.fees),
        plain(t.funding),
        plain(t.pnl),
        t.closed_by,
        t.reason,
        t.fills,
    ]


def render(shown: Sequence[RoundTrip], sums: Sequence[Totals], total: int) -> RenderableType:
    """The trips table, a note when it is cut, and the totals per agent."""
    from rich import box
    from rich.console import Group
    from rich.table import Table

    from aster_agents.cli.status import duration

    if not total:
        return "no round trips in the ledger yet"
    table = Table(
        title="round trips, newest first", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    columns = ("agent", "symbol", "side", "qty", "entry", "exit", "opened (UTC)", "held")
    for name in (*columns, "P&L", "fees", "funding", "closed by", "reason"):
        wrap = name == "reason"
        table.add_column(
            name,
            justify="right" if name in _RIGHT else "left",
            no_wrap=not wrap,
            overflow="fold" if wrap else "ellipsis",
        )
    for t in shown:
        held = None if t.duration_ms is None else t.duration_ms / 1000
        table.add_row(
            t.agent_id,
            t.symbol,
            t.side,
            plain(t.qty),
            plain(t.entry_price),
            plain(t.exit_price) or "-",
            iso_utc(t.entry_ms)[:19].replace("T", " "),
            duration(held),
            f"{t.pnl:+,.4f}",
            f"{t.fees:,.4f}",
            f"{t.funding:+,.4f}",
            t.closed_by,
            t.reason,
            style="" if t.exit_ms is not None else "dim",
        )
    parts: list[RenderableType] = [table]
    if len(shown) < total:
        parts.append(f"showing the newest {len(shown)} of {total} trips; --limit 0 shows all")
    parts.append(_totals_table(sums))
    return Group(*parts)


_RIGHT: Final = frozenset({"qty", "entry", "exit", "held", "P&L", "fees", "funding"})


def _totals_table(sums: Sequence[Totals]) -> RenderableType:
    from rich import box
    from rich.table import Table

    table = Table(
        title="totals per agent", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    for name in ("agent", "trips", "closed", "wins", "realized", "fees", "funding", "P&L"):
        table.add_column(name, justify="left" if name == "agent" else "right")
    for s in sums:
        table.add_row(
            s.agent_id,
            str(s.trips),
            str(s.closed),
            str(s.wins),
            f"{s.realized_pnl:+,.4f}",
            f"{s.fees:,.4f}",
            f"{s.funding:+,.4f}",
            f"{s.pnl:+,.4f}",
        )
    return table


def register(app: typer.Typer) -> None:
    app.command("trades")(trades)
