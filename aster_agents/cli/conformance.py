"""``aster-agent conformance --id ID [--symbol S] [--json] [--allow-mainnet]``."""

from __future__ import annotations

import typer

from aster_agents.cli.common import emit_json, state


def conformance(
    ctx: typer.Context,
    agent_id: str = typer.Option(..., "--id", help="Agent whose exchange and API wallet to check."),
    symbol: str | None = typer.Option(
        None, "--symbol", help="Symbol to trade the smallest orders on [agent's first symbol]."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON document (for bug reports)."),
    allow_mainnet: bool = typer.Option(
        False, "--allow-mainnet", help="Run against Aster mainnet too (real orders, real money)."
    ),
) -> None:
    """Check every assumption the agents rely on against the agent's exchange (meant for testnet).

    One line per check, PASS/FAIL/SKIP with the exchange's answer; exit 1 on any FAIL.
    Places the smallest real orders the symbol allows and cancels/closes them again.
    """
    from aster_agents.agent.conformance import Check, run_conformance

    def line(check: Check) -> None:
        if not as_json:
            typer.echo(f"{check.status}  {check.name}: {check.detail}")

    fleet = state(ctx).fleet()
    report = run_conformance(fleet, agent_id, symbol, allow_mainnet=allow_mainnet, on_check=line)
    if as_json:
        emit_json(report.to_json())
    else:
        for item in report.left:
            typer.echo(f"LEFT  {item}")
        passed = sum(1 for c in report.checks if c.status == "PASS")
        typer.echo(f"{passed}/{len(report.checks)} passed against {report.base_url}")
    if report.failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("conformance")(conformance)
