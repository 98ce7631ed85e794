"""Two "hosts" on this machine sharing one PostgreSQL ledger, agents SIGKILLed at random.

``MultiHostRun(options, url).run()`` starts an in-process simulator with one funded account
and, per host (``alpha``, ``beta``), a directory of its own: ``agents.d`` (the same agents
in each, every one pinned to one host by its ``host:`` key, so each host's rendered
``supervisord.conf`` holds only its own), a state dir and a real ``supervisord -n``. The
hosts share nothing but the database URL (``ledger.url`` in each ``_portfolio.yaml``); each
host's name reaches its agents through the rendered config (``ASTER_AGENTS_HOST``). Both
name one ``rate_group`` (they are behind one IP: loopback).

For ``options.duration`` seconds (longer if some agent has not ticked ``min_ticks`` times or
no order was sent yet) a random RUNNING agent of a random host is SIGKILLed (its process
group) every ``kill_interval`` seconds. Then both fleets are stopped, restarted with a
strategy that opens nothing, left to resolve their unfinished intents, and stopped again.
The figures are ``chaos.ChaosResult``'s, computed the same way against the shared ledger:
duplicate client order ids on the exchange, reservations left, ledger vs exchange
positions, the most positions the account ever held (replayed from the exchange's trades)
against ``max_total_positions``, and symbols that changed hands while open.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from aster_agents.agent.runner import SPEED_ENV
from aster_agents.config.schema import load_fleet
from aster_agents.config.view import PORTFOLIO_FILE
from aster_agents.fleet.supervisor import Supervisor, SupervisorNotRunning, write_runtime_config
from aster_agents.ledger import Ledger
from aster_agents.ledger.liveness import pid_alive
from aster_agents.signing import Signer, generate_private_key
from aster_agents.sim.server import SimAccount, SimConfig, SimServer
from tests.kit.chaos import (
    ZERO,
    ChaosOptions,
    ChaosResult,
    agent_doc,
    exchange_positions,
    key_env,
    replay_positions,
)
from tests.kit.wait import wait_for

HOSTS: Final = ("alpha", "beta")
RATE_GROUP: Final = "loopback"


@dataclass
class Host:
    """One "host": its directory (agents.d, state), its agents and its supervisord."""

    name: str
    directory: Path
    agent_ids: list[str]
    supervisor: Supervisor | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config_dir(self) -> Path:
        return self.directory / "agents.d"

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"

    def running(self) -> list[int]:
        """Pids of this host's RUNNING agents (none while supervisord does not answer)."""
        if self.supervisor is None:
            return []
        try:
            infos = self.supervisor.processes()
        except SupervisorNotRunning:
            return []
        return [p.pid for p in infos if p.state == "RUNNING" and p.pid]

    def stop(self) -> None:
        if self.supervisor is not None and self.supervisor.is_running():
            self.supervisor.shutdown(60)
        if self.proc is not None:
            self.proc.wait(30)


