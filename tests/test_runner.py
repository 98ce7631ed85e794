"""The agent runtime against the simulator over real loopback HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path

import pytest

from aster_agents.agent.runner import (
    FAILPOINT_ENV,
    FAILPOINTS,
    KLINE_FLOOR,
    KLINE_LIMIT_MAX,
    AgentRunner,
    RequestMeter,
)
from aster_agents.config.schema import load_fleet
from aster_agents.exchange.base import RequestLog
from aster_agents.exchange.http import AsterClient
from aster_agents.ledger import Ledger, MarketDataCache
from aster_agents.logs import logger
from aster_agents.models import INTERVAL_MS
from aster_agents.signing import NonceSource, Signer
from aster_agents.sim.server import SimConfig, SimServer
from aster_agents.strategies import Action, MarketSnapshot, PositionView, Signal
from tests.kit.agents import Fleet, make_fleet, replay_max_positions
from tests.kit.wait import wait_for

SIX = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ASTERUSDT")


class Scripted:
    """A test strategy that plays a fixed list of actions, one per decision."""

    name = "scripted"
    min_klines = 1

    def __init__(self, actions: Sequence[Action]) -> None:
        self.actions = list(actions)

    def decide(self, market: MarketSnapshot, position: PositionView) -> Signal:
        action = self.actions.pop(0) if self.actions else Action.HOLD
        return Signal(action, 1.0, f"scripted {action.value}")


@pytest.fixture
def closing() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


@pytest.fixture
def sim() -> Iterator[SimServer]:
    server = SimServer(SimConfig(port=0, seed=7, speed=60.0))
    server.start()
    yield server
    server.stop()


def in_process(
    fleet: Fleet,
    agent_id: str,
    strategy: object,
    closing: ExitStack,
    meter: RequestMeter | None = None,
) -> tuple[AgentRunner, Ledger]:
    config = load_fleet(fleet.config_dir)
    agent = config.agent(agent_id)
    ledger = closing.enter_context(Ledger(fleet.state_dir))
    slot = ledger.register_agent(
        agent.id, agent.exchange.user, max_positions=agent.trading.max_positions
    )
    client = AsterClient(
        fleet.sim.base_url,
        user=fleet.user,
        signer=Signer(fleet.keys[agent_id]),
        nonces=NonceSource(slot),
        on_request=meter,
    )
    closing.enter_context(client)
    runner = AgentRunner(
        config,
        agent,
        client=client,
        ledger=ledger,
        cache=MarketDataCache(fleet.state_dir),
        strategy=strategy,  # type: ignore[arg-type]
        market_speed=fleet.sim.config.speed,
        meter=meter,
    )
    runner.start()
    return runner, ledger


def open_orders(fleet: Fleet, symbol: str) -> list[tuple[str, str, bool]]:
    acct = fleet.sim.engine.account(fleet.user)
    with fleet.sim.engine.lock:
        return sorted(
            (o.type, o.client_order_id, o.close_position)
            for o in acct.open_orders.values()
            if o.symbol == symbol
        )


def test_agent_opens_protects_and_closes(
    sim: SimServer, tmp_path: Path, closing: ExitStack
) -> None:
    """An entry gets a stop and a take-profit; a close cancels them, books the P&L and logs
    the trip's P&L on its line."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), format="{message}", level="INFO")
    closing.callback(logger.remove, sink)
    fleet = make_fleet(
        tmp_path, sim, ["agent-1"], symbols=["BTCUSDT"], stop_loss_pct=0.2, take_profit_pct=0.5
    )
    runner, ledger = in_process(
        fleet, "agent-1", Scripted([Action.LONG, Action.HOLD, Action.CLOSE]), closing
    )
    report = runner.tick()
    assert report.opened == ["BTCUSDT"]
    assert fleet.exchange_positions() == fleet.ledger_positions()
    assert fleet.exchange_positions()["BTCUSDT"] > 0
    orders = open_orders(fleet, "BTCUSDT")
    assert [o[0] for o in orders] == ["STOP_MARKET", "TAKE_PROFIT_MARKET"]
    assert all(o[1].startswith("agent-1-") and o[2] for o in orders)
    runner.tick()
    assert len(open_orders(fleet, "BTCUSDT")) == 2, "protection is not placed twice"
    report = runner.tick()
    assert report.closed == ["BTCUSDT"]
    assert fleet.exchange_positions() == {} == fleet.ledger_positions()
    assert open_orders(fleet, "BTCUSDT") == []
    assert ledger.unresolved_intents("agent-1") == []
    row = ledger.agent("agent-1")
    acct = sim.engine.account(fleet.user)
    assert row is not None
    assert row.realized_pnl == sum((t.realized_pnl for t in acct.trades), Decimal(0))
    assert row.fees == sum((t.commission for t in acct.trades), Decimal(0))
    closed = [line for line in lines if line.startswith("closed BTCUSDT")]
    pnl = row.realized_pnl - row.fees + row.funding
    assert len(closed) == 1 and f"; P&L {pnl.normalize():+f} USDT (realized" in closed[0]


