"""``backtest``: the agents' real runner driven in-process over a replayed recording.

Each agent gets an ``AgentRunner`` (strategy, sizing, reservations, protective orders, kill
switches, rebalancing: the code ``aster-agent run`` uses) holding an ``InProcessClient`` on
one simulator engine whose market replays the recording on a simulated clock. The runners
share a throwaway ledger. Time moves in events: every quarter of the recording's candle (the
replay's price steps, so stops trigger where a process run triggers them) and every agent's
scan interval (in market seconds). Strategies see closed klines only: the runner drops the
forming candle and the market never serves a candle after the simulated now.

The recording keeps its own dates (no shift); the ledger keeps its bookkeeping times on the
wall clock, which the in-process client translates back into market time for the two
history queries that use them.
"""

from __future__ import annotations

import bisect
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from aster_agents.agent.runner import AgentRunner, risk_limits
from aster_agents.config.schema import AgentConfig, FleetConfig
from aster_agents.config.view import natural_key
from aster_agents.errors import ConfigError
from aster_agents.ledger import Ledger, MarketDataCache
from aster_agents.logs import logger
from aster_agents.models import Kline
from aster_agents.portfolio.trades import read_trips, totals
from aster_agents.sim.accounts import accounts_from_pairs
from aster_agents.sim.inprocess import InProcessClient
from aster_agents.sim.lockstep import replay_events, step_of
from aster_agents.sim.recording import Recording, load_recording
from aster_agents.sim.server import SimApp, SimConfig
from aster_agents.sim.sources import ReplayMarket
from aster_agents.sim.symbols import SYMBOLS
from aster_agents.strategies import Strategy, attached, get_strategy

DEFAULT_BALANCE = Decimal("10000")


class MemoryCache(MarketDataCache):
    """The kline cache in a dict, on the simulated clock (one process, no files): candles
    are kept as the parsed objects, with no JSON between the agents that share them."""

    def __init__(self) -> None:  # no directory: nothing to share with other processes
        self._values: dict[str, tuple[int, bytes | str]] = {}
        self._klines: dict[str, tuple[int, list[Kline]]] = {}

    def klines(
        self,
        key: str,
        fresh_until_ms: int,
        fetch: Callable[[], list[Kline]],
        *,
        now_ms: int | None = None,
    ) -> list[Kline]:
        hit = self._klines.get(key)
        if hit is not None and now_ms is not None and now_ms < hit[0]:
            return hit[1]
        value = fetch()
        self._klines[key] = (fresh_until_ms, value)
        return value

    def get_or_fetch(
        self,
        key: str,
        fresh_until_ms: int,
        fetch: Callable[[], bytes | str],
        *,
        now_ms: int | None = None,
    ) -> bytes | str:
        hit = self._values.get(key)
        if hit is not None and now_ms is not None and now_ms < hit[0]:
            return hit[1]
        value = fetch()
        self._values[key] = (fresh_until_ms, value)
        return value


@dataclass(slots=True)
class SimClock:
    """Market time, and what market time it was when the wall clock read a given ms."""

    market: ReplayMarket
    walls: list[int] = field(default_factory=list)
    marks: list[int] = field(default_factory=list)

    def now(self) -> int:
        return self.market.now_ms()

    def move_to(self, t: int) -> None:
        self.market.freeze(t)
        wall = time.time_ns() // 1_000_000
        if self.walls and self.walls[-1] == wall:
            self.marks[-1] = t
        else:
            self.walls.append(wall)
            self.marks.append(t)

    def wall_to_market(self, ms: int) -> int:
        """A ledger time (wall clock) as market time; market times pass unchanged."""
        if ms <= self.now() or not self.walls:
            return ms
        i = bisect.bisect_right(self.walls, ms) - 1
        return self.marks[max(0, i - 1)]  # a step early: never miss a fill of that moment


