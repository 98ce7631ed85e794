"""``aster-agent agents list|validate|enable|disable``."""

from __future__ import annotations

import typer

from aster_agents.cli.common import console, emit_json, state

agents_app = typer.Typer(
    help="List, validate, enable and disable the agents in agents.d.", no_args_is_help=True
)


@agents_app.command("list")
def list_agents(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="One JSON document instead of a table."),
) -> None:
    """List the configured agents."""
    fleet = state(ctx).fleet()
    if as_json:
        emit_json({"agents": [_row(a) for a in fleet.agents]})
        return
    from rich.table import Table

    table = Table(title=f"agents in {fleet.config_dir}")
    for column in ("id", "name", "enabled", "strategy", "interval", "symbols", "capital", "signer"):
        table.add_column(column)
    for a in fleet.agents:
        table.add_row(
            a.id,
            a.name,
            "yes" if a.enabled else "no",
            a.trading.strategy,
            a.trading.interval,
            ",".join(a.trading.symbols),
            f"{a.allocation.capital_pct:.0%}",
            a.exchange.signer,
        )
    console().print(table)


@agents_app.command("validate")
def validate(ctx: typer.Context) -> None:
    """Check every file in agents.d; exit 2 with one line per problem."""
    fleet = state(ctx).fleet()
    n = len(fleet.agents)
    console().print(f"ok: {n} agent(s) in {fleet.config_dir} are valid")


@agents_app.command("disable")
def disable(
    ctx: typer.Context,
    agent_id: str = typer.Option(..., "--id", help="The agent to disable."),
    reason: str | None = typer.Option(None, "--reason", help="Why (kept in the audit trail)."),
) -> None:
    """Stop an agent opening positions; its open positions run off under their stops."""
    _set_state(ctx, agent_id, enabled=False, note=reason)


@agents_app.command("enable")
def enable(
    ctx: typer.Context,
    agent_id: str = typer.Option(..., "--id", help="The agent to enable."),
    reason: str | None = typer.Option(None, "--reason", help="Why (kept in the audit trail)."),
) -> None:
    """Let a disabled (or probation) agent trade again; restarts its drawdown peak."""
    _set_state(ctx, agent_id, enabled=True, note=reason)


def _set_state(ctx: typer.Context, agent_id: str, *, enabled: bool, note: str | None) -> None:
    from aster_agents.ledger import Ledger
    from aster_agents.models import now_ms
    from aster_agents.portfolio.governance import operator_set

    cli = state(ctx)
    agent = cli.fleet().agent(agent_id)  # unknown id: ConfigError, exit 2
    with Ledger(cli.resolved_state_dir()) as ledger:
        if ledger.agent(agent.id) is None:
            if enabled:
                console().print(f"{agent.id}: active (it has not run yet)")
                return
            ledger.register_agent(
                agent.id,
                agent.exchange.user,
                max_positions=agent.trading.max_positions,
                enabled=False,
            )
        reason = operator_set(ledger, agent.id, enabled=enabled, note=note, now_ms=now_ms())
    console().print(f"{agent.id}: {'active' if enabled else 'disabled'} ({reason})")


def _row(agent: object) -> dict[str, object]:
    from aster_agents.config.schema import AgentConfig

    assert isinstance(agent, AgentConfig)
    return {
        "id": agent.id,
        "name": agent.name,
        "enabled": agent.enabled,
        "strategy": agent.trading.strategy,
        "interval": agent.trading.interval,
        "symbols": list(agent.trading.symbols),
        "capital_pct": agent.allocation.capital_pct,
        "user": agent.exchange.user,
        "signer": agent.exchange.signer,
        "base_url": agent.exchange.base_url,
    }


def register(app: typer.Typer) -> None:
    app.add_typer(agents_app, name="agents")
