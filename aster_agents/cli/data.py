"""``aster-agent data``: record an exchange's public market data; summarise a recording."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from aster_agents.cli.common import console, emit_json, err_console, iso_utc, parse_since

data_app = typer.Typer(help="Record market data for replays and backtests.", no_args_is_help=True)


@data_app.command("download")
def download(
    symbol: str = typer.Option(..., "--symbol", help="e.g. BTCUSDT."),
    interval: str = typer.Option(..., "--interval", help="Kline interval, e.g. 1m or 5m."),
    since: str = typer.Option(..., "--since", help="Start (UTC date/time, ISO-8601)."),
    until: str | None = typer.Option(None, "--until", help="End (default: now)."),
    out: Annotated[Path, typer.Option("--out", help="Recording directory (created).")] = Path(
        "recording"
    ),
    exchange: str = typer.Option(
        "https://fapi.asterdex.com", "--exchange", help="The exchange to record (public data)."
    ),
    weight_per_minute: int = typer.Option(
        1200, "--weight-per-minute", min=10, help="Request weight budget (the IP limit is 2400)."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON document at the end."),
) -> None:
    """Append closed klines, mark-price klines and funding rates to --out; resumable."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from aster_agents.exchange.http import AsterClient
    from aster_agents.signing import NonceSource
    from aster_agents.sim import download as rec

    since_ms = parse_since(since)
    assert since_ms is not None
    until_ms = parse_since(until)
    budget = rec.PacedBudget(weight_per_minute)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[rows]} rows"),
        TimeRemainingColumn(),
        console=err_console(),
        transient=True,
        disable=as_json,
    )
    tasks: dict[str, Any] = {}

    def show(p: rec.Progress) -> None:
        if p.file not in tasks:
            tasks[p.file] = bar.add_task(p.file, total=p.until_ms - p.since_ms, rows=0)
        bar.update(tasks[p.file], completed=p.done_ms - p.since_ms, rows=p.rows)

    client = AsterClient(exchange, user=None, signer=None, nonces=NonceSource(0), budget=budget)
    with client, bar:
        results = rec.download(client, symbol, interval, since_ms, until_ms, out, show)
    if as_json:
        emit_json({"out": str(out), "files": [r.to_json() for r in results]})
        return
    for r in results:
        console().print(f"{out / r.file}: +{r.added} rows ({r.total} in all)")


@data_app.command("info")
def info(
    directory: Annotated[Path, typer.Argument(help="A recording directory.")],
    as_json: bool = typer.Option(False, "--json", help="One JSON document."),
) -> None:
    """What a recording holds: per symbol its interval, candles, time span, marks, funding."""
    from aster_agents.sim.recording import load_recording

    recording = load_recording(directory)
    rows: list[dict[str, Any]] = []
    for symbol, rec in sorted(recording.symbols.items()):
        k = rec.klines
        rows.append(
            {
                "symbol": symbol,
                "interval": k.interval,
                "candles": len(k.c),
                "from": k.first_open,
                "to": k.end_ms - 1,
                "mark_klines": rec.mark is not None,
                "funding_rates": len(rec.funding),
            }
        )
    if as_json:
        emit_json({"data": str(directory), "symbols": rows})
        return
    for r in rows:
        console().print(
            f"{r['symbol']} {r['interval']}: {r['candles']} candles, {iso_utc(int(r['from']))} "
            f".. {iso_utc(int(r['to']))}, mark klines: {'yes' if r['mark_klines'] else 'no'}, "
            f"{r['funding_rates']} funding rates"
        )


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to ``app``."""
    app.add_typer(data_app, name="data")
