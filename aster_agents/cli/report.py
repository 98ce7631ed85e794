"""``aster-agent report``: one self-contained HTML file with the charts; PNG and CSV exports."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from aster_agents.cli.common import iso_utc, parse_since, plain, write_csv

if TYPE_CHECKING:
    from aster_agents.config.view import FleetView
    from aster_agents.fleet.report import ReportData


def report(
    ctx: typer.Context,
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="The HTML file to write."),
    since: str | None = typer.Option(
        None, "--since", help="Only history from this UTC date/time (ISO-8601) on."
    ),
    png: Path | None = typer.Option(None, "--png", help="Also write each chart as DIR/<name>.png."),
    csv_dir: Path | None = typer.Option(
        None, "--csv", help="Also write DIR/equity.csv, DIR/trades.csv and DIR/portfolio.csv."
    ),
) -> None:
    """Write the portfolio report: combined equity and drawdown, NAV per unit, weights with
    rebalances and kill switches marked, the per-agent table and the exchange-equity check.

    Reads the ledger only (no exchange, no key); the file opens offline.
    """
    from aster_agents.cli.status import load

    fleet, state_dir = load(ctx)
    for line in write_report(
        fleet, state_dir, out, since_ms=parse_since(since), png=png, csv_dir=csv_dir
    ):
        typer.echo(line)


def write_report(
    fleet: FleetView,
    state_dir: Path,
    out: Path,
    *,
    since_ms: int | None = None,
    now_ms: int | None = None,
    png: Path | None = None,
    csv_dir: Path | None = None,
) -> list[str]:
    """The report of the ledger of ``fleet``/``state_dir`` into ``out`` (and the PNG and CSV
    exports); a line per file written. ``now_ms``: the report's "now" (default: the clock)."""
    from aster_agents.fleet import charts
    from aster_agents.fleet.report import collect_report
    from aster_agents.fleet.report_html import render_html
    from aster_agents.fsutil import write_private_file

    data = collect_report(fleet, state_dir, since_ms=since_ms, now_ms=now_ms)
    svgs = {name: charts.svg_markup(raw) for name, raw in charts.render(data, "svg").items()}
    write_private_file(out, render_html(data, svgs).encode("utf-8"), replace=True)
    lines = [f"wrote {out} ({out.stat().st_size:,} bytes)"]
    if png is not None:
        lines += [f"wrote {path}" for path in charts.write_pngs(data, png)]
    if csv_dir is not None:
        lines += [f"wrote {path}" for path in write_csvs(data, csv_dir)]
    return lines


def write_csvs(data: ReportData, directory: Path) -> list[Path]:
    """equity.csv (every snapshot in the window), trades.csv, portfolio.csv; atomically."""
    import io

    from aster_agents.cli.portfolio import CSV_HEADER as PORTFOLIO_HEADER
    from aster_agents.cli.portfolio import csv_rows
    from aster_agents.cli.trades import CSV_HEADER as TRADES_HEADER
    from aster_agents.cli.trades import csv_row
    from aster_agents.fleet.report import equity_history
    from aster_agents.fsutil import write_private_file

    equity = (
        (iso_utc(p.time_ms), agent_id, plain(p.equity), plain(p.nav))
        for agent_id, points in equity_history(data).items()
        for p in points
    )
    tables = {
        "equity.csv": (("time", "agent", "equity", "nav_per_unit"), equity),
        "trades.csv": (TRADES_HEADER, (csv_row(t) for t in data.trips)),
        "portfolio.csv": (PORTFOLIO_HEADER, csv_rows(data.portfolio)),
    }
    paths = []
    for name, (header, rows) in tables.items():
        buf = io.StringIO()
        write_csv(buf, header, rows)
        path = directory / name
        write_private_file(path, buf.getvalue().encode("utf-8"), replace=True)
        paths.append(path)
    return paths


def register(app: typer.Typer) -> None:
    app.command("report")(report)
