"""The simulator's funding settlements and its frozen market clock."""

from __future__ import annotations

import json
from decimal import Decimal

from aster_agents.sim.engine import MONEY, Engine
from aster_agents.sim.market import Market
from aster_agents.sim.server import SimAccount, SimConfig, SimServer

D = Decimal
USER = "0x00000000000000000000000000000000000000aa"
HOUR_MS = 3_600_000
START_MS = 1_700_000_000_000 // (8 * HOUR_MS) * (8 * HOUR_MS) + HOUR_MS  # 1 h after a settlement


def _engine(interval_ms: int = 8 * HOUR_MS) -> Engine:
    market = Market(seed=3, start_ms=START_MS)
    market.freeze()
    engine = Engine(market, funding_interval_ms=interval_ms)
    engine.add_account(USER, D(10_000))
    return engine


def _buy(engine: Engine, symbol: str, qty: str, side: str = "BUY") -> None:
    engine.new_order(USER, {"symbol": symbol, "side": side, "type": "MARKET", "quantity": qty})


def _funding(engine: Engine) -> list[dict[str, object]]:
    return engine.income_json(USER, {"incomeType": "FUNDING_FEE"})


def test_open_position_pays_qty_x_mark_x_rate_at_each_settlement() -> None:
    """A long pays (or a short receives) qty x mark x rate at every settlement, once each."""
    engine = _engine()
    _buy(engine, "BTCUSDT", "0.1")
    _buy(engine, "ETHUSDT", "1", side="SELL")
    before = engine.balance(USER)
    settle = START_MS - HOUR_MS + 8 * HOUR_MS
    engine.market.advance(7 * HOUR_MS)  # exactly at the next settlement
    rows = _funding(engine)
    market = engine.market
    want = {
        "BTCUSDT": (
            -D("0.1") * market.mark("BTCUSDT", settle) * market.funding_rate("BTCUSDT", settle)
        ).quantize(MONEY),
        "ETHUSDT": (
            D(1) * market.mark("ETHUSDT", settle) * market.funding_rate("ETHUSDT", settle)
        ).quantize(MONEY),
    }
    assert {r["symbol"]: D(str(r["income"])) for r in rows} == want
    assert all(r["time"] == settle for r in rows) and len({r["tranId"] for r in rows}) == 2
    assert engine.balance(USER) == before + sum(want.values())
    engine.market.advance(1)
    assert len(_funding(engine)) == 2  # settled once, not again on the next request


def test_several_missed_settlements_are_all_applied_and_rates_are_small() -> None:
    """A request after three boundaries applies three settlements; rates stay within 0.01%."""
    engine = _engine(interval_ms=HOUR_MS)
    _buy(engine, "SOLUSDT", "3")
    engine.market.advance(3 * HOUR_MS)
    rows = _funding(engine)
    assert [r["time"] for r in rows] == [START_MS + k * HOUR_MS for k in (1, 2, 3)]
    rates = [engine.market.funding_rate("SOLUSDT", int(str(r["time"]))) for r in rows]
    assert all(abs(r) <= D("0.0001") for r in rates) and len(set(rates)) == 3


def test_funding_interval_zero_disables_funding() -> None:
    """funding_interval_ms=0: no FUNDING_FEE ever, the wallet only moves with trades."""
    engine = _engine(interval_ms=0)
    _buy(engine, "BTCUSDT", "0.1")
    before = engine.balance(USER)
    engine.market.advance(48 * HOUR_MS)
    engine.tick()
    assert _funding(engine) == [] and engine.balance(USER) == before


def test_flat_account_pays_nothing_and_rates_are_deterministic() -> None:
    """No position, no funding; the same seed gives the same rate for the same settlement."""
    engine = _engine()
    engine.market.advance(24 * HOUR_MS)
    assert _funding(engine) == []
    other = Market(seed=3, start_ms=START_MS)
    assert other.funding_rate("BTCUSDT", START_MS) == engine.market.funding_rate(
        "BTCUSDT", START_MS
    )


def test_premium_index_and_funding_history_match_the_settlements() -> None:
    """premiumIndex lastFundingRate/nextFundingTime and fundingRate rows use the same rates."""
    config = SimConfig(start_time_ms=START_MS, funding_interval_s=3600, seed=5)
    srv = SimServer(config)
    srv.market.freeze()
    app = srv.app
    premium = json.loads(
        app.handle("GET", "/fapi/v3/premiumIndex", "symbol=BTCUSDT", "", "127.0.0.1").body
    )
    last = START_MS // HOUR_MS * HOUR_MS
    assert premium["nextFundingTime"] == last + HOUR_MS
    assert D(premium["lastFundingRate"]) == srv.market.funding_rate("BTCUSDT", last)
    history = json.loads(
        app.handle("GET", "/fapi/v3/fundingRate", "symbol=BTCUSDT&limit=3", "", "127.0.0.1").body
    )
    assert [h["fundingTime"] for h in history] == [last - 2 * HOUR_MS, last - HOUR_MS, last]
    assert D(history[-1]["fundingRate"]) == D(premium["lastFundingRate"])


def test_freeze_stops_the_clock_advance_steps_it_and_thaw_resumes() -> None:
    """A frozen market keeps one time and prices; advance moves it; thaw runs on from there."""
    srv = SimServer(SimConfig(speed=1000.0, accounts=(SimAccount(USER, (), D(100)),)))
    at = srv.freeze()
    assert srv.market.now_ms() == at and srv.market.frozen
    assert srv.account_equity(USER) == D(100)
    assert srv.market.advance(5000) == at + 5000
    srv.market.thaw()
    assert not srv.market.frozen and srv.market.now_ms() >= at + 5000
