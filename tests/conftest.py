"""Test-wide hygiene: every path and env var the project reads points into ``tmp_path``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# CI runs the same examples every time (reproducible); local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

pytest_plugins = ["tests.plugins.sim", "tests.plugins.ledger", "tests.plugins.postgres"]

_PROJECT_ENV_PREFIXES = ("ASTER_AGENTS_", "AGENT_")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point HOME, the config dir and the state dir at tmp_path; drop inherited project vars."""
    for name in list(os.environ):
        if name.startswith(_PROJECT_ENV_PREFIXES):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("ASTER_AGENTS_CONFIG", str(tmp_path / "agents.d"))
    monkeypatch.setenv("ASTER_AGENTS_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    yield
