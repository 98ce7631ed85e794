"""``aster-agent demo``: the shipped fleet against the simulator under a real supervisord."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

from aster_agents.cli.common import console, emit_json, err_console, state

if TYPE_CHECKING:
    from rich.console import RenderableType

    from aster_agents.fleet.demo import BooksCheck, Demo, DemoResult, Snapshot


def demo(
    ctx: typer.Context,
    agents: int | None = typer.Option(
        None, "--agents", help="How many agents [default: every agent of the shipped config]."
    ),
    duration: float = typer.Option(60.0, "--duration", min=1, help="Seconds to run."),
    speed: float = typer.Option(
        60.0, "--speed", min=1, help="Market time per wall-clock second (60: a 1m candle per s)."
    ),
    seed: int = typer.Option(1, "--seed", help="Market generator seed."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON summary at the end."),
) -> None:
    """Run the agents against the simulator for a while, then tear everything down.

    Uses a temporary directory under /tmp, or the global --state-dir (kept afterwards).
    Exit 0 when trades happened, 1 when none did, 130 when interrupted.
    """
    from aster_agents.fleet.demo import Demo, DemoOptions

    cli = state(ctx)
    options = DemoOptions(agents, duration, speed, seed, directory=cli.state_dir)
    stop = threading.Event()
    with _stop_on_signals(stop):
        runner = Demo(cli.fleet(), options, _progress(as_json))
        if not as_json:
            err_console().print(
                f"demo: {len(runner.agents)} agent(s) for {duration:.0f}s against the simulator "
                f"(market x{speed:g}) under supervisord; Ctrl-C stops"
            )
        with _live(as_json, runner) as show:
            runner.on_update = show
            result = runner.run(stop)
    _report(result, as_json)
    if result.interrupted:
        raise typer.Exit(130)
    if result.final.trades == 0:
        err_console().print(
            f"demo: no trades in {result.final.elapsed:.0f}s; try a longer --duration "
            "(see the agents' logs with --state-dir DIR to keep them)"
        )
        raise typer.Exit(1)


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda *_: stop.set())
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _progress(as_json: bool) -> Callable[[Snapshot], None]:
    last = [0.0]

    def plain(snapshot: Snapshot) -> None:
        if time.monotonic() - last[0] < 5:
            return
        last[0] = time.monotonic()
        line = (
            f"[{snapshot.elapsed:4.0f}s] agents running {snapshot.running}/"
            f"{len(snapshot.agents)}  trades {snapshot.trades}  P&L {snapshot.pnl:+.2f} USDT"
        )
        print(line, file=sys.stderr if as_json else sys.stdout, flush=True)

    return plain


@contextmanager
def _live(as_json: bool, runner: Demo) -> Iterator[Callable[[Snapshot], None]]:
    """Status and portfolio redrawn in place on a terminal; a line every 5 s otherwise."""
    out = console()
    if as_json or not out.is_terminal:
        yield _progress(as_json)
        return
    from rich.live import Live

    with Live(console=out, auto_refresh=False, transient=False) as live:
        yield lambda snapshot: live.update(_fleet_view(runner, snapshot), refresh=True)


def _fleet_view(runner: Demo, snapshot: Snapshot) -> RenderableType:
    from rich.console import Group

    from aster_agents.cli.portfolio import render_portfolio
    from aster_agents.cli.status import render_status
    from aster_agents.config.view import load_view
    from aster_agents.fleet.view import collect_portfolio, collect_status

    assert runner.fleet is not None
    view = load_view(runner.fleet.config_dir)
    header = (
        f"demo: {snapshot.elapsed:.0f}s of {snapshot.duration:.0f}s  trades {snapshot.trades}  "
        f"P&L {snapshot.pnl:+.2f} USDT  (account equity {snapshot.account_equity:.2f})"
    )
    return Group(
        header,
        render_status(collect_status(view, runner.state_dir)),
        render_portfolio(collect_portfolio(view, runner.state_dir)),
    )


def _view(snapshot: Snapshot, title: str) -> RenderableType:
    from rich.table import Table

    table = Table(title=title)
    for column in (
        "agent",
        "strategy",
        "trades",
        "open",
        "realized",
        "fees",
        "funding",
        "unrealized",
        "P&L",
    ):
        table.add_column(column, justify="left" if column in ("agent", "strategy") else "right")
    for a in snapshot.agents:
        table.add_row(
            a.id,
            a.strategy,
            str(a.trades),
            str(a.open_positions),
            f"{a.realized_pnl:.2f}",
            f"{a.fees:.2f}",
            f"{a.funding:.2f}",
            f"{a.unrealized_pnl:.2f}",
            _signed(a.pnl),
        )
    table.add_section()
    table.add_row("combined", "", str(snapshot.trades), "", "", "", "", "", _signed(snapshot.pnl))
    table.caption = (
        f"account equity {snapshot.account_equity:.2f} USDT (start {snapshot.starting_balance:.2f})"
    )
    return table


def _signed(value: object) -> str:
    return f"{value:+.2f}"


def _report(result: DemoResult, as_json: bool) -> None:
    if as_json:
        emit_json({"demo": result.to_json()})
        return
    out = console()
    out.print(_view(result.final, "demo summary"))
    for a in result.final.agents:
        if a.why_no_trade:
            out.print(f"{a.id}: no trade: {a.why_no_trade}", markup=False, highlight=False)
    for note in result.overrides:
        out.print(f"demo override: {note}", markup=False, highlight=False)
    how = "interrupted" if result.interrupted else "finished"
    where = f"; kept {result.directory}" if result.kept else ""
    if result.books is not None:
        out.print(_books_line(result.books), markup=False, highlight=False)
    out.print(
        f"demo {how}: {result.final.trades} trade(s), combined P&L "
        f"{result.final.pnl:+.2f} USDT; supervisord and every agent stopped{where}"
    )


_RECONCILE = {True: "ok", False: "found differences", None: "failed"}


def _books_line(books: BooksCheck) -> str:
    """Books vs exchange at the frozen market instant, after the final reconcile."""

    def amount(value: object) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    gap = books.difference
    verdict = "agree" if books.agree else "DIFFER"
    line = (
        f"books {amount(books.books_equity)} vs exchange {amount(books.exchange_equity)} USDT "
        f"(difference {'n/a' if gap is None else f'{gap:+.2f}'}): {verdict}; "
        f"funding {books.funding_events} settlement(s) {books.funding_total:+.4f}; "
        f"reconcile {_RECONCILE[books.reconcile_ok]}"
        f", {len(books.repairs)} repair(s)"
    )
    details = [*books.differences, *books.errors]
    return line + "".join(f"\n  {d}" for d in details)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
