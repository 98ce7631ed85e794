"""pytest fixtures for the ledger (owned by the ledger work).

- ``state_dir``: an empty state directory under ``tmp_path``.
- ``ledger``: a :class:`Ledger` on each backend (``backend``: SQLite, PostgreSQL) with
  account ``u1`` (3 slots, 5x leverage on 1000 equity) and agents ``a1`` (2 slots) and
  ``a2`` (2 slots), 100 capital each.
- :func:`run_python`: run a short ``python -c`` snippet in a real child process.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from aster_agents.ledger import Ledger

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def ledger(state_dir: Path, backend: str) -> Iterator[Ledger]:
    led = Ledger(state_dir)
    led.set_account_limits(
        "u1", max_total_positions=3, max_gross_leverage=Decimal(5), equity=Decimal(1000)
    )
    led.register_agent("a1", "u1", max_positions=2, capital=Decimal(100))
    led.register_agent("a2", "u1", max_positions=2, capital=Decimal(100))
    yield led
    led.close()


def run_python(code: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code args...`` from the repository root and capture its output."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def spawn_python(code: str, *args: str) -> subprocess.Popen[str]:
    """Start ``python -c code args...`` with stdout piped (line-buffered text)."""
    return subprocess.Popen(
        [sys.executable, "-u", "-c", code, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_child(child: subprocess.Popen[str]) -> None:
    """SIGKILL a child, reap it and close its pipes."""
    child.kill()
    child.communicate(timeout=30)
