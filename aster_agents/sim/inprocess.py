"""The project's exchange client wired straight to a simulator in the same process.

``InProcessClient`` is ``AsterClient`` with its request pipeline replaced by a call of the
simulator's route handler: the same parameters, the same JSON documents, the same parsing
into models and the same mapping of error codes, without HTTP, signatures or rate limits.
``backtest`` drives the agents' real runner through it.

History queries (``userTrades``, ``income``) carry a ``startTime`` the runner takes from the
ledger, which keeps its own times on the wall clock. ``wall_to_market`` (set by the driver)
turns such a wall-clock time into the market time the simulator had then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar

from aster_agents.errors import BadRequest
from aster_agents.exchange import parse
from aster_agents.exchange.http import (
    _USER_TRADES,
    AsterClient,
    NoNetwork,
    Params,
    ParamValue,
    _Call,
    _error_for,
    _fmt,
    _optional,
    klines_weight,
)
from aster_agents.models import Kline, Order, PremiumIndex, UserTrade
from aster_agents.signing import NonceSource
from aster_agents.sim.engine import ApiError, SimOrder
from aster_agents.sim.server import SimApp

_HISTORY = frozenset({"/fapi/v3/userTrades", "/fapi/v3/income"})
_PREMIUM_ROUTE: Final = ("GET", "/fapi/v3/premiumIndex")
ORDERS_KEPT: Final = 1_000  # parsed open orders (and trades) kept per client, by their JSON


class InProcessClient(AsterClient):
    """An :class:`AsterClient` answering from ``app`` for ``user`` (no network, no keys).

    Closed candles are shared by every client of a run without a cache here: the simulator
    keeps them as ``Kline`` objects itself (``ReplayMarket._kline``).
    """

    def __init__(
        self,
        app: SimApp,
        user: str,
        *,
        agent_id: str | None = None,
        wall_to_market: Callable[[int], int] | None = None,
    ) -> None:
        super().__init__(
            "http://in-process.invalid",
            user=user,
            signer=None,
            nonces=NonceSource(0),
            agent_id=agent_id,
            max_retries=0,
            transport=NoNetwork(),
        )
        self._app = app
        self._wall_to_market = wall_to_market
        # (symbol, interval, limit) -> the closed candles of the last answer, oldest first
        self._latest: dict[tuple[str, str, int], list[Kline]] = {}
        # an open order's JSON fields -> the Order parsed from them (a resting stop is asked
        # for every tick, unchanged)
        self._orders: dict[tuple[tuple[str, object], ...], Order] = {}
        self._trades: dict[tuple[tuple[str, object], ...], UserTrade] = {}  # likewise
        self._states: dict[tuple[object, ...], Order] = {}  # an open order's state -> Order

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        """As ``AsterClient.open_orders``. From the engine's own orders when the route is the
        engine's: each parsed from its document once while its state is the same (a resting
        stop is asked for every tick, unchanged), with no document written for it meanwhile.
        Otherwise from the route's documents, each parsed once while it is the same."""
        call = _Call("GET", "/fapi/v3/openOrders", 1 if symbol else 40)
        params = _optional(symbol=symbol)
        engine = self._app.engine
        route = self._app.routes.get((call.method, call.path))
        if route is None or route.handler != engine.open_orders:
            data = self._request(call, params)
            return _parsed_each(data, self._orders, parse.order, parse.orders)
        args = {k: _fmt(v) for k, v in params}
        try:
            found = engine.open_order_objects(self._user or "", args)
        except ApiError as exc:
            raise _error_for(
                exc.status, exc.code, exc.msg, f"{self._prefix}GET {call.path}"
            ) from None
        return [self._order(o) for o in found]

    def premium_index(self, symbol: str) -> PremiumIndex:
        """As ``AsterClient.premium_index``: from ``SimApp.premium_object`` when the route is
        the simulator's own (the runner asks it for every held symbol every tick), the model
        parsing the route's document gives, without the document."""
        route = self._app.routes.get(_PREMIUM_ROUTE)
        if route is None or route.handler != self._app.premium_json or type(symbol) is not str:
            return super().premium_index(symbol)
        if not symbol:  # the route answers every symbol's row: parsing says what is wrong
            return super().premium_index(symbol)
        try:
            return self._app.premium_object(symbol)
        except ApiError as exc:
            raise _error_for(
                exc.status, exc.code, exc.msg, f"{self._prefix}GET {_PREMIUM_ROUTE[1]}"
            ) from None

    def _order(self, o: SimOrder) -> Order:
        """``parse.order(o.to_json())``, kept by the order's state (``ORDERS_KEPT`` at most)."""
        key = o.state()
        try:
            hit = self._states.get(key)
        except TypeError:  # an unhashable value (a signalling NaN): no memo
            return parse.order(o.to_json())
        if hit is None:
            hit = parse.order(o.to_json())
            if len(self._states) >= ORDERS_KEPT:
                self._states.clear()
            self._states[key] = hit
        return hit

    def user_trades(
        self,
        symbol: str,
        *,
        start_time: int | None = None,
        from_id: int | None = None,
        limit: int = 500,
    ) -> list[UserTrade]:
        """As ``AsterClient.user_trades``, parsing a trade's document once: the runner asks
        from a step before its last fill, so the same trades come back tick after tick."""
        params: list[tuple[str, ParamValue]] = [("symbol", symbol)]
        params += _optional(startTime=start_time, fromId=from_id)
        params.append(("limit", limit))
        data = self._request(_USER_TRADES, params)
        return _parsed_each(data, self._trades, parse._user_trade, parse.user_trades)

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
        """As ``AsterClient.klines``, the candles taken from the simulator as objects.

        The latest ``limit`` candles (no ``startTime``/``endTime``) are asked for from the
        first candle this client has not yet seen closed, and joined to the closed ones it
        holds: the same answer (a closed candle never changes), without the simulator
        rebuilding the whole window every tick.
        """
        if start_time is not None or end_time is not None or kind != "klines":
            return self._klines(symbol, interval, limit, start_time, end_time, kind)
        key = (symbol, interval, limit)
        held = self._latest.get(key)
        if held:
            newer = self._klines(symbol, interval, limit, held[-1].close_time + 1, None, kind)
            if 0 < len(newer) < limit:  # else a window passed (or none): ask for the whole one
                out = (held + newer)[-limit:]
            else:
                out = self._klines(symbol, interval, limit, None, None, kind)
        else:
            out = self._klines(symbol, interval, limit, None, None, kind)
        now = self._app.market.now_ms()
        self._latest[key] = out[:-1] if out and out[-1].close_time >= now else out
        return out

    def _klines(
        self,
        symbol: str,
        interval: str,
        limit: int,
        start_time: int | None,
        end_time: int | None,
        kind: str,
    ) -> list[Kline]:
        """The route's answer as ``Kline`` objects straight from the simulator (no rows built
        as text and parsed back): the same parameters, checks, errors and values. The three
        kinds are one route in the simulator."""
        path = f"/fapi/v3/{kind}"
        if ("GET", path) in self._app.routes and _plain(
            symbol, interval, limit, start_time, end_time
        ):
            try:
                return self._app.kline_objects_of(symbol, interval, start_time, end_time, limit)
            except ApiError as exc:
                raise _error_for(
                    exc.status, exc.code, exc.msg, f"{self._prefix}GET {path}"
                ) from None
        params: list[tuple[str, ParamValue]] = [("symbol", symbol), ("interval", interval)]
        if start_time is not None:
            params.append(("startTime", start_time))
        if end_time is not None:
            params.append(("endTime", end_time))
        params.append(("limit", limit))
        if ("GET", path) not in self._app.routes:  # the route's own error
            return parse.klines(
                self._request(_Call("GET", path, klines_weight(limit), signed=False), params)
            )
        try:
            return self._app.kline_objects({k: _fmt(v) for k, v in params})
        except ApiError as exc:
            raise _error_for(exc.status, exc.code, exc.msg, f"{self._prefix}GET {path}") from None

    def _attempt(self, call: _Call, params: Params, nonce: int | None = None) -> Any:
        route = self._app.routes.get((call.method, call.path))
        where = f"{self._prefix}{call.method} {call.path}"
        if route is None:
            raise BadRequest(f"{where}: the in-process simulator has no such endpoint", None, 404)
        args = {k: _fmt(v) for k, v in params}
        if call.path in _HISTORY and "startTime" in args and self._wall_to_market is not None:
            args["startTime"] = str(self._wall_to_market(int(args["startTime"])))
        try:
            return route.handler((self._user or "") if call.signed else "", args)
        except ApiError as exc:
            raise _error_for(exc.status, exc.code, exc.msg, where) from None


