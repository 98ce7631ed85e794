"""Test-wide hygiene: every path and env var the project reads points into ``tmp_path``."""

from __future__ import annotations

import compileall
import decimal
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

import aster_agents

# CI runs the same examples every time (reproducible); local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

pytest_plugins = ["tests.plugins.sim", "tests.plugins.ledger", "tests.plugins.postgres"]

_PROJECT_ENV_PREFIXES = ("ASTER_AGENTS_", "AGENT_")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Compile the package and the test kit to bytecode once, before any child process starts.

    With ``PYTHONDONTWRITEBYTECODE`` set (some sandboxes and CI images set it) no process
    writes ``__pycache__``, so each of the suite's hundreds of ``aster-agent``, worker and
    ``python -m aster_agents`` processes compiled the package's modules again from source
    (about a quarter of a CLI process's start-up CPU). Children still read the files written
    here; a changed source file is recompiled on the next session (mtime and size checked).
    """
    if not sys.dont_write_bytecode:
        return  # every process writes its own bytecode the first time
    for directory in (Path(aster_agents.__file__).parent, Path(__file__).parent / "kit"):
        compileall.compile_dir(directory, quiet=2, workers=1)


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


def _decimal_settings() -> tuple[object, ...]:
    c = decimal.getcontext()
    traps = tuple(sorted(t.__name__ for t, on in c.traps.items() if on))
    return (c.prec, c.rounding, c.Emin, c.Emax, c.capitals, c.clamp, traps)


@pytest.fixture(autouse=True)
def _decimal_context_kept() -> Iterator[None]:
    """A test that leaves the thread's decimal context changed fails, and the context is put
    back: the project's money arithmetic (fees, P&L quantized in the default context) must not
    depend on which test file ran before it on the same worker (ccxt, for one, sets rounding
    to ROUND_HALF_UP on the context it finds: give it ``decimal.localcontext()``)."""
    before, saved = _decimal_settings(), decimal.getcontext().copy()
    yield
    after = _decimal_settings()
    if after != before:
        decimal.setcontext(saved)
        pytest.fail(f"the test changed the thread's decimal context: {before} -> {after}")


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@pytest.fixture(autouse=True)
def _signal_handlers_kept() -> Iterator[None]:
    """A test that leaves a SIGINT/SIGTERM handler changed fails, and the handler is put back:
    a process the next test starts inherits an ignored signal (SIG_IGN survives exec), so its
    Ctrl-C or stop would do nothing."""
    before = {s: signal.getsignal(s) for s in _STOP_SIGNALS}
    yield
    changed = {s: signal.getsignal(s) for s in _STOP_SIGNALS if signal.getsignal(s) != before[s]}
    for s in changed:
        signal.signal(s, before[s])
    if changed:
        pytest.fail(f"the test left signal handlers changed: {changed} (was {before})")
