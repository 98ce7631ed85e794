"""``aster-agent run [--id ID]``: one agent in the foreground."""

from __future__ import annotations

import os

import typer

from aster_agents.cli.common import state


def run(
    ctx: typer.Context,
    agent_id: str | None = typer.Option(
        None, "--id", help="Agent id (a file in agents.d) [env AGENT_ID]."
    ),
    log_json: bool = typer.Option(False, "--log-json", help="Log one JSON object per line."),
) -> None:
    """Run one agent until SIGTERM/SIGINT (exit 0).

    Exit 2: bad config or key; 3: the agent is already running; 4: credentials refused.
    """
    import signal
    import threading

    stop = threading.Event()  # handlers go in before the heavy imports: SIGTERM is never lost
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    from aster_agents.agent.runner import run_agent
    from aster_agents.errors import ConfigError

    chosen = agent_id or os.environ.get("AGENT_ID")
    if not chosen:
        raise ConfigError("no agent given: pass --id ID or set AGENT_ID")
    cli = state(ctx)
    fleet = cli.fleet()
    raise typer.Exit(
        run_agent(fleet, chosen, cli.resolved_state_dir(), log_json=log_json, stop=stop)
    )


def register(app: typer.Typer) -> None:
    app.command("run")(run)
