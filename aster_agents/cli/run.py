"""``aster-agent run [--id ID]``: one agent in the foreground."""

from __future__ import annotations

import os
import threading

import typer

from aster_agents.cli.common import state


def run(
    ctx: typer.Context,
    agent_id: str | None = typer.Option(
        None, "--id", help="Agent id (a file in agents.d) [env AGENT_ID]."
    ),
    log_json: bool = typer.Option(False, "--log-json", help="Log one JSON object per line."),
) -> None:
    """Run one agent (--id, else $AGENT_ID) until SIGTERM/SIGINT (exit 0).

    Exit 2: bad config or key; 3: the agent is already running; 4: credentials refused.
    """
    import signal
    import time

    started = time.monotonic()
    stop = threading.Event()  # handlers go in before the heavy imports: SIGTERM is never lost
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    from aster_agents.agent.runner import run_agent
    from aster_agents.errors import AsterAgentsError, ConfigError

    chosen = agent_id or os.environ.get("AGENT_ID")
    if not chosen:
        raise ConfigError("no agent given: pass --id ID or set AGENT_ID")
    cli = state(ctx)
    try:
        fleet = cli.fleet()
        code = run_agent(fleet, chosen, cli.resolved_state_dir(), log_json=log_json, stop=stop)
    except AsterAgentsError as exc:
        _hold_for_supervisord(exc.exit_code, stop, started)
        raise
    raise typer.Exit(code)


def _hold_for_supervisord(code: int, stop: threading.Event, started: float) -> None:
    """Under supervisord, outlive ``startsecs`` before an exit a restart cannot fix.

    supervisord retries any exit before ``startsecs`` as a failed start (up to ``startretries``
    times); once past it, ``exitcodes`` marks 2, 3 and 4 as expected, so the program stays
    EXITED with its code, which `status` explains, instead of looping.
    """
    import time

    from aster_agents.fleet.supervisor import EXPECTED_EXITS, START_SECONDS

    if "SUPERVISOR_ENABLED" not in os.environ or code not in EXPECTED_EXITS:
        return
    stop.wait(max(0.0, START_SECONDS + 1 - (time.monotonic() - started)))


def register(app: typer.Typer) -> None:
    app.command("run")(run)