_T = TypeVar("_T")


def _plain(symbol: object, interval: object, limit: object, start: object, end: object) -> bool:
    """True when the names are ``str`` and the numbers ``int`` (or None for the times; not a
    bool: its text is "true"): values whose text reads back as themselves, so the typed
    klines path may skip writing and reading the text."""
    return (
        type(symbol) is str
        and type(interval) is str
        and type(limit) is int
        and (start is None or type(start) is int)
        and (end is None or type(end) is int)
    )


def _parsed_each(
    data: object,
    cache: dict[tuple[tuple[str, object], ...], _T],
    one: Callable[[object], _T],
    every: Callable[[object], list[_T]],
) -> list[_T]:
    """``every(data)`` for a list of JSON objects, each parsed by ``one`` once while its
    document is the same (``cache``, at most ``ORDERS_KEPT`` documents): a parse is a pure
    function of the document, and the models are immutable."""
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        return every(data)  # its error, as the HTTP client says it
    out: list[_T] = []
    for item in data:
        key = tuple(item.items())
        try:
            value = cache.get(key)
        except TypeError:  # a field that is not a scalar: parse says what is wrong
            out.append(one(item))
            continue
        if value is None:
            value = one(item)
            if len(cache) >= ORDERS_KEPT:
                cache.clear()
            cache[key] = value
        out.append(value)
    return out