def test_request_meter_adds_up_every_request_through_the_hook(
    sim: SimServer, tmp_path: Path, closing: ExitStack
) -> None:
    """The client's on_request hook feeds the meter: its totals cover every entry's time."""
    fleet = make_fleet(tmp_path, sim, ["agent-1"], symbols=["BTCUSDT"])
    entries: list[RequestLog] = []
    meter = RequestMeter(entries.append)
    runner, _ = in_process(fleet, "agent-1", Scripted([Action.LONG]), closing, meter)
    started = len(entries)
    assert started > 0, "start-up requests go through the hook"
    runner.tick()
    paths = {e.path for e in entries[started:]}
    assert {"/fapi/v3/order", "/fapi/v3/userTrades"} <= paths
    assert meter.wall_ms >= sum(e.elapsed_ms for e in entries)  # plus forwarding each entry
    assert meter.cpu_ms >= sum(e.cpu_ms for e in entries)
    assert all(e.elapsed_ms > 0 and e.cpu_ms >= 0 for e in entries)


def test_timed_tick_is_safe_tick_with_its_debug_line(
    sim: SimServer, tmp_path: Path, closing: ExitStack
) -> None:
    """The live loop's tick (``timed_tick``) does what ``safe_tick`` does and says its times
    at DEBUG; ``safe_tick`` (a backtest's) writes no such line."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), format="{message}", level="DEBUG")
    closing.callback(logger.remove, sink)
    fleet = make_fleet(tmp_path, sim, ["agent-1"], symbols=["BTCUSDT"])
    runner, _ = in_process(fleet, "agent-1", Scripted([Action.HOLD, Action.HOLD]), closing)
    ticks = [line for line in lines if line.startswith("tick ")]
    plain = runner.safe_tick()
    assert [line for line in lines if line.startswith("tick ")] == ticks
    timed = runner.timed_tick()
    assert plain is not None and timed == plain
    said = [line for line in lines if line.startswith("tick ")][len(ticks) :]
    assert len(said) == 1 and ", network " in said[0] and ", cpu " in said[0], said


def test_kline_request_made_once_is_the_plain_one(
    sim: SimServer, tmp_path: Path, closing: ExitStack
) -> None:
    """The klines' cache key, limit, freshness and candle length kept per symbol are those
    made from the config and the strategy's ``min_klines`` at the time of asking."""
    fleet = make_fleet(tmp_path, sim, ["agent-1"], symbols=["BTCUSDT", "ETHUSDT"])
    strategy = Scripted([])
    runner, _ = in_process(fleet, "agent-1", strategy, closing)
    interval, url = runner.agent.trading.interval, runner.agent.exchange.base_url
    step = INTERVAL_MS[interval]
    for min_klines in (1, 200, 1000, 200):
        strategy.min_klines = min_klines
        for symbol in ("BTCUSDT", "ETHUSDT"):
            limit = min(KLINE_LIMIT_MAX, max(KLINE_FLOOR, min_klines + 2))
            plain = (
                f"klines:{url}:{symbol}:{interval}:{limit}",
                limit,
                max(1000, int(step / runner.market_speed / 4)),
                step,
            )
            assert runner._kline_request(symbol) == plain
            assert runner._kline_request(symbol) is runner._kline_request(symbol)


def test_failpoint_kills_the_process_at_the_named_step_only(tmp_path: Path) -> None:
    """``$ASTER_AGENTS_FAILPOINT`` in the environment a process starts with (read once at
    import) SIGKILLs it at that step and at no other."""
    code = (
        "import sys; from aster_agents.agent.runner import failpoint; "
        "failpoint('after_send'); print('passed after_send', flush=True); failpoint(sys.argv[1])"
    )
    env = {**os.environ, FAILPOINT_ENV: "after_confirm"}
    for step, returncode in (("after_reserve", 0), ("after_confirm", -signal.SIGKILL)):
        done = subprocess.run(
            [sys.executable, "-c", code, step], env=env, capture_output=True, text=True, timeout=60
        )
        assert (done.returncode, done.stdout) == (returncode, "passed after_send\n"), done.stderr


