"""An independent client, ccxt's ``aster`` exchange, driving the simulator over loopback.

ccxt 4.5.90 signs V3 requests with EIP-712 (``AsterSignTransaction``) but always as the main
wallet (``user`` = ``signer`` = the key's address), which the simulator accepts like Aster
("master account authentication"). Its ``load_markets`` also asks the spot API, which the
simulator does not serve, so the markets are loaded from the futures exchangeInfo with ccxt's
own parser. Everything else below is ccxt's code, unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal, localcontext
from typing import Any

import ccxt
import pytest

from aster_agents.sim.server import SimServer
from tests.plugins.sim import SimKeys

SYMBOL = "BTC/USDT:USDT"


@pytest.fixture
def aster(sim_server: SimServer, sim_keys: SimKeys) -> Iterator[Any]:
    """ccxt's client, in a decimal context of its own: ccxt sets the rounding of the context
    it finds (ROUND_HALF_UP), which would change the money arithmetic of later tests."""
    with localcontext():
        yield from _aster(sim_server, sim_keys)


def _aster(sim_server: SimServer, sim_keys: SimKeys) -> Iterator[Any]:
    sim_server.market.pin("BTCUSDT", Decimal("50000.0"))
    exchange = ccxt.aster(
        {
            "privateKey": sim_keys.main_key,
            "walletAddress": sim_keys.user,
            "enableRateLimit": False,
            "timeout": 10_000,
            "options": {"builderFee": False, "defaultType": "swap"},
        }
    )
    base = sim_server.base_url
    exchange.urls["api"] = {
        name: f"{base}/fapi" if name.startswith("fapi") else f"{base}/api"
        for name in exchange.urls["api"]
    }
    info = exchange.fapiPublicGetV3ExchangeInfo()
    exchange.set_markets(exchange.parse_markets(info["symbols"]))
    yield exchange


def test_ccxt_public_market_data(aster: Any) -> None:
    """ccxt reads trades (trades, aggTrades), funding intervals and index references."""
    recent = aster.fetch_trades(SYMBOL, limit=5)
    assert len(recent) == 5 and all(t["price"] == 50000.0 and t["amount"] > 0 for t in recent)
    since = recent[0]["timestamp"]
    windowed = aster.fetch_trades(SYMBOL, since=since, limit=3)  # aggTrades
    assert [t["timestamp"] for t in windowed] == [t["timestamp"] for t in recent[:3]]
    intervals = aster.fetch_funding_intervals([SYMBOL])
    assert intervals[SYMBOL]["interval"] == "8h"
    refs = aster.fapiPublicGetV3Indexreferences({"symbol": "BTCUSDT"})
    assert refs["symbol"] == "BTCUSDT" and refs["references"]


def test_ccxt_batch_orders_fees_and_isolated_margin(aster: Any, sim_server: SimServer) -> None:
    """ccxt's batch place/cancel, trading fee, add/reduce margin and its history all work."""
    assert aster.fetch_balance()["USDT"]["free"] == 10000.0
    fee = aster.fetch_trading_fee(SYMBOL)
    assert (fee["maker"], fee["taker"]) == (0.0001, 0.00035)
    orders = [
        {"symbol": SYMBOL, "type": "limit", "side": "buy", "amount": 0.01, "price": price}
        for price in (49000, 48000)
    ]
    placed = aster.create_orders(orders)
    assert [o["status"] for o in placed] == ["open", "open"]
    canceled = aster.cancel_orders([o["id"] for o in placed], SYMBOL)
    assert [o["status"] for o in canceled] == ["canceled", "canceled"]
    assert aster.fetch_open_orders(SYMBOL) == []
    aster.set_margin_mode("isolated", SYMBOL)
    aster.create_order(SYMBOL, "market", "buy", 0.1)
    assert aster.add_margin(SYMBOL, 100)["status"] == "ok"
    assert aster.reduce_margin(SYMBOL, 40)["status"] == "ok"
    history = aster.fetch_margin_adjustment_history(SYMBOL)
    assert [(h["type"], h["amount"]) for h in history] == [("add", 100.0), ("reduce", 40.0)]


def test_ccxt_raw_account_controls(aster: Any) -> None:
    """listenKey, stpMode, multiAssetsMargin, countdownCancelAll and order/test via ccxt."""
    key = aster.fapiPrivatePostV3ListenKey()["listenKey"]
    assert aster.fapiPrivatePostV3ListenKey() == {"listenKey": key}
    assert aster.fapiPrivatePutV3ListenKey() == {}
    assert aster.fapiPrivateDeleteV3ListenKey() == {}
    with pytest.raises(ccxt.BaseError, match="-1125"):
        aster.fapiPrivatePutV3ListenKey()
    assert aster.fapiPrivatePostV3StpMode({"stpMode": "EXPIRE_TAKER"})["code"] == 200
    assert aster.fapiPrivateGetV3StpMode() == {"stpMode": "EXPIRE_TAKER"}
    assert aster.fapiPrivateGetV3MultiAssetsMargin() == {"multiAssetsMargin": False}
    countdown = {"symbol": "BTCUSDT", "countdownTime": 0}
    assert aster.fapiPrivatePostV3CountdownCancelAll(countdown)["countdownTime"] == "0"
    test = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.01"}
    assert aster.fapiPrivatePostV3OrderTest(test) == {}
