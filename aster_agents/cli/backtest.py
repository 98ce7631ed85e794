"""``aster-agent backtest``: the agents' real code over a recording, in-process."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from aster_agents.cli.common import console, emit_json, iso_utc, parse_since, state

if TYPE_CHECKING:
    from aster_agents.config.schema import FleetConfig
    from aster_agents.fleet.backtest import BacktestResult


def backtest(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option("--data", help="Recording directory (see README).")],
    from_: str | None = typer.Option(None, "--from", help="Start (UTC date/time, ISO-8601)."),
    to: str | None = typer.Option(None, "--to", help="End (UTC date/time, ISO-8601)."),
    agents: Annotated[
        list[str] | None, typer.Option("--agents", help="Agent ids (default: every enabled one).")
    ] = None,
    as_json: bool = typer.Option(False, "--json", help="One JSON document: summary and fills."),
    report_to: Path | None = typer.Option(
        None,
        "--report",
        help="Also write the run's HTML report (as `report` writes a fleet's) to this file.",
    ),
    jobs: int = typer.Option(
        0,
        "--jobs",
        min=0,
        help="Processes at once for agents of different main accounts (0: one per core).",
    ),
) -> None:
    """Run the agents' real runner over a recording with a simulated clock.

    Fresh simulated accounts, a throwaway ledger; prints each agent's trips, P&L, fees,
    funding and equity. Agents of different main accounts never affect each other (unless
    the automatic rebalance is on), so they run in up to ``--jobs`` processes at once, with
    the same result as one. JSON: {"version": 1, "agents": [...], "fills": [...], ...}.
    """
    from aster_agents.fleet.backtest import run_backtest, usable_cores

    start, end = parse_since(from_), parse_since(to)
    fleet = state(ctx).fleet()
    ids = [i for value in agents or [] for i in value.replace(",", " ").split()]
    if report_to is not None and report_to.is_dir():  # said before a run of minutes, not after
        from aster_agents.errors import ConfigError

        raise ConfigError(f"--report {report_to}: is a directory; give the HTML file to write")
    workers = jobs or usable_cores()
    if report_to is None:
        result = run_backtest(fleet, data, agent_ids=ids, from_ms=start, to_ms=end, jobs=workers)
        wrote: list[str] = []
    else:
        result, wrote = _with_report(fleet, data, ids, start, end, report_to)
    if as_json:
        emit_json({**result.to_json(), "report": None if report_to is None else str(report_to)})
        return
    from rich.table import Table

    table = Table(title=f"backtest {data}: {iso_utc(result.start_ms)} .. {iso_utc(result.end_ms)}")
    for column in ("agent", "strategy", "trips", "P&L", "fees", "funding", "equity", "return"):
        table.add_column(column, justify="left" if column in ("agent", "strategy") else "right")
    for a in result.agents:
        doc = a.to_json()
        table.add_row(
            a.agent_id,
            a.strategy,
            str(a.trips),
            doc["pnl"],
            doc["fees"],
            doc["funding"],
            doc["equity"],
            f"{float(doc['return']):+.2%}",
        )
    out = console()
    out.print(table)
    out.print(
        f"{len(result.fills)} fills, {result.agent_ticks} agent-ticks in "
        f"{result.elapsed_s:.1f}s ({result.agent_ticks / max(result.elapsed_s, 1e-9):.0f}/s, "
        f"{result.workers} process{'es' if result.workers > 1 else ''})"
    )
    for line in wrote:
        out.print(line)


def _with_report(
    fleet: FleetConfig,
    data: Path,
    ids: list[str],
    start: int | None,
    end: int | None,
    out: Path,
) -> tuple[BacktestResult, list[str]]:
    """The backtest with its books kept in a scratch SQLite file (one process), then the
    report of those books, "now" being the end of the run; the books are deleted after."""
    import tempfile

    from aster_agents.cli.report import write_report
    from aster_agents.config.view import load_view
    from aster_agents.fleet.backtest import run_backtest, scratch_dir
    from aster_agents.ledger.rows import STATE_DIR_FILE

    with tempfile.TemporaryDirectory(prefix="aster-backtest-books-", dir=scratch_dir()) as tmp:
        books = Path(tmp)
        result = run_backtest(fleet, data, agent_ids=ids, from_ms=start, to_ms=end, state_dir=books)
        view = load_view(fleet.config_dir)
        view = view._replace(portfolio=view.portfolio._replace(ledger_url=STATE_DIR_FILE))
        return result, write_report(view, books, out, now_ms=result.end_ms)


def register(app: typer.Typer) -> None:
    """Add the ``backtest`` command to ``app``."""
    app.command("backtest")(backtest)
