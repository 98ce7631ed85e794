"""``aster-agent demo``: the shipped fleet against the simulator, under a real supervisord.

Everything lives in one short temporary directory (unix socket paths are limited to about
100 bytes)::

    /tmp/aa-<random>/agents.d/       the shipped agents with generated API wallets and the sim URL
    /tmp/aa-<random>/state/          ledger, supervisord.conf, socket, pid file, logs

Keys are generated for one main account and each agent, handed to supervisord in its
environment and never written to disk. The simulator runs in this process (a background
thread) with a fast market (``speed`` x wall-clock time; 60 = one 1m candle per second), and
the agents' scan intervals are divided by the same factor; funding settles every
``DEMO_FUNDING_INTERVAL_S`` of market time. ``Demo.run`` always tears down supervisord, every
agent and the simulator, and removes the directory unless it was given.

At teardown, once every agent has stopped, the market is frozen and the books are checked at
that instant: ``reconcile_account`` runs against the simulator over HTTP (the tool nonce slot),
then the portfolio equity is computed exactly as ``aster-agent portfolio`` does and set against
the simulator's own account equity (``BooksCheck``). A failure or a hang there is reported in
the result, never raised: the teardown always completes.
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
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from aster_agents.agent.runner import SPEED_ENV
from aster_agents.config.schema import AgentConfig, FleetConfig, load_fleet
from aster_agents.config.view import PORTFOLIO_FILE
from aster_agents.errors import ConfigError
from aster_agents.fleet.supervisor import (
    Supervisor,
    SupervisorNotRunning,
    wait_pid_gone,
    write_runtime_config,
)
from aster_agents.ledger import Ledger
from aster_agents.ledger.liveness import pid_alive
from aster_agents.signing import Signer, generate_private_key
from aster_agents.sim.model import ModelServer
from aster_agents.sim.server import SimAccount, SimConfig, SimServer

if TYPE_CHECKING:
    from aster_agents.agent.reconcile import AccountReport

T = TypeVar("T")

DEFAULT_SPEED: Final = 60.0
DEFAULT_DURATION: Final = 60.0
DEFAULT_BALANCE: Final = Decimal("10000")
MAX_AGENTS: Final = 30
CENT: Final = Decimal("0.01")
DEMO_FUNDING_INTERVAL_S: Final = 600.0  # market time: 10 s of wall clock at x60
RECONCILE_TIMEOUT_S: Final = 30.0


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
    funding: Decimal = Decimal(0)
    why_no_trade: str | None = None  # in the final summary, for an agent that made none

    @property
    def pnl(self) -> Decimal:
        return self.realized_pnl - self.fees + self.funding + self.unrealized_pnl

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "strategy": self.strategy,
            "process_state": self.process_state,
            "pid": self.pid,
            "trades": self.trades,
            "open_positions": self.open_positions,
            "why_no_trade": self.why_no_trade,
            "realized_pnl": _money(self.realized_pnl),
            "fees": _money(self.fees),
            "funding": _money(self.funding),
            "unrealized_pnl": _money(self.unrealized_pnl),
            "pnl": _money(self.pnl),
        }


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
class BooksCheck:
    """The ledger's books against the exchange at one frozen market instant, after reconcile.

    ``books_equity`` is what ``aster-agent portfolio`` shows as equity (every sleeve at the
    recorded marks + unallocated); ``exchange_equity`` is the simulator's own account equity.
    ``None`` where the figure could not be had; ``errors`` then says why.
    """

    market_time_ms: int | None = None
    books_equity: Decimal | None = None
    exchange_equity: Decimal | None = None
    reconcile_ok: bool | None = None
    repairs: tuple[str, ...] = ()
    differences: tuple[str, ...] = ()
    funding_events: int = 0
    funding_total: Decimal = Decimal(0)
    errors: tuple[str, ...] = ()

    @property
    def difference(self) -> Decimal | None:
        if self.books_equity is None or self.exchange_equity is None:
            return None
        return self.books_equity - self.exchange_equity

    @property
    def agree(self) -> bool:
        gap = self.difference
        return gap is not None and abs(gap) < CENT and bool(self.reconcile_ok)

    def to_json(self) -> dict[str, Any]:
        def text(value: Decimal | None) -> str | None:
            return None if value is None else str(value)

        return {
            "market_time_ms": self.market_time_ms,
            "equity": text(self.books_equity),
            "exchange_equity": text(self.exchange_equity),
            "difference": text(self.difference),
            "agree": self.agree,
            "reconcile": {
                "ok": self.reconcile_ok,
                "repairs": list(self.repairs),
                "differences": list(self.differences),
            },
            "funding": {"events": self.funding_events, "total": str(self.funding_total)},
            "errors": list(self.errors),
        }


@dataclass(frozen=True, slots=True)
class DemoResult:
    directory: Path
    kept: bool
    interrupted: bool
    speed: float
    final: Snapshot
    supervisord_pid: int | None
    agent_pids: tuple[int, ...]
    books: BooksCheck | None = None
    overrides: tuple[str, ...] = ()  # the shipped settings the demo changed, said out loud

    def to_json(self) -> dict[str, Any]:
        f = self.final
        return {
            "directory": str(self.directory),
            "kept": self.kept,
            "interrupted": self.interrupted,
            "duration_s": round(f.elapsed, 1),
            "market_speed": self.speed,
            "trades": f.trades,
            "pnl": _money(f.pnl),
            "account": {
                "starting_balance": _money(f.starting_balance),
                "equity": _money(f.account_equity),
                "pnl": _money(f.account_equity - f.starting_balance),
            },
            "books": None if self.books is None else self.books.to_json(),
            "overrides": list(self.overrides),
            "agents": [a.to_json() for a in f.agents],
            "supervisord_pid": self.supervisord_pid,
            "agent_pids": list(self.agent_pids),
        }


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
            "user": keys.user,
            "signer": signers[index],
            "signer_key_env": key_env(agent_id),
            "base_url": base_url,
        }
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


def demo_overrides(shipped: FleetConfig, demo: FleetConfig, speed: float) -> list[str]:
    """The shipped settings the demo runs with changed, one line each."""
    before = shipped.portfolio.limits.max_total_positions
    after = demo.portfolio.limits.max_total_positions
    out = [f"scan intervals divided by {speed:g} (the market runs {speed:g}x)"]
    if after != before:
        out.append(
            f"limits.max_total_positions {before} -> {after} (the agents' max_positions added up)"
        )
    return out


def why_no_trade(state_dir: Path, agent: AgentConfig) -> str:
    """Why an agent made no trade: its log's last "no trade:" line, else no strong signal."""
    from aster_agents.agent.runner import NO_TRADE
    from aster_agents.fleet.supervisor import agent_log, tail

    for line in reversed(tail(agent_log(state_dir, agent.id), 400)):
        _, found, reason = line.partition(f"| {NO_TRADE} ")
        if found:
            return reason.strip()
    return f"no signal reached min_confidence {agent.trading.min_confidence:g}"


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
        self.agent_ids: list[str] = []
        self.books: BooksCheck | None = None
        self.overrides: list[str] = []
        self.started = time.monotonic()

    def run(self, stop: threading.Event) -> DemoResult:
        final: Snapshot | None = None
        try:
            self._start()
            final = self._watch(stop)
        finally:
            sup_pid = self.proc.pid if self.proc is not None else None
            final = self._teardown(final)
        return DemoResult(
            self.directory,
            self.options.directory is not None,
            stop.is_set(),
            self.options.speed,
            final,
            sup_pid,
            tuple(sorted(self.pids)),
            self.books,
            tuple(self.overrides),
        )

    def _start(self) -> None:
        o = self.options
        if o.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="aa-", dir="/tmp"))
            self.state_dir = self.directory / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        account = SimAccount(self.keys.user, self.keys.signers(), o.balance)
        self.sim = SimServer(
            SimConfig(
                seed=o.seed,
                speed=o.speed,
                accounts=(account,),
                funding_interval_s=DEMO_FUNDING_INTERVAL_S,
            )
        )
        url = self.sim.start()
        if any(a.trading.strategy == "llm" for a in self.agents):
            self.model = ModelServer("house")
            self.model.start()
        model_url = self.model.base_url if self.model is not None else None
        docs = demo_agent_docs(self.agents, self.keys, url, o.speed, model_url)
        self.agent_ids = list(docs)
        self.fleet = load_fleet(write_config_dir(self.directory, docs, self.shipped))
        self.overrides = demo_overrides(self.shipped, self.fleet, o.speed)
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

    def snapshot(self, *, final: bool = False) -> Snapshot:
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
            unrealized = sum(
                ((self._mark(p.symbol) - p.entry_price) * p.qty for p in mine), Decimal(0)
            )
            lines.append(
                AgentLine(
                    agent.id,
                    agent.name,
                    agent.trading.strategy,
                    state,
                    pid,
                    trades[agent.id],
                    len(mine),
                    row.realized_pnl if row else Decimal(0),
                    row.fees if row else Decimal(0),
                    unrealized,
                    row.funding if row else Decimal(0),
                    why_no_trade(self.state_dir, agent) if final and not trades[agent.id] else None,
                )
            )
        return Snapshot(
            time.monotonic() - self.started,
            self.options.duration,
            tuple(lines),
            self._equity(),
            self.options.balance,
        )

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
                if self.proc is not None:
                    self.books = self.check_books()
                with suppress(Exception):
                    final = self.snapshot(final=True)
            if self.sim is not None:
                self.sim.stop()
            if self.model is not None:
                self.model.stop()
            if self.options.directory is None and self.directory.exists():
                shutil.rmtree(self.directory, ignore_errors=True)
        return final or Snapshot(
            0.0, self.options.duration, (), self.options.balance, self.options.balance
        )

    # -- the books at the end

    def check_books(self) -> BooksCheck:
        """Freeze the market, reconcile, then compare the portfolio equity with the exchange's.

        Never raises: what fails is reported in ``BooksCheck.errors``.
        """
        assert self.sim is not None
        at = self.sim.freeze()
        errors: list[str] = []
        report = None
        try:
            report = _with_deadline(self._reconcile, RECONCILE_TIMEOUT_S, "final reconcile")
        except Exception as exc:  # reported in the output, the teardown goes on
            errors.append(f"reconcile: {exc}")
        books = _or_error(self._portfolio_equity, "portfolio", errors)
        exchange = _or_error(self.sim_equity, "exchange equity", errors)
        events, total = _or_error(self._funding, "funding", errors) or (0, Decimal(0))
        return BooksCheck(
            at,
            books,
            exchange,
            None if report is None else report.ok,
            tuple(report.repairs) if report else (),
            tuple(
                f"{d.kind} {d.symbol or ''}: ledger {d.ledger}, exchange {d.exchange} ({d.note})"
                for d in (report.open_differences if report else ())
            ),
            events,
            total,
            tuple(errors),
        )

    def _reconcile(self) -> AccountReport:
        """``reconcile_account`` over HTTP with an agent's API wallet and the tool nonce slot."""
        from aster_agents.agent.clients import make_client
        from aster_agents.agent.reconcile import reconcile_account
        from aster_agents.ledger import SharedBudget

        assert self.fleet is not None
        agent = self.fleet.agent(self.agent_ids[0])
        signer = Signer(self.keys.agents[0])
        with (
            Ledger(self.state_dir) as ledger,
            closing(SharedBudget(self.state_dir, user=self.keys.user)) as budget,
            make_client(self.fleet, agent, budget=budget, signer=signer) as client,
        ):
            return reconcile_account(ledger, client, self.keys.user)

    def _portfolio_equity(self) -> Decimal:
        """The equity ``aster-agent portfolio --json`` shows for this demo's directories."""
        from aster_agents.config.view import load_view
        from aster_agents.fleet.view import collect_portfolio

        assert self.fleet is not None
        return collect_portfolio(load_view(self.fleet.config_dir), self.state_dir).figures.equity

    def sim_equity(self) -> Decimal:
        assert self.sim is not None
        return self.sim.account_equity(self.keys.user)

    def _funding(self) -> tuple[int, Decimal]:
        assert self.sim is not None
        rows = self.sim.engine.income_json(
            self.keys.user, {"incomeType": "FUNDING_FEE", "limit": "1000"}
        )
        return len(rows), sum((Decimal(str(r["income"])) for r in rows), Decimal(0))

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


def _with_deadline(fn: Callable[[], T], seconds: float, what: str) -> T:
    """``fn()`` in a daemon thread; TimeoutError if it has not returned within ``seconds``."""
    box: list[T] = []
    failed: list[BaseException] = []

    def target() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # handed to the caller below
            failed.append(exc)

    worker = threading.Thread(target=target, name=what, daemon=True)
    worker.start()
    worker.join(seconds)
    if failed:
        raise failed[0]
    if not box:
        raise TimeoutError(f"{what} did not finish within {seconds:.0f} s")
    return box[0]


def _or_error(fn: Callable[[], T], what: str, errors: list[str]) -> T | None:
    try:
        return fn()
    except Exception as exc:  # reported in the output, the teardown goes on
        errors.append(f"{what}: {exc}")
        return None


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
