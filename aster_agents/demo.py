"""``aster-agent demo``: the shipped fleet against the simulator, under a real supervisord.

Everything lives in one short temporary directory (unix socket paths are limited to about
100 bytes)::

    /tmp/aa-<random>/agents.d/       the shipped agents with generated API wallets and the sim URL
    /tmp/aa-<random>/state/          ledger, supervisord.conf, socket, pid file, logs

Keys are generated for one main account and each agent, handed to supervisord in its
environment and never written to disk. The simulator runs in this process (a background
thread) with a fast market (``speed`` x wall-clock time; 60 = one 1m candle per second), and
the agents' scan intervals are divided by the same factor. ``Demo.run`` always tears down
supervisord, every agent and the simulator, and removes the directory unless it was given.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from aster_agents.config import AgentConfig, FleetConfig, load_fleet
from aster_agents.config_view import PORTFOLIO_FILE
from aster_agents.errors import ConfigError
from aster_agents.ledger import Ledger
from aster_agents.ledger.liveness import pid_alive
from aster_agents.runner import SPEED_ENV
from aster_agents.signing import Signer, generate_private_key
from aster_agents.sim.model import ModelServer
from aster_agents.sim.server import SimAccount, SimConfig, SimServer
from aster_agents.supervisor import (
    Supervisor,
    SupervisorNotRunning,
    wait_pid_gone,
    write_runtime_config,
)

DEFAULT_SPEED: Final = 60.0
DEFAULT_DURATION: Final = 60.0
DEFAULT_BALANCE: Final = Decimal("10000")
MAX_AGENTS: Final = 30
CENT: Final = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class DemoOptions:
    agents: int | None = None  # None: every agent of the shipped config
    duration: float = DEFAULT_DURATION
    speed: float = DEFAULT_SPEED
    seed: int = 1
    balance: Decimal = DEFAULT_BALANCE
    directory: Path | None = None  # kept afterwards when given
    refresh: float = 1.5


@dataclass(frozen=True, slots=True)
class AgentLine:
    """One agent's row in the live view and in the summary."""

    id: str
    name: str
    strategy: str
    process_state: str
    pid: int | None
    trades: int
    open_positions: int
    realized_pnl: Decimal
    fees: Decimal
    unrealized_pnl: Decimal

    @property
    def pnl(self) -> Decimal:
        return self.realized_pnl - self.fees + self.unrealized_pnl

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "strategy": self.strategy,
            "process_state": self.process_state, "pid": self.pid, "trades": self.trades,
            "open_positions": self.open_positions, "realized_pnl": _money(self.realized_pnl),
            "fees": _money(self.fees), "unrealized_pnl": _money(self.unrealized_pnl),
            "pnl": _money(self.pnl),
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The fleet at one moment: per-agent lines plus the exchange's view of the account."""

    elapsed: float
    duration: float
    agents: tuple[AgentLine, ...]
    account_equity: Decimal
    starting_balance: Decimal

    @property
    def trades(self) -> int:
        return sum(a.trades for a in self.agents)

    @property
    def pnl(self) -> Decimal:
        return sum((a.pnl for a in self.agents), Decimal(0))

    @property
    def running(self) -> int:
        return sum(a.process_state == "RUNNING" for a in self.agents)


@dataclass(frozen=True, slots=True)
class DemoResult:
    directory: Path
    kept: bool
    interrupted: bool
    speed: float
    final: Snapshot
    supervisord_pid: int | None
    agent_pids: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        f = self.final
        return {
            "directory": str(self.directory), "kept": self.kept,
            "interrupted": self.interrupted, "duration_s": round(f.elapsed, 1),
            "market_speed": self.speed, "trades": f.trades,
            "pnl": _money(f.pnl), "account": {
                "starting_balance": _money(f.starting_balance),
                "equity": _money(f.account_equity),
                "pnl": _money(f.account_equity - f.starting_balance),
            },
            "agents": [a.to_json() for a in f.agents],
            "supervisord_pid": self.supervisord_pid, "agent_pids": list(self.agent_pids),
        }  # fmt: skip


def _money(value: Decimal) -> str:
    return str(value.quantize(CENT))


# ---------------------------------------------------------------------- the demo fleet


@dataclass(frozen=True)
class DemoKeys:
    """Generated keys; only ever passed to supervisord's environment."""

    main: str = field(repr=False)
    agents: tuple[str, ...] = field(repr=False)

    @classmethod
    def generate(cls, n: int) -> DemoKeys:
        return cls(generate_private_key(), tuple(generate_private_key() for _ in range(n)))

    @property
    def user(self) -> str:
        return Signer(self.main).address

    def signers(self) -> tuple[str, ...]:
        return tuple(Signer(k).address for k in self.agents)