class MultiHostRun:
    """One run; ``run()`` always tears down both supervisords and the simulator."""

    def __init__(self, options: ChaosOptions, url: str) -> None:
        self.options = options
        self.url = url
        self.rng = random.Random(options.seed)
        self.ids = [f"mh-{i}" for i in range(1, options.agents + 1)]
        self.keys = {a: generate_private_key() for a in self.ids}
        self.main_key = generate_private_key()
        self.user = Signer(self.main_key).address
        self.root = Path(tempfile.mkdtemp(prefix="aa-multihost-", dir="/tmp"))
        self.hosts = [
            Host(name, self.root / name, self.ids[i :: len(HOSTS)]) for i, name in enumerate(HOSTS)
        ]
        self.sim: SimServer | None = None
        self.agent_kills = 0
        self.heartbeat_hosts: dict[str, str | None] = {}  # read at the end, per agent
        self.status: dict[str, Any] = {}  # `status --json` on alpha at the end

    def run(self) -> ChaosResult:
        started = time.monotonic()
        try:
            self._start()
            self._chaos()
            self._recover()
            for host in self.hosts:
                host.stop()
            return self._result(time.monotonic() - started)
        finally:
            self._teardown()

    # -- start

    def _start(self) -> None:
        o = self.options
        signers = {a: Signer(k).address for a, k in self.keys.items()}
        account = SimAccount(self.user, tuple(signers.values()), Decimal(100_000))
        self.sim = SimServer(SimConfig(seed=o.seed, speed=o.speed, accounts=(account,)))
        exchange = self.sim.start()
        owner = {a: h.name for h in self.hosts for a in h.agent_ids}
        for host in self.hosts:
            host.config_dir.mkdir(parents=True)
            portfolio = {
                "state_dir": "state",
                "ledger": {"url": self.url},
                "rate_group": RATE_GROUP,
                "limits": {"max_total_positions": o.max_total_positions, "max_gross_leverage": 5.0},
            }
            (host.config_dir / PORTFOLIO_FILE).write_text(json.dumps(portfolio) + "\n")
            for agent_id in self.ids:  # every host has every file; `host:` picks its own
                doc = agent_doc(o, agent_id, self.user, signers[agent_id], exchange)
                doc["host"] = owner[agent_id]
                (host.config_dir / f"{agent_id}.yaml").write_text(json.dumps(doc) + "\n")
            conf = write_runtime_config(load_fleet(host.config_dir), host.state_dir, host=host.name)
            host.supervisor = Supervisor(host.state_dir, conf)
        self._spawn_all()

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASTER_AGENTS_")}
        env.update({key_env(a): k for a, k in self.keys.items()})
        env[SPEED_ENV] = str(self.options.speed)
        return env

    def _spawn_all(self, *, wait_agents: bool = True) -> None:
        for host in self.hosts:
            assert host.supervisor is not None
            host.proc = host.supervisor.spawn(self._env())
            host.supervisor.wait_ready(host.proc)
        if wait_agents:
            wait_for(
                lambda: all(len(h.running()) == len(h.agent_ids) for h in self.hosts),
                120,
                "every agent of both hosts RUNNING",
            )

    # -- chaos

    def _chaos(self) -> None:
        o = self.options
        started = time.monotonic()
        pause = threading.Event()  # never set: the waits are the workload's random pauses
        while not self._done(started):
            pause.wait(self.rng.uniform(*o.kill_interval))
            host = self.rng.choice(self.hosts)
            running = host.running()
            if running:
                with suppress(ProcessLookupError):
                    os.killpg(self.rng.choice(running), signal.SIGKILL)
                    self.agent_kills += 1

    def _done(self, started: float) -> bool:
        o = self.options
        elapsed = time.monotonic() - started
        if elapsed < o.duration:
            return False
        if elapsed >= o.work_timeout:
            return True
        ticks = self._tick_counts()
        return all(ticks.get(a, 0) >= o.min_ticks for a in self.ids) and bool(self._coids())

    # -- recovery and checks

    def _recover(self) -> None:
        """Stop both fleets, restart them quiet (opening nothing), wait until every agent has
        ticked twice more and no intent is 'reserved'."""
        for host in self.hosts:
            host.stop()
            for agent_id in self.ids:
                path = host.config_dir / f"{agent_id}.yaml"
                doc = json.loads(path.read_text())
                doc["trading"]["params"] = {"p_enter": 0.0, "p_exit": 0.0}
                path.write_text(json.dumps(doc) + "\n")
        before = self._tick_counts()
        self._spawn_all(wait_agents=False)
        with suppress(AssertionError):  # timed out: the figures say what is left
            wait_for(
                lambda: self._ticked_since(before) and not self._reserved(),
                self.options.recovery_timeout,
                "a quiet tick of every agent and no reserved intent left",
            )

    def _ledger(self) -> Ledger:
        return Ledger(self.hosts[0].state_dir, url=self.url)

    def _tick_counts(self) -> dict[str, int]:
        with self._ledger() as ledger:
            return {r.agent_id: r.ticks for r in ledger.agent_rows() if r.agent_id in self.ids}

    def _ticked_since(self, before: dict[str, int]) -> bool:
        now = self._tick_counts()
        return all(now.get(a, 0) >= before.get(a, 0) + 2 for a in self.ids)

    def _reserved(self) -> list[str]:
        with self._ledger() as ledger:
            return [
                i.client_order_id
                for a in self.ids
                for i in ledger.unresolved_intents(a)
                if i.state == "reserved"
            ]

    def _read_hosts(self) -> None:
        """Where each agent's last heartbeat came from, and `status --json` run on alpha."""
        with self._ledger() as ledger:
            self.heartbeat_hosts = {r.agent_id: r.heartbeat_host for r in ledger.agent_rows()}
        alpha = self.hosts[0]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASTER_AGENTS_")}
        env["ASTER_AGENTS_HOST"] = alpha.name
        cli = [sys.executable, "-m", "aster_agents", "--config-dir", str(alpha.config_dir)]
        done = subprocess.run(
            [*cli, "status", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.status = json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr}

    def _coids(self) -> list[str]:
        assert self.sim is not None
        user = self.user.lower()
        return [
            o.client_order_id for o in self.sim.engine.all_orders_ever() if o.user.lower() == user
        ]

    def _mismatches(self) -> list[str]:
        assert self.sim is not None
        exchange = exchange_positions(self.sim, self.user)
        ledger: dict[str, Decimal] = {}
        with self._ledger() as books:
            for p in books.positions(user=self.user):
                ledger[p.symbol] = ledger.get(p.symbol, ZERO) + p.qty
        symbols = sorted(set(exchange) | set(ledger))
        return [
            f"{s}: ledger {ledger.get(s, ZERO)}, exchange {exchange.get(s, ZERO)}"
            for s in symbols
            if ledger.get(s, ZERO) != exchange.get(s, ZERO)
        ]

    def _result(self, seconds: float) -> ChaosResult:
        assert self.sim is not None
        self._read_hosts()
        limited, bans = self.sim.app.limiter.counts()
        most, shared = replay_positions(self.sim, self.user)
        coids = Counter(self._coids())
        with self._ledger() as ledger:
            ticks = sum(r.ticks for r in ledger.agent_rows() if r.agent_id in self.ids)
        return ChaosResult(
            self.options,
            seconds,
            self.agent_kills,
            0,
            0,
            sum(coids.values()),
            sum(1 for n in coids.values() if n > 1),
            len(self._reserved()),
            tuple(self._mismatches()),
            most,
            tuple(shared),
            limited,
            bans,
            ticks,
            0,
        )

    # -- teardown

    def _teardown(self) -> None:
        for host in self.hosts:
            with suppress(Exception):
                host.stop()
            if host.proc is not None and host.proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(host.proc.pid, signal.SIGKILL)
                host.proc.wait(10)
            for pid in orphans(host.state_dir):
                with suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        if self.sim is not None:
            self.sim.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def orphans(state_dir: Path) -> list[int]:
    """Every live ``aster-agent ... run`` whose command line names ``state_dir``."""
    marker = str(state_dir).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in argv and b"run" in argv and pid_alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids
