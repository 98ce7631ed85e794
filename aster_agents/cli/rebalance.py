"""``aster-agent rebalance [--apply] [--json]``: current vs proposed weights, and applying them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from aster_agents.cli.common import console, emit_json, state

if TYPE_CHECKING:
    from rich.console import RenderableType

    from aster_agents.portfolio.governance import Applied, Review


def rebalance(
    ctx: typer.Context,
    apply: bool = typer.Option(False, "--apply", help="Apply the proposal (all or nothing)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document instead of tables."),
) -> None:
    """Show current vs proposed weights with the reason for each; --apply applies them.

    The kill switches are checked first. JSON: {"version": 1, "proposal": [...],
    "applied": bool, "rebalance_id": int|null, "metrics": {...}, ...}.
    """
    from aster_agents.ledger import Ledger
    from aster_agents.models import now_ms
    from aster_agents.portfolio.governance import (
        Applied,
        check_kill_switches,
        rebalance_now,
        review,
    )

    cli = state(ctx)
    fleet, state_dir = cli.fleet(), cli.resolved_state_dir()
    with Ledger(state_dir, url=fleet.ledger_url) as ledger:
        now = now_ms()
        if apply:
            with ledger.rebalance_lock():
                result = rebalance_now(fleet, ledger, now_ms=now, reason="manual rebalance")
        else:
            moved = check_kill_switches(fleet, ledger, now_ms=now)
            shown = review(fleet, ledger, now_ms=now)._replace(transitions=tuple(moved))
            result = Applied(shown, None, {}, _dry_run_message(shown))
    if as_json:
        emit_json(_document(result))
        return
    if not result.review.sleeves:
        typer.echo(
            f"no agent in the ledger at {state_dir} yet: agents register when they "
            "start (aster-agent up, or run --id ID); nothing to rebalance"
        )
        return
    console().print(render(result))


def _dry_run_message(rv: Review) -> str:
    if rv.proposal.blocked:
        return "cooldown: nothing would be applied now"
    n = len(rv.proposal.changes)
    return f"{n} change(s) proposed; apply with --apply" if n else "nothing to apply"


def _document(result: Applied) -> dict[str, object]:
    return {
        **result.review.to_json(),
        "applied": result.rebalance_id is not None,
        "rebalance_id": result.rebalance_id,
        "moves": dict(result.moves),
        "message": result.message,
    }


def render(result: Applied) -> RenderableType:
    """Transitions, the proposal table, the metrics table and a summary line."""
    from rich.console import Group

    rv = result.review
    parts: list[RenderableType] = [
        f"agent {t.agent_id}: {t.old} -> {t.new} ({t.reason})" for t in rv.transitions
    ]
    parts += [_proposal_table(rv), _metrics_table(rv), _summary(rv), result.message]
    return Group(*parts)


def _proposal_table(rv: Review) -> RenderableType:
    from rich.table import Table

    table = Table(title="rebalance", title_justify="left")
    for name in ("agent", "state", "current", "proposed", "change", "Sharpe", "reason"):
        table.add_column(
            name, justify="right" if name in ("current", "proposed", "change", "Sharpe") else "left"
        )
    for x in rv.proposal.lines:
        score = "-" if x.score is None else f"{x.score:+.2f}"
        change = f"{x.change:+.1%}" if x.change else "-"
        table.add_row(
            x.agent_id, x.state, f"{x.current:.1%}", f"{x.proposed:.1%}", change, score, x.reason
        )
    return table


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _metrics_table(rv: Review) -> RenderableType:
    from rich.table import Table

    table = Table(title="metrics over the lookback", title_justify="left")
    for name in ("agent", "return", "vol", "Sharpe", "max DD", "DD", "win", "trades", "exposure"):
        table.add_column(name, justify="left" if name == "agent" else "right")
    rows = [(s.agent_id, s.metrics, s.drawdown) for s in rv.sleeves]
    rows += [(f"account {a.user[:10]}", a.combined, a.drawdown) for a in rv.accounts]
    for name, m, dd in rows:
        sharpe = "-" if m.sharpe is None else f"{m.sharpe:+.2f}"
        table.add_row(
            name,
            _pct(m.total_return),
            _pct(m.volatility),
            sharpe,
            _pct(m.max_drawdown),
            _pct(dd),
            _pct(m.win_rate),
            str(m.trades),
            _pct(m.exposure),
        )
    return table


def _summary(rv: Review) -> str:
    from aster_agents.portfolio.rebalance import iso

    last = rv.last_rebalance
    text = (
        "last rebalance: never"
        if last is None
        else (f"last rebalance: #{last.id} at {iso(last.time_ms)} ({last.reason})")
    )
    if rv.proposal.cooldown_until_ms is not None:
        text += f"; cooldown until {iso(rv.proposal.cooldown_until_ms)}"
    return text


def register(app: typer.Typer) -> None:
    app.command("rebalance")(rebalance)