def pick_agents(shipped: FleetConfig, n: int | None) -> list[AgentConfig]:
    """The first ``n`` enabled agents (all when None); more than shipped repeats them."""
    base = list(shipped.enabled_agents)
    if not base:
        raise ConfigError(f"{shipped.config_dir}: no enabled agent to run the demo with")
    count = len(base) if n is None else n
    if not 1 <= count <= MAX_AGENTS:
        raise ConfigError(f"--agents: must be between 1 and {MAX_AGENTS}, got {count}")
    return [base[i % len(base)] for i in range(count)]


def demo_agent_docs(
    agents: list[AgentConfig],
    keys: DemoKeys,
    base_url: str,
    speed: float,
    model_url: str | None = None,
) -> dict[str, dict[str, Any]]:
    """``{id: document}`` for the demo agents.d: same strategies, generated wallets, sim URL.

    ``llm`` agents ask the fake model server at ``model_url`` (no API key) instead.
    """
    signers = keys.signers()
    total = sum(a.allocation.capital_pct for a in agents)
    docs: dict[str, dict[str, Any]] = {}
    for index, agent in enumerate(agents):
        agent_id = agent.id if agent.id not in docs else f"{agent.id}-{index + 1}"[:20]
        doc = agent.model_dump(mode="json")
        doc["id"] = agent_id
        doc["exchange"] = {
            "user": keys.user, "signer": signers[index],
            "signer_key_env": key_env(agent_id), "base_url": base_url,
        }  # fmt: skip
        trading = doc["trading"]
        trading["scan_interval_seconds"] = max(1.0, agent.trading.scan_interval_seconds / speed)
        if trading["strategy"] == "llm" and model_url is not None:
            trading["params"] = demo_llm_params(trading["params"], model_url, speed)
        if total > 1:
            doc["allocation"]["capital_pct"] = round(agent.allocation.capital_pct / total, 4)
        docs[agent_id] = doc
    return docs


def demo_llm_params(params: dict[str, Any], model_url: str, speed: float) -> dict[str, Any]:
    """The local fake model, no key, and a call budget per hour of (faster) market time."""
    out = {k: v for k, v in params.items() if k != "api_key_env"}
    out["base_url"] = model_url
    out["max_calls_per_hour"] = math.ceil(int(params.get("max_calls_per_hour", 60)) * speed)
    return out


def key_env(agent_id: str) -> str:
    return "DEMO_" + agent_id.upper().replace("-", "_") + "_PRIVATE_KEY"


def write_config_dir(
    directory: Path, docs: dict[str, dict[str, Any]], shipped: FleetConfig
) -> Path:
    """Write agents.d (JSON is valid YAML: no yaml import outside config.py)."""
    config_dir = directory / "agents.d"
    config_dir.mkdir(parents=True, exist_ok=True)
    portfolio = shipped.portfolio.model_dump(mode="json")
    portfolio["state_dir"] = "state"
    portfolio["limits"]["max_total_positions"] = max(
        portfolio["limits"]["max_total_positions"],
        sum(d["trading"]["max_positions"] for d in docs.values()),
    )
    (config_dir / PORTFOLIO_FILE).write_text(json.dumps(portfolio, indent=2) + "\n")
    for agent_id, doc in docs.items():
        (config_dir / f"{agent_id}.yaml").write_text(json.dumps(doc, indent=2) + "\n")
    return config_dir


# ---------------------------------------------------------------------- running it


