"""Crash soak and exchange-fault runs: a fleet under supervisord, killed at random moments.

``ChaosRun(options).run()`` starts an in-process simulator (optionally injecting faults) and
``options.agents`` agents with the ``random`` strategy under a real ``supervisord -n``, all on
one funded account. During ``options.duration`` seconds it SIGKILLs a random RUNNING agent
(its whole process group) every ``kill_interval`` seconds, and once, in the middle third of
the run, supervisord itself. Then it lets the fleet recover, stops it gracefully and checks
the exchange against the ledger. Used by ``bench/chaos.py`` and ``tests/test_chaos_quick.py``.

supervisord crash, handled like an operator would: its agents keep running after a SIGKILL
(``stopasgroup`` only applies to stops supervisord initiates), so every orphaned
``aster-agent run`` of this run (found in /proc by its unique ``--state-dir``) is SIGKILLed,
then supervisord is started again with the same config and the run waits until every agent
is RUNNING again. The per-agent lock would refuse a second copy anyway.

Stops and take-profits are far away (stop_loss_pct 0.5, take_profit_pct 0.9) so protective
orders never fire and ledger positions can be compared to the exchange exactly.

Figures (all failure figures should be 0): ``duplicate_orders`` (client order ids used by
more than one exchange order), ``leaked_reservations`` (intents still 'reserved' after
recovery and a graceful stop), ``position_mismatches`` (symbols where the sum of the ledger's
positions differs from the exchange's), ``positions_over_limit`` (the most positions the
account ever held, replayed from the exchange's trades in id order, above
``max_total_positions``), ``shared_symbols`` (a symbol changing hands between agents while
open) and, with faults, ``bans_418``. ``ticks_lost`` (failed ticks / ticks) is reported.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from aster_agents.agent.inflight import NOOP_ENV
from aster_agents.agent.runner import SPEED_ENV
from aster_agents.config.schema import load_fleet
from aster_agents.config.view import PORTFOLIO_FILE
from aster_agents.fleet.supervisor import (
    Supervisor,
    SupervisorNotRunning,
    wait_pid_gone,
    write_runtime_config,
)
from aster_agents.ledger import Ledger
from aster_agents.ledger.liveness import pid_alive
from aster_agents.signing import Signer, generate_private_key
from aster_agents.sim.faults import FaultConfig
from aster_agents.sim.limits import LimitConfig
from aster_agents.sim.server import SimAccount, SimConfig, SimServer
from tests.kit.wait import wait_for

SYMBOLS: Final = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ASTERUSDT")
ZERO: Final = Decimal(0)


def fault_config(seed: int) -> FaultConfig:
    """The exchange faults of the fault run: 5xx, 503-after-accept, latency, drops."""
    return FaultConfig(
        error_rates={500: 0.01, 502: 0.01, 503: 0.01},
        latency_ms=20.0,
        latency_jitter_ms=80.0,
        accepted_503_rate=0.05,
        drop_rate=0.01,
        seed=seed,
    )


def fault_limits() -> LimitConfig:
    """A request-weight budget tight enough that the fleet meets real 429s (and could earn 418s)."""
    return LimitConfig(weight_per_window=400, weight_window_s=10.0, ban_seconds=30.0)


@dataclass(frozen=True, slots=True)
class ChaosOptions:
    agents: int = 6
    duration: float = 60.0  # seconds of killing (at least; see min_ticks)
    # The killing goes on past ``duration`` until every agent has started this many ticks
    # and the account has sent an order, within ``work_timeout`` seconds in all: a loaded
    # machine makes the run longer, never emptier.
    min_ticks: int = 0
    work_timeout: float = 300.0
    faults: bool = False
    seed: int = 1
    speed: float = 60.0
    kill_interval: tuple[float, float] = (1.0, 4.0)  # random seconds between two kills
    kill_supervisord: bool = True
    max_positions: int = 2  # per agent
    max_total_positions: int = 4  # the account limit the replay is checked against
    scan_interval: float = 0.5
    recovery_timeout: float = 90.0  # > the 60 s nonce window + 5 s an unknown order may wait
    noop: bool = True  # False: agents wait out the nonce window instead of sending a noop
    directory: Path | None = None  # kept afterwards when given


@dataclass(frozen=True, slots=True)
class ChaosResult:
    options: ChaosOptions
    seconds: float
    agent_kills: int
    supervisord_kills: int
    orphans_killed: int
    orders_sent: int
    duplicate_orders: int
    leaked_reservations: int
    position_mismatches: tuple[str, ...]
    max_positions_seen: int
    shared_symbols: tuple[str, ...]
    responses_429: int
    bans_418: int
    ticks: int
    failed_ticks: int

    @property
    def positions_over_limit(self) -> int:
        return max(0, self.max_positions_seen - self.options.max_total_positions)

    @property
    def ticks_lost(self) -> float:
        return self.failed_ticks / self.ticks if self.ticks else 0.0

    def failures(self) -> dict[str, int]:
        """Every figure whose target is zero."""
        return {
            "duplicate_orders": self.duplicate_orders,
            "leaked_reservations": self.leaked_reservations,
            "position_mismatches": len(self.position_mismatches),
            "positions_over_limit": self.positions_over_limit,
            "shared_symbols": len(self.shared_symbols),
            "bans_418": self.bans_418,
        }

    def to_json(self) -> dict[str, Any]:
        o = self.options
        return {
            "agents": o.agents,
            "faults": o.faults,
            "noop": o.noop,
            "seed": o.seed,
            "seconds": round(self.seconds, 1),
            "chaos_seconds": o.duration,
            "kills": {
                "agents": self.agent_kills,
                "supervisord": self.supervisord_kills,
                "orphans": self.orphans_killed,
            },
            "orders_sent": self.orders_sent,
            "duplicate_orders": self.duplicate_orders,
            "leaked_reservations": self.leaked_reservations,
            "position_mismatches": list(self.position_mismatches),
            "max_positions_seen": self.max_positions_seen,
            "max_positions_limit": o.max_total_positions,
            "shared_symbols": list(self.shared_symbols),
            "responses_429": self.responses_429,
            "bans_418": self.bans_418,
            "ticks": self.ticks,
            "failed_ticks": self.failed_ticks,
            "ticks_lost": round(self.ticks_lost, 4),
            "failures": self.failures(),
            "ok": not any(self.failures().values()),
        }


@dataclass(frozen=True)
class _Keys:
    main: str = field(repr=False)
    agents: dict[str, str] = field(repr=False)


def key_env(agent_id: str) -> str:
    return "CHAOS_" + agent_id.upper().replace("-", "_") + "_PRIVATE_KEY"


def agent_doc(options: ChaosOptions, agent_id: str, user: str, signer: str, url: str) -> Any:
    return {
        "id": agent_id,
        "name": f"Chaos {agent_id}",
        "exchange": {
            "user": user,
            "signer": signer,
            "signer_key_env": key_env(agent_id),
            "base_url": url,
        },
        "trading": {
            "strategy": "random",
            "params": {"p_enter": 0.8, "p_exit": 0.3},
            "symbols": list(SYMBOLS),
            "interval": "1m",
            "scan_interval_seconds": options.scan_interval,
            "max_positions": options.max_positions,
            "min_confidence": 0.5,
            "position_size_pct": 0.05,
            "leverage": 2,
            "stop_loss_pct": 0.5,
            "take_profit_pct": 0.9,
        },
        "allocation": {"capital_pct": round(0.9 / options.agents, 4)},
    }


class ChaosRun:
    """One run; ``run()`` always tears down supervisord, the agents and the simulator."""

    def __init__(self, options: ChaosOptions) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        self.ids = [f"chaos-{i}" for i in range(1, options.agents + 1)]
        self.keys = _Keys(generate_private_key(), {a: generate_private_key() for a in self.ids})
        self.user = Signer(self.keys.main).address
        self.directory = options.directory or Path("/tmp/aa-chaos-(not started)")
        self.sim: SimServer | None = None
        self.supervisor: Supervisor | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}
        self.agent_kills = self.supervisord_kills = self.orphans_killed = 0

    @property
    def config_dir(self) -> Path:
        return self.directory / "agents.d"

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"

    def run(self) -> ChaosResult:
        started = time.monotonic()
        try:
            self._start()
            self._chaos()
            self._recover()
            self._stop_supervisord()
            return self._result(time.monotonic() - started)
        finally:
            self._teardown()

    # -- start

    def _start(self) -> None:
        o = self.options
        if o.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="aa-chaos-", dir="/tmp"))
        signers = {a: Signer(k).address for a, k in self.keys.agents.items()}
        account = SimAccount(self.user, tuple(signers.values()), Decimal(100_000))
        faults = fault_config(o.seed) if o.faults else FaultConfig()
        limits = fault_limits() if o.faults else LimitConfig()
        self.sim = SimServer(
            SimConfig(seed=o.seed, speed=o.speed, accounts=(account,), faults=faults, limits=limits)
        )
        url = self.sim.start()
        self.config_dir.mkdir(parents=True, exist_ok=True)
        portfolio = {
            "state_dir": "state",
            "limits": {"max_total_positions": o.max_total_positions, "max_gross_leverage": 5.0},
        }
        (self.config_dir / PORTFOLIO_FILE).write_text(json.dumps(portfolio) + "\n")
        for agent_id in self.ids:
            doc = agent_doc(o, agent_id, self.user, signers[agent_id], url)
            (self.config_dir / f"{agent_id}.yaml").write_text(json.dumps(doc, indent=1) + "\n")
        conf = write_runtime_config(load_fleet(self.config_dir), self.state_dir)
        self.supervisor = Supervisor(self.state_dir, conf)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ASTER_AGENTS_")}
        self.env.update({key_env(a): k for a, k in self.keys.agents.items()})
        self.env[SPEED_ENV] = str(o.speed)
        if not o.noop:
            self.env[NOOP_ENV] = "0"
        self._spawn_supervisord()

    def _spawn_supervisord(self, *, wait_agents: bool = True) -> None:
        assert self.supervisor is not None
        self.proc = self.supervisor.spawn(self.env)
        self.supervisor.wait_ready(self.proc)
        if wait_agents:
            wait_for(self._all_running, 120, "every agent RUNNING")

    def _all_running(self) -> bool:
        assert self.supervisor is not None
        try:
            infos = self.supervisor.processes()
        except SupervisorNotRunning:
            return False
        return len(infos) == len(self.ids) and all(p.state == "RUNNING" for p in infos)

    # -- chaos

    def _chaos(self) -> None:
        o = self.options
        started = time.monotonic()
        end = started + o.duration
        sup_at = started + o.duration * self.rng.uniform(1 / 3, 2 / 3)
        pause = threading.Event()  # never set: waits below are the workload's random pauses
        while not self._done(started, end):
            wait = self.rng.uniform(*o.kill_interval)
            pause.wait(min(wait, end - now) if (now := time.monotonic()) < end else wait)
            if self._done(started, end):
                break
            if o.kill_supervisord and not self.supervisord_kills and time.monotonic() >= sup_at:
                self._crash_supervisord()
            else:
                self._kill_random_agent()

    def _done(self, started: float, end: float) -> bool:
        """``duration`` is over and every agent has started ``min_ticks`` ticks and an order
        was sent, or ``work_timeout`` is over (the checks afterwards report what is missing)."""
        o = self.options
        now = time.monotonic()
        if now < end:
            return False
        if o.min_ticks <= 0 or now - started >= o.work_timeout:
            return True
        ticks = self._tick_counts()
        return all(ticks.get(a, 0) >= o.min_ticks for a in self.ids) and bool(self._coids())

    def _kill_random_agent(self) -> None:
        assert self.supervisor is not None
        running = [p for p in self.supervisor.processes() if p.state == "RUNNING" and p.pid]
        if not running:
            return
        victim = self.rng.choice(running)
        assert victim.pid is not None
        with suppress(ProcessLookupError):
            os.killpg(victim.pid, signal.SIGKILL)
            self.agent_kills += 1

    def _crash_supervisord(self) -> None:
        """SIGKILL supervisord; kill its orphaned agents; start it again; wait for the fleet."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.supervisord_kills += 1
        orphans = self._orphans()
        for pid in orphans:
            with suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        for pid in orphans:
            wait_pid_gone(pid, 10.0)
        self.orphans_killed += len(orphans)
        self._spawn_supervisord()

    def _orphans(self) -> list[int]:
        """Every live ``aster-agent ... run`` process of this run (its state dir is unique)."""
        marker = str(self.state_dir).encode()
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

    # -- recovery and checks

    def _reserved(self) -> list[str]:
        with Ledger(self.state_dir) as ledger:
            return [
                i.client_order_id
                for a in self.ids
                for i in ledger.unresolved_intents(a)
                if i.state == "reserved"
            ]

    def _recover(self) -> None:
        """Stop the fleet, restart it quiet (no new orders) and let it resolve what is left.

        Every agent is stopped gracefully, its strategy set to ``p_enter 0, p_exit 0`` and
        the fleet started again: the agents then only resolve their unfinished intents (one
        whose order never reached the exchange is released at once after a noop spends its
        nonce, else after the exchange's 60 s nonce window + 5 s). The run waits until every
        agent has finished a quiet tick and no intent is 'reserved', then stops the fleet
        again; whatever is still reserved is a leak.
        """
        self._stop_supervisord()
        for agent_id in self.ids:
            path = self.config_dir / f"{agent_id}.yaml"
            doc = json.loads(path.read_text())
            doc["trading"]["params"] = {"p_enter": 0.0, "p_exit": 0.0}
            path.write_text(json.dumps(doc, indent=1) + "\n")
        before = self._tick_counts()
        self._spawn_supervisord(wait_agents=False)
        with suppress(AssertionError):  # timed out: the checks afterwards report what is left
            wait_for(
                lambda: self._ticked_since(before) and not self._reserved(),
                self.options.recovery_timeout,
                "a full quiet tick of every agent and no reserved intent left",
            )

    def _tick_counts(self) -> dict[str, int]:
        with Ledger(self.state_dir) as ledger:
            return {r.agent_id: r.ticks for r in ledger.agent_rows() if r.agent_id in self.ids}

    def _ticked_since(self, before: dict[str, int]) -> bool:
        """Every agent has started a second tick (the counter moves when a tick starts)."""
        now = self._tick_counts()
        return all(now.get(a, 0) >= before.get(a, 0) + 2 for a in self.ids)

    def _stop_supervisord(self) -> None:
        if self.supervisor is not None and self.supervisor.is_running():
            self.supervisor.shutdown(60)
        if self.proc is not None:
            self.proc.wait(30)

    def _result(self, seconds: float) -> ChaosResult:
        assert self.sim is not None
        limited, bans = self.sim.app.limiter.counts()
        most, shared = self._replay()
        ticks, failed = self._ticks()
        coids = Counter(self._coids())
        return ChaosResult(
            self.options,
            seconds,
            self.agent_kills,
            self.supervisord_kills,
            self.orphans_killed,
            sum(coids.values()),
            sum(1 for n in coids.values() if n > 1),
            len(self._reserved()),
            tuple(self._mismatches()),
            most,
            tuple(shared),
            limited,
            bans,
            ticks,
            failed,
        )

    def _coids(self) -> list[str]:
        assert self.sim is not None
        user = self.user.lower()
        return [
            o.client_order_id for o in self.sim.engine.all_orders_ever() if o.user.lower() == user
        ]

    def _mismatches(self) -> list[str]:
        assert self.sim is not None
        exchange = exchange_positions(self.sim, self.user)
        ledger = ledger_positions(self.state_dir, self.user)
        symbols = sorted(set(exchange) | set(ledger))
        return [
            f"{s}: ledger {ledger.get(s, ZERO)}, exchange {exchange.get(s, ZERO)}"
            for s in symbols
            if ledger.get(s, ZERO) != exchange.get(s, ZERO)
        ]

    def _replay(self) -> tuple[int, list[str]]:
        assert self.sim is not None
        return replay_positions(self.sim, self.user)

    def _ticks(self) -> tuple[int, int]:
        """(ticks started, ticks failed): the ledger's counters and the agents' ERROR lines."""
        with Ledger(self.state_dir) as ledger:
            ticks = sum(r.ticks for r in ledger.agent_rows() if r.agent_id in self.ids)
        failed = sum(_count_lines(self._logs(a), "tick failed: ") for a in self.ids)
        return ticks, failed

    def _logs(self, agent_id: str) -> list[Path]:
        return sorted((self.state_dir / "logs").glob(f"{agent_id}.log*"))

    # -- teardown

    def _teardown(self) -> None:
        with suppress(Exception):
            self._stop_supervisord()
        if self.proc is not None and self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self.state_dir.exists():
            for pid in self._orphans():
                with suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        if self.sim is not None:
            self.sim.stop()
        if self.options.directory is None and self.directory.exists():
            shutil.rmtree(self.directory, ignore_errors=True)


