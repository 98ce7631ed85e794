"""A real supervisord with three agents against the simulator: restart after SIGKILL, clean down."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from aster_agents.fleet.supervisor import Supervisor, pid_alive, pid_path, wait_pid_gone
from aster_agents.ledger import Ledger
from aster_agents.signing import Signer, generate_private_key
from aster_agents.sim.server import SimAccount, SimConfig, SimServer
from tests.kit.wait import wait_for

SYMBOLS = {"agent-a": "BTCUSDT", "agent-b": "ETHUSDT", "agent-c": "SOLUSDT"}
BIN = str(Path(sys.executable).parent / "aster-agent")


def _agent_doc(agent_id: str, user: str, signer: str, url: str) -> dict[str, object]:
    return {
        "id": agent_id,
        "name": f"Random {agent_id}",
        "enabled": True,
        "exchange": {
            "user": user,
            "signer": signer,
            "base_url": url,
            "signer_key_env": agent_id.upper().replace("-", "_") + "_KEY",
        },
        "trading": {
            "strategy": "random",
            "params": {"p_enter": 0.9, "p_exit": 0.3},
            "symbols": [SYMBOLS[agent_id]],
            "interval": "1m",
            "scan_interval_seconds": 1,
            "max_positions": 1,
            "min_confidence": 0.5,
            "position_size_pct": 0.1,
            "leverage": 2,
            "stop_loss_pct": 0.5,
            "take_profit_pct": 0.5,
        },
        "allocation": {"capital_pct": 0.3},
    }


class Fleet:
    """A short temp dir with agents.d, a key file and the state dir; a running simulator."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="aa-", dir="/tmp"))
        self.config = self.root / "agents.d"
        self.state = self.root / "state"
        self.config.mkdir()
        main_key = generate_private_key()
        self.user = Signer(main_key).address
        keys = {a: generate_private_key() for a in SYMBOLS}
        signers = {a: Signer(k).address for a, k in keys.items()}
        account = SimAccount(self.user, tuple(signers.values()), Decimal(10000))
        self.sim = SimServer(SimConfig(seed=5, speed=60.0, accounts=(account,)))
        url = self.sim.start()
        for agent_id in SYMBOLS:
            doc = _agent_doc(agent_id, self.user, signers[agent_id], url)
            (self.config / f"{agent_id}.yaml").write_text(json.dumps(doc))
        self.env_file = self.root / "keys.env"
        self.env_file.write_text(
            "".join(f"{a.upper().replace('-', '_')}_KEY={k}\n" for a, k in keys.items())
        )
        self.env_file.chmod(0o600)

    def cli(self, *args: str, keys: bool = False) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, ASTER_AGENTS_MARKET_SPEED="60")
        if keys:  # the agents' keys, as `up --env-file` gives them to supervisord
            env |= dict(line.split("=", 1) for line in self.env_file.read_text().splitlines())
        cmd = [BIN, "--config-dir", str(self.config), "--state-dir", str(self.state), *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90, check=False)

    def status(self) -> dict[str, tuple[str, int | None]]:
        result = self.cli("status", "--json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc["version"] == 1
        return {a["id"]: (a["state"], a["pid"]) for a in doc["agents"]}

    def fills(self) -> int:
        if not (self.state / "ledger.sqlite3").exists():
            return 0
        with Ledger(self.state) as ledger:
            return sum(1 for e in ledger.audit(limit=100_000) if e.event == "fill")

    def close(self) -> None:
        """Whatever happened: supervisord and its agents down, simulator stopped, dir removed."""
        supervisor = Supervisor(self.state)
        if supervisor.is_running():
            supervisor.shutdown(60)
        pid_file = pid_path(self.state)
        if pid_file.exists():
            pid = int(pid_file.read_text().strip() or 0)
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.sim.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    f = Fleet()
    try:
        yield f
    finally:
        f.close()


def _running(status: dict[str, tuple[str, int | None]]) -> dict[str, int] | None:
    if set(status) == set(SYMBOLS) and all(s == "RUNNING" and p for s, p in status.values()):
        return {a: p for a, (_s, p) in status.items() if p}
    return None


def _exchange_positions(sim: SimServer, user: str) -> dict[str, Decimal]:
    rows = sim.engine.position_risk_json(user, {})
    return {
        str(r["symbol"]): Decimal(str(r["positionAmt"]))
        for r in rows
        if Decimal(str(r["positionAmt"])) != 0
    }


def _ledger_positions(state: Path, user: str) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    with Ledger(state) as ledger:
        for p in ledger.positions(user=user):
            totals[p.symbol] = totals.get(p.symbol, Decimal(0)) + p.qty
    return {s: q for s, q in totals.items() if q != 0}


@pytest.mark.slow
def test_supervisord_restarts_a_killed_agent_and_ledger_matches_exchange(fleet: Fleet) -> None:
    """up -> RUNNING; SIGKILL one -> restarted; restart/logs work; down -> ledger == exchange."""
    up = fleet.cli("up", "--env-file", str(fleet.env_file))
    assert up.returncode == 0, up.stderr + up.stdout
    sup_pid = Supervisor(fleet.state).pid()
    pids = wait_for(lambda: _running(fleet.status()), 40, "three agents RUNNING")
    wait_for(fleet.fills, 40, "a first fill in the ledger")

    doctor = fleet.cli("doctor", "--json", keys=True)
    checks = json.loads(doctor.stdout)["checks"]
    failed = {c["name"] for c in checks if c["status"] == "FAIL"}
    assert failed == set(), checks
    clock = {c["status"] for c in checks if c["name"] == "clock"}
    assert clock == {"SKIP"}, checks  # the sim's clock runs 60x: doctor names it, no FAIL
    host = {c["name"]: c["status"] for c in checks if c["agent"] is None}
    assert host["supervisord"] == "PASS" and host["ledger"] == "PASS", host

    victim = "agent-b"
    os.kill(pids[victim], signal.SIGKILL)
    assert wait_pid_gone(pids[victim], 10)

    def restarted() -> dict[str, int] | None:
        now = _running(fleet.status())
        return now if now and now[victim] != pids[victim] else None

    after = wait_for(restarted, 60, f"{victim} restarted with a new pid")
    assert after["agent-a"] == pids["agent-a"] and after["agent-c"] == pids["agent-c"]

    again = fleet.cli("restart", "--id", "agent-c")
    assert again.returncode == 0, again.stderr
    assert not pid_alive(after["agent-c"])
    logs = fleet.cli("logs", "--id", "agent-c", "-n", "3")
    assert logs.returncode == 0 and "agent-c" in logs.stdout
    new_c = wait_for(lambda: fleet.status()["agent-c"][1], 30, "agent-c's new pid")
    after = {**after, "agent-c": new_c}

    down = fleet.cli("down")
    assert down.returncode == 0, down.stderr + down.stdout
    assert not pid_alive(sup_pid)
    assert not any(pid_alive(p) for p in after.values())
    assert not (fleet.state / "supervisor.sock").exists()
    assert fleet.fills() > 0
    assert _ledger_positions(fleet.state, fleet.user) == _exchange_positions(fleet.sim, fleet.user)
    assert _open_to_others(fleet.state) == []  # supervisord's logs and the agents' files too


def _open_to_others(root: Path) -> list[str]:
    """Entries under ``root`` (itself included) with a group or other permission bit."""
    return [
        f"{p.relative_to(root)} {stat.S_IMODE(p.lstat().st_mode):o}"
        for p in [root, *root.rglob("*")]
        if not p.is_symlink() and p.lstat().st_mode & 0o077
    ]
