"""``aster-agent reconcile [--id ID] [--dry-run] [--json]``: ledger vs exchange."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from aster_agents.cli.common import console, emit_json, state

if TYPE_CHECKING:
    from aster_agents.agent.reconcile import ReconcileReport


def reconcile(
    ctx: typer.Context,
    agent_id: str | None = typer.Option(None, "--id", help="Only this agent's account."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Compare only; repair nothing."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document instead of text."),
) -> None:
    """Book missing fills and income, then report every ledger/exchange difference.

    Exit 0 when the books agree (equity within 0.01 USDT), 1 when a difference remains.
    Never places an order; safe while agents run.
    """
    from aster_agents.agent.reconcile import reconcile_fleet

    cli = state(ctx)
    report = reconcile_fleet(
        cli.fleet(), cli.resolved_state_dir(), agent_id=agent_id, dry_run=dry_run
    )
    if as_json:
        emit_json(report.to_json())
    else:
        _render(report)
    if not report.ok:
        raise typer.Exit(1)


def _render(report: ReconcileReport) -> None:
    from aster_agents.decimals import plain, signed

    out = console()
    for a in report.accounts:
        gap = a.books_equity - a.exchange_equity
        unallocated = "-" if a.unallocated is None else plain(a.unallocated)
        out.print(
            f"account {a.user}: exchange equity {plain(a.exchange_equity)}, books "
            f"{plain(a.books_equity)} ({signed(gap)}), unallocated {unallocated}"
        )
        for line in a.repairs:
            out.print(f"  repaired: {line}")
        for d in a.open_differences:  # the repaired ones are in the repairs above
            out.print(
                f"  DIFFERS: {d.kind} {d.symbol or ''} ledger {_text(d.ledger)} exchange "
                f"{_text(d.exchange)}: {d.note}"
            )
        out.print("  books agree" if a.ok else "  books differ")


def _text(value: object) -> str:
    from decimal import Decimal

    from aster_agents.decimals import plain

    return plain(value) if isinstance(value, Decimal) else str(value)


def register(app: typer.Typer) -> None:
    app.command("reconcile")(reconcile)
