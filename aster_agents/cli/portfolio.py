"""``aster-agent portfolio [--json]``: the ETF view over every agent's sleeve."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from aster_agents.cli.common import console, emit_json
from aster_agents.cli.status import FLAG, load, money, signed

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table

    from aster_agents.fleet.view import PortfolioReport


def portfolio(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="One JSON document instead of a table."),
) -> None:
    """Combined equity, P&L, return and drawdown; per-agent weight, contribution and state.

    Equity is the ledger's books: every sleeve valued at the latest recorded exchange marks
    plus the unallocated cash; the exchange equity last seen and the difference are shown.
    JSON: {"version": 1, "portfolio": {...}, "agents": [...]}; money as decimal strings,
    ratios (return, drawdown, weight, contribution) as numbers.
    """
    from aster_agents.fleet.view import collect_portfolio

    fleet, state_dir = load(ctx)
    report = collect_portfolio(fleet, state_dir)
    if as_json:
        emit_json(report.to_json())
        return
    console().print(render_portfolio(report))


def render_portfolio(report: PortfolioReport) -> RenderableType:
    """A summary line over the per-sleeve table."""
    from rich.console import Group

    f = report.figures
    summary = (
        f"equity {money(f.equity)}  P&L {signed(f.pnl)}  return {f.ret:+.2%}  "
        f"drawdown {f.drawdown:.2%} (max {f.max_drawdown:.2%})  {report.sparkline}"
    )
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
