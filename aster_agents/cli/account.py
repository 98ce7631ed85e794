"""``aster-agent account --id ID [--json]``: what the exchange reports for an agent's account."""

from __future__ import annotations

from typing import Any

import typer

from aster_agents.cli.common import console, emit_json, state


def account(
    ctx: typer.Context,
    agent_id: str = typer.Option(..., "--id", help="Agent whose API wallet is used."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document instead of tables."),
) -> None:
    """Show balances, positions and open orders as the exchange reports them."""
    from aster_agents.agent.clients import account_snapshot

    cli = state(ctx)
    snapshot = account_snapshot(cli.fleet(), agent_id, cli.resolved_state_dir())
    if as_json:
        emit_json(snapshot)
        return
    _render(snapshot)


def _render(snap: dict[str, Any]) -> None:
    from rich.table import Table

    out = console()
    out.print(f"account {snap['user']} via agent {snap['agent']} ({snap['base_url']})")
    tables = {
        "balances": ("asset", "balance", "available_balance", "cross_un_pnl"),
        "positions": (
            "symbol",
            "position_amt",
            "entry_price",
            "mark_price",
            "unrealized_profit",
            "leverage",
        ),
        "open_orders": (
            "symbol",
            "client_order_id",
            "type",
            "side",
            "orig_qty",
            "price",
            "stop_price",
            "status",
        ),
    }
    for title, columns in tables.items():
        table = Table(title=title)
        for column in columns:
            table.add_column(column)
        for row in snap[title]:
            table.add_row(*(_text(row[c]) for c in columns))
        out.print(table)


def _text(value: object) -> str:
    from decimal import Decimal

    from aster_agents.decimals import plain

    return plain(value) if isinstance(value, Decimal) else str(value)


def register(app: typer.Typer) -> None:
    app.command("account")(account)
