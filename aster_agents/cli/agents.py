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
    """List the configured agents; `enabled` also says when the ledger has disabled one."""
    cli = state(ctx)
    fleet = cli.fleet()
    states = _ledger_states(cli.resolved_state_dir(), fleet.ledger_url)
    if as_json:
        emit_json({"agents": [_row(a, states.get(a.id)) for a in fleet.agents]})
        return
    from rich.table import Table

    table = Table(title=f"agents in {fleet.config_dir}")
    for column in ("id", "name", "enabled", "strategy", "interval", "symbols", "capital", "signer"):
        table.add_column(column)
    for a in fleet.agents:
        table.add_row(
            a.id,
            a.name,
            _enabled_text(a.enabled, states.get(a.id)),
            a.trading.strategy,
            a.trading.interval,
            ",".join(a.trading.symbols),
            f"{a.allocation.capital_pct:.0%}",
            a.exchange.signer,
        )
    console().print(table)


def _ledger_states(state_dir: object, url: str | None) -> dict[str, tuple[str, str | None]]:
    """(state, reason) per agent the ledger knows; empty without a ledger (read-only)."""
    from pathlib import Path

    from aster_agents.ledger.readonly import open_readonly

    ledger = open_readonly(Path(str(state_dir)), url)
    if ledger is None:
        return {}
    try:
        return {r.agent_id: (r.state, r.state_reason) for r in ledger.agent_rows()}
    finally:
        ledger.close()


def _enabled_text(configured: bool, ledger: tuple[str, str | None] | None) -> str:
    if not configured:
        return "no (agents.d)"
    if ledger is not None and ledger[0] == "disabled":
        return f"no ({ledger[1] or 'disabled in the ledger'})"
    return "yes" if ledger is None or ledger[0] == "active" else f"yes ({ledger[0]})"


@agents_app.command("validate")
def validate(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="One JSON document instead of text."),
) -> None:
    """Check every file in agents.d; exit 2 with one line per problem."""
    from aster_agents.errors import ConfigError

    try:
        fleet = state(ctx).fleet()
    except ConfigError as exc:
        if not as_json:
            raise
        emit_json({"ok": False, "problems": list(exc.problems)})
        raise typer.Exit(exc.exit_code) from None
    n = len(fleet.agents)
    if as_json:
        emit_json(
            {"ok": True, "config_dir": fleet.config_dir, "agents": [a.id for a in fleet.agents]}
        )
        return
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
    with Ledger(cli.resolved_state_dir(), url=cli.fleet().ledger_url) as ledger:
        row = ledger.agent(agent.id)
        if row is not None and not enabled and row.state == "disabled":
            console().print(
                f"{agent.id}: already disabled ({row.state_reason or 'no reason given'}); "
                "nothing changed (`agents enable` first to give a new reason)"
            )
            return
        if row is None:
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


def _row(agent: object, ledger: tuple[str, str | None] | None) -> dict[str, object]:
    from aster_agents.config.schema import AgentConfig

    assert isinstance(agent, AgentConfig)
    return {
        "id": agent.id,
        "name": agent.name,
        "enabled": agent.enabled,
        "state": ledger[0] if ledger else None,
        "state_reason": ledger[1] if ledger else None,
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
