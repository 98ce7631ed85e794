"""The HTTP front of the simulated Aster exchange (Futures V3 REST over loopback).

``SimServer`` wires the market, the engine, the authenticator, the rate limiter and the
fault injector behind a stdlib ``ThreadingHTTPServer`` speaking HTTP/1.1 with keep-alive::

    srv = SimServer(SimConfig(accounts=(SimAccount(user, (signer,), Decimal(1000)),)))
    base_url = srv.start()   # "http://127.0.0.1:PORT", served from a background thread
    ...
    srv.stop()
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl

from aster_agents.errors import ConfigError
from aster_agents.exchange import parse
from aster_agents.models import INTERVAL_MS, Kline, PremiumIndex
from aster_agents.signing import MAINNET_CHAIN_ID
from aster_agents.sim import controls
from aster_agents.sim.auth import NONCE_WINDOW_US, Authenticator
from aster_agents.sim.engine import ApiError, Engine, parse_list
from aster_agents.sim.faults import FaultConfig, Faults, Verdict
from aster_agents.sim.limits import LimitConfig, RateLimiter
from aster_agents.sim.liquidation import INSURANCE_FUND
from aster_agents.sim.listen_keys import LISTEN_KEY_LIFE_S, ListenKeys
from aster_agents.sim.market import DEFAULT_HISTORY_MINUTES, Market
from aster_agents.sim.symbols import SYMBOLS, exchange_info
from aster_agents.sim.tape import Tape

if TYPE_CHECKING:
    from aster_agents.sim.lockstep import Lockstep

DEFAULT_BALANCE: Final = Decimal("10000")
Params = Mapping[str, str]
Json = Any


@dataclass(frozen=True, slots=True)
class SimAccount:
    """A main account, its API wallets and its starting USDT balance.

    ``deposited=False`` is an account whose main wallet never deposited: every signed
    request answers -5050 DEPOSIT_REQUIRED (the exchange's rule since 2026-09-01).
    """

    user: str
    signers: tuple[str, ...] = ()
    balance_usdt: Decimal = DEFAULT_BALANCE
    deposited: bool = True


@dataclass(frozen=True, slots=True)
class Shock:
    """Move ``symbol``'s mark by ``pct`` percent, ``after_s`` seconds after the start."""

    symbol: str
    pct: Decimal
    after_s: float

    @classmethod
    def parse(cls, text: str) -> Shock:
        """``SYMBOL:PCT@SECONDS``, e.g. ``BTCUSDT:-30@20``; ValueError names what is wrong."""
        symbol, _, rest = text.partition(":")
        pct, _, after = rest.partition("@")
        try:
            shock = cls(symbol, Decimal(pct), float(after))
        except (ArithmeticError, ValueError):
            raise ValueError(
                f"{text!r}: expected SYMBOL:PCT@SECONDS, e.g. BTCUSDT:-30@20"
            ) from None
        if symbol not in SYMBOLS:
            raise ValueError(f"{text!r}: unknown symbol {symbol!r}")
        if not shock.pct.is_finite() or shock.pct <= -100 or shock.after_s < 0:
            raise ValueError(f"{text!r}: PCT must be above -100 and SECONDS >= 0")
        return shock


@dataclass(frozen=True, slots=True)
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 0
    seed: int = 1
    speed: float = 1.0
    accounts: Sequence[SimAccount] = ()
    faults: FaultConfig = field(default_factory=FaultConfig)
    limits: LimitConfig = field(default_factory=LimitConfig)
    chain_id: int = MAINNET_CHAIN_ID
    decode_fallback: bool = True
    start_time_ms: int | None = None
    history_minutes: int = DEFAULT_HISTORY_MINUTES
    allow_remote: bool = False
    tick_interval_s: float = 0.1
    funding_interval_s: float = 8 * 3600.0  # market time between funding settlements; 0: none
    listen_key_life_s: float = LISTEN_KEY_LIFE_S  # shorter only in tests of expiry
    nonce_window_s: float = NONCE_WINDOW_US / 1e6  # +-60 s; shorter only for fast tests
    shocks: Sequence[Shock] = ()
    insurance_fund: Decimal = INSURANCE_FUND  # USDT per symbol; 0 makes every deficit an ADL
    market: str = "synthetic"  # or "replay" (needs data_dir); see sim/sources.py
    data_dir: Path | None = None  # the recording a replay plays
    upstream: str = "https://fapi.asterdex.com"  # the exchange --market live mirrors
    # replay only: agent ids whose turns step the market clock (sim/lockstep.py); () runs it
    lockstep: tuple[str, ...] = ()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Route:
    handler: Callable[[str, Params], Json]  # (user or "", params) -> JSON document
    weight: Callable[[Params], int]
    signed: bool
    orders: int = 0  # new orders counted against the account's limits; -1: one per batch entry


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


def _const(n: int) -> Callable[[Params], int]:
    return lambda _p: n


def _by_symbol(with_symbol: int, without: int) -> Callable[[Params], int]:
    return lambda p: with_symbol if p.get("symbol") else without


def _check_interval(interval: str) -> None:
    if interval not in INTERVAL_MS:
        raise ApiError(-1120, "Invalid interval.")


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= 1500:
        raise ApiError(-1130, "Data sent for parameter 'limit' is not valid.")


def _kline_weight(p: Params) -> int:
    limit = int(p.get("limit") or 500)
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


def _depth_weight(p: Params) -> int:
    limit = int(p.get("limit") or 500)
    return 2 if limit <= 50 else 5 if limit <= 100 else 10 if limit <= 500 else 20


def _batch_size(params: Params) -> int:
    try:
        entries = parse_list(params.get("batchOrders") or "[]")
    except ValueError:
        return 1
    return max(1, len(entries)) if isinstance(entries, list) else 1


def make_market(config: SimConfig) -> Market:
    """The market source ``config.market`` names: the seeded generator or a replay."""
    if config.market == "synthetic":
        return Market(config.seed, config.start_time_ms, config.speed, config.history_minutes)
    if config.market == "replay" and config.data_dir is not None:
        from aster_agents.sim.recording import load_recording
        from aster_agents.sim.sources import ReplayMarket

        recording = load_recording(config.data_dir, frozenset(SYMBOLS))
        return ReplayMarket(
            recording, seed=config.seed, speed=config.speed, reference_ms=config.start_time_ms
        )
    if config.market == "live":
        return _live_market(config)
    raise ConfigError(
        f"sim: --market {config.market}: expected synthetic, live, or replay with --data DIR"
    )


def _live_market(config: SimConfig) -> Market:
    from aster_agents.errors import AsterAgentsError
    from aster_agents.exchange.http import AsterClient
    from aster_agents.signing import NonceSource
    from aster_agents.sim.sources import LiveMarket

    client = AsterClient(
        config.upstream, user=None, signer=None, nonces=NonceSource(0), timeout=5.0, max_retries=1
    )
    try:
        return LiveMarket(client, seed=config.seed)
    except AsterAgentsError as exc:
        client.close()
        raise AsterAgentsError(
            f"sim: --upstream {config.upstream}: cannot read its public market data ({exc})"
        ) from None


class SimApp:
    """Routing and protocol rules; independent of the socket layer."""

    def __init__(self, config: SimConfig, market: Market | None = None) -> None:
        self.config = config
        self.market = market if market is not None else make_market(config)
        self.engine = Engine(
            self.market,
            funding_interval_ms=int(config.funding_interval_s * 1000),
            insurance_fund=config.insurance_fund,
        )
        for shock in config.shocks:
            at = self.market.start_ms + int(shock.after_s * 1000 * config.speed)
            self.market.shock(shock.symbol, shock.pct, at)
        self.auth = Authenticator(
            config.chain_id,
            config.decode_fallback,
            nonce_window_us=int(config.nonce_window_s * 1_000_000),
        )
        origin = time.time() if config.limits.align_to_start else 0.0
        self.limiter = RateLimiter(config.limits, origin)
        self.faults = Faults(config.faults)
        self.tape = Tape(self.market, self.engine)
        self.listen_keys = ListenKeys(config.listen_key_life_s)
        self.lockstep = self._lockstep() if config.lockstep else None
        self.routes = self._routes()

    def _lockstep(self) -> Lockstep:
        from aster_agents.sim.lockstep import Lockstep
        from aster_agents.sim.sources import ReplayMarket

        if not isinstance(self.market, ReplayMarket):
            raise ConfigError("sim: --lockstep steps a recording: use it with --market replay")
        return Lockstep(self.market, self.engine, self.config.lockstep)

    def add_account(self, account: SimAccount) -> None:
        self.engine.add_account(account.user, account.balance_usdt)
        self.auth.register(account.user, account.signers, account.deposited)

    # ---- dispatch -----------------------------------------------------------------------

    def handle(
        self,
        method: str,
        path: str,
        query: str,
        body: str,
        ip: str,
        received: float | None = None,
    ) -> Reply:
        """Answer one request; ``received`` is when it arrived (the limits judge that moment:
        a request already sent when a 429 went out cannot have honoured it, however long
        this process then took to get to it)."""
        received = time.time() if received is None else received
        verdict = self.faults.before()
        if verdict is Verdict.DROP:
            return Reply(0, b"", drop=True)
        self.faults.delay()
        if isinstance(verdict, int):
            return self._error(
                ApiError(
                    -1001 if verdict >= 500 else -1000,
                    "Internal error; unable to process your request. Please try again.",
                    verdict,
                ),
                {},
            )
        headers: dict[str, str] = {}
        try:
            return self._dispatch(method, path, query, body, ip, headers, received)
        except ApiError as exc:
            return self._error(exc, headers)
        except ValueError as exc:  # int()/Decimal() of a malformed parameter
            return self._error(ApiError(-1102, f"A parameter was malformed: {exc}"), headers)
        except Exception as exc:  # a simulator bug must still answer, like a 5xx
            msg = f"An unknown error occurred while processing the request: {exc!r}"
            return self._error(ApiError(-1000, msg, 500), headers)

    def _dispatch(
        self,
        method: str,
        path: str,
        query: str,
        body: str,
        ip: str,
        headers: dict[str, str],
        received: float,
    ) -> Reply:
        route = self.routes.get((method, path.replace("/fapi/v1/", "/fapi/v3/", 1)))
        if route is None or (route.signed and not path.startswith("/fapi/v3/")):
            raise ApiError(-1000, f"No such endpoint: {method} {path}.", 404)
        raw = query if method == "GET" or "signature=" in query or not body else body
        public = dict(parse_qsl(raw, keep_blank_values=True))
        try:
            weight = route.weight(public)
        except ValueError:
            raise ApiError(-1102, "Parameter 'limit' was malformed.") from None
        now = received
        headers["X-MBX-USED-WEIGHT-1M"] = str(self.limiter.used_weight(ip, now))  # for a 429
        headers["X-MBX-USED-WEIGHT-1M"] = str(self.limiter.weight(ip, weight, now))
        user, params = "", public
        if route.signed:
            auth = self.auth.verify(raw)
            user, params = auth.user, auth.params
        if route.orders:
            count = route.orders if route.orders > 0 else _batch_size(params)
            short, long_ = self.limiter.orders(user, count, now)
            headers["X-MBX-ORDER-COUNT-10S"] = str(short)
            headers["X-MBX-ORDER-COUNT-1M"] = str(long_)
        doc = route.handler(user, params)
        if route.orders and self.faults.unknown_after_accept():
            raise ApiError(
                -1007,
                "Timeout waiting for response from backend server. Send "
                "status unknown; execution status unknown.",
                503,
            )
        return Reply(200, json.dumps(doc, separators=(",", ":")).encode(), headers)

    @staticmethod
    def _error(exc: ApiError, headers: dict[str, str]) -> Reply:
        if exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        body = json.dumps({"code": exc.code, "msg": exc.msg}).encode()
        return Reply(exc.status, body, headers)

    # ---- endpoints ----------------------------------------------------------------------

    def _routes(self) -> dict[tuple[str, str], Route]:
        e = self.engine
        v3 = "/fapi/v3/"
        public: dict[tuple[str, str], Route] = {
            ("GET", "ping"): Route(lambda u, p: {}, _const(1), False),
            ("GET", "time"): Route(
                lambda u, p: {"serverTime": self.market.now_ms()}, _const(1), False
            ),
            ("GET", "exchangeInfo"): Route(self._exchange_info, _const(1), False),
            ("GET", "depth"): Route(self._depth, _depth_weight, False),
            ("GET", "klines"): Route(self._klines, _kline_weight, False),
            ("GET", "markPriceKlines"): Route(self._klines, _kline_weight, False),
            ("GET", "indexPriceKlines"): Route(self._klines, _kline_weight, False),
            ("GET", "premiumIndex"): Route(self.premium_json, _const(1), False),
            ("GET", "fundingRate"): Route(self._funding_rate, _const(1), False),
            ("GET", "ticker/price"): Route(self._ticker_price, _by_symbol(1, 2), False),
            ("GET", "ticker/bookTicker"): Route(self._book_ticker, _by_symbol(1, 2), False),
            ("GET", "ticker/24hr"): Route(self._ticker_24h, _by_symbol(1, 40), False),
            ("GET", "trades"): Route(self.tape.trades, _const(1), False),
            ("GET", "historicalTrades"): Route(self.tape.historical_trades, _const(20), False),
            ("GET", "aggTrades"): Route(self.tape.agg_trades, _const(20), False),
            ("GET", "fundingInfo"): Route(self.tape.funding_info, _const(1), False),
            ("GET", "openInterest"): Route(self.tape.open_interest, _const(1), False),
            ("GET", "indexreferences"): Route(self.tape.index_references, _const(1), False),
        }
        signed: dict[tuple[str, str], Route] = {
            ("GET", "balance"): Route(lambda u, p: e.balance_json(u), _const(5), True),
            ("GET", "account"): Route(lambda u, p: e.account_json(u), _const(5), True),
            ("GET", "accountWithJoinMargin"): Route(
                lambda u, p: e.account_json(u), _const(5), True
            ),
            ("GET", "positionRisk"): Route(e.position_risk_json, _const(5), True),
            ("GET", "positionSide/dual"): Route(lambda u, p: e.get_dual_side(u), _const(30), True),
            ("POST", "positionSide/dual"): Route(e.set_dual_side, _const(1), True),
            ("POST", "leverage"): Route(e.set_leverage, _const(1), True),
            ("POST", "marginType"): Route(e.set_margin_type, _const(1), True),
            ("POST", "order"): Route(e.new_order, _const(1), True, orders=1),
            ("PUT", "order"): Route(e.modify_order, _const(1), True, orders=1),
            ("GET", "order"): Route(e.query_order, _const(1), True),
            ("POST", "batchOrders"): Route(e.batch_new, _const(5), True, orders=-1),
            ("DELETE", "batchOrders"): Route(e.batch_cancel, _const(1), True),
            ("DELETE", "order"): Route(e.cancel_order, _const(1), True),
            ("GET", "openOrder"): Route(e.open_order, _const(1), True),
            ("GET", "openOrders"): Route(e.open_orders, _by_symbol(1, 40), True),
            ("DELETE", "allOpenOrders"): Route(e.cancel_all, _const(1), True),
            ("GET", "allOrders"): Route(e.all_orders, _const(5), True),
            ("GET", "userTrades"): Route(e.user_trades, _const(5), True),
            ("GET", "income"): Route(e.income_json, _const(30), True),
            ("GET", "commissionRate"): Route(lambda u, p: e.commission_rate(p), _const(20), True),
            ("GET", "leverageBracket"): Route(lambda u, p: e.leverage_brackets(p), _const(1), True),
            ("GET", "adlQuantile"): Route(e.adl_quantile, _const(5), True),
            ("GET", "forceOrders"): Route(e.force_orders, _by_symbol(20, 50), True),
            ("POST", "noop"): Route(lambda u, p: {"code": 200, "msg": "success"}, _const(1), True),
            ("POST", "order/test"): Route(e.test_order, _const(1), True),
            ("POST", "countdownCancelAll"): Route(
                self._on(controls.countdown_cancel_all), _const(10), True
            ),
            ("GET", "stpMode"): Route(self._on(controls.get_stp_mode), _const(30), True),
            ("POST", "stpMode"): Route(self._on(controls.set_stp_mode), _const(1), True),
            ("GET", "multiAssetsMargin"): Route(
                self._on(controls.get_multi_assets), _const(30), True
            ),
            ("POST", "multiAssetsMargin"): Route(
                self._on(controls.set_multi_assets), _const(1), True
            ),
            ("POST", "positionMargin"): Route(
                self._on(controls.modify_position_margin), _const(1), True
            ),
            ("GET", "positionMargin/history"): Route(
                self._on(controls.position_margin_history), _const(1), True
            ),
            ("POST", "listenKey"): Route(self.listen_keys.start, _const(1), True),
            ("PUT", "listenKey"): Route(self.listen_keys.keepalive, _const(1), True),
            ("DELETE", "listenKey"): Route(self.listen_keys.close, _const(1), True),
        }
        routes = {(m, v3 + path): r for (m, path), r in (public | signed).items()}
        if self.lockstep is not None:
            routes[("POST", "/sim/lockstep/turn")] = Route(self._turn, _const(0), False)
            routes[("GET", "/sim/lockstep")] = Route(self.lockstep.status, _const(0), False)
        return routes

    def _turn(self, _u: str, p: Params) -> Json:
        assert self.lockstep is not None
        agent = p.get("agent") or ""
        return self.lockstep.turn(agent, int(p.get("scanMs") or 0), int(p.get("done") or 0))

    def _on(self, fn: Callable[[Engine, str, Params], Json]) -> Callable[[str, Params], Json]:
        return lambda u, p: fn(self.engine, u, p)

    def _exchange_info(self, _u: str, _p: Params) -> Json:
        doc = exchange_info(self.market.now_ms(), self.config.limits.rate_limits_doc())
        # not in Aster's document: a simulator says how long a signed request stays valid,
        # so agents may write off an unresolved order sooner when a test shortens it
        doc["nonceWindowMs"] = int(self.config.nonce_window_s * 1000)
        if self.lockstep is not None:  # also not Aster's: agents take their turns (lockstep.py)
            doc["marketClock"] = "lockstep"
        return doc

    @staticmethod
    def _symbol(p: Params, required: bool = True) -> str | None:
        return SimApp._named_symbol(p.get("symbol") or p.get("pair"), required)

    @staticmethod
    def _named_symbol(name: str | None, required: bool = True) -> str | None:
        """``_symbol`` of parameters naming ``name``: its checks, without a dict to hold it
        (the in-process client's typed klines path asks every tick)."""
        if not name:
            if required:
                raise ApiError(
                    -1102,
                    "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
                )
            return None
        if name not in SYMBOLS:
            raise ApiError(-1121, "Invalid symbol.")
        return name

    def _symbols(self, p: Params) -> list[str]:
        name = self._symbol(p, required=False)
        return [name] if name else list(SYMBOLS)

    def _klines(self, _u: str, p: Params) -> Json:
        return self.market.klines(*self._kline_query(p))

    def kline_objects(self, p: Params) -> list[Kline]:
        """The answer of ``GET klines`` (and its mark and index price kinds) with ``p`` as the
        ``Kline`` objects parsing it gives, the same errors included: the in-process client's
        typed path."""
        return self.market.kline_objects(*self._kline_query(p))

    def kline_objects_of(
        self, symbol: str, interval: str, start: int | None, end: int | None, limit: int
    ) -> list[Kline]:
        """``kline_objects`` of the parameters a client sends for these values (``startTime``
        and ``endTime`` only when not None), without writing them as text and reading them
        back: the same checks in the same order, so the same errors. For ``int`` values only
        (the text of anything else may not read back as the same number)."""
        name = self._named_symbol(symbol)
        assert name is not None
        _check_interval(interval)
        _check_limit(limit)
        return self.market.kline_objects(name, interval, start, end, limit)

    def _kline_query(self, p: Params) -> tuple[str, str, int | None, int | None, int]:
        """(symbol, interval, start, end, limit) of a klines request, checked."""
        symbol = self._symbol(p)
        assert symbol is not None
        interval = p.get("interval") or ""
        _check_interval(interval)
        limit = int(p.get("limit") or 500)
        _check_limit(limit)
        start = int(p["startTime"]) if p.get("startTime") else None
        end = int(p["endTime"]) if p.get("endTime") else None
        return symbol, interval, start, end, limit

    def _depth(self, _u: str, p: Params) -> Json:
        symbol = self._symbol(p)
        assert symbol is not None
        limit = int(p.get("limit") or 500)
        bid, ask = self.market.book(symbol)
        sym, now = SYMBOLS[symbol], self.market.now_ms()
        qty = (Decimal(2000) / ask).quantize(sym.step_size) or sym.min_qty
        rows = range(min(limit, 1000))
        return {
            "lastUpdateId": now,
            "E": now,
            "T": now,
            "bids": [[str(bid - i * sym.tick_size), str(qty * (i + 1))] for i in rows],
            "asks": [[str(ask + i * sym.tick_size), str(qty * (i + 1))] for i in rows],
        }

    def _rate(self, symbol: str, when: int) -> str:
        if not self.engine.funding_interval_ms:
            return "0.00000000"
        return f"{self.market.funding_rate(symbol, when):.8f}"

    def _premium_row(self, symbol: str) -> dict[str, object]:
        now = self.market.now_ms()
        mark = str(self.market.mark(symbol))
        return {
            "symbol": symbol,
            "markPrice": mark,
            "indexPrice": mark,
            "estimatedSettlePrice": mark,
            "lastFundingRate": self._rate(symbol, self.engine.last_funding_time(now)),
            "interestRate": "0.00010000",
            "nextFundingTime": self.engine.next_funding_time(),
            "time": now,
        }

    def premium_object(self, symbol: str) -> PremiumIndex:
        """``parse.premium_index`` of ``_premium``'s answer for ``symbol`` (not empty), without
        the document: the in-process client's typed path (the runner asks it for every held
        symbol every tick). The same calls in the same order; each field as parsing its text
        reads it (``str`` of a finite Decimal reads back as the same Decimal)."""
        name = self._named_symbol(symbol)
        assert name is not None
        now = self.market.now_ms()
        mark = self.market.mark(name)
        rate = self._rate(name, self.engine.last_funding_time(now))
        if not mark.is_finite():  # parsing refuses it: say so as parsing does
            return parse.premium_index(self._premium_row(name))
        return PremiumIndex(name, mark, mark, Decimal(rate), self.engine.next_funding_time(), now)

    def premium_json(self, _u: str, p: Params) -> Json:
        rows = [self._premium_row(s) for s in self._symbols(p)]
        return rows[0] if p.get("symbol") else rows

    def _funding_rate(self, _u: str, p: Params) -> Json:
        symbol = self._symbol(p)
        assert symbol is not None
        step = self.engine.funding_interval_ms
        if not step:
            return []
        limit = min(int(p.get("limit") or 100), 1000)
        last = self.engine.last_funding_time()
        if p.get("endTime"):
            last = min(last, int(p["endTime"]) // step * step)
        first_ok = -(-self.market.genesis_ms // step) * step
        if p.get("startTime"):  # oldest first from startTime, as the exchange pages
            first = max(first_ok, -(-int(p["startTime"]) // step) * step)
            times = list(range(first, last + 1, step))[:limit]
        else:
            times = [t for t in (last - i * step for i in range(limit)) if t >= first_ok][::-1]
        return [
            {"symbol": symbol, "fundingRate": self._rate(symbol, t), "fundingTime": t}
            for t in times
        ]

    def _ticker_price(self, _u: str, p: Params) -> Json:
        now = self.market.now_ms()
        rows = [
            {"symbol": s, "price": str(self.market.mark(s)), "time": now} for s in self._symbols(p)
        ]
        return rows[0] if p.get("symbol") else rows

    def _book_ticker(self, _u: str, p: Params) -> Json:
        now, rows = self.market.now_ms(), []
        for s in self._symbols(p):
            bid, ask = self.market.book(s)
            qty = str((Decimal(5000) / ask).quantize(SYMBOLS[s].step_size) or SYMBOLS[s].min_qty)
            rows.append(
                {
                    "symbol": s,
                    "bidPrice": str(bid),
                    "bidQty": qty,
                    "askPrice": str(ask),
                    "askQty": qty,
                    "time": now,
                }
            )
        return rows[0] if p.get("symbol") else rows

    def _ticker_24h(self, _u: str, p: Params) -> Json:
        rows = []
        for s in self._symbols(p):
            k = self.market.klines(s, "1h", limit=24)
            o, last = Decimal(str(k[0][1])), Decimal(str(k[-1][4]))
            rows.append(
                {
                    "symbol": s,
                    "priceChange": str(last - o),
                    "priceChangePercent": f"{(last - o) / o * 100:.3f}",
                    "lastPrice": str(last),
                    "openPrice": str(o),
                    "highPrice": max((str(r[2]) for r in k), key=Decimal),
                    "lowPrice": min((str(r[3]) for r in k), key=Decimal),
                    "volume": str(sum(Decimal(str(r[5])) for r in k)),
                    "quoteVolume": str(sum(Decimal(str(r[7])) for r in k)),
                    "openTime": k[0][0],
                    "closeTime": k[-1][6],
                    "count": sum(int(str(r[8])) for r in k),
                }
            )
        return rows[0] if p.get("symbol") else rows


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer
    wbufsize = -1  # headers and body leave in one segment (no Nagle/delayed-ACK stalls)

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:
        return

    def _serve(self) -> None:
        received = time.time()
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        reply = self.server.app.handle(
            self.command, path, query, body, self.client_address[0], received
        )
        if reply.drop:
            self.close_connection = True
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_DELETE = _serve


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: tuple[str, int]
    ) -> None:
        """A client that hangs up mid-request (killed agents do) is normal, not an error."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def __init__(self, address: tuple[str, int], app: SimApp) -> None:
        super().__init__(address, _Handler)
        self.app = app


class SimServer:
    """The simulated exchange, served from background threads."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        if not is_loopback(self.config.host) and not self.config.allow_remote:
            raise ConfigError(
                f"sim: refusing to listen on non-loopback host {self.config.host!r}; the "
                "simulator has no real security. Pass allow_remote (CLI: --allow-remote) to "
                "do it anyway."
            )
        self.app = SimApp(self.config)
        for account in self.config.accounts:
            self.app.add_account(account)
        self._http: _HttpServer | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    @property
    def engine(self) -> Engine:
        return self.app.engine

    @property
    def market(self) -> Market:
        return self.app.market

    @property
    def base_url(self) -> str:
        if self._http is None:
            raise RuntimeError("SimServer.base_url: the server is not started; call start()")
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    def add_account(self, account: SimAccount) -> None:
        """Register a main account and its API wallets (also while running)."""
        self.app.add_account(account)

    def freeze(self) -> int:
        """Stop the market clock and settle what is due: figures stand still from here on."""
        with self.engine.lock:
            at = self.market.freeze()
            self.engine.settle_funding()
            self.engine.tick()
        return at

    def account_equity(self, user: str) -> Decimal:
        """The account's equity (wallet + unrealized P&L at mark), as the exchange reports it."""
        doc = self.engine.account_json(user)
        return Decimal(str(doc["totalMarginBalance"]))

    def start(self) -> str:
        """Bind, serve in the background and return the base URL."""
        self._http = _HttpServer((self.config.host, self.config.port), self.app)
        self._threads = [
            threading.Thread(
                target=self._http.serve_forever,
                kwargs={"poll_interval": 0.1},
                name="sim-http",
                daemon=True,
            ),
        ]
        if self.app.lockstep is None:  # a lockstep replay's engine works at its events only
            self._threads.append(
                threading.Thread(target=self._tick_loop, name="sim-ticker", daemon=True)
            )
        for t in self._threads:
            t.start()
        return self.base_url

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.config.tick_interval_s):
            self.engine.tick()

    def stop(self) -> None:
        self._stop.set()
        close = getattr(self.market, "close", None)  # a live market's poller
        if close is not None:
            close()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        for t in self._threads:
            t.join(timeout=5)

    def serve_until(self, stop: threading.Event) -> None:
        """Block until ``stop`` is set (the CLI's main thread)."""
        while not stop.wait(0.5):
            pass

    def __enter__(self) -> SimServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
