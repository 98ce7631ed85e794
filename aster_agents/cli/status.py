"""``aster-agent status [--json] [--watch]``: one row per agent, one footer line per account.

Kept light: typer at import time, rich and the ledger inside functions, never eth_account or
httpx. Agents that are down or stale get a red style and a ``!`` marker (visible with NO_COLOR).
"""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Final

import typer

from aster_agents.cli.common import console, emit_json, state

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import RenderableType
    from rich.table import Table

    from aster_agents.config.view import FleetView
    from aster_agents.fleet.view import AccountStatus, AgentStatus, StatusReport

FLAG: Final = "! "
ERROR_WIDTH: Final = 40
WRAPPING: Final = frozenset({"name", "strategy", "symbols", "last error"})


def status(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="One JSON document instead of a table."),
    watch: bool = typer.Option(False, "--watch", help="Refresh the table live until Ctrl-C."),
    interval: float = typer.Option(2.0, "--interval", min=0.1, help="Seconds between refreshes."),
) -> None:
    """Show every agent's process state, positions, equity and last error (no exchange calls).

    JSON: {"version": 1, "agents": [...], "accounts": [...]}; money as decimal strings,
    ratios and seconds as numbers, times as epoch milliseconds.
    """
    if as_json and watch:
        raise typer.BadParameter("--watch cannot be combined with --json", param_hint="--watch")
    fleet, state_dir = load(ctx)
    from aster_agents.fleet.view import collect_status

    if as_json:
        emit_json(collect_status(fleet, state_dir).to_json())
        return
    if watch:
        watch_live(lambda: render_status(collect_status(fleet, state_dir)), interval)
        return
    console().print(render_status(collect_status(fleet, state_dir)))


def load(ctx: typer.Context) -> tuple[FleetView, Path]:
    """The fleet as displayed: read fast, not validated (``agents validate`` does that)."""
    from aster_agents.config.view import load_view

    cli = state(ctx)
    fleet = load_view(cli.config_dir)
    return fleet, fleet.state_dir(cli.state_dir)


def watch_live(render: Callable[[], RenderableType], interval: float) -> None:
    """Redraw ``render()`` every ``interval`` seconds until Ctrl-C, then exit 0."""
    from rich.live import Live

    try:
        with Live(render(), console=console(), auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(render(), refresh=True)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def render_status(report: StatusReport) -> RenderableType:
    """The status table plus one footer line per account."""
    from rich.console import Group

    return Group(_agents_table(report), *(_account_line(a) for a in report.accounts))


def _agents_table(report: StatusReport) -> Table:
    from rich import box
    from rich.table import Table

    where = "" if report.ledger_found else " (no ledger yet: nothing has run)"
    ledger = f"ledger {report.ledger}" if report.ledger else f"state in {report.state_dir}"
    table = Table(
        title=f"agents on host {report.host}, {ledger}{where}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for name in (
        "id",
        "name",
        "host",
        "state",
        "pid",
        "uptime",
        "strategy",
        "symbols",
        "pos",
        "alloc",
        "equity",
        "P&L",
        "last tick",  # a remote agent's only sign of life: its heartbeat's age
        "last error",
    ):
        right = name in ("pid", "uptime", "pos", "alloc", "equity", "P&L")
        table.add_column(
            name,
            justify="right" if right else "left",
            no_wrap=name not in WRAPPING,
            overflow="fold" if name in WRAPPING else "ellipsis",
        )
    for agent in report.agents:
        table.add_row(*_cells(agent), style=_row_style(agent))
    return table


def _cells(a: AgentStatus) -> list[str]:
    state_text = (FLAG if a.flagged else "") + a.process.state
    if not a.enabled:
        state_text += " (disabled)"
    elif a.ledger_state not in (None, "active"):
        state_text += f" ({a.ledger_state})"
    return [
        a.id,
        a.name,
        a.host or "-",
        state_text,
        "-" if a.process.pid is None else str(a.process.pid),
        duration(a.process.uptime_s),
        f"{a.strategy} {a.interval}",
        ",".join(a.symbols),
        f"{a.positions}/{a.max_positions}" + (f" +{a.reserved}r" if a.reserved else ""),
        ("-" if a.capital_pct is None else f"{a.capital_pct:.0%}")
        + ("" if a.capital is None else f" {money(a.capital)}"),
        money(a.equity),
        signed(a.pnl),
        "-" if a.last_tick_age_s is None else f"{duration(a.last_tick_age_s)} ago",
        _short(a.last_error),
    ]


def _row_style(a: AgentStatus) -> str:
    if a.flagged:
        return "bold red"
    return "dim" if not a.enabled or a.process.state == "NEVER STARTED" else ""


def _account_line(a: AccountStatus) -> str:
    from rich.markup import escape

    parts = [
        f"account {a.user}",
        f"balance {money(a.balance)}",
        f"positions {a.positions}/{a.max_total_positions}"
        + (f" (+{a.reserved} reserved)" if a.reserved else ""),
        "orders/min " + _budget(a.orders_used, a.orders_capacity),
        "weight/min " + _budget(a.weight_used, a.weight_capacity),
    ]
    if a.paused_until_s is not None:
        until = time.strftime("%H:%M:%S", time.localtime(a.paused_until_s))
        parts.append(
            f"[bold red]{FLAG}HOST PAUSED until {until}: {escape(a.pause_reason or '')}[/]"
        )
    return " | ".join(parts)


def _budget(used: float | None, capacity: float | None) -> str:
    if used is None or not capacity:
        return "0%"
    return f"{used / capacity:.0%} ({used:.0f}/{capacity:.0f})"


def _short(text: str | None) -> str:
    if not text:
        return ""
    line = text.splitlines()[0]
    return line if len(line) <= ERROR_WIDTH else line[: ERROR_WIDTH - 1] + "…"


def money(value: Decimal | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def signed(value: Decimal | None) -> str:
    return "-" if value is None else f"{value:+,.2f}"


def duration(seconds: float | None) -> str:
    """``45s``, ``12m 05s``, ``3h 04m``, ``2d 03h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def register(app: typer.Typer) -> None:
    app.command("status")(status)
