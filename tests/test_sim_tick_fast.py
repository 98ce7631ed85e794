"""The simulator's per-tick shortcuts of a backtest against the plain rules they stand for.

Candle opens as a range (``Market._opens_forward``/``_opens_backward``) against the walk from
candle to candle (``_walk_forward``/``_walk_backward``); the replay's held clock against the
frozen time it holds; the funding check that takes no lock against the settlements it finds;
the liquidation check of an account holding nothing against the plain rule.
"""

from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path

from aster_agents.models import INTERVAL_MS
from aster_agents.sim import liquidation
from aster_agents.sim.engine import Engine, SimAccountState
from aster_agents.sim.market import Market, _walk_backward, _walk_forward, bucket_open
from aster_agents.sim.recording import load_recording
from aster_agents.sim.sources import ReplayMarket
from aster_agents.sim.symbols import SYMBOLS

FIXTURE = Path(__file__).parent / "data" / "replay" / "xrp"
DAY = 86_400_000
USER = "0x" + "ef" * 20


def test_candle_opens_as_a_range_are_the_walk_for_every_interval() -> None:
    """Forward from a candle's open and backward from any moment, limits 0 to past the span,
    around the genesis and across month and week boundaries: the same opens."""
    rng = random.Random(7)
    market = Market(seed=1, start_ms=1_767_225_600_000, history_minutes=600)
    genesis = market.genesis_ms
    for interval, size in INTERVAL_MS.items():
        span = size if interval != "1M" else 31 * DAY
        for _ in range(60):
            end = genesis + rng.randint(-3 * span, 40 * span)
            limit = rng.choice((0, 1, 2, 3, 17, 499, 1500))
            want = _walk_backward(interval, end, limit, genesis)
            assert market._opens_backward(interval, end, limit) == want, (interval, end, limit)
            first = bucket_open(interval, genesis + rng.randint(-2 * span, 30 * span))
            want = _walk_forward(interval, first, end, limit)
            got = market._opens_forward(interval, first, end, limit)
            assert got == want, (interval, first, end, limit)


def test_the_replays_held_clock_is_the_frozen_time_up_to_the_end() -> None:
    """``now_ms`` of a frozen replay, advanced, thawed and frozen again (at, before and after
    the recording's end), is ``min(frozen, end)``; a running clock is read afresh."""
    wall = [1_000.0]
    market = ReplayMarket(load_recording(FIXTURE), reference_ms=0, wall=lambda: wall[0])
    start = market.now_ms()
    assert start == min(market.start_ms, market.end_ms)
    wall[0] += 2.5
    assert market.now_ms() == min(market.start_ms + 2_500, market.end_ms)
    for at in (start, market.end_ms - 1, market.end_ms, market.end_ms + 60_000):
        assert market.freeze(at) == at
        assert market.now_ms() == min(at, market.end_ms)
    market.freeze(market.end_ms - 10)
    market.advance(4)
    assert market.now_ms() == market.end_ms - 6
    market.advance(100)
    assert market.now_ms() == market.end_ms
    market.freeze(start)
    market.thaw()
    wall[0] += 1.0
    assert market.now_ms() == start + 1_000
    assert not market.frozen


