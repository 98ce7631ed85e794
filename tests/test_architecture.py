"""The layer order of the package (models ... < strategies < config < ... < fleet < cli)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.kit.architecture import LIBRARIES, ROOT, Contract, violations

PACKAGE = ROOT / "aster_agents"


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_package_keeps_the_layer_order() -> None:
    """No upward import, nothing imports cli, no tests/ import, libraries where they belong."""
    assert violations(PACKAGE, Contract("aster_agents")) == []


def test_an_upward_import_inside_a_function_is_reported(tmp_path: Path) -> None:
    """sim importing agent, even inside a function body, is named with file, line and layers."""
    root = _package(
        tmp_path,
        {
            "models.py": "",
            "agent/__init__.py": "",
            "agent/runner.py": "from pkg.models import *\nX = 1\n",
            "sim/__init__.py": "",
            "sim/engine.py": "def f():\n    from pkg.agent.runner import X\n    return X\n",
        },
    )
    assert violations(root, Contract("pkg")) == [
        "pkg/sim/engine.py:2: imports pkg.agent.runner.X: sim may not import agent (a higher layer)"
    ]


def test_every_kind_of_broken_rule_is_reported(tmp_path: Path) -> None:
    """Relative and TYPE_CHECKING imports, cli, tests/, a misplaced library, an unplaced module."""
    root = _package(
        tmp_path,
        {
            "ledger/__init__.py": "",
            "ledger/store.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from ..fleet import view\n"
                "import httpx\n"
                "import tests.kit\n"
            ),
            "fleet/__init__.py": "",
            "fleet/view.py": "from pkg import cli\n",
            "cli/__init__.py": "",
            "extra.py": "",
        },
    )
    found = violations(root, Contract("pkg"))
    assert found == [
        "pkg/extra.py: module 'extra' is in no layer; add it to the order",
        "pkg/fleet/view.py:1: imports pkg.cli: nothing imports cli",
        "pkg/ledger/store.py:3: imports pkg.fleet.view: "
        "ledger may not import fleet (a higher layer)",
        "pkg/ledger/store.py:4: imports httpx: httpx is imported only in "
        "exchange/http.py, strategies/llm.py",
        "pkg/ledger/store.py:5: imports tests.kit: the package never imports tests/",
    ]


def test_every_library_allowance_is_used() -> None:
    """Each place allowed to import a library does import it (no stale exceptions)."""
    stale = []
    for library, places in LIBRARIES.items():
        for place in places:
            files = sorted((PACKAGE / place).rglob("*.py")) if place.endswith("/") else []
            files = files or [PACKAGE / place]
            if not any(_imports_library(f, library) for f in files):
                stale.append(f"{library}: {place}")
    assert stale == []


def _imports_library(path: Path, library: str) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(
            a.name.split(".")[0] == library for a in node.names
        ):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == library:
            return True
    return False


def test_the_checker_runs_as_a_script() -> None:
    """``python -m tests.kit.architecture`` (make lint) exits 0 on the package."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.kit.architecture"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, "")
