"""One agent process: the tick loop around the reservation protocol.

The runner owns no state of its own that matters after a crash: every decision that
must survive (reservations, sent orders, fills, positions) is in the ledger, written
*before* the network call that depends on it, and the exchange is the truth it is
reconciled against at start-up and on every tick.

Order of a new position::

    reserve (ledger) -> mark_sent -> POST order with newClientOrderId -> confirm/release
    -> book fills from userTrades by client order id -> protective STOP/TAKE_PROFIT orders

A crash between any two steps leaves an intent the next start resolves by asking the
exchange about its client order id. An intent whose order is not on the exchange is only
released once the order can no longer be accepted (``agent/inflight.py``): after the
exchange's nonce window (60 s + margin), or at once when a noop signed with the order's own
nonce (recorded by ``mark_sent``) was accepted. A request still in flight, held in the
network or left behind by a dead process, can never land after it was written off.

Closes the exchange makes itself (liquidation, ADL) are noticed when a protective order
vanishes, and every ``EXCHANGE_CHECK_EVERY`` ticks from ``positionRisk``; they are booked
to this agent and its orphaned protective orders cancelled. An agent flattened by the
operator (``aster-agent flatten``) stands down: it touches no order until enabled again.
"""

from __future__ import annotations

import bisect
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Final, TypeVar

from aster_agents.agent import inflight
from aster_agents.agent.reachability import Reachability
from aster_agents.agent.reconcile import FUNDING, book_exchange_close, book_funding
from aster_agents.agent.sizing import clamp_distance, entry_size, protective_prices, scaled_size_pct
from aster_agents.config.schema import AgentConfig, FleetConfig, NotifyConfig
from aster_agents.errors import (
    AsterAgentsError,
    AuthError,
    BadRequest,
    ConfigError,
    ExchangeError,
    LedgerError,
    OrderNotFound,
    OrderRejected,
    RateLimited,
    ReservationDenied,
    StateDirFull,
    TransientExchangeError,
    UnknownOutcome,
)
from aster_agents.exchange.base import Exchange, RequestLog
from aster_agents.fsutil import PRIVATE_UMASK, free_space, make_private_dir
from aster_agents.ledger import Intent, Ledger, LedgerPosition, MarketDataCache, facts
from aster_agents.ledger.rows import sleeve_equity
from aster_agents.logs import logger
from aster_agents.models import (
    INTERVAL_MS,
    ZERO,
    ExchangeInfo,
    Kline,
    MarginType,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    SymbolInfo,
    Turn,
    UserTrade,
    now_ms,
)
from aster_agents.portfolio.governance import Governor
from aster_agents.portfolio.trades import last_closed_trip
from aster_agents.strategies import (
    Action,
    MarketSnapshot,
    PositionView,
    RiskLimits,
    Signal,
    Strategy,
    attached,
)

KLINE_FLOOR: Final = 60
KLINE_LIMIT_MAX: Final = 499  # under 500 keeps the request at weight 2
SPEED_ENV: Final = "ASTER_AGENTS_MARKET_SPEED"  # simulator market-time multiplier (demo only)
FAILPOINT_ENV: Final = "ASTER_AGENTS_FAILPOINT"  # crash tests: SIGKILL ourselves at this step
FAILPOINTS: Final = ("after_reserve", "after_send", "after_confirm", "after_fills")
FUNDING_EVERY: Final = 10  # ticks between two reads of the funding income
BOOKED_KEPT: Final = 10_000  # trades remembered as booked (then forgotten, asked again)
EXCHANGE_CHECK_EVERY: Final = 5  # ticks between two positionRisk reads (weight 5)
LOCKSTEP: Final = "lockstep"  # ExchangeInfo.market_clock of a simulator stepping on turns
FLATTENED: Final = "flattened by operator"  # the disabled reason `flatten` sets
FULL_BACKOFF_MAX_S: Final = 60.0  # the longest wait between two tries on a full state dir
PROTECTIVE_TYPES: Final = (OrderType.STOP_MARKET, OrderType.TAKE_PROFIT_MARKET)
# The note on a protective intent: the trade history tells a stop from a take profit by it.
PROTECT_NOTES: Final = {
    OrderType.STOP_MARKET: "stop loss",
    OrderType.TAKE_PROFIT_MARKET: "take profit",
}


# Read once: the crash tests set it in the environment an agent (or flatten) process starts
# with, and ``os.environ.get`` on every step of every order cost ~3 us each.
_FAILPOINT: Final = os.environ.get(FAILPOINT_ENV)


def failpoint(name: str) -> None:
    """Die at once (SIGKILL, like a power cut) when ``$ASTER_AGENTS_FAILPOINT`` names this step.

    Used by the crash tests to stop an agent exactly between two steps of the protocol; the
    variable is read when the process imports this module (see ``_FAILPOINT``).
    """
    if name == _FAILPOINT:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class FullDisk:
    """Backoff while the state dir is full: nothing can be reserved, so nothing is opened, and
    the protective orders stay on the exchange untouched; one line per retry."""

    delay: float = 0.0

    def failed(self, exc: StateDirFull, interval: float) -> None:
        self.delay = min(FULL_BACKOFF_MAX_S, max(interval, self.delay * 2, 1.0))
        logger.error(
            "{}; not opening, protective orders stay; retrying in {:.0f}s", exc, self.delay
        )

    def cleared(self, state_dir: Path) -> None:
        if self.delay:
            self.delay = 0.0
            logger.warning(
                "state dir has room again: {}, {}; resuming", state_dir, free_space(state_dir)
            )


# the cache key, limit, freshness (ms) and candle length (ms) of a symbol's klines
_KlineRequest = tuple[str, int, int, int]


