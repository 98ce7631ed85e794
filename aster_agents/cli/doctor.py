"""``aster-agent doctor [--id ID] [--json]``: a PASS/WARN/FAIL/SKIP line per check.

Exit 0 when nothing FAILs, 1 otherwise (credentials refused included: the report says which
check failed), 2 for an unknown ``--id``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from aster_agents.cli.common import console, emit_json, state

if TYPE_CHECKING:
    from collections.abc import Callable

    from aster_agents.fleet.doctor import Check

_STYLE = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red", "SKIP": "dim"}


def doctor(
    ctx: typer.Context,
    agent_id: str | None = typer.Option(
        None, "--id", help="Check this agent only [default: every enabled agent]."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON document instead of lines."),
) -> None:
    """Check config, keys, exchange, clock, account, ledger, supervisord and rate budget."""
    from aster_agents.fleet.doctor import Status, run_doctor

    cli = state(ctx)
    report = None if as_json else _printer()
    checks = run_doctor(cli.config_dir, state_dir=cli.state_dir, agent_id=agent_id, report=report)
    ok = not any(c.status is Status.FAIL for c in checks)
    if as_json:
        emit_json({"checks": [c.to_json() for c in checks], "ok": ok})
    if not ok:
        raise typer.Exit(1)


def _printer() -> Callable[[Check], None]:
    from rich.markup import escape

    out = console()

    def show(check: Check) -> None:
        status = check.status.value
        scope = check.agent or "-"
        first, *more = check.detail.splitlines() or [""]
        line = f"[{_STYLE[status]}]{status}[/]  {escape(scope):<12} {check.name:<20} "
        out.print(line + escape(first), soft_wrap=True)
        for extra in more:
            out.print(" " * 40 + escape(extra), soft_wrap=True)

    return show


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