@dataclass(frozen=True, slots=True)
class BacktestFill:
    time_ms: int
    agent_id: str
    symbol: str
    qty: Decimal  # signed: + buy, - sell
    price: Decimal
    commission: Decimal
    realized_pnl: Decimal
    kind: str | None
    note: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time_ms,
            "agent": self.agent_id,
            "symbol": self.symbol,
            "qty": str(self.qty),
            "price": str(self.price),
            "commission": str(self.commission),
            "realized_pnl": str(self.realized_pnl),
            "kind": self.kind,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class AgentSummary:
    agent_id: str
    strategy: str
    capital: Decimal
    equity: Decimal
    trips: int
    pnl: Decimal
    fees: Decimal
    funding: Decimal

    def to_json(self) -> dict[str, Any]:
        ret = (self.equity / self.capital - 1) if self.capital else Decimal(0)
        return {
            "agent": self.agent_id,
            "strategy": self.strategy,
            "capital": str(self.capital),
            "equity": str(self.equity),
            "return": f"{ret:.6f}",
            "trips": self.trips,
            "pnl": str(self.pnl),
            "fees": str(self.fees),
            "funding": str(self.funding),
        }


@dataclass(frozen=True, slots=True)
class BacktestResult:
    data_dir: Path
    start_ms: int
    end_ms: int
    agent_ticks: int
    elapsed_s: float
    cpu_s: float  # this process's CPU time over the same span (a shared machine's honest figure)
    agents: tuple[AgentSummary, ...]
    fills: tuple[BacktestFill, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "data": str(self.data_dir),
            "from": self.start_ms,
            "to": self.end_ms,
            "agent_ticks": self.agent_ticks,
            "elapsed_s": round(self.elapsed_s, 3),
            "cpu_s": round(self.cpu_s, 3),
            "agent_ticks_per_s": round(self.agent_ticks / max(self.elapsed_s, 1e-9), 1),
            "agents": [a.to_json() for a in self.agents],
            "fills": [f.to_json() for f in self.fills],
        }


def select_agents(
    fleet: FleetConfig, ids: Sequence[str], recording: Recording
) -> list[AgentConfig]:
    """The enabled agents (or ``ids``) by id, each trading only symbols the recording holds.

    By id (naturally: agent-2 before agent-10): the agents due at one moment tick in this
    order, as under ``sim --lockstep``.
    """
    agents = [fleet.agent(i) for i in ids] if ids else list(fleet.enabled_agents)
    agents.sort(key=lambda a: natural_key(a.id))
    if not agents:
        raise ConfigError(f"{fleet.config_dir}: no enabled agent to backtest")
    for agent in agents:
        missing = [s for s in agent.trading.symbols if s not in recording.symbols]
        if missing:
            raise ConfigError(
                f"{fleet.files.get(agent.id, fleet.config_dir)}: trading.symbols: "
                f"{', '.join(missing)} not in the recording {recording.path} "
                f"(it holds {', '.join(sorted(recording.symbols))})"
            )
    return agents


def run_backtest(
    fleet: FleetConfig,
    data_dir: Path,
    *,
    agent_ids: Sequence[str] = (),
    from_ms: int | None = None,
    to_ms: int | None = None,
    strategies: Mapping[str, Strategy] | None = None,
    balance: Decimal = DEFAULT_BALANCE,
    state_dir: Path | None = None,
) -> BacktestResult:
    """Run the agents over the recording in ``data_dir``; ``strategies`` overrides by agent id."""
    recording = load_recording(data_dir, frozenset(SYMBOLS))
    agents = select_agents(fleet, agent_ids, recording)
    market = ReplayMarket(recording, reference_ms=recording.start_ms)
    start = market.start_ms if from_ms is None else max(market.genesis_ms, from_ms)
    end = market.end_ms if to_ms is None else min(market.end_ms, to_ms)
    if end <= start:
        raise ConfigError(f"backtest: --from/--to leave nothing of the recording {data_dir}")
    clock = SimClock(market)
    clock.move_to(start)
    app = SimApp(SimConfig(market="replay", data_dir=data_dir), market=market)
    pairs = ((a.exchange.user, a.exchange.signer) for a in agents)
    for account in accounts_from_pairs(pairs, balance):
        app.add_account(account)
    with tempfile.TemporaryDirectory(prefix="aster-backtest-", dir=_fast_tmp()) as tmp:
        books = Path(tmp) if state_dir is None else state_dir
        started, cpu = time.perf_counter(), time.process_time()
        logger.disable("aster_agents")
        try:
            with Ledger(books, throwaway=state_dir is None) as ledger:
                runners = _runners(fleet, agents, app, ledger, clock, strategies or {})
                ticks = _drive(app, clock, runners, start, end)
                spent = (time.perf_counter() - started, time.process_time() - cpu)
                return _result(data_dir, start, end, ticks, spent, agents, ledger)
        finally:
            logger.enable("aster_agents")


