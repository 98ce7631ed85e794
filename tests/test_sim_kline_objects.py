"""The in-process client's typed klines: the candles parsing the simulator's route answer gives.

``InProcessClient.klines`` takes ``Kline`` objects straight from the market
(``SimApp.kline_objects``) instead of text rows parsed back. The plain path is the HTTP
client's own ``AsterClient.klines`` on the same client: the route's JSON rows through
``parse.klines``. Both must agree digit for digit (``repr``: ``Decimal("1.10")`` equals
``Decimal("1.1")`` but is not the same answer), errors included, at every kind of moment: quarter
steps inside a candle, a millisecond either side of a boundary, the start and the end of a
recording, for every kind, limit and ``startTime``/``endTime`` shape the client sends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from aster_agents.errors import AsterAgentsError
from aster_agents.exchange.http import AsterClient
from aster_agents.models import INTERVAL_MS, Kline
from aster_agents.sim.inprocess import InProcessClient
from aster_agents.sim.market import Market, _fmt, _text, decimal
from aster_agents.sim.recording import (
    FUNDING_COLUMNS,
    KLINE_COLUMNS,
    load_recording,
    write_csv,
)
from aster_agents.sim.server import SimApp, SimConfig
from aster_agents.sim.sources import LiveMarket, ReplayMarket

FIXTURE = Path(__file__).parent / "data" / "replay" / "xrp"
KINDS = ("klines", "markPriceKlines", "indexPriceKlines")
LIMITS = (1, 3, 40)
MINUTE = 60_000


def _outcome(call: Callable[[], list[Kline]]) -> str:
    """An answer as comparable text: the candles' repr, or the error's type and message."""
    try:
        return repr(call())
    except AsterAgentsError as exc:
        return f"{type(exc).__name__}: {exc}"


def _both(client: InProcessClient, *args: Any, **kwargs: Any) -> tuple[str, str]:
    """(plain, typed): the HTTP client's ``klines`` on this client (the route's rows parsed),
    and the in-process client's."""
    plain = _outcome(lambda: AsterClient.klines(client, *args, **kwargs))
    return plain, _outcome(lambda: client.klines(*args, **kwargs))


def _queries(t: int, size: int, genesis: int) -> list[tuple[int | None, int | None]]:
    """(startTime, endTime) shapes at market time ``t`` for candles of ``size`` ms."""
    return [
        (None, None),
        (t - 3 * size + 1, None),  # from inside a candle
        (t - 3 * size, None),
        (None, t - 2 * size),
        (genesis - 7 * size, genesis + 5 * size),  # before the recording's start
        (t + size, None),  # after now: nothing
    ]


