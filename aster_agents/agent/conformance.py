"""``aster-agent conformance``: does the configured exchange behave the way the agents assume?

Every assumption the agents rely on is checked against the agent's own exchange, signed with
the agent's own API wallet, with the smallest real orders the symbol's filters allow: the
signature (with and without ``user``), the nonce rule (30 s old accepted, 90 s old refused,
a duplicate refused, a noop spending an order's nonce), -2013 for an unknown client order
id, a 36-character client order id, a MARKET entry and its trades by order id, protective
``closePosition`` orders, a reduce-only close, the ``X-MBX-*`` headers, leverage, margin
type, one-way mode and the user-data stream key. Meant for Aster testnet before going live;
a mainnet base URL is refused unless ``allow_mainnet``.

Whatever it opens it cancels or closes again; if that fails, ``Report.left`` says exactly
what is still on the exchange. Run it while the agent is stopped: the exchange keeps the
last 100 nonces per signer, so a busy agent on the same wallet can make an old nonce look
expired.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Any, Final
from urllib.parse import urlparse

from aster_agents.agent.clients import TOOL_NONCE_SLOT
from aster_agents.agent.filters import round_price
from aster_agents.agent.inflight import is_aster_host
from aster_agents.config.keys import resolve_signer
from aster_agents.config.schema import AgentConfig, FleetConfig
from aster_agents.errors import AsterAgentsError, ConfigError, OrderNotFound, OrderRejected
from aster_agents.exchange.http import AsterClient
from aster_agents.models import (
    MarginType,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
)
from aster_agents.signing import NonceSource

PASS: Final = "PASS"
FAIL: Final = "FAIL"
SKIP: Final = "SKIP"
NONCE_CODES: Final = (-4225, -1021)
PROTECT_DISTANCE: Final = Decimal("0.05")  # stops 5 % from the mark: never fire during the run


@dataclass(frozen=True, slots=True)
class Check:
    """One assumption and what the exchange answered."""

    name: str
    status: str
    detail: str


@dataclass
class Report:
    agent: str
    base_url: str
    symbol: str
    checks: list[Check] = field(default_factory=list)
    left: list[str] = field(default_factory=list)  # what cleaning up could not undo

    @property
    def failed(self) -> bool:
        return any(c.status == FAIL for c in self.checks) or bool(self.left)

    def to_json(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "base_url": self.base_url,
            "symbol": self.symbol,
            "ok": not self.failed,
            "checks": [
                {"name": c.name, "status": c.status, "detail": c.detail} for c in self.checks
            ],
            "left_on_exchange": self.left,
        }


class _Fail(Exception):
    pass


class _Skip(Exception):
    pass


class HeaderBudget:
    """A request budget that never waits and keeps the last ``X-MBX-*`` values it was told."""

    def __init__(self) -> None:
        self.used_weight: int | None = None
        self.orders_10s: int | None = None
        self.orders_1m: int | None = None

    def acquire(self, weight: int, orders: int = 0) -> None:
        return None

    def observe(
        self, used_weight_1m: int | None, order_count_10s: int | None, order_count_1m: int | None
    ) -> None:
        self.used_weight = used_weight_1m if used_weight_1m is not None else self.used_weight
        self.orders_10s = order_count_10s if order_count_10s is not None else self.orders_10s
        self.orders_1m = order_count_1m if order_count_1m is not None else self.orders_1m

    def pause(self, until: float, reason: str) -> None:
        return None


def is_mainnet(base_url: str) -> bool:
    host = (urlparse(base_url).hostname or "").lower()
    return is_aster_host(base_url) and "testnet" not in host


def run_conformance(
    fleet: FleetConfig,
    agent_id: str,
    symbol: str | None = None,
    *,
    allow_mainnet: bool = False,
    on_check: Callable[[Check], None] | None = None,
) -> Report:
    """Run every check for ``agent_id``'s exchange; ``on_check`` sees each as it finishes."""
    agent = fleet.agent(agent_id)
    base_url = agent.exchange.base_url
    if is_mainnet(base_url) and not allow_mainnet:
        raise ConfigError(
            f"conformance: {base_url} is Aster mainnet; this places real orders with real "
            "money. Run it against testnet first, or pass --allow-mainnet"
        )
    chosen = symbol or agent.trading.symbols[0]
    report = Report(agent.id, base_url, chosen)
    with _Conformance(fleet, agent, chosen, report, on_check) as run:
        run.all()
    return report