class Demo:
    """One demo run; ``run(stop)`` returns the result after a complete teardown."""

    def __init__(
        self,
        shipped: FleetConfig,
        options: DemoOptions,
        on_update: Callable[[Snapshot], None] = lambda _s: None,
    ) -> None:
        self.options = options
        self.agents = pick_agents(shipped, options.agents)
        if options.directory is not None and _non_empty(options.directory):
            raise ConfigError(
                f"--state-dir {options.directory}: not empty; the demo needs a new or empty "
                "directory (it keeps it afterwards)"
            )
        self.shipped = shipped
        self.on_update = on_update
        self.keys = DemoKeys.generate(len(self.agents))
        self.directory = options.directory or Path("/tmp/aa-(not started)")
        self.state_dir = self.directory / "state"
        self.sim: SimServer | None = None
        self.model: ModelServer | None = None
        self.fleet: FleetConfig | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.supervisor: Supervisor | None = None
        self.pids: set[int] = set()
        self.last_seen: dict[str, tuple[str, int | None]] = {}
        self.started = time.monotonic()

    def run(self, stop: threading.Event) -> DemoResult:
        final: Snapshot | None = None
        try:
            self._start()
            final = self._watch(stop)
        finally:
            sup_pid = self.proc.pid if self.proc is not None else None
            final = self._teardown(final)
        return DemoResult(self.directory, self.options.directory is not None, stop.is_set(),
                          self.options.speed, final, sup_pid, tuple(sorted(self.pids)))  # fmt: skip

    def _start(self) -> None:
        o = self.options
        if o.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="aa-", dir="/tmp"))
            self.state_dir = self.directory / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        account = SimAccount(self.keys.user, self.keys.signers(), o.balance)
        self.sim = SimServer(SimConfig(seed=o.seed, speed=o.speed, accounts=(account,)))
        url = self.sim.start()
        if any(a.trading.strategy == "llm" for a in self.agents):
            self.model = ModelServer("house")
            self.model.start()
        model_url = self.model.base_url if self.model is not None else None
        docs = demo_agent_docs(self.agents, self.keys, url, o.speed, model_url)
        self.fleet = load_fleet(write_config_dir(self.directory, docs, self.shipped))
        conf = write_runtime_config(self.fleet, self.state_dir)
        self.supervisor = Supervisor(self.state_dir, conf)
        self.proc = self.supervisor.spawn(self._environment(list(docs)))
        self.supervisor.wait_ready(self.proc)
        self.started = time.monotonic()

    def _environment(self, agent_ids: list[str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASTER_AGENTS_")}
        env.update({key_env(a): k for a, k in zip(agent_ids, self.keys.agents, strict=True)})
        env[SPEED_ENV] = str(self.options.speed)
        return env

    def _watch(self, stop: threading.Event) -> Snapshot:
        deadline = self.started + self.options.duration
        snapshot = self.snapshot()
        while not stop.is_set() and time.monotonic() < deadline:
            self.on_update(snapshot)
            stop.wait(min(self.options.refresh, max(0.0, deadline - time.monotonic())))
            snapshot = self.snapshot()
        return snapshot

    # -- views

    def snapshot(self) -> Snapshot:
        assert self.fleet is not None and self.sim is not None
        procs = self._processes()
        with Ledger(self.state_dir) as ledger:
            rows = {r.agent_id: r for r in ledger.agent_rows()}
            positions = ledger.positions()
            trades = {a.id: _fills(ledger, a.id) for a in self.fleet.agents}
        lines = []
        for agent in self.fleet.agents:
            state, pid = procs.get(agent.id, ("UNKNOWN", None))
            row = rows.get(agent.id)
            mine = [p for p in positions if p.agent_id == agent.id]
            unrealized = sum(((self._mark(p.symbol) - p.entry_price) * p.qty for p in mine),
                             Decimal(0))  # fmt: skip
            lines.append(AgentLine(
                agent.id, agent.name, agent.trading.strategy, state, pid, trades[agent.id],
                len(mine), row.realized_pnl if row else Decimal(0), row.fees if row else Decimal(0),
                unrealized,
            ))  # fmt: skip
        return Snapshot(time.monotonic() - self.started, self.options.duration, tuple(lines),
                        self._equity(), self.options.balance)  # fmt: skip

    def _processes(self) -> dict[str, tuple[str, int | None]]:
        if self.supervisor is None:
            return {}
        try:
            infos = self.supervisor.processes()
        except SupervisorNotRunning:
            return {name: ("STOPPED", pid) for name, (_s, pid) in self.last_seen.items()}
        self.pids.update(p.pid for p in infos if p.pid)
        self.last_seen = {p.name: (p.state, p.pid) for p in infos}
        return self.last_seen

    def _mark(self, symbol: str) -> Decimal:
        assert self.sim is not None
        with self.sim.engine.lock:
            return self.sim.market.mark(symbol)

    def _equity(self) -> Decimal:
        assert self.sim is not None
        doc = self.sim.engine.account_json(self.keys.user)
        return Decimal(str(doc["totalMarginBalance"]))

    # -- teardown

    def _teardown(self, last: Snapshot | None) -> Snapshot:
        with _signals_ignored():
            self._stop_supervisord()
            final = last
            if self.sim is not None and self.fleet is not None and self.state_dir.exists():
                with suppress(Exception):
                    final = self.snapshot()
            if self.sim is not None:
                self.sim.stop()
            if self.model is not None:
                self.model.stop()
            if self.options.directory is None and self.directory.exists():
                shutil.rmtree(self.directory, ignore_errors=True)
        return final or Snapshot(0.0, self.options.duration, (), self.options.balance,
                                 self.options.balance)  # fmt: skip

    def _stop_supervisord(self) -> None:
        """SIGTERM supervisord (it stops every agent first), wait, then make sure."""
        if self.proc is None:
            return
        self._processes()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        for pid in self.pids:
            if not wait_pid_gone(pid, 5.0) and pid_alive(pid):
                with suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


def _non_empty(directory: Path) -> bool:
    return directory.exists() and any(directory.iterdir())


def _fills(ledger: Ledger, agent_id: str) -> int:
    return sum(1 for e in ledger.audit(limit=1_000_000, agent_id=agent_id) if e.event == "fill")


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """A second Ctrl-C must not abandon the teardown half-way."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
    try:
        yield
    finally:
        if in_main:
            for s, handler in previous.items():
                signal.signal(s, handler)
