"""The ``aster-agent`` entry point: global options, command wiring, one catch-all.

Command modules keep heavy imports inside their functions so that ``status`` starts fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from aster_agents import __version__
from aster_agents.cli import account, agents, demo, fleet, portfolio, run, sim, status
from aster_agents.cli.common import CliState

app = typer.Typer(
    name="aster-agent",
    help="Run a fleet of independent trading agents on Aster DEX perpetual futures.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aster-agent {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config_dir: Path | None = typer.Option(
        None,
        "--config-dir",
        help="agents.d directory [env ASTER_AGENTS_CONFIG, default ./agents.d]",
    ),
    state_dir: Path | None = typer.Option(
        None, "--state-dir", help="ledger, locks and logs [env ASTER_AGENTS_STATE, _portfolio.yaml]"
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    ctx.obj = CliState(config_dir=config_dir, state_dir=state_dir)


for _module in (run, agents, account, fleet, status, portfolio, demo, sim):
    _module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a domain error prints its lines to stderr and exits with its code.

    Usage errors (exit 2) and ``typer.Exit`` are handled by Typer itself; anything
    unexpected keeps its traceback (Python's default traceback shows no local variables).
    """
    from aster_agents.errors import AsterAgentsError, ConfigError

    try:
        app(args=argv, prog_name="aster-agent")
    except ConfigError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except AsterAgentsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