def _coid(tag: str) -> str:
    """A fresh client order id of exactly 36 characters."""
    head = f"conf-{tag}-"
    return head + secrets.token_hex(18)[: 36 - len(head)]


class _Conformance:
    def __init__(
        self,
        fleet: FleetConfig,
        agent: AgentConfig,
        symbol: str,
        report: Report,
        on_check: Callable[[Check], None] | None,
    ) -> None:
        self.agent = agent
        self.symbol = symbol
        self.report = report
        self.on_check = on_check
        self.headers = HeaderBudget()
        signer = resolve_signer(fleet, agent)
        nonces = NonceSource(TOOL_NONCE_SLOT)  # one source: both clients sign as one wallet
        url = agent.exchange.base_url
        self.client = AsterClient(
            url, user=agent.exchange.user, signer=signer, nonces=nonces, budget=self.headers
        )
        self.bare = AsterClient(url, user=None, signer=signer, nonces=nonces)
        self.placed: list[str] = []
        self.entry: Order | None = None
        self.start_ms = 0

    def __enter__(self) -> _Conformance:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._clean_up()
        finally:
            self.client.close()
            self.bare.close()

    # ---------------------------------------------------------------- plumbing

    def _check(self, name: str, fn: Callable[[], str]) -> bool:
        try:
            check = Check(name, PASS, fn())
        except _Skip as exc:
            check = Check(name, SKIP, str(exc))
        except _Fail as exc:
            check = Check(name, FAIL, str(exc))
        except AsterAgentsError as exc:
            check = Check(name, FAIL, str(exc))
        self.report.checks.append(check)
        if self.on_check is not None:
            self.on_check(check)
        return check.status == PASS

    def all(self) -> None:
        self.start_ms = self.client.server_time()
        info = self.client.exchange_info()
        if self.symbol not in info.symbols:
            raise ConfigError(f"conformance: --symbol {self.symbol} is not offered by the exchange")
        self.info = info.symbols[self.symbol]
        self._check("one-way position mode", self._one_way)
        self._check("signature with user", lambda: self._balance(self.client))
        self._check("signature without user", lambda: self._balance(self.bare))
        self._check("nonce 30 s old accepted", lambda: self._old_nonce(30, accepted=True))
        self._check("nonce 90 s old refused", lambda: self._old_nonce(90, accepted=False))
        self._check("duplicate nonce refused", self._duplicate_nonce)
        self._check("unknown client order id gives -2013", self._unknown_coid)
        self._check("leverage", self._leverage)
        self._check("margin type", self._margin_type)
        if not self._check("symbol is flat before trading", self._flat):
            return
        self._check("noop spends an order's nonce", self._noop_semantics)
        if not self._check("MARKET entry, 36-char newClientOrderId", self._market_entry):
            return
        self._check("X-MBX-USED-WEIGHT-1m and order-count headers", self._headers)
        self._check("userTrades by order id", self._user_trades)
        self._check("STOP_MARKET closePosition", self._stop)
        self._check("TAKE_PROFIT_MARKET closePosition", self._take_profit)
        self._check("reduce-only close", self._reduce_only_close)
        self._check("listenKey", self._listen_key)

    # ---------------------------------------------------------------- the checks

    def _one_way(self) -> str:
        if self.client.get_position_mode():
            raise _Fail("dualSidePosition true: the account is in hedge mode; agents need one-way")
        return "dualSidePosition false"

    @staticmethod
    def _balance(client: AsterClient) -> str:
        usdt = [b for b in client.balances() if b.asset == "USDT"]
        return f"balance accepted ({usdt[0].balance} USDT)" if usdt else "balance accepted"

    def _old_nonce(self, age_s: int, accepted: bool) -> str:
        nonce = time.time_ns() // 1000 - age_s * 1_000_000
        ok = self.client.noop(nonce)
        if ok != accepted:
            raise _Fail(f"noop with a {age_s} s old nonce was {'accepted' if ok else 'refused'}")
        return "noop accepted" if ok else "noop refused (nonce outside the window)"

    def _duplicate_nonce(self) -> str:
        nonce = self.client.next_nonce()
        if not self.client.noop(nonce):
            raise _Fail("a fresh nonce was refused")
        if self.client.noop(nonce):
            raise _Fail("the same nonce was accepted twice")
        return "second use refused"

    def _unknown_coid(self) -> str:
        try:
            order = self.client.query_order(self.symbol, client_order_id=_coid("none"))
        except OrderNotFound as exc:
            return f"{exc.code}: {exc.msg.rsplit(': ', 1)[-1]}"
        raise _Fail(f"an unknown client order id was found: order {order.order_id}")

    def _leverage(self) -> str:
        wanted = self.agent.trading.leverage
        got = self.client.set_leverage(self.symbol, wanted)
        if got != wanted:
            raise _Fail(f"asked for {wanted}x, the exchange set {got}x")
        return f"{got}x"

    def _margin_type(self) -> str:
        self.client.set_margin_type(self.symbol, MarginType.CROSSED)
        rows = self.client.position_risk(self.symbol)
        kinds = {p.margin_type.lower() for p in rows}
        if rows and not kinds <= {"cross", "crossed"}:
            raise _Fail(f"set CROSSED, positionRisk says {sorted(kinds)}")
        return f"CROSSED (positionRisk: {', '.join(sorted(kinds)) or 'no row'})"

    def _flat(self) -> str:
        amount = self._position()
        if amount:
            raise _Fail(f"a position of {amount} is open on {self.symbol}; pick another --symbol")
        if any(o.symbol == self.symbol for o in self.client.open_orders(self.symbol)):
            raise _Fail(f"orders are open on {self.symbol}; pick another --symbol")
        return f"no position or order on {self.symbol}"

    def _noop_semantics(self) -> str:
        nonce, coid = self.client.next_nonce(), _coid("noop")
        if not self.client.noop(nonce):
            raise _Fail("the noop itself was refused")
        try:
            self.placed.append(coid)
            order = self.client.new_order(self._market(Side.BUY, coid), nonce=nonce)
        except OrderRejected as exc:
            if exc.code not in NONCE_CODES:
                raise _Fail(f"the order was refused, but not for its nonce: {exc}") from None
            try:
                self.client.query_order(self.symbol, client_order_id=coid)
            except OrderNotFound:
                return f"noop accepted, order with its nonce refused ({exc.code}), id unknown"
            raise _Fail("the order with the spent nonce exists on the exchange") from None
        raise _Fail(f"an order carrying a spent nonce was accepted: {order.status.value}")

    def _market_entry(self) -> str:
        coid = _coid("entry")
        self.placed.append(coid)
        order = self.client.new_order(self._market(Side.BUY, coid))
        self.entry = order
        if order.client_order_id != coid:
            raise _Fail(f"sent {coid}, the exchange answered {order.client_order_id}")
        if order.status is not OrderStatus.FILLED:
            raise _Fail(f"MARKET order {order.status.value}, executed {order.executed_qty}")
        again = self.client.query_order(self.symbol, client_order_id=coid)
        return f"FILLED {again.executed_qty} @ {order.avg_price}, found by its 36-char id"

    def _headers(self) -> str:
        h = self.headers
        text = f"weight {h.used_weight}, orders 10s {h.orders_10s}, orders 1m {h.orders_1m}"
        if h.used_weight is None or (h.orders_10s is None and h.orders_1m is None):
            raise _Fail(f"missing: {text}")
        return text

    def _user_trades(self) -> str:
        order = self._entry()
        trades = self.client.user_trades(self.symbol, start_time=self.start_ms - 60_000)
        mine = [t for t in trades if t.order_id == order.order_id]
        qty = sum((t.qty for t in mine), Decimal(0))
        if qty != order.executed_qty:
            raise _Fail(
                f"trades of order {order.order_id} add up to {qty}, not {order.executed_qty}"
            )
        return f"{len(mine)} trade(s) of order {order.order_id}, {qty} in all"

    def _stop(self) -> str:
        return self._protective(OrderType.STOP_MARKET)

    def _take_profit(self) -> str:
        return self._protective(OrderType.TAKE_PROFIT_MARKET)

    def _protective(self, kind: OrderType) -> str:
        self._entry()
        mark = self.client.premium_index(self.symbol).mark_price
        sign = -1 if kind is OrderType.STOP_MARKET else 1
        stop = round_price(mark * (1 + sign * PROTECT_DISTANCE), self.info.filters)
        coid = _coid("stop" if sign < 0 else "take")
        self.placed.append(coid)
        request = OrderRequest(
            self.symbol,
            Side.SELL,
            kind,
            coid,
            stop_price=stop,
            close_position=True,
            working_type="MARK_PRICE",
        )
        placed = self.client.new_order(request)
        visible = {o.client_order_id for o in self.client.open_orders(self.symbol)}
        if coid not in visible:
            raise _Fail(f"accepted ({placed.status.value}) but not in openOrders")
        canceled = self.client.cancel_order(self.symbol, client_order_id=coid)
        if canceled.status is not OrderStatus.CANCELED:
            raise _Fail(f"cancel answered {canceled.status.value}")
        return f"stop {stop}: {placed.status.value}, in openOrders, CANCELED"

    def _reduce_only_close(self) -> str:
        qty = self._entry().executed_qty
        coid = _coid("close")
        self.placed.append(coid)
        request = OrderRequest(
            self.symbol, Side.SELL, OrderType.MARKET, coid, quantity=qty, reduce_only=True
        )
        order = self.client.new_order(request)
        left = self._position()
        if order.status is not OrderStatus.FILLED or left:
            raise _Fail(f"close {order.status.value}, position left {left}")
        return f"FILLED {order.executed_qty}, position 0"

    def _listen_key(self) -> str:
        try:
            key = self.client.start_listen_key()
        except AsterAgentsError as exc:
            if getattr(exc, "status", None) == 404:
                raise _Skip("the exchange has no /fapi/v3/listenKey (404)") from None
            raise
        if not key:
            raise _Fail("POST answered without a listenKey")
        if self.client.start_listen_key() != key:
            raise _Fail("a second POST gave another key (should be the account's active one)")
        self.client.keepalive_listen_key()
        self.client.close_listen_key()
        return "POST gave the account's key (twice the same), PUT kept it alive, DELETE ended it"

    # ---------------------------------------------------------------- helpers

    def _entry(self) -> Order:
        if self.entry is None or self.entry.status is not OrderStatus.FILLED:
            raise _Skip("needs the MARKET entry")
        return self.entry

    def _position(self) -> Decimal:
        return sum((p.position_amt for p in self.client.position_risk(self.symbol)), Decimal(0))

    def _market(self, side: Side, coid: str) -> OrderRequest:
        return OrderRequest(self.symbol, side, OrderType.MARKET, coid, quantity=self._min_qty())

    def _min_qty(self) -> Decimal:
        """The smallest MARKET quantity the filters allow at today's mark (+10 % for drift)."""
        f = self.info.filters
        step = f.market_step_size or f.step_size
        least = f.market_min_qty or f.min_qty
        mark = self.client.premium_index(self.symbol).mark_price
        need = f.min_notional * Decimal("1.1") / mark if mark > 0 else least
        steps = (need / step).to_integral_value(rounding=ROUND_CEILING) if step > 0 else 0
        return max(least, step * steps)

    def _clean_up(self) -> None:
        """Cancel what is still open and close what is still held; report what is left."""
        left = self.report.left
        try:
            open_ids = {o.client_order_id for o in self.client.open_orders(self.symbol)}
            for coid in [c for c in self.placed if c in open_ids]:
                try:
                    self.client.cancel_order(self.symbol, client_order_id=coid)
                except AsterAgentsError as exc:
                    left.append(f"open order {coid} on {self.symbol} ({exc})")
            if self.placed:
                amount = self._position()
                if amount:
                    side = Side.SELL if amount > 0 else Side.BUY
                    request = OrderRequest(
                        self.symbol,
                        side,
                        OrderType.MARKET,
                        _coid("undo"),
                        quantity=abs(amount),
                        reduce_only=True,
                    )
                    self.client.new_order(request)
                    if self._position():
                        left.append(f"position {self._position()} {self.symbol}")
        except AsterAgentsError as exc:
            left.append(f"could not finish cleaning up {self.symbol}: {exc}; check `account`")
