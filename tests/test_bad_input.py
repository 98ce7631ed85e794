"""Bad input through the real entry point: exit 2, one line per problem, nothing started or written.

``tests/test_config.py`` runs ``agents validate`` in-process on the corpus; here every case goes
through ``python -m aster_agents ... run`` as a real process (and ``up`` for a few), and the test
checks that no state dir, ledger, lock, socket or supervisord was created.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from aster_agents.fleet.supervisor import conf_path, pid_path, socket_path

BAD = Path(__file__).parent / "data" / "bad_configs"
CASES = sorted(p.name for p in BAD.iterdir() if p.is_dir())
UP_CASES = (
    "yaml-syntax",
    "raw-key-in-yaml",
    "portfolio-unknown-key",
    "shared-signer",
    "empty-file",
)
DEMO_KEY_HEX = "4fd0a42218f3eae43a6ce26d22544e986139a01e5b34a62db53757ffca81bae1"
# Problems that span several agent files name the account instead of one file.
CROSS_FILE = ("add up to",)


@dataclass(frozen=True)
class Outcome:
    """What one CLI invocation on one malformed case did."""

    case: str
    root: Path
    config: Path
    code: int
    stdout: str
    stderr: str


def _agent_id(case_dir: Path) -> str:
    stems = sorted(p.stem for p in case_dir.glob("*.yaml") if not p.name.startswith("_"))
    return stems[0] if stems else "agent-1"


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASTER_AGENTS_", "AGENT_"))}
    env.update(HOME=str(home), NO_COLOR="1", TEST_AGENT_KEY="0x" + DEMO_KEY_HEX)
    return env


def _invoke(root: Path, case: str, args: tuple[str, ...]) -> Outcome:
    config = root / "agents.d"
    shutil.copytree(BAD / case, config)
    (root / "home").mkdir()
    cmd = [sys.executable, "-m", "aster_agents", "--config-dir", str(config)]
    cmd += ["--state-dir", str(root / "state"), *args]
    if args == ("run",):
        cmd += ["--id", _agent_id(config)]
    proc = subprocess.run(
        cmd, cwd=root, env=_env(root / "home"), capture_output=True, text=True, timeout=60
    )
    return Outcome(case, root, config, proc.returncode, proc.stdout, proc.stderr)


def _invoke_all(base: Path, cases: tuple[str, ...], args: tuple[str, ...]) -> dict[str, Outcome]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {c: pool.submit(_invoke, base / c, c, args) for c in cases}
        return {c: f.result() for c, f in futures.items()}


@pytest.fixture(scope="module")
def run_outcomes(tmp_path_factory: pytest.TempPathFactory) -> Mapping[str, Outcome]:
    return _invoke_all(tmp_path_factory.mktemp("run"), tuple(CASES), ("run",))


@pytest.fixture(scope="module")
def up_outcomes(tmp_path_factory: pytest.TempPathFactory) -> Mapping[str, Outcome]:
    return _invoke_all(tmp_path_factory.mktemp("up"), UP_CASES, ("up",))


def _created_files(out: Outcome) -> list[str]:
    """Everything in the case's root besides the copied config and the empty HOME."""
    found = []
    for path in sorted(out.root.rglob("*")):
        rel = path.relative_to(out.root)
        if rel.parts[0] == "agents.d" or path == out.root / "home":
            continue
        found.append(str(rel))
    return found


def _assert_clean_refusal(out: Outcome) -> None:
    expect = (out.config / "EXPECT").read_text().strip()
    assert out.code == 2, f"{out.case}: exit {out.code}\n{out.stderr}"
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout
    assert expect in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("error: ") for line in lines), out.stderr
    assert len(lines) == len(set(lines)), "a problem is reported twice"
    if not any(marker in out.stderr for marker in CROSS_FILE):
        assert all(str(out.config) in line for line in lines), out.stderr
    assert DEMO_KEY_HEX not in out.stderr.lower() + out.stdout.lower()


def test_corpus_covers_at_least_30_cases() -> None:
    """The corpus the process-level checks run over holds at least 30 malformed configs."""
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES)
def test_run_refuses_bad_config_cleanly(case: str, run_outcomes: Mapping[str, Outcome]) -> None:
    """`run` on a malformed config exits 2 with one `error:` line per problem naming the file."""
    _assert_clean_refusal(run_outcomes[case])


@pytest.mark.parametrize("case", CASES)
def test_run_writes_nothing_for_bad_config(case: str, run_outcomes: Mapping[str, Outcome]) -> None:
    """`run` on a malformed config creates no state dir, ledger, lock or log anywhere."""
    out = run_outcomes[case]
    assert _created_files(out) == []
    assert sorted(p.name for p in out.config.iterdir()) == sorted(
        p.name for p in (BAD / case).iterdir()
    )
    assert list((out.root / "home").iterdir()) == []


@pytest.mark.parametrize("case", UP_CASES)
def test_up_refuses_bad_config_and_starts_no_supervisord(
    case: str, up_outcomes: Mapping[str, Outcome]
) -> None:
    """`up` on a malformed config exits 2 and leaves no supervisord socket, pid file or conf."""
    out = up_outcomes[case]
    _assert_clean_refusal(out)
    assert _created_files(out) == []
    state = out.root / "state"
    assert not any(p.exists() for p in (socket_path(state), pid_path(state), conf_path(state)))