def _moments(first_open: int, step: int, count: int, end: int) -> list[int]:
    """Quarter steps of the first, middle and last candles, a ms either side of each."""
    picks = [0, 1, count // 2, count - 2, count - 1]
    out = {
        first_open + i * step + q * step // 4 + d
        for i in picks
        for q in range(5)
        for d in (-1, 0, 1)
    }
    return [*sorted(t for t in out if t >= first_open), end + step]


def _compare(app: SimApp, symbol: str, intervals: Iterable[str], moments: Iterable[int]) -> int:
    """Ask both paths everything at each moment (time moving forward, as in a run); returns
    the number of non-empty answers compared."""
    client = InProcessClient(app, "")
    compared = 0
    for t in moments:
        app.market.freeze(t)
        for interval in intervals:
            size = INTERVAL_MS[interval]
            for kind in KINDS:
                for limit in LIMITS:
                    for start, end in _queries(t, size, app.market.genesis_ms):
                        plain, typed = _both(client, symbol, interval, limit, start, end, kind=kind)
                        assert typed == plain, (t, interval, kind, limit, start, end)
                        compared += plain.startswith("[Kline")
    return compared


def test_typed_klines_equal_the_parsed_route_on_the_fixture_recording() -> None:
    """XRPUSDT 5m (recorded), its aggregates, a finer interval (refused), and BTCUSDT, which the
    recording lacks (the seeded generator's path)."""
    market = ReplayMarket(load_recording(FIXTURE), reference_ms=0)
    app = SimApp(SimConfig(), market=market)
    series = market.recording.symbols["XRPUSDT"].klines
    moments = _moments(market.genesis_ms, series.step_ms, len(series.c), market.end_ms)
    assert _compare(app, "XRPUSDT", ("1m", "5m", "15m", "1h", "1d"), moments) > 1000
    assert _compare(app, "BTCUSDT", ("5m", "1h"), moments[:12]) > 100


def test_typed_klines_equal_the_parsed_route_on_a_synthetic_recording(tmp_path: Path) -> None:
    """A 1m recording written from the seeded generator (as the bench writes one), on two
    symbols of different tick and step sizes."""
    start, minutes = 1_767_225_600_000, 240
    source = Market(seed=5, start_ms=start, history_minutes=0)
    source.freeze(start + minutes * MINUTE - 1)
    for symbol in ("BTCUSDT", "DOGEUSDT"):
        rows = source.klines(symbol, "1m", start=start, limit=minutes)
        write_csv(
            tmp_path / f"{symbol}-1m-klines.csv",
            KLINE_COLUMNS,
            [[str(r[0]), *(str(x) for x in r[1:6])] for r in rows],
        )
        write_csv(tmp_path / f"{symbol}-fundingRate.csv", FUNDING_COLUMNS, [[str(start), "0"]])
    market = ReplayMarket(load_recording(tmp_path), reference_ms=0, warmup=30)
    app = SimApp(SimConfig(), market=market)
    moments = _moments(market.genesis_ms, MINUTE, minutes, market.end_ms)
    for symbol in ("BTCUSDT", "DOGEUSDT"):
        assert _compare(app, symbol, ("1m", "3m", "1h"), moments) > 1000


def test_typed_klines_equal_the_parsed_route_on_the_seeded_market() -> None:
    """The generator's own market (a week's candle included: weeks open on Mondays)."""
    app = SimApp(SimConfig(seed=7, history_minutes=3 * 1440))
    now = app.market.now_ms()
    moments = [now + k * 15_000 + d for k in range(6) for d in (-1, 0, 1)]
    assert _compare(app, "ETHUSDT", ("1m", "15m"), moments) > 500
    assert _compare(app, "ETHUSDT", ("1w",), moments[-1:]) > 10


@pytest.mark.parametrize(
    ("symbol", "interval", "limit"),
    [("NOPEUSDT", "5m", 10), ("", "5m", 10), ("XRPUSDT", "7m", 10), ("XRPUSDT", "5m", 0)],
)
def test_typed_klines_refuse_as_the_route_does(symbol: str, interval: str, limit: int) -> None:
    """A bad symbol, interval or limit: the same error, type and message, on both paths."""
    app = SimApp(SimConfig(), market=ReplayMarket(load_recording(FIXTURE), reference_ms=0))
    client = InProcessClient(app, "")
    plain, typed = _both(client, symbol, interval, limit)
    assert not plain.startswith("[") and typed == plain  # an error, the same
    plain, typed = _both(client, symbol, interval, limit, kind="nope")
    assert "no such endpoint" in plain and typed == plain


def test_typed_klines_of_a_live_market_are_the_upstream_candles() -> None:
    """``sim --market live`` keeps the upstream's candles: served as rows or as objects, the
    same answer (here the upstream is another simulator, in process)."""
    upstream = SimApp(SimConfig(seed=3, history_minutes=3 * 1440))
    live = LiveMarket(InProcessClient(upstream, ""), poll_s=3600)
    try:
        app = SimApp(SimConfig(), market=live)
        client = InProcessClient(app, "")
        for interval, limit in (("1m", 5), ("1h", 30), ("1d", 3)):
            plain, typed = _both(client, "ETHUSDT", interval, limit)
            assert plain.startswith("[Kline") and typed == plain
    finally:
        live.close()


def test_a_remembered_decimal_is_the_one_converted_afresh() -> None:
    """``decimal`` (remembered) against the plain conversions, digit for digit: recorded-like
    prices asked again and again, at several places, zero of both signs in either order."""
    recording = load_recording(FIXTURE).symbols["XRPUSDT"].klines
    values = [*recording.o, *recording.h, *recording.low, *recording.c, *recording.v]
    values += [0.0, -0.0, 0.0, 1e-9, -1e-9, 123456.789, 2.5, -2.5]
    for _ in range(2):
        for x in values:
            for places in (0, 1, 4, 8):
                fresh = Decimal(_text(x, places))
                assert repr(decimal(x, places)) == repr(fresh) == repr(_fmt(x, places)), x