@dataclass
class TickReport:
    """What one tick did, for logs and tests."""

    opened: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class AgentRunner:
    """Runs one agent: ``start()`` once, then ``tick()`` every scan interval."""

    def __init__(
        self,
        fleet: FleetConfig,
        agent: AgentConfig,
        *,
        client: Exchange,
        ledger: Ledger,
        cache: MarketDataCache,
        strategy: Strategy,
        stop: threading.Event | None = None,
        market_speed: float = 1.0,
        meter: RequestMeter | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.fleet = fleet
        self.agent = agent
        self.client = client
        # the client's on_request hook feeds it; without one the tick log shows no network time
        self.meter = meter if meter is not None else RequestMeter()
        self.ledger = ledger
        self.cache = cache
        self.strategy = strategy
        self.stop = stop or threading.Event()
        self.market_speed = market_speed
        self.clock = clock  # market time (ms) for strategies and the kline cache (backtest)
        self.pid = os.getpid()
        self.info: ExchangeInfo | None = None
        # exchange order id -> our order, from answers that named our client order id
        self.known: dict[int, Order] = {}
        self._booked_trades: set[tuple[str, int]] = set()  # (symbol, trade id) seen booked
        self.distrusted = 0  # exchange answers refused as not matching their intent
        self.full = FullDisk()
        self.last_prices: dict[str, Decimal] = {}
        self.ticks = 0
        self.tick_count = 0
        self.governor = Governor(fleet, agent.id, ledger)
        # symbol -> (stop, take-profit) distances of the last entry, clamped into the config;
        # protection re-placed after a restart uses the configured (wider) ones
        self.protect_pcts: dict[str, tuple[float, float]] = {}
        # how long after sending an order the exchange does not know may be written off
        self.write_off_ms = inflight.write_off_ms(agent.exchange.base_url, None, os.environ)
        self.noop_resolve = inflight.noop_resolve(os.environ)
        # on a lockstep simulator: ticks are the simulator's turns, the clock is their time
        self.lockstep = False
        self.turn = Turn(0, 0)  # the last turn the simulator gave (0: none yet)
        self.turn_walls: list[int] = []  # when each turn began (wall ms), and its market time
        self.turn_marks: list[int] = []
        self._kline_requests: dict[tuple[str, int], _KlineRequest] = {}  # see _kline_request

    # ------------------------------------------------------------------ start-up

    def start(self) -> None:
        """Exchange info, position mode, margin type, capital, then resolve old intents."""
        self.info = self.client.exchange_info()
        self.write_off_ms = inflight.write_off_ms(
            self.agent.exchange.base_url, self.info.nonce_window_ms, os.environ
        )
        if self.info.market_clock == LOCKSTEP:
            self.lockstep, self.clock = True, self._turn_clock
            if not self.await_turn():  # start-up is a turn too, in the agents' order
                return
        trading = self.agent.trading
        missing = [s for s in trading.symbols if s not in self.info.symbols]
        if missing:
            raise ConfigError(
                f"{self._file()}: trading.symbols: {', '.join(missing)} not offered by "
                f"{self.agent.exchange.base_url}"
            )
        self._ensure_one_way_mode()
        for symbol in trading.symbols:
            self._ensure_cross_margin(symbol)
        self._ensure_capital()
        self.recover()
        if not self._stood_down():
            self.check_exchange_closes()
        self._snapshot()  # the kill switch's first NAV point: a loss in the first tick counts
        logger.info(
            "started: strategy {} on {} ({}), every {}s",
            trading.strategy,
            ",".join(trading.symbols),
            trading.interval,
            trading.scan_interval_seconds,
        )

    def _file(self) -> str:
        return str(self.fleet.files.get(self.agent.id, self.fleet.config_dir))

    def _ensure_one_way_mode(self) -> None:
        if not self.client.get_position_mode():
            return
        try:
            self.client.set_position_mode(False)
        except OrderRejected as exc:
            raise ConfigError(
                f"account {self.agent.exchange.user} is in hedge mode and cannot be switched to "
                f"one-way mode ({exc.msg}); close its positions or switch it in the web UI"
            ) from None
        logger.warning("switched account {} to one-way position mode", self.agent.exchange.user)

    def _ensure_cross_margin(self, symbol: str) -> None:
        """Ask for cross margin once per account and symbol; the ledger remembers the answer."""
        user = self.agent.exchange.user
        if facts.margin_type(self.ledger, user, symbol) == MarginType.CROSSED.value:
            return
        try:
            self.client.set_margin_type(symbol, MarginType.CROSSED)
        except (OrderRejected, TransientExchangeError) as exc:
            logger.warning("set margin type on {} failed: {}", symbol, exc)
            return
        facts.note_margin_type(self.ledger, user, symbol, MarginType.CROSSED.value)

    def note_exchange_equity(self) -> Decimal:
        """The account's equity on the exchange (its total margin balance) into the ledger,
        with the account's limits, stamped with the exchange's time; returns it. The books'
        check (``portfolio``, ``report``) compares the sleeves and unallocated cash with it."""
        exchange_ms = self.client.server_time()
        equity = self.client.account().total_margin_balance
        limits = self.fleet.portfolio.limits
        self.ledger.set_account_limits(
            self.agent.exchange.user,
            max_total_positions=limits.max_total_positions,
            max_gross_leverage=Decimal(str(limits.max_gross_leverage)),
            equity=equity,
            equity_time_ms=exchange_ms,  # opens the unallocated sleeve the first time
        )
        return equity

    def _ensure_capital(self) -> None:
        equity = self.note_exchange_equity()
        row = self.ledger.agent(self.agent.id)
        if row is not None and row.capital == 0 and row.units == 0:
            capital = (equity * Decimal(str(self.agent.allocation.capital_pct))).quantize(
                Decimal("0.01")
            )
            books = self.ledger.account_books(self.agent.exchange.user)
            if books is not None and books.unallocated is not None:
                capital = max(ZERO, min(capital, books.unallocated))  # never below zero cash
            self.ledger.allocate(self.agent.id, capital)
            logger.info(
                "allocated {} USDT ({:.0%} of {})",
                capital,
                self.agent.allocation.capital_pct,
                equity,
            )

    # ------------------------------------------------------------------ recovery

    def recover(self) -> None:
        """Resolve this agent's unfinished intents against the exchange."""
        for intent in self.ledger.unresolved_intents(self.agent.id):
            if self.stop.is_set():
                return
            self._resolve(intent)

    def _resolve(self, intent: Intent, nonce_spent: bool = False) -> None:
        """Ask the exchange about one intent's order and settle the ledger with the answer."""
        try:
            order = self.client.query_order(intent.symbol, client_order_id=intent.client_order_id)
        except OrderNotFound:
            self._not_on_exchange(intent, nonce_spent)
            return
        fired = intent.kind == "protect" and order.executed_qty > 0
        if fired:
            # A stop or take-profit fired: its twin must go before the position is freed.
            self._cancel_protection(intent.symbol, skip=intent.client_order_id)
        self._settle(intent, order)
        if fired and self._position(intent.symbol) is None:
            logger.info(
                "closed {} by its {}{}",
                intent.symbol,
                intent.reason or "protective order",
                _Later(lambda: self._trip_pnl(intent.symbol)),
            )

    def _settle(self, intent: Intent, order: Order) -> None:
        """Record the order, confirm a reserved intent, book its fills, finish it when final."""
        coid = intent.client_order_id
        if not self._matches(intent, order):
            return
        self.known[order.order_id] = order
        if intent.state == "reserved":
            self.ledger.confirm(coid)
        booked = (
            self._sync_fills(intent.symbol, intent.created_ms, coid) if order.executed_qty else ZERO
        )
        self._after_order(intent, order, booked)

    def _not_on_exchange(self, intent: Intent, nonce_spent: bool = False) -> None:
        """Write off an intent the exchange does not know, once its order can never land."""
        coid = intent.client_order_id
        left_ms = inflight.sent_ms(intent) + self.write_off_ms - now_ms()
        if intent.sent and not nonce_spent and left_ms > 0:
            if self._spend_nonce(intent):
                self._resolve(intent, nonce_spent=True)  # it may have landed just before
            else:
                logger.info(
                    "intent {} not on the exchange yet; it can still land, deciding in {:.0f}s",
                    coid,
                    left_ms / 1000,
                )
            return
        if nonce_spent:
            logger.info("intent {}: a noop spent its nonce and the order is unknown", coid)
        if intent.state in ("reserved", "confirmed"):
            self.ledger.release(intent.client_order_id, "not on the exchange")
        else:
            self.ledger.finish_intent(intent.client_order_id, "rejected")

    def _spend_nonce(self, intent: Intent) -> bool:
        """True once a noop signed with the intent's nonce was accepted: from then on the
        exchange refuses any request carrying that nonce, the intent's order included."""
        if not self.noop_resolve or intent.nonce is None:
            return False
        try:
            return self.client.noop(intent.nonce)
        except (OrderRejected, TransientExchangeError, BadRequest) as exc:
            logger.warning("noop for intent {} failed: {}", intent.client_order_id, exc)
            return False

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        """Tick until ``stop`` is set; a failing tick is logged and the loop goes on.

        On a lockstep simulator each tick waits for the simulator's turn instead of the
        scan interval's wall time (the simulator counts the interval in market time).
        """
        interval = self.agent.trading.scan_interval_seconds
        last_skips: tuple[str, ...] = ()
        while not self.stop.is_set():
            if self.lockstep and not self.await_turn():
                break
            started = time.monotonic()
            report = self.timed_tick()
            skips = tuple(report.skipped) if report is not None and not report.opened else ()
            if skips and skips != last_skips:  # why it did not trade, once per change
                logger.info("{} {}", NO_TRADE, "; ".join(skips))
            last_skips = skips
            wait = self.full.delay if self.full.delay else interval
            if not self.lockstep:
                self.stop.wait(max(0.0, wait - (time.monotonic() - started)))
        logger.info("stopped")

    def await_turn(self) -> bool:
        """End this agent's lockstep turn and wait for the next; False once stopped."""
        scan_ms = int(self.agent.trading.scan_interval_seconds * 1000)
        while not self.stop.is_set():
            try:
                turn = self.client.lockstep_turn(self.agent.id, scan_ms, self.turn.number)
            except BadRequest as exc:  # not an agent of this replay: a config mismatch
                raise ConfigError(f"{self.agent.exchange.base_url}: {exc}") from None
            except ExchangeError as exc:
                logger.warning("waiting for the lockstep turn: {}; asking again in 1s", exc)
                self.stop.wait(1.0)
                continue
            if turn is not None:
                self.turn = turn
                self.turn_walls.append(now_ms())
                self.turn_marks.append(turn.time_ms)
                return True
        return False

    def _turn_clock(self) -> int:
        return self.turn.time_ms

    def _market_ms(self, wall_ms: int) -> int:
        """A ledger time (wall clock) as the market time of the lockstep turn begun before it,
        where trade history queries start. Without turns it stays: a replay runs weeks ahead
        of the wall clock, so such a query reads from the replay's start (1,000 trades)."""
        i = bisect.bisect_left(self.turn_walls, wall_ms) - 1
        return self.turn_marks[i] if i >= 0 else wall_ms

    def timed_tick(self) -> TickReport | None:
        """:meth:`safe_tick`, followed by a debug line of its wall, network, own and CPU time
        (the live loop's). Apart so that a backtest, which calls ``safe_tick`` and writes no
        log, spares the two CPU clock reads (a system call each) on every agent-tick."""
        started, cpu = time.perf_counter(), time.process_time()
        client_wall, client_cpu = self.meter.wall_ms, self.meter.cpu_ms
        try:
            return self.safe_tick()
        finally:
            total = (time.perf_counter() - started) * 1000
            network = self.meter.wall_ms - client_wall
            own_cpu = (time.process_time() - cpu) * 1000 - (self.meter.cpu_ms - client_cpu)
            logger.debug(
                "tick {:.2f}ms, network {:.2f}ms, own {:.2f}ms, cpu {:.2f}ms",
                total,
                network,
                total - network,
                own_cpu,
            )

    def safe_tick(self) -> TickReport | None:
        """:meth:`tick`, its failure logged and noted in the heartbeat (None then); only an
        auth or config error goes up."""
        try:
            report = self.tick()
            self.full.cleared(self.ledger.state_dir)
            return report
        except (AuthError, ConfigError):
            raise
        except StateDirFull as exc:
            self.full.failed(exc, self.agent.trading.scan_interval_seconds)
        except RateLimited as exc:
            self._tick_failed(
                f"rate limited until {time.strftime('%H:%M:%S', time.localtime(exc.retry_at))}"
            )
        except AsterAgentsError as exc:
            self._tick_failed(str(exc))
        except Exception as exc:
            logger.exception("tick failed")
            self._tick_failed(f"{type(exc).__name__}: {exc}")
        return None

    def _tick_failed(self, message: str) -> None:
        logger.error("tick failed: {}", message)
        self._note_error(message)

    def _note_error(self, message: str) -> None:
        try:
            self.ledger.heartbeat(self.agent.id, self.pid, error=message[:500])
        except StateDirFull as exc:
            self.full.failed(exc, self.agent.trading.scan_interval_seconds)
        except LedgerError:
            pass  # the ledger is unreachable (a database gone): said above; the next tick retries

    def _stood_down(self) -> bool:
        """True while the operator's flatten holds this agent: it must not race the closes."""
        row = self.ledger.agent(self.agent.id)
        return row is not None and row.state == "disabled" and row.state_reason == FLATTENED

    def tick(self) -> TickReport:
        report = TickReport()
        self.ledger.heartbeat(self.agent.id, self.pid, tick=True)
        self.tick_count += 1
        if self._stood_down():
            report.skipped.append("flattened by the operator: standing down")
            self._snapshot()
            return report
        if self.tick_count % EXCHANGE_CHECK_EVERY == 0:
            self.check_exchange_closes()
        unresolved = self.ledger.unresolved_intents(self.agent.id)
        # resting stops are checked per symbol below
        stale = [i for i in unresolved if i.kind != "protect" or i.state == "reserved"]
        for intent in stale:
            self._resolve(intent)
        if stale:  # else nothing was written since: the same list
            unresolved = self.ledger.unresolved_intents(self.agent.id)
        in_flight = {i.symbol for i in unresolved if i.kind != "protect"}
        for symbol in self.agent.trading.symbols:
            if self.stop.is_set():
                break
            if symbol in in_flight:  # an order whose fate is open: no second one beside it
                report.skipped.append(f"{symbol}: an order is still in flight")
                continue
            try:
                self._tick_symbol(symbol, report)
            except OrderRejected as exc:  # skip this symbol this tick; the books still update
                logger.warning("{}: order refused: {}", symbol, exc)
                report.errors.append(f"{symbol}: {exc}")
        self._snapshot()
        self.governor.after_tick(self.clock())  # kill switches, automatic rebalance
        return report

    def _tick_symbol(self, symbol: str, report: TickReport) -> None:
        klines = self.market_data(symbol)
        if not klines:
            report.skipped.append(f"{symbol}: no market data")
            return
        price = klines[-1].close
        self.last_prices[symbol] = price
        position = self._position(symbol)
        if position is not None:
            self._check_protection(symbol, position)
            position = self._position(symbol)
        view = _view(position)
        snapshot = MarketSnapshot(symbol, self.agent.trading.interval, klines, price, self.clock())
        signal = self.strategy.decide(snapshot, view)
        if signal.confidence < self.agent.trading.min_confidence or signal.action is Action.HOLD:
            return
        if position is not None:
            if _is_exit(signal, position.qty):
                self._close(symbol, position, signal, report)
        elif signal.action in (Action.LONG, Action.SHORT):
            side = Side.BUY if signal.action is Action.LONG else Side.SELL
            self._open(symbol, side, price, signal, report)

    # ------------------------------------------------------------------ market data

    def market_data(self, symbol: str) -> tuple[Kline, ...]:
        """Closed klines for the agent's interval, shared with every agent on the host."""
        interval = self.agent.trading.interval
        key, limit, ttl_ms, step = self._kline_request(symbol)
        now = self.clock()
        # never past the forming candle's close: the next tick after it sees the closed one
        fresh_until = min(now + ttl_ms, (now // step + 1) * step)
        klines = self.cache.klines(
            key, fresh_until, lambda: self.client.klines(symbol, interval, limit=limit), now_ms=now
        )
        return tuple(klines[:-1])  # the last one is the candle still forming

    def _kline_request(self, symbol: str) -> _KlineRequest:
        """The cache key, limit, freshness and candle length of ``symbol``'s klines: the same
        every tick, so made once (per ``min_klines``, which a strategy sets when built)."""
        min_klines = self.strategy.min_klines
        made = self._kline_requests.get((symbol, min_klines))
        if made is None:
            interval = self.agent.trading.interval
            limit = min(KLINE_LIMIT_MAX, max(KLINE_FLOOR, min_klines + 2))
            ttl_ms = max(1000, int(INTERVAL_MS[interval] / self.market_speed / 4))
            key = f"klines:{self.agent.exchange.base_url}:{symbol}:{interval}:{limit}"
            made = self._kline_requests[symbol, min_klines] = (
                key,
                limit,
                ttl_ms,
                INTERVAL_MS[interval],
            )
        return made

    # ------------------------------------------------------------------ entries

    def _symbol(self, symbol: str) -> SymbolInfo:
        assert self.info is not None, "start() loads exchange info"
        return self.info.symbols[symbol]

    def _open(
        self, symbol: str, side: Side, price: Decimal, signal: Signal, report: TickReport
    ) -> None:
        trading = self.agent.trading
        row = self.ledger.agent(self.agent.id)
        if row is not None and row.state == "disabled":  # quietly: the ledger would refuse
            report.skipped.append(f"{symbol}: disabled, opens nothing (agents enable)")
            return
        capital = row.capital if row is not None else ZERO
        size = entry_size(
            capital,
            scaled_size_pct(trading.position_size_pct, signal.size_pct),
            trading.leverage,
            price,
            self._symbol(symbol).filters,
        )
        if size.skip_reason is not None:
            logger.info("skip {} {}: {}", side.value, symbol, size.skip_reason)
            report.skipped.append(f"{symbol}: {size.skip_reason}")
            return
        try:
            intent = self.ledger.reserve(
                self.agent.id,
                symbol,
                side,
                margin=size.margin,
                notional=size.notional,
                kind="open",
                note=signal.reason,
            )
        except ReservationDenied as exc:
            logger.info("skip {} {}: {}", side.value, symbol, exc.reason)
            report.skipped.append(f"{symbol}: {exc.reason}")
            return
        try:
            self.client.set_leverage(symbol, trading.leverage)
        except (OrderRejected, TransientExchangeError) as exc:
            self.ledger.release(intent.client_order_id, f"set leverage failed: {exc}")
            raise
        request = OrderRequest(
            symbol, side, OrderType.MARKET, intent.client_order_id, quantity=size.qty
        )
        order = self._send(intent, request)
        if order is None:
            return
        logger.info(
            "opened {} {} {} @~{} ({}; confidence {:.2f})",
            side.value,
            size.qty,
            symbol,
            price,
            signal.reason,
            signal.confidence,
        )
        report.opened.append(symbol)
        self.protect_pcts[symbol] = (
            clamp_distance(trading.stop_loss_pct, signal.stop_loss_pct),
            clamp_distance(trading.take_profit_pct, signal.take_profit_pct),
        )
        verified = self._verified(intent, order)
        if verified is None:
            return
        booked = self._sync_fills(symbol, intent.created_ms, intent.client_order_id)
        failpoint("after_fills")
        self._after_order(intent, verified, booked)
        position = self._position(symbol)
        if position is not None:
            self._protect(symbol, position)

    def _send(self, intent: Intent, request: OrderRequest) -> Order | None:
        """Send an order for a reserved intent; None when it was refused or its fate is open."""
        coid = intent.client_order_id
        failpoint("after_reserve")
        nonce = self.client.next_nonce()
        if not self.ledger.mark_sent(coid, nonce=nonce):
            logger.warning("intent {} expired before it was sent; not sending", coid)
            return None
        try:
            order = self.client.new_order(request, nonce=nonce)
        except OrderRejected as exc:
            self.ledger.release(coid, f"rejected: {exc.msg}"[:200])
            logger.warning("order {} rejected: {}", coid, exc)
            raise
        except (UnknownOutcome, TransientExchangeError) as exc:
            logger.warning(
                "order {} outcome unknown ({}); resolving by client order id later", coid, exc
            )
            return None
        if not self._matches(intent, order):
            return None  # resolved by its client order id on the next tick
        failpoint("after_send")
        if not self.ledger.confirm(coid):
            logger.warning("intent {} expired before confirm; the order stands and is booked", coid)
        failpoint("after_confirm")
        return order

    def _matches(self, intent: Intent, order: Order) -> bool:
        """True when an answer about ``intent``'s order names its client order id and symbol."""
        if (order.client_order_id, order.symbol) == (intent.client_order_id, intent.symbol):
            return True
        self._distrust(
            f"answer about {intent.client_order_id} ({intent.symbol}) names order "
            f"{order.order_id} {order.client_order_id!r} ({order.symbol})"
        )
        return False

    def _verified(self, intent: Intent, answer: Order) -> Order | None:
        """The order of ``intent`` as the exchange knows it by client order id.

        A new-order answer's ``orderId`` is what the fills are matched by, so it is checked
        against a query by our own client order id before any fill is booked with it.
        """
        try:
            order = self.client.query_order(intent.symbol, client_order_id=intent.client_order_id)
        except (OrderNotFound, TransientExchangeError) as exc:
            logger.warning("order {} not confirmed ({}); resolving it later", answer.order_id, exc)
            return None
        if not self._matches(intent, order):
            return None
        if order.order_id != answer.order_id:
            self._distrust(
                f"new-order answer for {intent.client_order_id} named order {answer.order_id}; "
                f"the exchange knows it as {order.order_id}"
            )
        self.known[order.order_id] = order
        return order

    def _distrust(self, what: str) -> None:
        """An answer that does not match its intent: logged, counted, left to reconcile."""
        self.distrusted += 1
        logger.warning("distrusting the exchange: {}; left to reconcile", what)
        facts.note_distrusted(self.ledger, self.agent.id, what)

    def _after_order(self, intent: Intent, order: Order, booked: Decimal) -> None:
        """Finish the intent once its order is final and every fill of it (``booked``) is
        booked."""
        if order.status.is_open:
            return
        if order.executed_qty == booked:
            self.ledger.finish_intent(intent.client_order_id, _final_state(order.status))

    # ------------------------------------------------------------------ exits

    def _close(
        self, symbol: str, position: LedgerPosition, signal: Signal, report: TickReport
    ) -> None:
        self._cancel_protection(symbol)
        side = Side.SELL if position.qty > 0 else Side.BUY
        try:
            intent = self.ledger.reserve(
                self.agent.id,
                symbol,
                side,
                margin=ZERO,
                notional=ZERO,
                kind="close",
                note=signal.reason,
            )
        except ReservationDenied as exc:
            report.skipped.append(f"{symbol}: {exc.reason}")
            return
        request = OrderRequest(
            symbol,
            side,
            OrderType.MARKET,
            intent.client_order_id,
            quantity=abs(position.qty),
            reduce_only=True,
        )
        order = self._send(intent, request)
        if order is None:
            return
        report.closed.append(symbol)
        verified = self._verified(intent, order)
        if verified is not None:
            booked = self._sync_fills(symbol, intent.created_ms, intent.client_order_id)
            self._after_order(intent, verified, booked)
        logger.info(
            "closed {} {} ({}; confidence {:.2f}){}",
            symbol,
            position.qty,
            signal.reason,
            signal.confidence,
            _Later(lambda: self._trip_pnl(symbol)),
        )

    def _trip_pnl(self, symbol: str) -> str:
        """``; P&L +1.23 USDT (realized ..., fees ..., funding ...)`` of the trip that just
        closed; nothing while the position is not flat in the ledger (fills still to book)."""
        if self._position(symbol) is not None:
            return ""
        trip = last_closed_trip(self.ledger, self.agent.id, symbol)
        if trip is None:
            return ""
        pnl, realized, fees, funding = (
            v.normalize() for v in (trip.pnl, trip.realized_pnl, trip.fees, trip.funding)
        )
        return f"; P&L {pnl:+f} USDT (realized {realized:+f}, fees {fees:f}, funding {funding:+f})"

    # ------------------------------------------------------------------ protection

    def _protective(self, symbol: str) -> list[Intent]:
        return [
            i
            for i in self.ledger.unresolved_intents(self.agent.id)
            if i.symbol == symbol and i.kind == "protect"
        ]

    def _check_protection(self, symbol: str, position: LedgerPosition) -> None:
        """Settle stops that fired or vanished, then put back whichever protection is missing."""
        live = {o.client_order_id: o for o in self.client.open_orders(symbol)}
        vanished = False
        protective = self._protective(symbol)
        for intent in protective:
            if intent.client_order_id not in live and intent.state != "reserved":
                self._resolve(intent)
                vanished = True
        if vanished:  # fired, or cancelled by a liquidation: did the exchange close us?
            self._book_exchange_closes(symbol, position.opened_ms)
            protective = self._protective(symbol)  # else nothing was written: the same
        position_now = self._position(symbol)
        if position_now is None:
            return
        ours = {i.client_order_id for i in protective}
        have = {o.type for coid, o in live.items() if coid in ours}
        missing = [t for t in PROTECTIVE_TYPES if t not in have]
        if missing:
            self._protect(symbol, position_now, missing)

    def _protect(
        self,
        symbol: str,
        position: LedgerPosition,
        types: tuple[OrderType, ...] | list[OrderType] = (),
    ) -> None:
        """A STOP_MARKET and a TAKE_PROFIT_MARKET that close the position on the exchange."""
        types = types or PROTECTIVE_TYPES
        trading = self.agent.trading
        entry_side = Side.BUY if position.qty > 0 else Side.SELL
        exit_side = entry_side.opposite
        stop_pct, take_pct = self.protect_pcts.get(
            symbol, (trading.stop_loss_pct, trading.take_profit_pct)
        )
        stop, take = protective_prices(
            entry_side,
            position.entry_price,
            stop_pct,
            take_pct,
            self._symbol(symbol).filters,
        )
        prices = {OrderType.STOP_MARKET: stop, OrderType.TAKE_PROFIT_MARKET: take}
        for order_type in types:
            price = prices[order_type]
            intent = self.ledger.reserve(
                self.agent.id,
                symbol,
                exit_side,
                margin=ZERO,
                notional=ZERO,
                kind="protect",
                note=PROTECT_NOTES[order_type],
            )
            request = OrderRequest(
                symbol,
                exit_side,
                order_type,
                intent.client_order_id,
                stop_price=price,
                close_position=True,
                working_type="MARK_PRICE",
            )
            try:
                self._send(intent, request)
            except OrderRejected as exc:
                if exc.code == -2021 and order_type is OrderType.STOP_MARKET:
                    logger.warning("{} already past its stop {}: closing now", symbol, stop)
                    self._close(
                        symbol,
                        position,
                        Signal(Action.CLOSE, 1.0, "stop already crossed"),
                        TickReport(),
                    )
                    return
                logger.warning("protective {} on {} refused: {}", order_type.value, symbol, exc)

    def _cancel_protection(self, symbol: str, skip: str | None = None) -> None:
        """Cancel this agent's protective orders on ``symbol`` before the position goes away."""
        for intent in self._protective(symbol):
            coid = intent.client_order_id
            if coid == skip:
                continue
            if intent.state == "reserved" and not intent.sent:
                self.ledger.release(coid, "position closing")
                continue
            try:
                order = self.client.cancel_order(symbol, client_order_id=coid)
            except OrderRejected:  # already filled, canceled or never placed: ask what it is
                try:
                    order = self.client.query_order(symbol, client_order_id=coid)
                except OrderNotFound:
                    self._not_on_exchange(intent)
                    continue
            self._settle(intent, order)

    # ------------------------------------------------------------------ fills

    def _sync_fills(self, symbol: str, since_ms: int, client_order_id: str) -> Decimal:
        """Book every trade of our orders on ``symbol`` since ``since_ms`` (idempotent);
        returns the quantity of ``client_order_id`` booked so far.

        A trade is booked only when it is of ``symbol``, of an order known by our client order
        id, on that order's side, and within the order's ``executedQty``; anything else is
        distrusted. A trade this runner has seen booked is not looked up again: a booked trade
        stays booked (fills are never deleted), and a protective order's window reaches back
        to the position's opening, so the same trades come back every time.
        """
        seen: dict[str, Decimal] = {}
        booked = self._booked_trades
        for trade in self.client.user_trades(
            symbol, start_time=max(0, self._market_ms(since_ms) - 1000), limit=1000
        ):
            key = (trade.symbol, trade.id)
            if key in booked:
                continue
            order = self.known.get(trade.order_id)
            if order is None:
                continue
            if facts.trade_booked(self.ledger, self.agent.id, trade.id):
                self._seen_booked(key)
                continue
            coid = order.client_order_id
            if coid not in seen:
                seen[coid] = facts.booked_qty(self.ledger, self.agent.id, coid)
            problem = _fill_problem(symbol, order, trade, seen[coid])
            if problem is not None:
                self._distrust(f"trade {trade.id} of order {order.order_id}: {problem}")
                continue
            self.ledger.book_fill(
                coid,
                trade_id=trade.id,
                symbol=symbol,
                side=trade.side,
                qty=trade.qty,
                price=trade.price,
                realized_pnl=trade.realized_pnl,
                commission=trade.commission,
                time_ms=trade.time,
            )
            self._seen_booked(key)
            seen[coid] += trade.qty
        if client_order_id in seen:
            return seen[client_order_id]
        return facts.booked_qty(self.ledger, self.agent.id, client_order_id)

    def _seen_booked(self, key: tuple[str, int]) -> None:
        if len(self._booked_trades) >= BOOKED_KEPT:
            self._booked_trades.clear()  # a bound, not a correctness matter: asked again
        self._booked_trades.add(key)

    # ------------------------------------------------------------------ exchange-made closes

    def check_exchange_closes(self) -> None:
        """Book liquidations and ADL of this agent's positions that the exchange shows."""
        held = self.ledger.positions(agent_id=self.agent.id)
        if not held:
            return
        exchange: dict[str, Decimal] = {}
        for p in self.client.position_risk():
            exchange[p.symbol] = exchange.get(p.symbol, ZERO) + p.position_amt
        books: dict[str, Decimal] = {}
        for mine in self.ledger.positions(user=self.agent.exchange.user):
            books[mine.symbol] = books.get(mine.symbol, ZERO) + mine.qty
        for position in held:
            if exchange.get(position.symbol, ZERO) != books.get(position.symbol, ZERO):
                self._book_exchange_closes(position.symbol, position.opened_ms)

    def _book_exchange_closes(self, symbol: str, since_ms: int) -> None:
        """Book the trades of liquidation/ADL orders on ``symbol``; if that closed our
        position, cancel its now-orphaned protective orders."""
        user = self.agent.exchange.user
        coids = {order_id: o.client_order_id for order_id, o in self.known.items()}
        booked = self.ledger.booked_trades(user, symbol)
        start = max(0, self._market_ms(since_ms) - 1000)
        for trade in self.client.user_trades(symbol, start_time=start, limit=1000):
            if trade.id in booked or trade.symbol != symbol:  # another symbol's: not ours here
                continue
            coid = coids.get(trade.order_id)
            if coid is None:
                coid = self.client.query_order(symbol, order_id=trade.order_id).client_order_id
                coids[trade.order_id] = coid
            if book_exchange_close(self.ledger, user, trade, coid) == self.agent.id:
                logger.warning(
                    "the exchange closed {} {} of {} ({}): realized {}, fee {}",
                    trade.side.value,
                    trade.qty,
                    symbol,
                    coid,
                    trade.realized_pnl,
                    trade.commission,
                )
        if self._position(symbol) is None:
            self._cancel_protection(symbol)
            self.protect_pcts.pop(symbol, None)

    def _position(self, symbol: str) -> LedgerPosition | None:
        for position in self.ledger.positions(agent_id=self.agent.id):
            if position.symbol == symbol:
                return position
        return None

    # ------------------------------------------------------------------ equity

    def _snapshot(self) -> None:
        """Sleeve equity at the exchange's mark prices (one premiumIndex per held symbol),
        stamped with the runner's clock: the wall clock live, market time in a backtest or a
        lockstep replay (so the governor's drawdowns, the rebalance's lookback and a backtest's
        report see the recording's dates)."""
        row = self.ledger.agent(self.agent.id)
        if row is None:
            return
        self._book_funding()
        positions = self.ledger.positions(agent_id=self.agent.id)
        marks = {p.symbol: self.client.premium_index(p.symbol).mark_price for p in positions}
        row = self.ledger.agent(self.agent.id) or row  # funding booked just now included
        equity = sleeve_equity(row, positions, marks).quantize(Decimal("0.00000001"))
        self.ledger.snapshot_with_marks(
            self.agent.id, equity, marks, user=self.agent.exchange.user, time_ms=self.clock()
        )

    def _book_funding(self) -> None:
        """Every FUNDING_EVERY ticks: book the account's new FUNDING_FEE income (any agent's
        holding; each tranId once across agents)."""
        self.ticks += 1
        if self.ticks % FUNDING_EVERY != 1:
            return
        user = self.agent.exchange.user
        books = self.ledger.account_books(user)
        opened = books.opened_ms if books is not None else None
        since = self.ledger.income_since(user, FUNDING) or (opened or 0)
        incomes = self.client.income(income_type=FUNDING, start_time=since, limit=1000)
        book_funding(self.ledger, user, incomes, opened)


# ---------------------------------------------------------------------- helpers


class _Later:
    """A log argument made only when the line is written: a closed trip's P&L reads the
    agent's trade history, which nothing needs while logging is off (``backtest``)."""

    def __init__(self, make: Callable[[], str]) -> None:
        self._make = make

    def __format__(self, spec: str) -> str:
        return format(self._make(), spec)


def _fill_problem(symbol: str, order: Order, trade: UserTrade, booked: Decimal) -> str | None:
    """Why ``trade`` cannot be a fill of ``order`` (already ``booked``), or None."""
    if trade.symbol != symbol or order.symbol != symbol:
        return f"a trade of {trade.symbol} in the answer for {symbol}"
    if trade.side is not order.side:
        return f"a {trade.side.value} trade of a {order.side.value} order"
    if booked + trade.qty > order.executed_qty:
        return f"{booked} + {trade.qty} would pass the order's executedQty {order.executed_qty}"
    return None


def _final_state(status: OrderStatus) -> str:
    return {
        OrderStatus.FILLED: "filled",
        OrderStatus.CANCELED: "canceled",
        OrderStatus.EXPIRED: "canceled",
        OrderStatus.REJECTED: "rejected",
    }.get(status, "canceled")


_FLAT: Final = PositionView(ZERO, ZERO, None)  # immutable: one for every flat tick


def _view(position: LedgerPosition | None) -> PositionView:
    if position is None:
        return _FLAT
    return PositionView(position.qty, position.entry_price, position.opened_ms)


def _is_exit(signal: Signal, qty: Decimal) -> bool:
    if signal.action is Action.CLOSE:
        return True
    return (signal.action is Action.LONG and qty < 0) or (signal.action is Action.SHORT and qty > 0)


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop``; the loop finishes its current step and returns.

    The handler only sets flags. Logging from it would re-enter loguru's handler lock when the
    signal interrupts the main thread inside a log call (loguru then drops the record with a
    "Logging error" and a traceback on stderr), so a thread says which signal arrived.
    """
    received: list[int] = []
    wake = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()
        wake.set()

    def say() -> None:
        wake.wait()
        if received:
            name = signal.Signals(received[0]).name
            logger.info("received {}, stopping after the current step", name)

    teller = threading.Thread(target=say, name="signal-teller", daemon=True)
    teller.start()
    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        wake.set()
        teller.join(timeout=5)


def unreachable_s(fleet: FleetConfig) -> float:
    """Seconds without an answer before ``exchange_unreachable`` (notify.unreachable_minutes)."""
    return 60.0 * (fleet.portfolio.notify or NotifyConfig()).unreachable_minutes


def market_speed() -> float:
    try:
        return max(1e-6, float(os.environ.get(SPEED_ENV, "1")))
    except ValueError:
        return 1.0


def run_agent(
    fleet: FleetConfig,
    agent_id: str,
    state_dir: Path,
    *,
    log_json: bool = False,
    stop: threading.Event | None = None,
) -> int:
    """The whole life of ``aster-agent run``: lock, key, ledger, client, start, loop."""
    from aster_agents.agent.clients import make_client
    from aster_agents.config.keys import loose_permissions, resolve_signer
    from aster_agents.ledger import AgentLock, SharedBudget
    from aster_agents.logs import setup_logging
    from aster_agents.strategies import get_strategy

    agent = fleet.agent(agent_id)
    os.umask(PRIVATE_UMASK)  # the ledger, logs and caches are the fleet's trading history
    make_private_dir(state_dir)
    with AgentLock(state_dir, agent.id):
        setup_logging(agent.id, state_dir, json_lines=log_json)
        signer = resolve_signer(fleet, agent)
        if agent.exchange.signer_keystore is not None:
            keystore = fleet.resolve_path(agent.exchange.signer_keystore)
            if loose_permissions(keystore):
                logger.warning("keystore {} is readable by group or others; chmod 600 it", keystore)
        strategy = get_strategy(agent.trading.strategy, agent.trading.params, seed=_seed(agent.id))
        stop = stop or threading.Event()
        with stop_on_signals(stop), ExitStack() as books:
            opened = _while_full(
                stop, lambda: _open_books(books, state_dir, agent, fleet.ledger_url)
            )
            if opened is None:
                return 0
            ledger, slot = opened
            budget = books.enter_context(
                closing(
                    SharedBudget(
                        state_dir,
                        user=agent.exchange.user,
                        agent_id=agent.id,
                        url=fleet.ledger_url,
                        group=fleet.portfolio.rate_group,
                    )
                )
            )

            reach = Reachability(ledger, agent.id, agent.exchange.base_url, unreachable_s(fleet))

            def on_request(entry: RequestLog) -> None:
                log_request(entry)
                budget.record(entry)  # counted for the exporter with the next request
                reach(entry)  # writes only when the exchange stops or starts answering

            meter = RequestMeter(on_request)
            client = make_client(
                fleet,
                agent,
                slot=slot,
                budget=budget,
                signer=signer,
                on_request=meter,
                timeout=5.0,
            )
            home = state_dir / "agents" / agent.id  # what a strategy keeps across restarts
            with client, attached(strategy, stop, risk_limits(agent), home):
                runner = AgentRunner(
                    fleet,
                    agent,
                    client=client,
                    ledger=ledger,
                    cache=MarketDataCache(state_dir),
                    strategy=strategy,
                    stop=stop,
                    market_speed=market_speed(),
                    meter=meter,
                )
                _start_with_retries(runner)
                runner.run()
            _record_clean_stop(ledger, agent.id)
    return 0


def _record_clean_stop(ledger: Ledger, agent_id: str) -> None:
    """Say in the heartbeat row that this run ended normally (status on another host shows
    STOPPED, where a crash stays a heartbeat going stale); a ledger gone now is only logged."""
    try:
        ledger.heartbeat_stopped(agent_id, os.getpid())
    except LedgerError as exc:
        logger.warning("could not record the clean stop in the ledger: {}", exc)


T = TypeVar("T")


def _while_full(stop: threading.Event, step: Callable[[], T]) -> T | None:
    """``step()``, tried again with backoff while the state dir is full; None once stopped."""
    full = FullDisk()
    while not stop.is_set():
        try:
            return step()
        except StateDirFull as exc:
            full.failed(exc, 1.0)
            stop.wait(full.delay)
    return None


def _open_books(
    books: ExitStack, state_dir: Path, agent: AgentConfig, url: str | None
) -> tuple[Ledger, int]:
    """The ledger with this agent registered (a disabled agent stays disabled: the ledger
    keeps it, and only `agents enable` undoes it)."""
    with ExitStack() as attempt:
        ledger = attempt.enter_context(Ledger(state_dir, url=url))
        slot = ledger.register_agent(
            agent.id,
            agent.exchange.user,
            max_positions=agent.trading.max_positions,
            enabled=agent.enabled,
        )
        books.enter_context(attempt.pop_all())
        return ledger, slot


def risk_limits(agent: AgentConfig) -> RiskLimits:
    """The agent's configured limits, as strategies that explain themselves see them."""
    t = agent.trading
    return RiskLimits(
        t.position_size_pct, t.leverage, t.stop_loss_pct, t.take_profit_pct, t.min_confidence
    )


NO_TRADE: Final = "no trade:"  # the log line saying why a tick did not open (demo summary)
UNREACHABLE_AFTER: Final = 3  # failed start-ups before the message says the exchange is down


def _start_with_retries(runner: AgentRunner) -> None:
    delay, tries, url = 1.0, 0, runner.agent.exchange.base_url
    while not runner.stop.is_set():
        try:
            runner.start()
            return
        except (AuthError, ConfigError):
            raise
        except StateDirFull as exc:
            runner.full.failed(exc, delay)
            runner.stop.wait(runner.full.delay)
            continue
        except (TransientExchangeError, ExchangeError) as exc:
            tries += 1
            what = f"start-up against {url} failed: {exc}"
            if tries >= UNREACHABLE_AFTER and isinstance(exc, TransientExchangeError):
                what = f"start-up: the exchange at {url} is unreachable ({tries} tries): {exc}"
            logger.error("{}; retrying in {:.0f}s", what, delay)
            runner._note_error(what)
            runner.stop.wait(delay)
            delay = min(delay * 2, 30.0)


def _seed(agent_id: str) -> int:
    import zlib

    return zlib.crc32(agent_id.encode())


def log_request(entry: RequestLog) -> None:
    """One log line per exchange request (method, path, status, weight, time; never params)."""
    code = f" code {entry.error_code}" if entry.error_code is not None else ""
    logger.info(
        "{} {} -> {}{} w{} {:.1f}ms",
        entry.method,
        entry.path,
        entry.status or "-",
        code,
        entry.weight,
        entry.elapsed_ms,
    )


class RequestMeter:
    """The client's ``on_request`` hook: adds up the wall and CPU time spent in requests.

    The tick's own cost is its time minus this: what the runner, ledger, cache and strategy
    cost, without the network and the client's request handling (budget, signing, answer,
    and ``forward``: the one-line-per-request log each entry is passed on to, when given).
    """

    def __init__(self, forward: Callable[[RequestLog], None] | None = None) -> None:
        self._forward = forward
        self.wall_ms = 0.0
        self.cpu_ms = 0.0

    def __call__(self, entry: RequestLog) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        if self._forward is not None:
            self._forward(entry)  # the request's log line is request handling too
        self.wall_ms += entry.elapsed_ms + (time.perf_counter() - wall) * 1000
        self.cpu_ms += entry.cpu_ms + (time.process_time() - cpu) * 1000
