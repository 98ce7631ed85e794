"""The seeded market generator and the public market-data endpoints."""

from __future__ import annotations

import itertools
import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aster_agents.models import INTERVAL_MS
from aster_agents.sim.market import MINUTE_MS, Market
from aster_agents.sim.symbols import SYMBOLS, symbol_info
from tests.plugins.sim import SignedClient

START = 1_790_000_000_000  # a fixed market start keeps these tests independent of the clock
REAL_SYMBOLS = Path(__file__).parent / "data" / "exchange_info" / "symbols-2026-01.json"
SIX = {"BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ASTERUSDT"}


class FakeWall:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _market(seed: int = 1, speed: float = 1.0) -> tuple[Market, FakeWall]:
    wall = FakeWall()
    return Market(seed, START, speed, wall=wall), wall


def test_same_seed_same_market_other_seed_other_market() -> None:
    """Prices are a pure function of seed and market time."""
    a, b, c = _market(1)[0], _market(1)[0], _market(2)[0]
    assert a.klines("ETHUSDT", "5m", limit=300) == b.klines("ETHUSDT", "5m", limit=300)
    assert a.klines("ETHUSDT", "5m", limit=300) != c.klines("ETHUSDT", "5m", limit=300)


@pytest.mark.parametrize("interval", sorted(INTERVAL_MS))
def test_every_interval_gives_consistent_candles(interval: str) -> None:
    """Each interval returns contiguous 12-field rows with high >= open/close >= low."""
    market = _market()[0]
    rows = market.klines("SOLUSDT", interval, limit=50)
    assert rows and all(len(r) == 12 for r in rows)
    for prev, row in itertools.pairwise(rows):
        assert row[0] == int(str(prev[6])) + 1
    for r in rows:
        o, h, lo, c = (Decimal(str(x)) for x in r[1:5])
        assert h >= max(o, c) and lo <= min(o, c)
    assert int(str(rows[-1][0])) <= START < int(str(rows[-1][6])) + 1


def test_history_covers_1500_one_minute_candles_and_time_windows() -> None:
    """1500 one-minute candles exist before the start; startTime/endTime select a window."""
    market = _market()[0]
    rows = market.klines("BTCUSDT", "1m", limit=1500)
    assert len(rows) == 1500
    window = market.klines("BTCUSDT", "1m", start=rows[10][0], end=rows[19][0], limit=500)  # type: ignore[arg-type]
    assert [r[0] for r in window] == [r[0] for r in rows[10:20]]


def test_speed_runs_market_time_faster() -> None:
    """With speed 10, one wall second is ten market seconds and the price moves."""
    market, wall = _market(speed=10)
    before = market.mark("BTCUSDT")
    wall.now += 6.0
    assert market.now_ms() == START + 60_000
    assert market.mark("BTCUSDT") != before


def test_the_path_has_trends_and_ranges() -> None:
    """Over the history there are hours-long rises and falls of several percent."""
    market = _market()[0]
    closes = [Decimal(str(r[4])) for r in market.klines("BTCUSDT", "4h", limit=180)]
    moves = [(b - a) / a for a, b in zip(closes, closes[6:], strict=False)]
    assert max(moves) > Decimal("0.03") and min(moves) < Decimal("-0.03")


def test_book_and_pin() -> None:
    """The book straddles the mark on the tick grid; pin forces the mark for tests."""
    market = _market()[0]
    market.pin("XRPUSDT", Decimal("2.0000"))
    bid, ask = market.book("XRPUSDT")
    assert bid < Decimal("2.0000") < ask and (ask - bid) % SYMBOLS["XRPUSDT"].tick_size == 0
    market.pin("XRPUSDT", None)
    assert market.mark("XRPUSDT") != Decimal("2.0000")


def test_exchange_info_lists_the_symbols_with_real_filters(sim_client: SignedClient) -> None:
    """exchangeInfo has every symbol of the table, its filters and the three rate limits."""
    info = sim_client.public("/fapi/v3/exchangeInfo").json()
    assert {s["symbol"] for s in info["symbols"]} == set(SYMBOLS) >= SIX
    btc = next(s for s in info["symbols"] if s["symbol"] == "BTCUSDT")
    filters = {f["filterType"]: f for f in btc["filters"]}
    assert filters["PRICE_FILTER"]["tickSize"] == "0.1"
    assert filters["LOT_SIZE"]["stepSize"] == "0.001"
    assert filters["MIN_NOTIONAL"]["notional"] == "5"
    assert [r["limit"] for r in info["rateLimits"]] == [2400, 1200, 300]