def test_triggered_stop_is_booked_and_its_twin_canceled(
    sim: SimServer, tmp_path: Path, closing: ExitStack
) -> None:
    """When the exchange closes a position by a stop or take-profit, the next tick books it."""
    fleet = make_fleet(
        tmp_path,
        sim,
        ["agent-1"],
        symbols=["SOLUSDT"],
        stop_loss_pct=0.0005,
        take_profit_pct=0.0005,
    )
    runner, ledger = in_process(fleet, "agent-1", Scripted([Action.SHORT]), closing)
    # The mark stands still until both protective orders rest: a moving one could cross the
    # stop (0.05 % away) between the entry's fill and the stop's placement, and the runner
    # would then rightly close at once instead (a slow machine made that happen).
    mark = sim.market.mark("SOLUSDT")
    sim.market.pin("SOLUSDT", mark)
    runner.tick()
    assert fleet.ledger_positions()["SOLUSDT"] < 0
    assert [t for t, _, _ in open_orders(fleet, "SOLUSDT")] == ["STOP_MARKET", "TAKE_PROFIT_MARKET"]
    sim.market.pin("SOLUSDT", mark * Decimal("1.01"))  # past the short's stop, away from its TP
    wait_for(lambda: not fleet.exchange_positions(), timeout=60, what="the stop to fire")
    runner.tick()
    assert fleet.ledger_positions() == {}
    assert open_orders(fleet, "SOLUSDT") == []
    assert ledger.unresolved_intents("agent-1") == []


def test_agents_in_turn_keep_ledger_equal_to_exchange(
    sim: SimServer, tmp_path: Path, closing: ExitStack
) -> None:
    """Three agents on one account: after every tick ledger == exchange, and limits hold."""
    ids = ["agent-1", "agent-2", "agent-3"]
    fleet = make_fleet(
        tmp_path, sim, ids, symbols=SIX, max_total_positions=3, params="{p_enter: 0.8, p_exit: 0.3}"
    )
    runners = [in_process(fleet, a, _random(fleet, a), closing)[0] for a in ids]

    def one_round() -> bool:
        for runner in runners:
            runner.tick()
            assert fleet.exchange_positions() == fleet.ledger_positions()
            assert len(fleet.exchange_positions()) <= 3
        return len(fleet.coids()) >= 20

    wait_for(one_round, timeout=60, what="20 orders from agents ticking in turn")
    most, shared = replay_max_positions(fleet)
    assert most <= 3 and shared == []


def _random(fleet: Fleet, agent_id: str) -> object:
    from aster_agents.agent.runner import _seed
    from aster_agents.strategies import get_strategy

    agent = load_fleet(fleet.config_dir).agent(agent_id)
    return get_strategy("random", agent.trading.params, seed=_seed(agent_id))


@pytest.mark.slow
def test_agent_processes_never_exceed_limits(sim: SimServer, tmp_path: Path) -> None:
    """Four agent processes wanting too much never exceed max_total_positions or share a symbol."""
    ids = [f"agent-{i}" for i in range(1, 5)]
    fleet = make_fleet(
        tmp_path,
        sim,
        ids,
        symbols=SIX,
        max_total_positions=3,
        params="{p_enter: 1.0, p_exit: 0.25}",
        scan_interval=0.3,
    )
    for agent_id in ids:
        fleet.start(agent_id)
    try:
        wait_for(lambda: len(fleet.coids()) >= 60, timeout=90, what="60 orders")
    finally:
        codes = fleet.stop_all()
    assert codes == dict.fromkeys(ids, 0), {a: fleet.stderr(a)[-2000:] for a in ids}
    most, shared = replay_max_positions(fleet)
    assert most <= 3, most
    assert shared == []
    assert fleet.exchange_positions() == fleet.ledger_positions()
    assert len(fleet.coids()) == len(set(fleet.coids()))


def _recovered(fleet: Fleet, agent_id: str) -> bool:
    with Ledger(fleet.state_dir) as ledger:
        pending = [
            i
            for i in ledger.unresolved_intents(agent_id)
            if i.kind != "protect" or i.state == "reserved"
        ]
    return not pending and fleet.exchange_positions() == fleet.ledger_positions()


