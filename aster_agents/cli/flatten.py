"""``aster-agent flatten (--id ID | --all) [--yes] [--json]``: the panic button."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import typer

from aster_agents.cli.common import console, emit_json, state

if TYPE_CHECKING:
    from aster_agents.agent.flatten import FlattenReport


def flatten(
    ctx: typer.Context,
    agent_id: str | None = typer.Option(None, "--id", help="The agent to flatten."),
    all_agents: bool = typer.Option(False, "--all", help="Every agent of every account."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask (required off a terminal)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document instead of text."),
    timeout: float = typer.Option(30.0, "--timeout", min=1.0, help="Seconds per agent."),
) -> None:
    """Disable agents, cancel their orders and close their positions at market (reduce-only).

    Safe to rerun after a crash: every close is a ledger intent first, so none is sent twice
    or left unbooked. Exit 0 when nothing of theirs is left on the exchange, 1 otherwise.
    """
    from aster_agents.agent.flatten import flatten_fleet
    from aster_agents.errors import ConfigError

    if (agent_id is None) == (not all_agents):
        raise typer.BadParameter("pass exactly one of --id ID or --all")
    cli = state(ctx)
    fleet = cli.fleet()
    ids = [a.id for a in fleet.agents] if all_agents else [fleet.agent(str(agent_id)).id]
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError("flatten: no terminal to confirm on; pass --yes to go ahead")
        typer.confirm(
            f"Disable {', '.join(ids)}, cancel their orders and close their positions at market?",
            abort=True,
        )
    report = flatten_fleet(fleet, cli.resolved_state_dir(), ids, timeout_s=timeout)
    if as_json:
        emit_json(report.to_json())
    else:
        _render(report)
    if not report.ok:
        raise typer.Exit(1)


def _render(report: FlattenReport) -> None:
    out = console()
    for a in report.agents:
        out.print(f"{a.agent_id}: disabled (flattened by operator), {len(a.cancelled)} cancelled")
        for c in a.closes:
            out.print(
                f"  closed {c.symbol} {c.qty:+} @ {c.price:.8g}: realized {c.realized_pnl:+}, "
                f"fee {c.commission}"
            )
        for note in a.notes:
            out.print(f"  note: {note}")
    doc = report.to_json()
    out.print(f"realized {doc['realized_pnl']}, fees {doc['commission']}")
    for where, qty in report.left_positions.items():
        out.print(f"LEFT: position {where} {qty}")
    for coid in report.left_orders:
        out.print(f"LEFT: order {coid}")
    out.print("nothing left on the exchange" if report.ok else "something is left: run it again")


def register(app: typer.Typer) -> None:
    app.command("flatten")(flatten)
