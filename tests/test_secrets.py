"""No secret in any output: a real fleet under supervisord, every file and output scanned.

Three random-strategy agents sign orders against an in-process simulator under a real
supervisord (debug logging on); the CLI's JSON views, the rendered config and ``logs`` are
captured while they trade; then two crashes are forced: an agent whose API wallet the exchange
does not know (exit 4) and an agent that dies with an unhandled traceback after its key was
loaded. Every file under the fleet's root (logs, supervisord.conf and its log, ledger and
cache bytes) and every captured output is searched for each private key (with and without
``0x``, lower and upper case) and for any 130-hex-digit run (a signature).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aster_agents.config.schema import load_fleet
from aster_agents.fleet.supervisor import Supervisor, pid_path, write_runtime_config
from aster_agents.ledger import pid_alive
from aster_agents.signing import Signer, generate_private_key
from aster_agents.sim.server import SimServer
from tests.kit.agents import Fleet, make_fleet
from tests.kit.wait import wait_for

AGENTS = ("agent-1", "agent-2", "agent-3")
SIGNATURE_RE = re.compile(rb"[0-9a-fA-F]{130}")
MIN_ORDERS = 60


@dataclass
class Captured:
    """Outputs of commands, by a name that says which command produced them."""

    outputs: dict[str, bytes]

    def add(self, name: str, proc: subprocess.CompletedProcess[bytes]) -> int:
        self.outputs[f"{name} (stdout)"] = proc.stdout
        self.outputs[f"{name} (stderr)"] = proc.stderr
        return proc.returncode


def _needles(keys: list[str]) -> list[bytes]:
    out = []
    for key in keys:
        bare = key.lower().removeprefix("0x")
        for variant in (bare, "0x" + bare, bare.upper(), "0x" + bare.upper()):
            out.append(variant.encode())
    return out


def _hits(name: str, data: bytes, needles: list[bytes]) -> list[str]:
    found = [f"{name}: private key {n[:6].decode()}..." for n in needles if n in data]
    found += [f"{name}: signature-like run {m.group()[:12]!r}" for m in SIGNATURE_RE.finditer(data)]
    return found


def _scan(root: Path, captured: Captured, needles: list[bytes]) -> tuple[int, list[str]]:
    hits: list[str] = []
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()]
    for path in files:
        hits += _hits(str(path.relative_to(root)), path.read_bytes(), needles)
    for name, data in captured.outputs.items():
        hits += _hits(name, data, needles)
    return len(files), hits


@pytest.fixture
def fleet(sim_server: SimServer) -> Iterator[Fleet]:
    root = Path(tempfile.mkdtemp(prefix="aa-sec-", dir="/tmp"))  # short: a unix socket lives here
    fleet = make_fleet(
        root, sim_server, AGENTS, params="{p_enter: 1.0, p_exit: 0.9}", scan_interval=0.3
    )
    try:
        yield fleet
    finally:
        _stop_supervisord(fleet.state_dir)
        shutil.rmtree(root, ignore_errors=True)


def _stop_supervisord(state: Path) -> None:
    supervisor = Supervisor(state)
    if supervisor.is_running():
        supervisor.shutdown(30)
    pid_file = pid_path(state)
    if pid_file.exists():
        pid = int(pid_file.read_text().strip() or 0)
        if pid and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def _cli(fleet: Fleet, captured: Captured, name: str, *args: str, state: Path | None = None) -> int:
    cmd = fleet.command(*args)
    if state is not None:
        cmd[cmd.index("--state-dir") + 1] = str(state)
    proc = subprocess.run(cmd, env=fleet.env(), capture_output=True, timeout=90, check=False)
    return captured.add(name, proc)


def _run_fleet_and_views(fleet: Fleet, captured: Captured) -> None:
    write_runtime_config(load_fleet(fleet.config_dir), fleet.state_dir)
    supervisor = Supervisor(fleet.state_dir)
    proc = supervisor.spawn(fleet.env({"ASTER_AGENTS_LOG_LEVEL": "DEBUG"}))
    supervisor.wait_ready(proc, 30)
    wait_for(lambda: len(fleet.coids()) >= MIN_ORDERS, 60, f"{MIN_ORDERS} signed orders")
    views = {
        "status": ("status", "--json"),
        "portfolio": ("portfolio", "--json"),
        "account": ("account", "--id", "agent-1", "--json"),
        "agents list": ("agents", "list", "--json"),
        "supervisor render": ("supervisor", "render"),
        "logs": ("logs", "--id", "agent-2", "-n", "200"),
    }
    for name, args in views.items():
        assert _cli(fleet, captured, name, *args) == 0, captured.outputs[f"{name} (stderr)"]
    supervisor.shutdown(30)
    assert proc.wait(30) is not None


def _unknown_wallet_agent(fleet: Fleet) -> tuple[Path, str]:
    """agents.d with one agent whose API wallet the simulator never registered."""
    key = generate_private_key()
    config = fleet.root / "crash.d"
    config.mkdir()
    text = (fleet.config_dir / "agent-1.yaml").read_text()
    text = text.replace(fleet.signers["agent-1"].address, Signer(key).address)
    (config / "agent-1.yaml").write_text(text.replace("AGENT_1_PRIVATE_KEY", "STRAY_KEY"))
    return config, key


def _force_crashes(fleet: Fleet, captured: Captured) -> str:
    config, stray_key = _unknown_wallet_agent(fleet)
    cmd = fleet.command("run", "--id", "agent-1")
    cmd[cmd.index("--config-dir") + 1] = str(config)
    cmd[cmd.index("--state-dir") + 1] = str(fleet.root / "state-refused")
    env = fleet.env({"STRAY_KEY": stray_key})
    refused = subprocess.run(cmd, env=env, capture_output=True, timeout=90, check=False)
    assert captured.add("run with an unknown wallet", refused) == 4, refused.stderr

    broken = fleet.root / "state-broken"
    broken.mkdir()
    (broken / "cache").write_text("a file where the cache directory should be\n")
    code = _cli(fleet, captured, "run that crashes", "run", "--id", "agent-1", state=broken)
    crash = captured.outputs["run that crashes (stderr)"]
    assert code == 1 and b"Traceback" in crash, crash
    return stray_key


@pytest.mark.slow
def test_no_key_or_signature_in_any_log_output_or_file(fleet: Fleet) -> None:
    """Keys (hex, with/without 0x, any case) and signatures appear in no file or output."""
    captured = Captured({})
    _run_fleet_and_views(fleet, captured)
    stray_key = _force_crashes(fleet, captured)

    keys = [*fleet.keys.values(), stray_key]
    n_files, hits = _scan(fleet.root, captured, _needles(keys))
    assert hits == [], hits[:20]
    logs = list((fleet.state_dir / "logs").iterdir())
    assert any(p.name == "supervisord.log" for p in logs) and len(logs) >= 4, logs
    assert n_files >= 10 and len(captured.outputs) >= 16
    assert len(fleet.coids()) >= MIN_ORDERS


def test_scanner_finds_planted_secrets(tmp_path: Path) -> None:
    """The scan itself reports a planted key (any form) and a planted signature."""
    key = generate_private_key()
    signature = Signer(key).sign("symbol=BTCUSDT&nonce=1")
    for i, planted in enumerate((key, key[2:].upper(), signature[2:])):
        (tmp_path / f"f{i}.log").write_text(f"line before\nsecret={planted}\n")
    _, hits = _scan(tmp_path, Captured({"out": key.upper().encode()}), _needles([key]))
    assert len([h for h in hits if "private key" in h]) >= 3
    assert any("signature-like" in h for h in hits)