def exchange_positions(sim: SimServer, user: str) -> dict[str, Decimal]:
    """The account's non-zero positions per symbol, as the simulated exchange holds them."""
    acct = sim.engine.account(user)
    with sim.engine.lock:
        return {s: p.amount for (s, _), p in acct.positions.items() if p.amount}


def ledger_positions(state_dir: Path, user: str) -> dict[str, Decimal]:
    """The sum of the agents' ledger positions per symbol for one account."""
    out: dict[str, Decimal] = {}
    with Ledger(state_dir) as ledger:
        for p in ledger.positions(user=user):
            out[p.symbol] = out.get(p.symbol, ZERO) + p.qty
    return {s: q for s, q in out.items() if q}


def replay_positions(sim: SimServer, user: str) -> tuple[int, list[str]]:
    """Independent check from the exchange's own trade history, in execution order.

    Returns the most positions the account ever held at once, and every moment a symbol
    changed hands between agents while a position was still open on it.
    """
    acct = sim.engine.account(user)
    with sim.engine.lock:
        trades = sorted(acct.trades, key=lambda t: t.id)
        coid_of = {o.order_id: o.client_order_id for o in acct.orders}
    qty: dict[str, Decimal] = {}
    owner: dict[str, str] = {}
    most, shared = 0, []
    for trade in trades:
        agent = coid_of[trade.order_id].rsplit("-", 2)[0]
        if qty.get(trade.symbol) and owner.get(trade.symbol) != agent:
            shared.append(f"{trade.symbol}: {owner.get(trade.symbol)} and {agent}")
        owner[trade.symbol] = agent
        signed = trade.qty if trade.side == "BUY" else -trade.qty
        qty[trade.symbol] = qty.get(trade.symbol, ZERO) + signed
        most = max(most, sum(1 for q in qty.values() if q))
    return most, shared


def _count_lines(paths: Iterable[Path], needle: str) -> int:
    count = 0
    for path in paths:
        with suppress(OSError), path.open(encoding="utf-8", errors="replace") as f:
            count += sum(1 for line in f if needle in line)
    return count
