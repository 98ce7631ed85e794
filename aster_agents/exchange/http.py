"""The Aster Futures V3 REST client: the only module that imports httpx or sees raw error codes.

Every request goes through the host-wide ``RequestBudget`` first and reports the exchange's
``X-MBX-*`` counters back to it. Signed requests carry ``nonce``, ``user`` (when set) and
``signer`` after the business parameters and are signed over exactly the string that is sent
(``shared/aster-v3-api.md`` 1.3); the signature goes last. Errors are translated here, once, into
the reaction-named tree of ``aster_agents.errors``:

- 429 / 418 (and -1003/-1015)        -> ``RateLimited`` / ``IpBanned`` after ``budget.pause``
- 5xx, timeouts, dropped connections -> ``TransientExchangeError``, retried with backoff
- -1022, -2014, -2015, 401, 403      -> ``AuthError`` (-4225/-1021 nonce: one retry first)
- -5050 DEPOSIT_REQUIRED             -> ``DepositRequired`` (stop: the main wallet must deposit)
- -2018/-2019, -2013, other order codes -> ``InsufficientMargin``, ``OrderNotFound``,
  ``OrderRejected`` (the open/stop order caps -2025/-4045 included: skip, not retry)
- -1125 (listen key expired or closed)  -> ``ListenKeyInvalid``
- -1100 family, unparseable 4xx      -> ``BadRequest``

A new order is never sent twice blindly: when its outcome is unknown (timeout after sending,
5xx, dropped connection) the client asks for it by client order id and returns it if it exists.
A caller may pin an order's nonce (``next_nonce`` then ``new_order(..., nonce=n)``) and later
``noop(n)``: once the noop is accepted that nonce is spent, so the order can never be accepted.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote

import httpx

from aster_agents.errors import (
    AuthError,
    BadRequest,
    ConfigError,
    DepositRequired,
    ExchangeError,
    InsufficientMargin,
    IpBanned,
    ListenKeyInvalid,
    OrderNotFound,
    OrderRejected,
    RateLimited,
    TransientExchangeError,
    UnknownOutcome,
)
from aster_agents.exchange import parse
from aster_agents.exchange.base import (
    AccountControls,
    Exchange,
    NullBudget,
    RequestBudget,
    RequestLog,
)
from aster_agents.models import (
    AccountInfo,
    Balance,
    BookTicker,
    CommissionRate,
    ExchangeInfo,
    FundingRate,
    Income,
    Kline,
    MarginType,
    Order,
    OrderRequest,
    OrderStatus,
    Position,
    PositionSide,
    PremiumIndex,
    StpMode,
    TickerPrice,
    Turn,
    UserTrade,
)
from aster_agents.signing import NonceSource, Signer

ParamValue = str | int | Decimal | bool | Enum
Params = Sequence[tuple[str, ParamValue]]

_FORM: Final = "application/x-www-form-urlencoded"
_CLIENT_ORDER_ID = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")
_BANNED_UNTIL = re.compile(r"banned until (\d{10,})")
_DEFAULT_PAUSE_S: Final = {429: 60.0, 418: 120.0}

_NONCE_CODES: Final = frozenset({-4225, -1021})
_DEPOSIT_REQUIRED: Final = -5050
_AUTH_CODES: Final = frozenset({-1002, -1022, -2014, -2015})
_TRANSIENT_CODES: Final = frozenset({-1000, -1001, -1006, -1007, -1008})
_RATE_CODES: Final = frozenset({-1003, -1015})
_MARGIN_CODES: Final = frozenset({-2018, -2019})
_ORDER_LEVEL_1000S: Final = frozenset({-1111, -1121, -1013})
_NO_CHANGE_MARGIN_TYPE: Final = -4046
_NO_CHANGE_POSITION_SIDE: Final = -4059
_ORDER_CAP_CODES: Final = frozenset({-2025, -4045})  # MAX_OPEN_ORDER / MAX_STOP_ORDER exceeded
_INVALID_LISTEN_KEY: Final = -1125
_PATH_MISSING_CODES: Final = frozenset({-1121, -5000})
# The largest answer read (after decompression): exchangeInfo of every symbol or 1000 trades is
# well under 2 MiB; anything far larger is a broken or hostile server, not data.
MAX_ANSWER_BYTES: Final = 8 << 20


@dataclass(frozen=True, slots=True)
class _Call:
    method: str
    path: str
    weight: int
    signed: bool = True
    orders: int = 0


_TIME = _Call("GET", "/fapi/v3/time", 1, signed=False)
_EXCHANGE_INFO = _Call("GET", "/fapi/v3/exchangeInfo", 1, signed=False)
_PREMIUM_INDEX = _Call("GET", "/fapi/v3/premiumIndex", 1, signed=False)
_TICKER_PRICE = _Call("GET", "/fapi/v3/ticker/price", 1, signed=False)
_FUNDING_RATE = _Call("GET", "/fapi/v3/fundingRate", 1, signed=False)
_BOOK_TICKER = _Call("GET", "/fapi/v3/ticker/bookTicker", 1, signed=False)
_BALANCE = _Call("GET", "/fapi/v3/balance", 5)
_ACCOUNT = _Call("GET", "/fapi/v3/accountWithJoinMargin", 5)
_ACCOUNT_LEGACY = _Call("GET", "/fapi/v3/account", 5)
_POSITION_RISK = _Call("GET", "/fapi/v3/positionRisk", 5)
_GET_DUAL = _Call("GET", "/fapi/v3/positionSide/dual", 30)
_SET_DUAL = _Call("POST", "/fapi/v3/positionSide/dual", 1)
_LEVERAGE = _Call("POST", "/fapi/v3/leverage", 1)
_MARGIN_TYPE = _Call("POST", "/fapi/v3/marginType", 1)
_NEW_ORDER = _Call("POST", "/fapi/v3/order", 1, orders=1)
_QUERY_ORDER = _Call("GET", "/fapi/v3/order", 1)
_CANCEL_ORDER = _Call("DELETE", "/fapi/v3/order", 1)
_CANCEL_ALL = _Call("DELETE", "/fapi/v3/allOpenOrders", 1)
_USER_TRADES = _Call("GET", "/fapi/v3/userTrades", 5)
_INCOME = _Call("GET", "/fapi/v3/income", 30)
_TEST_ORDER = _Call("POST", "/fapi/v3/order/test", 1)
_COMMISSION_RATE = _Call("GET", "/fapi/v3/commissionRate", 20)
_GET_STP_MODE = _Call("GET", "/fapi/v3/stpMode", 30)
_SET_STP_MODE = _Call("POST", "/fapi/v3/stpMode", 1)
_COUNTDOWN_CANCEL_ALL = _Call("POST", "/fapi/v3/countdownCancelAll", 10)
_START_LISTEN_KEY = _Call("POST", "/fapi/v3/listenKey", 1)
_KEEP_LISTEN_KEY = _Call("PUT", "/fapi/v3/listenKey", 1)
_CLOSE_LISTEN_KEY = _Call("DELETE", "/fapi/v3/listenKey", 1)
_NOOP = _Call("POST", "/fapi/v3/noop", 1)
_TURN = _Call("POST", "/sim/lockstep/turn", 0, signed=False)  # a lockstep simulator's only


class _NotSent(TransientExchangeError):
    """The request never reached the exchange (connect failure): safe to send again."""


class _NonceRefused(AuthError):
    """-4225/-1021: the nonce was refused; one retry with a fresh nonce is allowed."""


def klines_weight(limit: int) -> int:
    """Request weight of ``GET /fapi/v3/klines`` for ``limit`` candles."""
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


def _fmt(value: ParamValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def encode_params(pairs: Sequence[tuple[str, str]]) -> str:
    """``k=v&...`` in the given order, percent-encoded; the same bytes are signed and sent."""
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return None


def _header_int(headers: httpx.Headers, name: str) -> int | None:
    return _as_int(headers.get(name))


def _snippet(response: httpx.Response) -> str:
    text = re.sub(r"<[^>]*>", " ", response.text)
    text = " ".join(text.split())
    return (text[:120] + "...") if len(text) > 120 else text or "<empty body>"


def _json(response: httpx.Response) -> tuple[bool, Any]:
    try:
        return True, json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return False, None


def _code_msg(body: object) -> tuple[int | None, str]:
    if isinstance(body, dict):
        return _as_int(body.get("code")), str(body.get("msg", ""))
    return None, ""


def _error_for(status: int, code: int, msg: str, where: str) -> ExchangeError:
    """The one place an exchange error code becomes an exception class."""
    text = f"{where}: {msg or 'no message'}"
    cls: type[ExchangeError]
    if code in _NONCE_CODES:
        cls = _NonceRefused
    elif code == _DEPOSIT_REQUIRED:
        return DepositRequired(
            f"{where}: the main wallet has not deposited yet ({msg or 'DEPOSIT_REQUIRED'}); "
            "deposit to it first, then start again",
            code,
            status,
        )
    elif code in _AUTH_CODES or status in (401, 403):
        cls = AuthError
    elif code in _TRANSIENT_CODES and status != 404:  # a missing path never comes back
        cls = TransientExchangeError
    elif code in _MARGIN_CODES:
        cls = InsufficientMargin
    elif code == -2013:
        cls = OrderNotFound
    elif code == _INVALID_LISTEN_KEY:
        cls = ListenKeyInvalid
    elif code in _ORDER_LEVEL_1000S or code in _ORDER_CAP_CODES or code <= -2000:
        cls = OrderRejected
    elif status >= 500:
        cls = TransientExchangeError
    else:
        cls = BadRequest
    return cls(text, code, status)


def _path_missing(exc: ExchangeError) -> bool:
    return exc.status == 404 or (exc.code in _PATH_MISSING_CODES and "path" in exc.msg.lower())


class NoNetwork(httpx.BaseTransport):
    """A transport that sends nothing, for a client whose requests never reach HTTP (the
    in-process simulator's): it also spares building a TLS context (~30 ms a client)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        raise RuntimeError(f"{request.method} {request.url.path}: this client has no network")


class AsterClient:
    """Synchronous client for the Aster Futures V3 REST API (one per agent process)."""

    def __init__(
        self,
        base_url: str,
        *,
        user: str | None,
        signer: Signer | None,
        nonces: NonceSource,
        budget: RequestBudget | None = None,
        timeout: float = 10.0,
        max_retries: int = 3,
        transport: httpx.BaseTransport | None = None,
        agent_id: str | None = None,
        on_request: Callable[[RequestLog], None] | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self._user = user
        self._max_answer_bytes = max_answer_bytes
        self._signer = signer
        self._nonces = nonces
        self._budget: RequestBudget = budget if budget is not None else NullBudget()
        self._max_retries = max_retries
        self._on_request = on_request
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._sleep = sleep
        self._clock = clock
        self._prefix = f"agent {agent_id}: " if agent_id else ""
        self._legacy_account = False
        self._http = httpx.Client(
            base_url=base_url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": "aster-agents/0.1"},
        )

    def __repr__(self) -> str:
        return f"AsterClient(base_url={str(self._http.base_url)!r}, signer={self._signer!r})"

    # --- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AsterClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- public market data --------------------------------------------------------------

    def server_time(self) -> int:
        return parse.server_time(self._request(_TIME))

    def exchange_info(self) -> ExchangeInfo:
        return parse.exchange_info(self._request(_EXCHANGE_INFO))

    def klines(
        self,
        symbol: str,
        interval: str,
        limit: int = 500,
        start_time: int | None = None,
        end_time: int | None = None,
        *,
        kind: str = "klines",
    ) -> list[Kline]:
        """Candles oldest first; ``kind="markPriceKlines"`` for the mark price's."""
        params: list[tuple[str, ParamValue]] = [("symbol", symbol), ("interval", interval)]
        params += _optional(startTime=start_time, endTime=end_time)
        params.append(("limit", limit))
        call = _Call("GET", f"/fapi/v3/{kind}", klines_weight(limit), signed=False)
        return parse.klines(self._request(call, params))

    def funding_rates(
        self, symbol: str, start_time: int | None = None, limit: int = 1000
    ) -> list[FundingRate]:
        """Settled funding rates oldest first, from ``start_time`` (``GET fundingRate``)."""
        params: list[tuple[str, ParamValue]] = [("symbol", symbol)]
        params += _optional(startTime=start_time)
        params.append(("limit", limit))
        return parse.funding_rates(self._request(_FUNDING_RATE, params))

    def premium_index(self, symbol: str) -> PremiumIndex:
        return parse.premium_index(self._request(_PREMIUM_INDEX, [("symbol", symbol)]))

    def ticker_price(self, symbol: str) -> TickerPrice:
        return parse.ticker_price(self._request(_TICKER_PRICE, [("symbol", symbol)]))

    def book_ticker(self, symbol: str) -> BookTicker:
        return parse.book_ticker(self._request(_BOOK_TICKER, [("symbol", symbol)]))

    # --- account -------------------------------------------------------------------------

    def balances(self) -> list[Balance]:
        return parse.balances(self._request(_BALANCE))

    def account(self) -> AccountInfo:
        """``accountWithJoinMargin``; falls back to the pre-2026-03-28 ``account`` path once."""
        if not self._legacy_account:
            try:
                return parse.account(self._request(_ACCOUNT))
            except (BadRequest, OrderRejected) as exc:
                if not _path_missing(exc):
                    raise
                self._legacy_account = True
        return parse.account(self._request(_ACCOUNT_LEGACY))

    def position_risk(self, symbol: str | None = None) -> list[Position]:
        return parse.positions(self._request(_POSITION_RISK, _optional(symbol=symbol)))

    def get_position_mode(self) -> bool:
        """True when the account is in hedge (dual-side) mode."""
        return parse.position_mode(self._request(_GET_DUAL))

    def set_position_mode(self, dual: bool) -> None:
        try:
            self._request(_SET_DUAL, [("dualSidePosition", dual)])
        except OrderRejected as exc:
            if exc.code != _NO_CHANGE_POSITION_SIDE:
                raise

    def set_leverage(self, symbol: str, leverage: int) -> int:
        data = self._request(_LEVERAGE, [("symbol", symbol), ("leverage", leverage)])
        return parse.leverage(data)

    def set_margin_type(self, symbol: str, margin_type: MarginType) -> None:
        try:
            self._request(_MARGIN_TYPE, [("symbol", symbol), ("marginType", margin_type)])
        except OrderRejected as exc:
            if exc.code != _NO_CHANGE_MARGIN_TYPE:
                raise

    # --- orders --------------------------------------------------------------------------

    def next_nonce(self) -> int:
        """A fresh nonce of this client's source, for a request whose nonce must be recorded."""
        return self._nonces.next()

    def noop(self, nonce: int | None = None) -> bool:
        """``POST /fapi/v3/noop`` signed with ``nonce``: True when accepted (the nonce is spent
        now, so no other request carrying it can be accepted), False when the nonce was refused
        (already used, or outside the exchange's window)."""
        try:
            self._request(_NOOP, nonce=nonce if nonce is not None else self._nonces.next())
        except _NonceRefused:
            return False
        return True

    def lockstep_turn(self, agent_id: str, scan_ms: int, done: int = 0) -> Turn | None:
        """Finish turn ``done`` (0: none) on a lockstep simulator and ask for the next one.

        The turn once it is this agent's; None when it has not come within the simulator's
        wait (a few seconds): ask again.
        """
        params: Params = [("agent", agent_id), ("scanMs", scan_ms), ("done", done)]
        return parse.lockstep_turn(self._request(_TURN, params))

    def new_order(self, request: OrderRequest, nonce: int | None = None) -> Order:
        """Place an order; an unknown outcome is resolved by client order id, never resent.

        With ``nonce`` the request carries exactly that nonce (no retry with a fresh one): a
        refused nonce means the order was not placed and raises ``OrderRejected``.
        """
        params = order_params(request)
        try:
            data = self._request(_NEW_ORDER, params, idempotent=False, nonce=nonce)
        except _NonceRefused as exc:
            raise OrderRejected(f"{exc.msg}; order not placed", exc.code, exc.status) from None
        except (RateLimited, _NotSent):
            raise
        except TransientExchangeError as exc:
            return self._resolve_order(request, exc)
        try:
            return parse.order(data)
        except parse.MalformedPayload as exc:
            return self._resolve_order(request, exc)

    def query_order(
        self, symbol: str, *, order_id: int | None = None, client_order_id: str | None = None
    ) -> Order:
        params = _order_ref(symbol, order_id, client_order_id)
        return parse.order(self._request(_QUERY_ORDER, params))

    def cancel_order(
        self, symbol: str, *, order_id: int | None = None, client_order_id: str | None = None
    ) -> Order:
        """Cancel one order; if a retry finds it gone because the first try worked, say so."""
        params = _order_ref(symbol, order_id, client_order_id)

        def after_retry(exc: ExchangeError) -> Any:
            data = self._request(_QUERY_ORDER, params)
            if parse.order(data).status is not OrderStatus.CANCELED:
                raise exc
            return data

        return parse.order(self._request(_CANCEL_ORDER, params, after_retry=after_retry))

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        call = _Call("GET", "/fapi/v3/openOrders", 1 if symbol else 40)
        return parse.orders(self._request(call, _optional(symbol=symbol)))

    def cancel_all_open_orders(self, symbol: str) -> None:
        self._request(_CANCEL_ALL, [("symbol", symbol)])

    def user_trades(
        self,
        symbol: str,
        *,
        start_time: int | None = None,
        from_id: int | None = None,
        limit: int = 500,
    ) -> list[UserTrade]:
        params: list[tuple[str, ParamValue]] = [("symbol", symbol)]
        params += _optional(startTime=start_time, fromId=from_id)
        params.append(("limit", limit))
        return parse.user_trades(self._request(_USER_TRADES, params))

    def income(
        self,
        symbol: str | None = None,
        income_type: str | None = None,
        start_time: int | None = None,
        limit: int = 100,
    ) -> list[Income]:
        params = _optional(symbol=symbol, incomeType=income_type, startTime=start_time)
        params.append(("limit", limit))
        return parse.incomes(self._request(_INCOME, params))

    def test_order(self, request: OrderRequest) -> None:
        """Every check of a new order without placing it (``POST order/test``)."""
        self._request(_TEST_ORDER, order_params(request))

    def countdown_cancel_all(self, symbol: str, countdown_ms: int) -> int:
        """Cancel ``symbol``'s open orders unless called again within ``countdown_ms`` (0: off)."""
        params: list[tuple[str, ParamValue]] = [("symbol", symbol), ("countdownTime", countdown_ms)]
        return parse.integer(
            parse.mapping(self._request(_COUNTDOWN_CANCEL_ALL, params), "countdownCancelAll"),
            "countdownTime",
            "countdownCancelAll",
        )

    # --- account controls and the user-data stream key --------------------------------------

    def commission_rate(self, symbol: str) -> CommissionRate:
        return parse.commission_rate(self._request(_COMMISSION_RATE, [("symbol", symbol)]))

    def stp_mode(self) -> StpMode:
        """The account's self-trade prevention mode (shared by every agent of the account)."""
        return parse.stp_mode(self._request(_GET_STP_MODE))

    def set_stp_mode(self, mode: StpMode) -> None:
        self._request(_SET_STP_MODE, [("stpMode", mode)])

    def start_listen_key(self) -> str:
        """The account's active user-data stream key (one per account, shared by its agents)."""
        return parse.listen_key(self._request(_START_LISTEN_KEY))

    def keepalive_listen_key(self) -> None:
        """Extend the key's 60-minute life; ``ListenKeyInvalid`` when it is gone."""
        self._request(_KEEP_LISTEN_KEY)

    def close_listen_key(self) -> None:
        """End the account's stream for every agent of the account."""
        self._request(_CLOSE_LISTEN_KEY)

    # --- unknown outcomes ----------------------------------------------------------------

    def _resolve_order(self, request: OrderRequest, cause: TransientExchangeError) -> Order:
        coid = request.client_order_id
        where = f"{self._prefix}POST /fapi/v3/order {coid}"
        ref = _order_ref(request.symbol, None, coid)
        not_found = False
        for attempt in range(self._max_retries + 1):
            self._backoff(attempt)
            try:
                return parse.order(self._request(_QUERY_ORDER, ref, retries=0))
            except OrderNotFound:
                not_found = True
            except RateLimited:
                not_found = False
                break
            except TransientExchangeError:
                not_found = False
        if not_found:
            raise TransientExchangeError(
                f"{where}: not on the exchange after '{cause.msg}'; a request held in the "
                "network can still land while its nonce is valid, so resolve it by client "
                "order id (or a noop with its nonce) before sending again",
                -2013,
                cause.status,
            ) from cause
        raise UnknownOutcome(
            f"{where}: outcome unknown after '{cause.msg}' and the query by client order id "
            "kept failing; resolve it by querying this client order id before sending again",
            cause.code,
            cause.status,
            client_order_id=coid,
        ) from cause

    # --- the request pipeline ------------------------------------------------------------

    def _request(
        self,
        call: _Call,
        params: Params = (),
        *,
        idempotent: bool = True,
        retries: int | None = None,
        after_retry: Callable[[ExchangeError], Any] | None = None,
        nonce: int | None = None,
    ) -> Any:
        max_retries = self._max_retries if retries is None else retries
        attempt = 0
        nonce_retry_left = True
        while True:
            try:
                return self._attempt(call, params, nonce)
            except RateLimited:
                raise
            except _NonceRefused as exc:
                if nonce is not None:
                    raise  # a pinned nonce is the caller's to judge
                if not nonce_retry_left:
                    raise AuthError(
                        f"{exc.msg}; the nonce was refused twice: check that the system clock "
                        "is within 60 s of the exchange's",
                        exc.code,
                        exc.status,
                    ) from exc
                nonce_retry_left = False
            except TransientExchangeError as exc:
                if not (idempotent or isinstance(exc, _NotSent)) or attempt >= max_retries:
                    raise
                self._backoff(attempt)
                attempt += 1
            except ExchangeError as exc:
                if attempt == 0 or after_retry is None:
                    raise
                return after_retry(exc)

    def _backoff(self, attempt: int) -> None:
        delay = min(self._backoff_max, self._backoff_base * 2**attempt)
        if delay > 0:
            self._sleep(delay * (0.5 + random.random() / 2))

    def _attempt(self, call: _Call, params: Params, nonce: int | None = None) -> Any:
        started, cpu = time.perf_counter(), time.process_time()
        self._budget.acquire(call.weight, call.orders)
        request = self._build(call, params, nonce)
        status: int | None = None
        code: int | None = None
        try:
            response = self._send(call, request)
            status = response.status_code
            return self._interpret(call, response)
        except ExchangeError as exc:
            code = exc.code
            raise
        finally:
            wall_ms = (time.perf_counter() - started) * 1000
            cpu_ms = (time.process_time() - cpu) * 1000
            entry = RequestLog(call.method, call.path, status, call.weight, wall_ms, code, cpu_ms)
            self._log(entry)

    def _log(self, entry: RequestLog) -> None:
        if self._on_request is not None:
            self._on_request(entry)

    def _build(self, call: _Call, params: Params, nonce: int | None = None) -> httpx.Request:
        pairs = [(k, _fmt(v)) for k, v in params]
        if call.signed:
            signer = self._require_signer(call)
            msg = encode_params(pairs + self._auth_pairs(signer, nonce))
            query = f"{msg}&signature={signer.sign(msg)}"
        else:
            query = encode_params(pairs)
        if call.method == "GET":
            url = f"{call.path}?{query}" if query else call.path
            return self._http.build_request("GET", url)
        headers = {"Content-Type": _FORM}
        return self._http.build_request(
            call.method, call.path, content=query.encode("ascii"), headers=headers
        )

    def _require_signer(self, call: _Call) -> Signer:
        if self._signer is None:
            raise ConfigError(
                f"{self._prefix}{call.method} {call.path} needs a signed request but the client "
                "has no signer; set exchange.signer_key_env or signer_keystore in the agent config"
            )
        return self._signer

    def _auth_pairs(self, signer: Signer, nonce: int | None = None) -> list[tuple[str, str]]:
        pairs = [("nonce", str(nonce if nonce is not None else self._nonces.next()))]
        if self._user:
            pairs.append(("user", self._user))
        pairs.append(("signer", signer.address))
        return pairs

    def _send(self, call: _Call, request: httpx.Request) -> httpx.Response:
        where = f"{self._prefix}{call.method} {call.path}"
        try:
            return self._read_capped(where, request)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise _NotSent(f"{where}: could not connect ({type(exc).__name__})") from None
        except httpx.TimeoutException as exc:
            raise TransientExchangeError(
                f"{where}: no reply in time ({type(exc).__name__})"
            ) from None
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise TransientExchangeError(
                f"{where}: connection dropped ({type(exc).__name__})"
            ) from None

    def _read_capped(self, where: str, request: httpx.Request) -> httpx.Response:
        """Send and read the answer, stopping once it passes ``max_answer_bytes``."""
        response = self._http.send(request, stream=True)
        try:
            body = read_capped(response, self._max_answer_bytes)
        finally:
            response.close()
        if body is None:
            raise TransientExchangeError(
                f"{where}: answer larger than {self._max_answer_bytes} bytes; not read further"
            )
        headers = [(k, v) for k, v in response.headers.multi_items() if k != "content-encoding"]
        return httpx.Response(response.status_code, headers=headers, content=body, request=request)

    def _interpret(self, call: _Call, response: httpx.Response) -> Any:
        where = f"{self._prefix}{call.method} {call.path}"
        headers = response.headers
        self._budget.observe(
            _header_int(headers, "X-MBX-USED-WEIGHT-1M"),
            _header_int(headers, "X-MBX-ORDER-COUNT-10S"),
            _header_int(headers, "X-MBX-ORDER-COUNT-1M"),
        )
        status = response.status_code
        ok, body = _json(response)
        code, msg = _code_msg(body)
        if status in (429, 418) or code in _RATE_CODES:
            raise self._rate_limited(where, response, code, msg)
        if 200 <= status < 300 and ok and (code is None or code >= 0):
            return body
        if code is not None and code < 0:
            raise _error_for(status, code, msg, where)
        detail = f"HTTP {status}: {_snippet(response)}"
        if status >= 500 or 200 <= status < 300:
            raise TransientExchangeError(f"{where}: unreadable reply, {detail}", None, status)
        if status in (401, 403):
            raise AuthError(f"{where}: credentials refused, {detail}", None, status)
        raise BadRequest(f"{where}: request refused, {detail}", None, status)

    def _rate_limited(
        self, where: str, response: httpx.Response, code: int | None, msg: str
    ) -> RateLimited:
        status = response.status_code
        banned = status == 418 or "banned until" in msg
        now = self._clock()
        retry_at = now + _DEFAULT_PAUSE_S[418 if banned else 429]
        retry_after = response.headers.get("Retry-After", "").strip()
        match = _BANNED_UNTIL.search(msg)
        if re.fullmatch(r"\d+(\.\d+)?", retry_after):
            retry_at = now + float(retry_after)
        elif match:
            retry_at = int(match.group(1)) / 1000
        reason = f"{where}: HTTP {status} {msg or 'rate limit'}".strip()
        self._budget.pause(retry_at, reason)
        cls = IpBanned if banned else RateLimited
        text = f"{reason}; every agent on this host pauses until {retry_at:.0f} (epoch s)"
        return cls(text, retry_at, code, status)


def read_capped(response: httpx.Response, limit: int) -> bytes | None:
    """The (decoded) body of a streamed ``response``, or None once it passes ``limit`` bytes."""
    declared = _as_int(response.headers.get("Content-Length"))
    if declared is not None and declared > limit and not response.headers.get("Content-Encoding"):
        return None
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _optional(**values: ParamValue | None) -> list[tuple[str, ParamValue]]:
    return [(k, v) for k, v in values.items() if v is not None]


def _order_ref(
    symbol: str, order_id: int | None, client_order_id: str | None
) -> list[tuple[str, ParamValue]]:
    if order_id is None and client_order_id is None:
        raise BadRequest(f"an order of {symbol} needs order_id or client_order_id to be named")
    params: list[tuple[str, ParamValue]] = [("symbol", symbol)]
    params += _optional(orderId=order_id, origClientOrderId=client_order_id)
    return params


def order_params(request: OrderRequest) -> list[tuple[str, ParamValue]]:
    """``POST /fapi/v3/order`` parameters for ``request``, in the order they are sent."""
    if not _CLIENT_ORDER_ID.fullmatch(request.client_order_id):
        raise BadRequest(
            f"client order id {request.client_order_id!r} must be 1-36 characters of "
            "[A-Za-z0-9._:/-]"
        )
    params: list[tuple[str, ParamValue]] = [
        ("symbol", request.symbol),
        ("side", request.side),
        ("type", request.type),
    ]
    if request.position_side is not PositionSide.BOTH:
        params.append(("positionSide", request.position_side))
    params += _optional(
        timeInForce=request.time_in_force,
        quantity=request.quantity,
        price=request.price,
        stopPrice=request.stop_price,
        reduceOnly=True if request.reduce_only else None,
        closePosition=True if request.close_position else None,
        workingType=request.working_type,
        stpMode=request.stp_mode,
    )
    params.append(("newClientOrderId", request.client_order_id))
    params.append(("newOrderRespType", "RESULT"))
    return params


def as_exchange(client: AsterClient) -> Exchange:
    """``client`` typed as the runner's ``Exchange`` contract (mypy checks the fit here)."""
    return client


def as_account_controls(client: AsterClient) -> AccountControls:
    """``client`` typed as the ``AccountControls`` contract (mypy checks the fit here)."""
    return client
