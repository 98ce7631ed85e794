"""``aster-agent portfolio [--json | --csv | --watch]``: the ETF view over every sleeve."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Final

import typer

from aster_agents.cli.common import console, emit_json, iso_utc, plain, write_csv
from aster_agents.cli.status import FLAG, load, money, signed, watch_live

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table

    from aster_agents.fleet.view import PortfolioReport


CSV_HEADER: Final = (
    "time",
    "agent",
    "name",
    "user",
    "state",
    "weight",
    "capital",
    "equity",
    "pnl",
    "return",
    "contribution",
)


def portfolio(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="One JSON document instead of a table."),
    as_csv: bool = typer.Option(False, "--csv", help="CSV on stdout: one row per sleeve."),
    watch: bool = typer.Option(False, "--watch", help="Refresh the view live until Ctrl-C."),
    interval: float = typer.Option(2.0, "--interval", min=0.1, help="Seconds between refreshes."),
) -> None:
    """Combined equity, P&L, return and drawdown; per-agent weight, contribution and state.

    Equity is the ledger's books: every sleeve valued at the latest recorded exchange marks
    plus the unallocated cash; the exchange equity last seen and the difference are shown.
    JSON: {"version": 1, "portfolio": {...}, "agents": [...]}; money as decimal strings,
    ratios (return, drawdown, weight, contribution) as numbers. CSV: one row per sleeve and
    one for the unallocated cash, plain decimal strings, ISO-8601 UTC times.
    """
    from aster_agents.fleet.view import collect_portfolio

    if sum((as_json, as_csv, watch)) > 1:
        raise typer.BadParameter("choose one of --json, --csv and --watch", param_hint="--watch")
    fleet, state_dir = load(ctx)
    if watch:
        watch_live(lambda: render_portfolio(collect_portfolio(fleet, state_dir)), interval)
        return
    report = collect_portfolio(fleet, state_dir)
    if as_json:
        emit_json(report.to_json())
    elif as_csv:
        write_csv(sys.stdout, CSV_HEADER, csv_rows(report))
    else:
        console().print(render_portfolio(report))


def csv_rows(report: PortfolioReport) -> list[list[str]]:
    """One row per sleeve, then the unallocated cash (when the ledger has seen the account)."""
    at = iso_utc(report.generated_ms)
    rows = [
        [
            at,
            s.id,
            s.name,
            s.figures.user,
            s.ledger_state or s.state,
            repr(s.figures.weight),
            plain(s.figures.capital),
            plain(s.figures.equity),
            plain(s.figures.pnl),
            repr(s.figures.ret),
            repr(s.figures.contribution),
        ]
        for s in report.sleeves
    ]
    f = report.figures
    if f.unallocated is not None:
        weight = float(f.unallocated / f.equity) if f.equity > 0 else 0.0
        rows.append([at, "unallocated", "", "", "", repr(weight), "", plain(f.unallocated)])
        rows[-1] += ["", "", ""]
    return rows


def render_portfolio(report: PortfolioReport) -> RenderableType:
    """A summary line over the per-sleeve table."""
    from rich.console import Group

    f = report.figures
    summary = (
        f"equity {money(f.equity)}  P&L {signed(f.pnl)}  return {f.ret:+.2%}  "
        f"drawdown {f.drawdown:.2%} (max {f.max_drawdown:.2%})  {report.sparkline}"
    )
    if report.exchange_equity is None and not f.equity:  # agents registered, nothing read yet
        summary = "equity - (the books open once an agent has read the exchange's balance)"
    lines = [summary]
    if report.exchange_equity is not None:
        gap = f.equity - report.exchange_equity
        lines.append(
            f"exchange equity last seen {money(report.exchange_equity)} (books {signed(gap)})"
        )
    if report.last_rebalance is not None:
        lines.append(f"last rebalance #{report.last_rebalance.id}: {report.last_rebalance.reason}")
    if not report.ledger_found:
        lines = ["no ledger yet: no agent has run, nothing to aggregate"]
    return Group(*lines, _sleeves_table(report))


def _sleeves_table(report: PortfolioReport) -> Table:
    from rich.table import Table

    table = Table(title="sleeves", title_justify="left")
    for name in (
        "id",
        "name",
        "host",
        "state",
        "weight",
        "capital",
        "equity",
        "P&L",
        "return",
        "contrib",
        "equity curve",
    ):
        right = name in ("weight", "capital", "equity", "P&L", "return", "contrib")
        table.add_column(name, justify="right" if right else "left")
    for s in report.sleeves:
        g = s.figures
        state_text = (FLAG if s.flagged else "") + s.state
        if s.ledger_state not in (None, "active"):
            reason = s.state_reason or s.ledger_state
            if not reason.startswith(s.ledger_state):  # "disabled by operator at ..." says it
                reason = f"{s.ledger_state}: {reason}"
            state_text += f" ({reason})"
        table.add_row(
            s.id,
            s.name,
            s.host or "-",
            state_text,
            f"{g.weight:.1%}",
            money(g.capital),
            money(g.equity),
            signed(g.pnl),
            f"{g.ret:+.2%}",
            f"{g.contribution:+.2%}",
            s.sparkline,
            style="bold red" if s.flagged else "",
        )
    f = report.figures
    if f.unallocated is not None:
        weight = float(f.unallocated / f.equity) if f.equity > 0 else 0.0
        table.add_row(
            "unallocated",
            "",
            "",
            "",
            f"{weight:.1%}",
            "",
            money(f.unallocated),
            "",
            "",
            "",
            "",
            style="dim",
        )
    return table


def register(app: typer.Typer) -> None:
    app.command("portfolio")(portfolio)
