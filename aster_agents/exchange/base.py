"""Contracts between the exchange client and the rest of the project."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from aster_agents.models import (
        AccountInfo,
        Balance,
        BookTicker,
        CommissionRate,
        ExchangeInfo,
        Income,
        Kline,
        MarginType,
        Order,
        OrderRequest,
        Position,
        PremiumIndex,
        StpMode,
        TickerPrice,
        Turn,
        UserTrade,
    )


@dataclass(frozen=True, slots=True)
class RequestLog:
    """One exchange request attempt, for the runtime's one-line-per-request log.

    ``elapsed_ms`` (wall) and ``cpu_ms`` (this process's CPU) cover the whole attempt: the wait
    for the request budget, signing, the round trip and reading the answer.
    """

    method: str
    path: str
    status: int | None
    weight: int
    elapsed_ms: float
    error_code: int | None
    cpu_ms: float = 0.0


class RequestBudget(Protocol):
    """The host-wide request budget every exchange request goes through.

    The shared implementation lives in the ledger package (cross-process token buckets
    under the ledger lock); ``NullBudget`` below is for one-off CLI calls and tests.
    """

    def acquire(self, weight: int, orders: int = 0) -> None:
        """Block until ``weight`` request weight (and ``orders`` orders) may be spent.

        Raises ``RateLimited`` instead of blocking when the host is paused for longer than
        the implementation is willing to wait.
        """
        ...

    def observe(
        self,
        used_weight_1m: int | None,
        order_count_10s: int | None,
        order_count_1m: int | None,
    ) -> None:
        """Correct the buckets from the exchange's ``X-MBX-*`` headers."""
        ...

    def pause(self, until: float, reason: str) -> None:
        """Pause every agent on the host until ``until`` (epoch seconds), after a 429/418."""
        ...


class NullBudget:
    """A budget that never waits: for single CLI calls and unit tests."""

    def acquire(self, weight: int, orders: int = 0) -> None:
        return None

    def observe(
        self,
        used_weight_1m: int | None,
        order_count_10s: int | None,
        order_count_1m: int | None,
    ) -> None:
        return None

    def pause(self, until: float, reason: str) -> None:
        return None


class Exchange(Protocol):
    """What the runner needs from an exchange; ``exchange.http.AsterClient`` implements it.

    Errors are the reaction-named classes of ``aster_agents.errors``. ``new_order`` never
    duplicates an order: an unknown outcome is resolved by client order id or raised as
    ``UnknownOutcome`` carrying that id.
    """

    def server_time(self) -> int: ...

    def exchange_info(self) -> ExchangeInfo: ...

    def klines(
        self,
        symbol: str,
        interval: str,
        limit: int = 500,
        start_time: int | None = None,
        end_time: int | None = None,
    ) -> list[Kline]: ...

    def premium_index(self, symbol: str) -> PremiumIndex: ...

    def ticker_price(self, symbol: str) -> TickerPrice: ...

    def book_ticker(self, symbol: str) -> BookTicker: ...

    def balances(self) -> list[Balance]: ...

    def account(self) -> AccountInfo: ...

    def position_risk(self, symbol: str | None = None) -> list[Position]: ...

    def get_position_mode(self) -> bool: ...

    def set_position_mode(self, dual: bool) -> None: ...

    def set_leverage(self, symbol: str, leverage: int) -> int: ...

    def set_margin_type(self, symbol: str, margin_type: MarginType) -> None: ...

    def next_nonce(self) -> int:
        """A fresh nonce to pin on a request (recorded before the request is sent)."""
        ...

    def lockstep_turn(self, agent_id: str, scan_ms: int, done: int = 0) -> Turn | None:
        """On a lockstep simulator (``ExchangeInfo.market_clock``): end turn ``done`` and
        wait for this agent's next; None when it has not come yet (ask again)."""
        ...

    def new_order(self, request: OrderRequest, nonce: int | None = None) -> Order: ...

    def noop(self, nonce: int | None = None) -> bool:
        """Spend ``nonce`` (``POST /fapi/v3/noop``): True if accepted, False if refused."""
        ...

    def query_order(
        self, symbol: str, *, order_id: int | None = None, client_order_id: str | None = None
    ) -> Order: ...

    def cancel_order(
        self, symbol: str, *, order_id: int | None = None, client_order_id: str | None = None
    ) -> Order: ...

    def open_orders(self, symbol: str | None = None) -> list[Order]: ...

    def cancel_all_open_orders(self, symbol: str) -> None: ...

    def user_trades(
        self,
        symbol: str,
        *,
        start_time: int | None = None,
        from_id: int | None = None,
        limit: int = 500,
    ) -> list[UserTrade]: ...

    def income(
        self,
        symbol: str | None = None,
        income_type: str | None = None,
        start_time: int | None = None,
        limit: int = 100,
    ) -> list[Income]: ...

    def close(self) -> None: ...


class AccountControls(Protocol):
    """Account-wide settings and the user-data stream key; ``AsterClient`` implements it.

    Every agent of one account shares these: the stream key (``POST`` returns the active
    one; ``close_listen_key`` ends it for all) and the self-trade prevention mode.
    """

    def commission_rate(self, symbol: str) -> CommissionRate: ...

    def stp_mode(self) -> StpMode: ...

    def set_stp_mode(self, mode: StpMode) -> None: ...

    def test_order(self, request: OrderRequest) -> None: ...

    def countdown_cancel_all(self, symbol: str, countdown_ms: int) -> int: ...

    def start_listen_key(self) -> str: ...

    def keepalive_listen_key(self) -> None: ...

    def close_listen_key(self) -> None: ...
