"""``aster-agent init [DIR]``: a working two-agent project for the simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aster_agents.cli.common import console, emit_json


def init(
    directory: Annotated[
        Path, typer.Argument(help="Where to write agents.d, keys, .env and sim-accounts.yaml.")
    ] = Path("."),
    agents: int = typer.Option(2, "--agents", help="How many starter agents (1 or 2)."),
    base_url: str | None = typer.Option(
        None, "--base-url", help="Exchange URL in every agent [default: the local simulator]."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON document instead of text."),
) -> None:
    """Write a starter project: agents with fresh encrypted keys, ready for `aster-agent sim`.

    Refuses (exit 2, nothing written) when any of the files already exists.
    """
    from aster_agents.config.starter import SIM_DEFAULT_URL, init_project

    project = init_project(directory, base_url=base_url or SIM_DEFAULT_URL, agents=agents)
    if as_json:
        emit_json(
            {
                "root": str(project.root),
                "user": project.user,
                "agents": [{"id": i, "signer": s} for i, s in project.agents],
                "base_url": project.base_url,
                "files": [str(f) for f in project.files],
            }
        )
        return
    out = console()
    out.print(f"wrote {', '.join(str(f) for f in project.files)}")
    out.print(f"main account {project.user}; agents {', '.join(i for i, _ in project.agents)}")
    cd = "" if project.root == Path(".") else f"cd {project.root} && "
    out.print("next, in two terminals:", soft_wrap=True)
    out.print(f"  {cd}aster-agent sim --accounts sim-accounts.yaml", soft_wrap=True)
    out.print(f"  {cd}aster-agent up && aster-agent status", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("init")(init)
