"""The ``aster-agent`` entry point: global options, command wiring, one catch-all.

Command modules keep heavy imports inside their functions so that ``status`` starts fast.
"""

from __future__ import annotations

import sys
from importlib import import_module
from pathlib import Path
from typing import Final

import typer

from aster_agents import __version__
from aster_agents.cli.common import CliState

# Each command's module is imported only when that command runs (``status`` must start
# fast); help, completion and unknown commands load them all.
MODULES: Final = (
    "init",
    "run",
    "agents",
    "account",
    "fleet",
    "status",
    "portfolio",
    "demo",
    "sim",
    "wallet",
    "doctor",
    "rebalance",
    "reconcile",
    "trades",
    "report",
    "conformance",
    "flatten",
    "ops",
    "backtest",
    "data",
    "ledger",
)
COMMANDS: Final = {
    "init": "init",
    "run": "run",
    "agents": "agents",
    "rebalance": "rebalance",
    "reconcile": "reconcile",
    "flatten": "flatten",
    "account": "account",
    "supervisor": "fleet",
    "up": "fleet",
    "down": "fleet",
    "restart": "fleet",
    "logs": "fleet",
    "status": "status",
    "portfolio": "portfolio",
    "demo": "demo",
    "sim": "sim",
    "wallet": "wallet",
    "doctor": "doctor",
    "trades": "trades",
    "report": "report",
    "conformance": "conformance",
    "metrics": "ops",
    "notify": "ops",
    "backtest": "backtest",
    "data": "data",
    "ledger": "ledger",
}
_GLOBAL_VALUE_OPTIONS: Final = ("--config-dir", "--state-dir")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aster-agent {__version__}")
        raise typer.Exit()


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


def build_app(modules: tuple[str, ...] = MODULES) -> typer.Typer:
    """The CLI with the commands of ``modules`` (all of them by default)."""
    app = typer.Typer(
        name="aster-agent",
        help="Run a fleet of independent trading agents on Aster DEX perpetual futures.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,  # help texts hold "[default: ...]", which is not markup
    )
    app.callback()(root)
    for name in modules:
        import_module(f"aster_agents.cli.{name}").register(app)
    return app


def modules_for(argv: list[str]) -> tuple[str, ...]:
    """The command modules ``argv`` needs: the one of its command, or all of them."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in _GLOBAL_VALUE_OPTIONS:
            i += 2
        elif token.startswith(tuple(f"{o}=" for o in _GLOBAL_VALUE_OPTIONS)):
            i += 1
        elif token.startswith("-"):
            return MODULES
        else:
            module = COMMANDS.get(token)
            return (module,) if module is not None else MODULES
    return MODULES


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a domain error prints its lines to stderr and exits with its code.

    Usage errors (exit 2) and ``typer.Exit`` are handled by Typer itself; anything
    unexpected keeps its traceback (Python's default traceback shows no local variables).
    """
    from aster_agents.errors import AsterAgentsError, ConfigError

    args = sys.argv[1:] if argv is None else argv
    try:
        build_app(modules_for(args))(args=args, prog_name="aster-agent")
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
    except Exception as exc:  # a state dir that is read-only, missing or full: one line
        from aster_agents.cli.common import disk_problem

        message = disk_problem(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
