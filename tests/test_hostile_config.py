"""Config files that would exhaust the machine are refused in one line, exit 2 (issue 23).

Each case puts one hostile ``agent-2.yaml`` next to a valid ``agent-1.yaml`` and runs the real
CLI in a subprocess with its address space capped at 1 GiB and a 30 s timeout, so a loader
that tried to read or expand the file would fail the test instead of the machine.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from aster_agents.config import safeyaml

LIMIT_AS = 1 << 30
TIMEOUT_S = 30

GOOD = """id: {id}
name: Test Agent
exchange:
  user: "0x63DD5aCC6b1aa0f563956C0e534DD30B6dcF7C4e"
  signer: "{signer}"
  signer_key_env: TEST_AGENT_KEY
  base_url: http://127.0.0.1:9
trading:
  strategy: trend
  params: {params}
  symbols: [BTCUSDT]
allocation:
  capital_pct: 0.1
"""
SIGNERS = {
    "agent-1": "0x21cF8Ae13Bb72632562c6Fff438652Ba1a151bb0",
    "agent-2": "0x6419b6194E1Dab06BEBf7A20a8A855E42a59c174",
}


def agent(agent_id: str, params: str = "{}") -> str:
    return GOOD.format(id=agent_id, signer=SIGNERS[agent_id], params=params)


def hostile(kind: str, path: Path) -> str:
    """Write the hostile ``path``; returns what the one-line error must say."""
    if kind == "alias-bomb":
        params = "\n".join(
            ["", '    l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
            + [f"    l{n}: &l{n} [{','.join([f'*l{n - 1}'] * 9)}]" for n in range(1, 10)]
        )
        path.write_text(agent("agent-2", params))
        return "aliases (*name) are not allowed"
    if kind == "dev-zero":
        path.symlink_to("/dev/zero")
        return "not a regular file (a character device)"
    if kind == "fifo":
        os.mkfifo(path)
        return "not a regular file (a FIFO)"
    if kind == "deep":
        n = 100_000
        path.write_text(agent("agent-2", "{x: " + "[" * n + "]" * n + "}"))
        return f"nested deeper than {safeyaml.MAX_DEPTH} levels"
    assert kind == "huge"
    path.write_text(agent("agent-2") + ("# padding " + "x" * 100 + "\n") * 20_000)
    return f"file larger than {safeyaml.MAX_BYTES} bytes"


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASTER_AGENTS_", "AGENT_"))}
    env.update(HOME=str(root / "home"), NO_COLOR="1", XDG_CACHE_HOME=str(root / "cache"))
    cmd = [sys.executable, "-m", "aster_agents", "--config-dir", str(root / "agents.d")]
    cmd += ["--state-dir", str(root / "state"), *args]
    return subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, preexec_fn=_limits
    )


KINDS = ("alias-bomb", "dev-zero", "fifo", "deep", "huge")


@pytest.mark.parametrize("command", [("agents", "validate"), ("run", "--id", "agent-1")])
@pytest.mark.parametrize("kind", KINDS)
def test_hostile_config_file_is_refused_in_one_line(
    tmp_path: Path, kind: str, command: tuple[str, ...]
) -> None:
    """Alias bomb, /dev/zero, FIFO, deep nesting, 2 MiB: exit 2, one line naming the file."""
    config = tmp_path / "agents.d"
    config.mkdir()
    (config / "agent-1.yaml").write_text(agent("agent-1"))
    target = config / "agent-2.yaml"
    why = hostile(kind, target)
    proc = cli(tmp_path, *command)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {target}: {why}"] or any(
        line.startswith(f"error: {target}: ") and why in line for line in errors
    ), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "state").exists()


def test_status_view_skips_hostile_files_without_hanging(tmp_path: Path) -> None:
    """The fast view behind ``status`` applies the same bounds: it finishes and lists agent-1."""
    config = tmp_path / "agents.d"
    config.mkdir()
    (config / "agent-1.yaml").write_text(agent("agent-1"))
    for n, kind in enumerate(KINDS, start=2):
        hostile(kind, config / f"agent-{n}.yaml")
    proc = cli(tmp_path, "status", "--json")
    assert "Traceback" not in proc.stderr
    assert '"agent-1"' in proc.stdout, proc.stderr[-2000:]
