"""``aster-agent agents list|validate``."""

from __future__ import annotations

import typer

from aster_agents.cli.common import console, emit_json, state

agents_app = typer.Typer(help="List and validate the agents in agents.d.", no_args_is_help=True)


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


def _row(agent: object) -> dict[str, object]:
    from aster_agents.config import AgentConfig

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