def test_funding_settles_at_each_settlement_and_nowhere_else() -> None:
    """Stepping a frozen clock a minute at a time (and back): a settlement is applied the
    first time the clock reaches its time, once; the lock-free answer in between is 0."""
    start = 1_767_225_600_000
    market = Market(seed=2, start_ms=start + 1, history_minutes=60)
    market.freeze()
    engine = Engine(market, funding_interval_ms=3_600_000)
    engine.add_account(USER, Decimal(1000))
    engine.new_order(
        USER, {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.01"}
    )
    applied = []
    for minute in range(1, 200):
        market.freeze(start + 1 + minute * 60_000)
        if engine.settle_funding():
            applied.append(minute)
        if minute == 100:
            market.freeze(start + 30 * 60_000)  # the clock set back: nothing new is due
            assert engine.settle_funding() == 0
    assert applied == [60, 120, 180]  # hourly, the first step at or past each settlement
    fees = [i.time for i in engine.account(USER).income if i.income_type == "FUNDING_FEE"]
    assert fees == [start + h * 3_600_000 for h in (1, 2, 3)]


def test_an_account_holding_nothing_is_never_liquidated_whatever_its_wallet() -> None:
    """The plain rule (``not held or covered``): a wallet below zero with every position at
    zero amount is no liquidation; the same wallet with a position is."""
    market = Market(seed=3, history_minutes=60)
    market.freeze()
    engine = Engine(market)
    acct = engine.add_account(USER, Decimal(100))
    engine.new_order(
        USER, {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.01"}
    )
    engine.new_order(
        USER, {"symbol": "BTCUSDT", "side": "SELL", "type": "MARKET", "quantity": "0.01"}
    )
    assert acct.positions and not any(p.amount for p in acct.positions.values())
    acct.balance = Decimal(-5)
    assert liquidation.covered(engine, acct)
    assert not liquidation.liquidate_if_due(engine, acct)
    engine.tick()
    assert acct.liquidating_until == 0
    acct.balance = Decimal(100)
    engine.new_order(
        USER, {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.01"}
    )
    acct.balance = Decimal(-5)
    assert not liquidation.covered(engine, acct)
    engine.tick()
    assert acct.liquidating_until > 0 and engine.position(USER, "BTCUSDT") == 0


def _plain_none_fire(engine: Engine, acct: SimAccountState) -> bool:
    """The plain rule: every open order a stop order and none triggered at its mark."""
    orders = list(acct.open_orders.values())
    return all(o.type != "LIMIT" for o in orders) and not any(
        Engine._triggered(o, engine.market.mark(o.symbol)) for o in orders
    )


def test_stops_that_cannot_fire_are_found_as_the_plain_rule_finds_them() -> None:
    """Stops of both kinds and sides on two symbols, marks swept across every stop (each
    stop exactly too), orders cancelled and added, a LIMIT order among them: ``_none_fire``
    answers as checking each order does, and the engine's step fires what the rule fires."""
    market = Market(seed=4, history_minutes=60)
    market.freeze()
    engine = Engine(market)
    acct = engine.add_account(USER, Decimal(100_000))
    btc, eth = market.mark("BTCUSDT"), market.mark("ETHUSDT")
    tick = {s: SYMBOLS[s].tick_size for s in ("BTCUSDT", "ETHUSDT")}

    def stop(symbol: str, side: str, kind: str, at: Decimal) -> None:
        price = (at / tick[symbol]).to_integral_value() * tick[symbol]
        engine.new_order(
            USER,
            {
                "symbol": symbol,
                "side": side,
                "type": kind,
                "quantity": "0.01",
                "stopPrice": str(price),
                "reduceOnly": "false",
            },
        )

    for symbol, mark in (("BTCUSDT", btc), ("ETHUSDT", eth)):
        for pct in (2, 5):
            stop(symbol, "BUY", "STOP_MARKET", mark * (1 + Decimal(pct) / 100))
            stop(symbol, "SELL", "STOP_MARKET", mark * (1 - Decimal(pct) / 100))
            stop(symbol, "SELL", "TAKE_PROFIT_MARKET", mark * (1 + Decimal(pct + 1) / 100))
            stop(symbol, "BUY", "TAKE_PROFIT_MARKET", mark * (1 - Decimal(pct + 1) / 100))
    stops = sorted({o.stop_price for o in acct.open_orders.values() if o.symbol == "BTCUSDT"})
    sweep = [btc * (1 + Decimal(k) / 1000) for k in range(-80, 81, 4)]
    seen = set()
    for step, price in enumerate(sorted({*sweep, *stops})):
        market.pin("BTCUSDT", price.quantize(tick["BTCUSDT"]))
        market.pin(
            "ETHUSDT", eth if step % 3 else (eth * Decimal("1.055")).quantize(tick["ETHUSDT"])
        )
        if step == 10:  # the orders change: the triggers are found again
            first = next(iter(acct.open_orders))
            engine.cancel_order(USER, {"symbol": "BTCUSDT", "orderId": str(first)})
        plain = _plain_none_fire(engine, acct)
        assert engine._none_fire(acct) is plain, price
        seen.add(plain)
    assert seen == {True, False}
    market.pin("BTCUSDT", (btc * Decimal("1.03")).quantize(tick["BTCUSDT"]))
    market.pin("ETHUSDT", eth)
    due = {
        o.order_id for o in acct.open_orders.values() if Engine._triggered(o, market.mark(o.symbol))
    }
    resting = set(acct.open_orders) - due
    assert due and resting
    engine.tick()  # the step fires exactly the triggered ones
    assert set(acct.open_orders) == resting
    assert all(engine.orders[i].status == "FILLED" for i in due)
    market.pin("BTCUSDT", btc)
    engine.new_order(
        USER,
        {
            "symbol": "BTCUSDT",
            "side": "BUY",
            "type": "LIMIT",
            "timeInForce": "GTC",
            "quantity": "0.01",
            "price": str((btc * Decimal("0.99")).quantize(tick["BTCUSDT"])),
        },
    )
    assert not engine._none_fire(acct) and not _plain_none_fire(engine, acct)
