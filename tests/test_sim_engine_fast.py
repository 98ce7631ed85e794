"""The engine's per-tick shortcuts give what the plain computations give, on real accounts."""

from __future__ import annotations

from decimal import Decimal

from aster_agents.sim import liquidation
from aster_agents.sim.engine import Engine
from aster_agents.sim.market import Market

D = Decimal
USER = "0x" + "cd" * 20


def _engine_with_positions() -> Engine:
    """An account long BTC and short ETH at 20x, with a closed SOL position left at zero."""
    market = Market(seed=3, history_minutes=60)
    market.freeze()
    engine = Engine(market)
    engine.add_account(USER, D(600))
    for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        engine.set_leverage(USER, {"symbol": symbol, "leverage": "20"})

    def market_order(symbol: str, side: str, notional: int, step: str) -> None:
        qty = (D(notional) / market.mark(symbol)).quantize(D(step))
        engine.new_order(
            USER, {"symbol": symbol, "side": side, "type": "MARKET", "quantity": str(qty)}
        )

    market_order("BTCUSDT", "BUY", 6000, "0.001")
    market_order("ETHUSDT", "SELL", 4000, "0.001")
    market_order("SOLUSDT", "BUY", 1000, "0.01")
    sol = engine.position(USER, "SOLUSDT")
    engine.new_order(
        USER, {"symbol": "SOLUSDT", "side": "SELL", "type": "MARKET", "quantity": str(sol)}
    )
    return engine


def test_covered_is_margin_balance_against_maintenance_at_every_mark() -> None:
    """``covered`` (one pass) equals ``margin_balance >= maintenance`` (the plain sums) as
    the marks move across the account's liquidation point, both ways."""
    engine = _engine_with_positions()
    acct = engine.account(USER)
    assert engine.position(USER, "SOLUSDT") == 0 and ("SOLUSDT", "BOTH") in acct.positions
    btc, eth = engine.market.mark("BTCUSDT"), engine.market.mark("ETHUSDT")
    seen = set()
    for step in range(-40, 41):
        engine.market.pin("BTCUSDT", (btc * (1 + D(step) / 400)).quantize(D("0.1")))
        for eth_step in (-6, 0, 6):
            engine.market.pin("ETHUSDT", (eth * (1 + D(eth_step) / 400)).quantize(D("0.01")))
            plain = engine.margin_balance(acct) >= liquidation._maint(engine, acct)
            assert liquidation.covered(engine, acct) is plain, (step, eth_step)
            seen.add(plain)
    assert seen == {True, False}  # the marks crossed the liquidation point