def test_symbol_table_copies_the_real_exchange_info() -> None:
    """Every simulated symbol's precisions, margins and filters equal the real exchangeInfo."""
    real = json.loads(REAL_SYMBOLS.read_text())
    assert [r["symbol"] for r in real] == list(SYMBOLS)
    for row in real:
        ours = symbol_info(SYMBOLS[row["symbol"]])
        assert row["status"] == "TRADING"
        for key in row.keys() - {"filters", "status"}:
            assert ours[key] == row[key], f"{row['symbol']} {key}"
        assert ours["filters"] == row["filters"], row["symbol"]


def test_market_data_endpoints(sim_client: SignedClient) -> None:
    """klines, mark/book tickers, premium index, depth, 24h ticker and time answer."""
    klines = sim_client.public("/fapi/v3/klines", symbol="BNBUSDT", interval="1h", limit=24)
    assert len(klines.json()) == 24
    premium = sim_client.public("/fapi/v3/premiumIndex", symbol="BNBUSDT").json()
    book = sim_client.public("/fapi/v3/ticker/bookTicker", symbol="BNBUSDT").json()
    assert Decimal(book["bidPrice"]) < Decimal(premium["markPrice"]) < Decimal(book["askPrice"])
    assert len(sim_client.public("/fapi/v3/premiumIndex").json()) == len(SYMBOLS)
    depth = sim_client.public("/fapi/v3/depth", symbol="BNBUSDT", limit=5).json()
    assert len(depth["bids"]) == len(depth["asks"]) == 5
    assert "lastPrice" in sim_client.public("/fapi/v3/ticker/24hr", symbol="BNBUSDT").json()
    assert sim_client.public("/fapi/v3/ticker/price", symbol="BNBUSDT").json()["symbol"]
    assert (
        len(
            sim_client.public(
                "/fapi/v3/markPriceKlines", symbol="BNBUSDT", interval="1m", limit=3
            ).json()
        )
        == 3
    )
    assert isinstance(sim_client.public("/fapi/v3/time").json()["serverTime"], int)
    assert sim_client.public("/fapi/v3/fundingRate", symbol="BNBUSDT", limit=3).json()


def test_bad_market_data_requests(sim_client: SignedClient) -> None:
    """Unknown symbols, intervals and paths give -1121, -1120 and 404."""
    bad = sim_client.public("/fapi/v3/klines", symbol="NOPE", interval="1m")
    assert (bad.status_code, bad.json()["code"]) == (400, -1121)
    bad = sim_client.public("/fapi/v3/klines", symbol="BTCUSDT", interval="7m")
    assert bad.json()["code"] == -1120
    assert sim_client.public("/fapi/v3/nothing").status_code == 404
    bad = sim_client.public("/fapi/v3/klines", symbol="BTCUSDT", interval="1m", startTime="x")
    assert (bad.status_code, bad.json()["code"]) == (400, -1102)


def test_v1_aliases_only_for_public_endpoints(sim_client: SignedClient) -> None:
    """/fapi/v1 market data works; signed /fapi/v1 endpoints (HMAC on the real API) are 404."""
    assert sim_client.public("/fapi/v1/ping").status_code == 200
    assert sim_client.send("GET", "/fapi/v1/balance").status_code == 404


def test_minute_constant() -> None:
    """Kline open times are aligned to their interval."""
    rows = _market()[0].klines("ASTERUSDT", "15m", limit=5)
    assert all(int(str(r[0])) % (15 * MINUTE_MS) == 0 for r in rows)


def test_same_day_starts_share_one_path() -> None:
    """Two markets started at different times on the same day agree at equal market times."""
    early = Market(3, START, wall=FakeWall())
    late = Market(3, START + 3_600_000, wall=FakeWall())
    t = START - 120_000
    assert early.mark("SOLUSDT", t) == late.mark("SOLUSDT", t)


@settings(max_examples=500, deadline=None)
@given(
    x=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(min_value=-1e-5, max_value=1e-5),
        st.sampled_from([0.0, -0.0, 1e-7, 5e-9, 0.5, 123456789.125]),
    ),
    places=st.integers(min_value=0, max_value=10),
)
def test_a_candle_field_is_written_as_the_decimal_would_print_it(x: float, places: int) -> None:
    """The kline text of a float at a tick's places equals str(Decimal) of it, tiny, zero,
    negative zero and non-finite values included (the replay's candles must not change)."""
    from aster_agents.sim.market import _fmt, _text

    assert _text(x, places) == str(_fmt(x, places))