@pytest.mark.slow
@pytest.mark.parametrize("point", FAILPOINTS)
def test_crash_at_each_step_then_restart(sim: SimServer, tmp_path: Path, point: str) -> None:
    """SIGKILL at each step of an entry, restart: no duplicate, no leak, ledger == exchange."""
    fleet = make_fleet(
        tmp_path, sim, ["agent-1"], symbols=["ETHUSDT"], params="{p_enter: 1.0, p_exit: 0.0}"
    )
    proc = fleet.start("agent-1", {"ASTER_AGENTS_FAILPOINT": point})
    assert proc.wait(60) == -signal.SIGKILL, fleet.stderr("agent-1")[-2000:]
    fleet.start("agent-1")
    try:
        wait_for(
            lambda: _recovered(fleet, "agent-1") and fleet.exchange_positions(),
            timeout=60,
            what="recovery after the crash",
        )
        wait_for(lambda: len(open_orders(fleet, "ETHUSDT")) == 2, timeout=30, what="protection")
    finally:
        assert fleet.stop_all() == {"agent-1": 0}
    coids = fleet.coids()
    assert len(coids) == len(set(coids)), "an intent was sent twice"
    entries = [c for c in coids if c.endswith("-open")]
    assert len(entries) == 1, entries
    with Ledger(fleet.state_dir) as ledger:
        assert [i for i in ledger.unresolved_intents("agent-1") if i.kind != "protect"] == []
    assert fleet.exchange_positions() == fleet.ledger_positions()


@pytest.mark.slow
def test_random_sigkills_lose_nothing(sim: SimServer, tmp_path: Path) -> None:
    """Agents SIGKILLed at random moments and restarted: no duplicates, no leaks, books agree."""
    import random

    ids = ["agent-1", "agent-2", "agent-3"]
    fleet = make_fleet(
        tmp_path,
        sim,
        ids,
        symbols=SIX,
        max_total_positions=4,
        params="{p_enter: 0.9, p_exit: 0.4}",
        scan_interval=0.2,
    )
    for agent_id in ids:
        fleet.start(agent_id)
    rng = random.Random(5)
    kills = 0
    try:
        while kills < 12:
            before = len(fleet.coids())
            wait_for(lambda: len(fleet.coids()) > before, timeout=30, what="some orders")  # noqa: B023
            victim = rng.choice(ids)
            fleet.kill(victim)
            kills += 1
            fleet.start(victim)
        wait_for(lambda: _all_ticking(fleet, ids), timeout=60, what="every agent ticking again")
        # an order that never arrived is written off at once after a noop spends its nonce,
        # else only after the exchange's 60 s nonce window + 5 s
        wait_for(lambda: _recovered_all(fleet, ids), timeout=90, what="recovery")
    finally:
        codes = fleet.stop_all()
    assert set(codes.values()) == {0}
    coids = fleet.coids()
    assert len(coids) == len(set(coids)), "an intent was sent twice"
    most, shared = replay_max_positions(fleet)
    assert most <= 4 and shared == []
    assert fleet.exchange_positions() == fleet.ledger_positions()
    with Ledger(fleet.state_dir) as ledger:
        leaked = [i for a in ids for i in ledger.unresolved_intents(a) if i.state == "reserved"]
    assert leaked == []


def _recovered_all(fleet: Fleet, ids: Sequence[str]) -> bool:
    return all(_recovered(fleet, a) for a in ids)


def _all_ticking(fleet: Fleet, ids: Sequence[str]) -> bool:
    with Ledger(fleet.state_dir) as ledger:
        rows = {r.agent_id: r for r in ledger.agent_rows()}
    return all(
        rows[a].heartbeat_pid == fleet.procs[a].pid and rows[a].ticks > 0 for a in ids if a in rows
    )


@pytest.mark.slow
def test_429s_pause_every_agent_and_never_provoke_a_ban(tmp_path: Path) -> None:
    """Agents over the exchange's weight limit get 429s, pause together, and never earn a 418."""
    from aster_agents.sim.limits import LimitConfig

    limits = LimitConfig(weight_per_window=120, weight_window_s=5.0)
    with SimServer(SimConfig(port=0, seed=7, speed=60.0, limits=limits)) as server:
        server.start()
        ids = ["agent-1", "agent-2", "agent-3"]
        fleet = make_fleet(
            tmp_path,
            server,
            ids,
            symbols=SIX,
            scan_interval=0.1,
            params="{p_enter: 0.5, p_exit: 0.5}",
        )
        for agent_id in ids:
            fleet.start(agent_id)
        try:
            wait_for(lambda: server.app.limiter.counts()[0] >= 3, timeout=90, what="three 429s")
            seen = len(fleet.coids())
            wait_for(lambda: len(fleet.coids()) > seen, timeout=60, what="trading after the pause")
        finally:
            codes = fleet.stop_all()
        limited, bans = server.app.limiter.counts()
    assert bans == 0, f"{limited} 429s led to {bans} bans"
    assert codes == dict.fromkeys(ids, 0)
