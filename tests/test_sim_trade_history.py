"""The simulator's trade history (``GET /fapi/v3/userTrades``): the per-symbol index with its
bisection on ``startTime`` answers exactly what a scan of every trade answers."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from decimal import Decimal

from aster_agents.models import OrderRequest, OrderType, Side
from aster_agents.sim.accounts import accounts_from_pairs
from aster_agents.sim.engine import SimIncome, SimTrade
from aster_agents.sim.inprocess import InProcessClient
from aster_agents.sim.server import SimApp, SimConfig

USER = "0x" + "cd" * 20
SYMBOLS = ("BTCUSDT", "ETHUSDT")


def scanned(trades: list[SimTrade], params: Mapping[str, str]) -> list[int]:
    """The ids the exchange's paging gives, by scanning every trade of the account."""
    start, end = params.get("startTime"), params.get("endTime")
    from_id, limit = params.get("fromId"), min(int(params.get("limit", "500")), 1000)
    kept = [
        t.id
        for t in trades
        if t.symbol == params["symbol"]
        and (from_id is None or t.id >= int(from_id))
        and (start is None or t.time >= int(start))
        and (end is None or t.time <= int(end))
    ]
    return kept[:limit] if from_id is not None or start is not None else kept[-limit:]


def trade_at(app: SimApp, client: InProcessClient, at_ms: int, n: int) -> None:
    app.market.freeze(at_ms)
    symbol, side = SYMBOLS[n % 2], (Side.BUY, Side.SELL)[n // 2 % 2]
    client.new_order(
        OrderRequest(symbol, side, OrderType.MARKET, f"t-{n}", quantity=Decimal("0.01"))
    )


def answers_match(app: SimApp) -> int:
    """Every paging of the route against the scan; returns how many were compared."""
    route = app.routes[("GET", "/fapi/v3/userTrades")]
    trades = list(app.engine.account(USER).trades)
    times = sorted({t.time for t in trades})
    edges = [None, times[0] - 1, *times, times[-1] + 1, *(t + 1 for t in times[:3])]
    ids = [None, *(str(t.id) for t in trades[::3])]
    compared = 0
    for symbol, start, end, from_id, limit in itertools.product(
        SYMBOLS, edges, (None, str(times[len(times) // 2])), ids, ("1", "2", "500")
    ):
        params = {"symbol": symbol, "limit": limit}
        for name, value in (("startTime", start), ("endTime", end), ("fromId", from_id)):
            if value is not None:
                params[name] = str(value)
        got = [int(str(d["id"])) for d in route.handler(USER, params)]
        assert got == scanned(trades, params), params
        compared += 1
    return compared


def test_user_trades_paging_equals_a_scan_of_every_trade() -> None:
    """Trades on two symbols at rising market times, several at one instant: every
    combination of startTime, endTime, fromId and limit answers as the full scan does;
    also after the clock went back (the index then scans)."""
    app = SimApp(SimConfig())
    for account in accounts_from_pairs([(USER, USER)]):
        app.add_account(account)
    client = InProcessClient(app, USER)
    t0 = app.market.now_ms()
    for n in range(12):
        trade_at(app, client, t0 + 60_000 * (n // 3), n)  # three trades per instant
    assert app.engine.account(USER).trades_by_symbol.ordered
    assert answers_match(app) >= 500
    trade_at(app, client, t0 + 30_000, 12)  # a clock gone back
    assert not app.engine.account(USER).trades_by_symbol.ordered
    assert answers_match(app) >= 500


def scanned_income(rows: list[SimIncome], params: Mapping[str, str]) -> list[int]:
    """The tranIds ``GET /fapi/v3/income`` gives, by scanning every income row."""
    symbol, kind = params.get("symbol"), params.get("incomeType")
    start, end = params.get("startTime"), params.get("endTime")
    limit = min(int(params.get("limit", "100")), 1000)
    kept = [
        r.tran_id
        for r in rows
        if (symbol is None or r.symbol == symbol)
        and (not kind or r.income_type == kind)
        and (start is None or r.time >= int(start))
        and (end is None or r.time <= int(end))
    ]
    return kept[:limit] if start is not None else kept[-limit:]


def test_income_paging_equals_a_scan_of_every_row() -> None:
    """Commissions, realized P&L and funding over several settlements: every combination
    of incomeType, symbol, startTime, endTime and limit answers as the full scan does."""
    app = SimApp(SimConfig())
    for account in accounts_from_pairs([(USER, USER)]):
        app.add_account(account)
    client = InProcessClient(app, USER)
    eight_hours = 8 * 3_600_000
    t0 = (app.market.now_ms() // eight_hours + 1) * eight_hours - 120_000
    for n in range(9):
        trade_at(app, client, t0 + eight_hours * (n // 3) + 60_000 * (n % 3), n)
        app.engine.settle_funding()
    rows = list(app.engine.account(USER).income)
    kinds = {r.income_type for r in rows}
    assert {"COMMISSION", "REALIZED_PNL", "FUNDING_FEE"} <= kinds
    route = app.routes[("GET", "/fapi/v3/income")]
    times = sorted({r.time for r in rows})
    edges = [None, times[0] - 1, *times, times[-1] + 1]
    compared = 0
    for kind, symbol, start, end, limit in itertools.product(
        (None, "", *sorted(kinds)), (None, *SYMBOLS), edges, (None, times[-3]), ("1", "1000")
    ):
        params = {"limit": limit}
        for name, value in (
            ("incomeType", kind),
            ("symbol", symbol),
            ("startTime", start),
            ("endTime", end),
        ):
            if value is not None:
                params[name] = str(value)
        got = [int(str(d["tranId"])) for d in route.handler(USER, params)]
        assert got == scanned_income(rows, params), params
        compared += 1
    assert compared >= 500 and app.engine.account(USER).income_by_kind.ordered
