"""``python -m aster_agents.sim [options]``: the ``sim`` command without the full CLI."""

from __future__ import annotations

import sys

import typer

from aster_agents.cli import sim
from aster_agents.errors import AsterAgentsError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
sim.register(app)


def main() -> None:
    try:
        app()
    except AsterAgentsError as exc:
        print(f"aster-agent sim: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