def _runners(
    fleet: FleetConfig,
    agents: Sequence[AgentConfig],
    app: SimApp,
    ledger: Ledger,
    clock: SimClock,
    strategies: Mapping[str, Strategy],
) -> list[AgentRunner]:
    cache = MemoryCache()
    closed: dict[tuple[str, str, str, int], Kline] = {}
    runners = []
    for agent in agents:
        ledger.register_agent(
            agent.id, agent.exchange.user, max_positions=agent.trading.max_positions
        )
        strategy = strategies.get(agent.id) or get_strategy(
            agent.trading.strategy, agent.trading.params, seed=_seed(agent.id)
        )
        client = InProcessClient(
            app,
            agent.exchange.user,
            agent_id=agent.id,
            wall_to_market=clock.wall_to_market,
            closed_klines=closed,
        )
        runner = AgentRunner(
            fleet,
            agent,
            client=client,
            ledger=ledger,
            cache=cache,
            strategy=strategy,
            clock=clock.now,
            market_speed=0.25,  # a kline TTL of one interval: klines are kept until the
        )  # forming candle closes (the runner caps freshness there), one fetch per candle
        with attached(strategy, runner.stop, risk_limits(agent)):
            runner.start()
        runners.append(runner)
    return runners


def _fast_tmp() -> str | None:
    """/dev/shm when there is one: a throwaway ledger needs no fsync to reach a disk."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def _seed(agent_id: str) -> int:
    import zlib

    return zlib.crc32(agent_id.encode())


def _drive(
    app: SimApp, clock: SimClock, runners: Sequence[AgentRunner], start: int, end: int
) -> int:
    """Step market time through the replay's events (``sim/lockstep.py``, the schedule
    ``sim --lockstep`` gives agent processes); returns the agent-ticks run."""
    scans = [int(r.agent.trading.scan_interval_seconds * 1000) for r in runners]
    ticks = 0
    for t, due in replay_events(start, end, step_of(clock.market), scans):
        clock.move_to(t)
        app.engine.settle_funding()
        app.engine.tick()
        for i in due:
            runners[i].safe_tick()
        ticks += len(due)
    return ticks


def _result(
    data_dir: Path,
    start: int,
    end: int,
    ticks: int,
    spent: tuple[float, float],
    agents: Sequence[AgentConfig],
    ledger: Ledger,
) -> BacktestResult:
    sums = totals(read_trips(ledger))
    summaries = []
    for agent in agents:
        row = ledger.agent(agent.id)
        history = ledger.equity_history(agent.id)
        capital = row.capital if row is not None else Decimal(0)
        t = sums.get(agent.id)
        summaries.append(
            AgentSummary(
                agent.id,
                agent.trading.strategy,
                capital,
                history[-1].equity if history else capital,
                t.trips if t is not None else 0,
                t.pnl if t is not None else Decimal(0),
                t.fees if t is not None else Decimal(0),
                t.funding if t is not None else Decimal(0),
            )
        )
    fills = tuple(
        BacktestFill(
            f.time_ms,
            f.agent_id,
            f.symbol,
            f.qty,
            f.price,
            f.commission,
            f.realized_pnl,
            f.kind,
            f.note,
        )
        for f in sorted(ledger.trade_fills(), key=lambda f: (f.time_ms, f.trade_id))
    )
    return BacktestResult(data_dir, start, end, ticks, *spent, tuple(summaries), fills)
