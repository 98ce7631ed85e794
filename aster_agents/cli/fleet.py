"""``aster-agent supervisor render``, ``up``, ``down``, ``restart``, ``logs``: supervisord."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from aster_agents.cli.common import console, err_console, state

supervisor_app = typer.Typer(help="supervisord configuration.", no_args_is_help=True)


@supervisor_app.command("render")
def render_cmd(
    ctx: typer.Context,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Write the file here instead of stdout."),
    ] = None,
    here: Annotated[
        Path | None,
        typer.Option(
            "--here",
            help="Directory the file will live in (%(here)s) [default: the one holding agents.d].",
        ),
    ] = None,
    aster_agent_bin: str | None = typer.Option(
        None, "--bin", help="aster-agent executable [default %(here)s/.venv/bin/aster-agent]."
    ),
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            help="Render the agents of this host (no `host:` key, or this one) "
            "[default: $ASTER_AGENTS_HOST, else the system host name].",
        ),
    ] = None,
) -> None:
    """Render supervisord.conf for this host's enabled agents (no secrets in it).

    Paths are written relative to the file's own directory (``%(here)s``), which is the
    directory holding agents.d unless ``--here`` says otherwise, so the output does not depend
    on where ``-o`` writes it.
    """
    from aster_agents.fleet.supervisor import render
    from aster_agents.ledger.liveness import host_name

    cli = state(ctx)
    fleet = cli.fleet()
    _check_host(host)
    base = (here or fleet.root).resolve()
    text = render(
        fleet,
        base / "supervisord.conf",
        aster_agent_bin=aster_agent_bin,
        state_dir=fleet.state_dir(cli.state_dir),
        host=host,
    )
    if output is None:
        sys.stdout.write(text)
        return
    output.write_text(text, encoding="utf-8")
    n = len(fleet.agents_on(host or host_name()))
    err_console().print(f"wrote {output} ({n} agent(s) of host {host or host_name()})")
    if output.resolve().parent != base:
        err_console().print(
            f"note: its paths are relative to {base}; keep the file there, "
            f"or render with --here {output.resolve().parent}"
        )


def up(
    ctx: typer.Context,
    foreground: bool = typer.Option(
        False, "--foreground", help="Run supervisord in this terminal (Ctrl-C stops the fleet)."
    ),
    env_file: Annotated[
        Path | None,
        typer.Option("--env-file", help="KEY=VALUE file with keys [default: .env by agents.d]."),
    ] = None,
) -> None:
    """Start supervisord with every enabled agent; config and keys are checked first."""
    from aster_agents.fleet.supervisor import Supervisor, write_runtime_config
    from aster_agents.ledger.liveness import host_name

    cli = state(ctx)
    fleet = cli.fleet()
    state_dir = cli.resolved_state_dir()
    env = _environment(fleet.root / ".env", env_file)
    _check_keys(fleet, env)
    supervisor = Supervisor(state_dir)
    supervisor.refuse_if_running()
    _refuse_agents_running_elsewhere(fleet, state_dir)
    conf = write_runtime_config(fleet, state_dir)
    if foreground:
        argv = supervisor.foreground_argv()
        err_console().print(f"supervisord -n -c {conf} (Ctrl-C stops every agent)")
        from aster_agents.fsutil import PRIVATE_UMASK

        os.umask(PRIVATE_UMASK)  # its logs and the agents' state: owner-only
        os.execve(argv[0], argv, env)
    pid = supervisor.start(env)
    n = len(fleet.agents_on(host_name()))
    console().print(f"supervisord running (pid {pid}) with {n} agent(s); config {conf}")
    console().print("see `aster-agent status`, `aster-agent logs --id ID`, `aster-agent down`")


def _check_host(host: str | None) -> None:
    import re

    from aster_agents.config.schema import HOST_PATTERN

    if host is not None and not re.fullmatch(HOST_PATTERN, host):
        raise typer.BadParameter(
            f"{host!r} is not a host name (letters, digits, '.', '_', '-')", param_hint="--host"
        )


def _environment(default_file: Path, chosen: Path | None) -> dict[str, str]:
    from aster_agents.fleet.supervisor import load_env_file

    env = dict(os.environ)
    path = chosen or (default_file if default_file.exists() else None)
    if path is None:
        return env
    loaded = load_env_file(path)
    if loaded.warning:
        err_console().print(f"warning: {loaded.warning}")
    env.update(loaded.values)
    err_console().print(f"loaded {len(loaded.values)} variable(s) from {path}")
    return env


def _refuse_agents_running_elsewhere(fleet: object, state_dir: Path) -> None:
    """Exit 3 when an enabled agent already runs outside supervisord (e.g. `run` in a terminal)."""
    from aster_agents.config.schema import FleetConfig
    from aster_agents.errors import AlreadyRunning
    from aster_agents.ledger.liveness import host_name
    from aster_agents.ledger.lock import lock_holder

    assert isinstance(fleet, FleetConfig)
    held = [(a.id, lock_holder(state_dir, a.id)) for a in fleet.agents_on(host_name())]
    running = [(agent_id, pid) for agent_id, pid in held if pid is not None]
    if running:
        names = ", ".join(f"{agent_id} (pid {pid})" for agent_id, pid in running)
        raise AlreadyRunning(
            f"already running outside supervisord: {names}; stop it first (Ctrl-C in its "
            "terminal, or kill the pid), then `aster-agent up` again; nothing started"
        )


def _check_keys(fleet: object, env: dict[str, str]) -> None:
    from aster_agents.config.keys import check_model_key, resolve_signer
    from aster_agents.config.schema import FleetConfig
    from aster_agents.errors import ConfigError
    from aster_agents.ledger.liveness import host_name

    assert isinstance(fleet, FleetConfig)
    problems = []
    for agent in fleet.agents_on(host_name()):  # another host's keys are not needed here
        for check in (resolve_signer, check_model_key):
            try:
                check(fleet, agent, env)
            except ConfigError as exc:
                problems.extend(exc.problems)
    if problems:
        problems.append("nothing started: set the keys (or pass --env-file) and run `up` again")
        raise ConfigError(f"{len(problems) - 1} agent key problem(s); nothing started", problems)


def down(
    ctx: typer.Context,
    timeout: float = typer.Option(60.0, help="Seconds to wait for supervisord to exit."),
) -> None:
    """Stop every agent (SIGTERM, they finish their step) and supervisord; waits until gone."""
    from aster_agents.fleet.supervisor import Supervisor, SupervisorNotRunning

    supervisor = Supervisor(state(ctx).resolved_state_dir())
    try:
        pid = supervisor.shutdown(timeout)
    except SupervisorNotRunning:  # like `supervisorctl stop` on a stopped program: nothing to do
        console().print(f"already stopped: no supervisord runs for {supervisor.state_dir}")
        return
    console().print(f"supervisord (pid {pid}) and its agents have stopped")


def restart(
    ctx: typer.Context,
    agent_id: str | None = typer.Option(None, "--id", help="Only this agent [default: all]."),
) -> None:
    """Restart one agent or all of them under the running supervisord."""
    from aster_agents.fleet.supervisor import Supervisor

    supervisor = Supervisor(state(ctx).resolved_state_dir())
    names = supervisor.restart([agent_id] if agent_id else None)
    console().print(f"restarted {', '.join(names) or 'nothing'}")


def logs(
    ctx: typer.Context,
    agent_id: str = typer.Option(..., "--id", help="The agent whose log to show."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new lines."),
    lines: int = typer.Option(50, "-n", "--lines", help="How many lines to show."),
) -> None:
    """Show an agent's log, state/logs/<id>.log, however the agent was started."""
    from aster_agents.fleet.supervisor import agent_log, tail

    cli = state(ctx)
    agent = cli.fleet().agent(agent_id)  # an unknown id: exit 2 naming the known ones
    log = agent_log(cli.resolved_state_dir(), agent.id)
    found = tail(log, lines)
    if not found and not follow:
        err_console().print(f"no log yet at {log} (the agent has not run)")
    for line in found:
        sys.stdout.write(line + "\n")
    sys.stdout.flush()
    if follow:
        _follow(log)


def _follow(path: Path) -> None:
    """Print what is appended to ``path`` until Ctrl-C; reopens it after a rotation."""
    import time

    position = path.stat().st_size if path.exists() else 0
    try:
        while True:
            size = path.stat().st_size if path.exists() else 0
            if size < position:  # rotated or truncated: start from the top of the new file
                position = 0
            if size > position:
                with path.open("rb") as f:
                    f.seek(position)
                    data = f.read()
                position += len(data)
                sys.stdout.write(data.decode("utf-8", "replace"))
                sys.stdout.flush()
            time.sleep(0.5)
    except KeyboardInterrupt:
        return


def register(app: typer.Typer) -> None:
    app.add_typer(supervisor_app, name="supervisor")
    app.command("up")(up)
    app.command("down")(down)
    app.command("restart")(restart)
    app.command("logs")(logs)
