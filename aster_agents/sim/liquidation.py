"""Cross-margin liquidation and auto-deleveraging (ADL) in the simulated exchange.

A simple, documented rule (not Aster's exact engine):

1. An account is liquidated when its margin balance (wallet + unrealized P&L at the mark
   prices) falls below its maintenance margin (per position, from the leverage brackets).
   It is checked on every request of the account and on every engine tick.
2. The engine cancels every open order of the account, then closes its positions one at a
   time, the largest maintenance margin first, until the margin balance covers what is left.
   Each close is a reduce-only MARKET order with client order id ``autoclose-<ms>-<n>``,
   filled at the mark price, or at the position's bankruptcy price (where the account's
   margin balance would be zero) when the mark is already beyond it. The liquidation fee,
   the symbol's ``liquidationFee`` (2.5%) of the notional but at most the margin left, is the
   trade's commission and goes to the symbol's insurance fund. It shows in ``userTrades``,
   ``allOrders``, ``forceOrders`` and ``income`` (REALIZED_PNL, COMMISSION) like any trade.
3. A close at the bankruptcy price costs the insurance fund the difference to the mark. When
   that leaves the fund below zero, ADL: positions of other accounts on the opposite side of
   the symbol, the most profitable (by P&L ratio) first, are closed at the same bankruptcy
   price with client order id ``adl_autoclose`` and no fee, until the fund is whole again or
   the liquidated quantity is matched.
4. For ``LIQUIDATION_MS`` of market time afterwards, new orders of the account answer
   -2023 USER_IN_LIQUIDATION (cancels and queries still work).

Isolated positions are counted in the account's margin like cross ones (the simulator has
no per-position liquidation).
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING, Final

from aster_agents.sim.brackets import maint_margin
from aster_agents.sim.symbols import SYMBOLS

if TYPE_CHECKING:
    from aster_agents.sim.engine import Engine, SimAccountState, SimPosition

ZERO: Final = Decimal(0)
LIQUIDATION_FEE: Final = Decimal("0.025")  # exchangeInfo ``liquidationFee``
INSURANCE_FUND: Final = Decimal(1_000_000)  # USDT per symbol at start
LIQUIDATION_MS: Final = 1_000
LIQUIDATION_PREFIX: Final = "autoclose-"
ADL_ID: Final = "adl_autoclose"
_MONEY: Final = Decimal("0.00000001")


def forced_kind(client_order_id: str) -> str | None:
    """``LIQUIDATION`` or ``ADL`` for an order the exchange placed itself, else None."""
    if client_order_id.startswith(LIQUIDATION_PREFIX):
        return "LIQUIDATION"
    if client_order_id.startswith(ADL_ID):
        return "ADL"
    return None


def liquidate_if_due(e: Engine, acct: SimAccountState) -> bool:
    """Run rule 1-3 on ``acct``; True when it was liquidated."""
    if covered(e, acct):  # also when nothing is held: the plain rule's "not held"
        return False
    held = [(k, p) for k, p in acct.positions.items() if p.amount]
    now = e.market.now_ms()
    acct.liquidating_until = now + LIQUIDATION_MS
    for order in list(acct.open_orders.values()):
        order.status, order.update_time = "CANCELED", now
        del acct.open_orders[order.order_id]
    held.sort(key=lambda kp: e.position_maint(kp[0][0], kp[1]), reverse=True)
    for n, (key, pos) in enumerate(held, start=1):
        if n > 1 and e.margin_balance(acct) >= _maint(e, acct):
            break
        _close(e, acct, key, pos, f"{LIQUIDATION_PREFIX}{now}-{n}")
    return True


def covered(e: Engine, acct: SimAccountState) -> bool:
    """``e.margin_balance(acct) >= _maint(e, acct)`` in one pass, each held position's mark
    asked once: the engine asks it of every account with a position on every tick.

    The same products, added in the same order; a position without amount adds an exact zero
    to each sum there, which cannot change its value, so it is left out here. (On a running
    clock the plain sums may read two instants; this reads each mark once.) True also when
    nothing is held: there is nothing to liquidate, whatever the wallet says.
    """
    unrealized = maint = ZERO
    held = False
    for (symbol, _), pos in acct.positions.items():
        amount = pos.amount
        if amount:
            held = True
            mark = e.market.mark(symbol)
            unrealized += (mark - pos.entry_price) * amount
            maint += maint_margin(symbol, amount * mark)
    return not held or acct.balance + unrealized >= maint


def _maint(e: Engine, acct: SimAccountState) -> Decimal:
    return sum((e.position_maint(s, p) for (s, _), p in acct.positions.items()), ZERO)


def _close(
    e: Engine, acct: SimAccountState, key: tuple[str, str], pos: SimPosition, coid: str
) -> None:
    symbol, amount = key[0], pos.amount
    mark = e.market.mark(symbol)
    rest = e.margin_balance(acct) - (mark - pos.entry_price) * amount
    price = mark
    if rest + (mark - pos.entry_price) * amount < 0:
        price = _bankruptcy_price(symbol, pos, rest)
    qty = abs(amount)
    left = rest + (price - pos.entry_price) * amount
    fee = min(price * qty * LIQUIDATION_FEE, max(ZERO, left)).quantize(_MONEY, ROUND_DOWN)
    e.forced_fill(acct, key, qty, price, fee, coid)
    fund = e.insurance.get(symbol, e.insurance_start) + fee - (price - mark) * amount
    if fund < 0:
        fund = _deleverage(e, acct, symbol, amount, price, mark, fund)
    e.insurance[symbol] = fund


def _bankruptcy_price(symbol: str, pos: SimPosition, rest: Decimal) -> Decimal:
    """Where ``rest`` + the position's P&L is zero, rounded to the tick in the holder's favour."""
    tick = SYMBOLS[symbol].tick_size
    price = pos.entry_price - rest / pos.amount
    rounding = ROUND_CEILING if pos.amount > 0 else ROUND_FLOOR
    return max(tick, (price / tick).to_integral_value(rounding) * tick)


def _deleverage(
    e: Engine,
    liquidated: SimAccountState,
    symbol: str,
    amount: Decimal,
    price: Decimal,
    mark: Decimal,
    fund: Decimal,
) -> Decimal:
    """Rule 3: close opposite positions of other accounts at ``price``; returns the fund."""
    queue = [
        (a, key, p)
        for a in e.accounts.values()
        if a is not liquidated
        for key, p in a.positions.items()
        if key[0] == symbol and p.amount and (p.amount > 0) != (amount > 0)
    ]
    queue.sort(key=lambda item: _pnl_ratio(item[2], mark), reverse=True)
    need = abs(amount)
    for acct, key, pos in queue:
        if fund >= 0 or need <= 0:
            break
        take = min(abs(pos.amount), need)
        signed = take if pos.amount > 0 else -take
        e.forced_fill(acct, key, take, price, ZERO, ADL_ID)
        fund += (mark - price) * signed
        need -= take
    return fund


def _pnl_ratio(pos: SimPosition, mark: Decimal) -> Decimal:
    if not pos.amount or not pos.entry_price:
        return ZERO
    return (mark - pos.entry_price) * pos.amount / (abs(pos.amount) * pos.entry_price)


def adl_quantile(e: Engine, acct: SimAccountState, symbol: str, pos: SimPosition) -> int:
    """1-4 by the position's P&L ratio rank among same-side positions (4: first in line)."""
    if not pos.amount:
        return 0
    mark = e.market.mark(symbol)
    mine = _pnl_ratio(pos, mark)
    ratios = [
        _pnl_ratio(p, mark)
        for a in e.accounts.values()
        for (s, _), p in a.positions.items()
        if s == symbol and p.amount and (p.amount > 0) == (pos.amount > 0)
    ]
    below = sum(1 for r in ratios if r <= mine)
    return max(1, min(4, -(-4 * below // len(ratios))))
