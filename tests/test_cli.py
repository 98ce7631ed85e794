"""CLI wiring: lazy command loading, the fast config view, and the README covering every command."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from aster_agents.cli.main import COMMANDS, MODULES, build_app, modules_for
from aster_agents.config.view import load_view

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["status", "--json"], ("status",)),
        (["--config-dir", "x", "--state-dir", "y", "portfolio"], ("portfolio",)),
        (["--config-dir=x", "logs", "--id", "a"], ("fleet",)),
        (["--help"], MODULES),
        (["nosuch"], MODULES),
        ([], MODULES),
    ],
)
def test_modules_for_loads_only_the_command_it_runs(
    argv: list[str], expected: tuple[str, ...]
) -> None:
    """A command loads only its own module; help and unknown commands load them all."""
    assert modules_for(argv) == expected


def test_every_command_is_registered_and_in_the_readme() -> None:
    """Each command the CLI offers is registered by its module and documented in the README."""
    import typer.main

    group = typer.main.get_command(build_app())
    assert set(group.commands) == set(COMMANDS)  # type: ignore[attr-defined]
    readme = (REPO / "README.md").read_text()
    documented = [*COMMANDS, "agents list", "agents validate", "supervisor render"]
    missing = [c for c in documented if f"aster-agent {c}" not in readme]
    assert missing == []


def test_config_view_cache_follows_file_changes(tmp_path: Path) -> None:
    """The cached view is used only while every agents.d file is unchanged."""
    config = tmp_path / "agents.d"
    shutil.copytree(REPO / "agents.d", config)
    assert load_view(config).agents[0].name == "Scalper"
    path = config / "agent-1.yaml"
    path.write_text(path.read_text().replace("name: Scalper", "name: Renamed Scalper"))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert load_view(config).agents[0].name == "Renamed Scalper"
    (config / "agent-2.yaml").unlink()
    assert [a.id for a in load_view(config).agents if a.id == "agent-2"] == []
    assert list((tmp_path / "home" / ".cache" / "aster-agents").glob("view-*.json"))
