"""The replay's fast paths against the plain computations they stand for, on real recordings.

A backtest asks a replay for candles in the recording's own interval and for marks at every
step: ``ReplayMarket`` builds such a candle without the aggregation loop, shares a forming
candle among the clients asking at one moment, and reads a held price alone. Each must give
exactly what the plain path gives (``repr``: the float's sign and digits matter).
"""

from __future__ import annotations

from pathlib import Path

from aster_agents.models import INTERVAL_MS
from aster_agents.sim.inprocess import InProcessClient
from aster_agents.sim.market import Market, _places, decimal, kline_object, symbol_places
from aster_agents.sim.recording import (
    FUNDING_COLUMNS,
    KLINE_COLUMNS,
    Series,
    load_recording,
    write_csv,
)
from aster_agents.sim.server import SimApp, SimConfig
from aster_agents.sim.sources import ReplayMarket, held, held_price
from aster_agents.sim.symbols import SYMBOLS

FIXTURE = Path(__file__).parent / "data" / "replay" / "xrp"
MINUTE = 60_000


def _fracs(step: int) -> list[float]:
    """Fractions of a candle as the replay computes them: quarter marks and a ms either side."""
    moments = {q * step // 4 + d for q in range(5) for d in (-1, 0, 1)}
    return [min(1.0, max(0.0, m / step)) for m in sorted(moments)]


def _series() -> Series:
    return load_recording(FIXTURE).symbols["XRPUSDT"].klines


def test_a_held_price_alone_is_the_held_paths_price() -> None:
    s = _series()
    for i in range(len(s.c)):
        for frac in _fracs(s.step_ms):
            got = held_price(s.o[i], s.h[i], s.low[i], s.c[i], frac)
            assert repr(got) == repr(held(s.o[i], s.h[i], s.low[i], s.c[i], frac)[0])


def test_one_candle_is_the_loop_run_once_at_every_moment_of_it() -> None:
    s = _series()
    step, base = s.step_ms, s.first_open
    for i in range(len(s.c)):
        open_ms = base + i * step
        for m in sorted({q * step // 4 + d for q in range(5) for d in (-1, 0, 1)}):
            now = open_ms + m
            args = (open_ms, open_ms + step - 1, base, step, now)
            one = ReplayMarket._one_candle(s, i, *args)
            assert repr(one) == repr(ReplayMarket._candles(s, i, i, *args)), (i, m)


def test_a_candle_object_reads_the_memo_as_decimal_does() -> None:
    """``kline_object`` reads ``decimal``'s memo inline: the same Decimals as converting each
    value afresh, zeros of both signs included."""
    s = _series()
    sym = SYMBOLS["XRPUSDT"]
    pp, qp = symbol_places(sym)
    assert (pp, qp) == (_places(sym.tick_size), _places(sym.step_size))
    values = [*zip(s.o, s.h, s.low, s.c, s.v, strict=True), (0.0, -0.0, 0.0, -0.0, 0.0)]
    for _ in range(2):  # the second time, from the memo
        for o, h, lo, c, v in values:
            got = kline_object(sym, 1, 2, o, h, lo, c, v)
            want = (decimal(o, pp), decimal(h, pp), decimal(lo, pp), decimal(c, pp))
            assert repr((got.open, got.high, got.low, got.close)) == repr(want)
            assert repr(got.volume) == repr(decimal(v, qp))


def test_a_forming_candle_is_shared_at_its_moment_and_rebuilt_at_the_next(tmp_path: Path) -> None:
    """Two clients asking at one moment get one object, the candle built afresh then; a
    moment later a new one."""
    start, minutes = 1_767_225_600_000, 30
    source = Market(seed=5, start_ms=start, history_minutes=0)
    source.freeze(start + minutes * MINUTE - 1)
    rows = source.klines("BTCUSDT", "1m", start=start, limit=minutes)
    write_csv(
        tmp_path / "BTCUSDT-1m-klines.csv",
        KLINE_COLUMNS,
        [[str(r[0]), *(str(x) for x in r[1:6])] for r in rows],
    )
    write_csv(tmp_path / "BTCUSDT-fundingRate.csv", FUNDING_COLUMNS, [[str(start), "0"]])
    market = ReplayMarket(load_recording(tmp_path), reference_ms=0, warmup=10)
    app = SimApp(SimConfig(), market=market)
    one, two = InProcessClient(app, "a"), InProcessClient(app, "b")
    t = market.start_ms + MINUTE // 4
    market.freeze(t)
    first = one.klines("BTCUSDT", "1m", limit=3)
    assert two.klines("BTCUSDT", "1m", limit=3)[-1] is first[-1]
    values = market._candle_values("BTCUSDT", "1m", first[-1].open_time, t)
    assert repr(first[-1]) == repr(kline_object(SYMBOLS["BTCUSDT"], *values))
    market.freeze(t + MINUTE // 4)
    later = two.klines("BTCUSDT", "1m", limit=3)[-1]
    assert later is not first[-1] and later.open_time == first[-1].open_time
    assert later.volume > first[-1].volume


def test_a_recorded_candle_object_is_the_plain_candle_converted_at_every_moment() -> None:
    """``_recorded_kline`` (one recorded candle inline) is ``kline_object`` of the plain
    aggregation's values, in the recording's interval and in coarser ones, at quarter steps
    and a millisecond either side of them, up to the recording's end."""
    market = ReplayMarket(load_recording(FIXTURE), reference_ms=0, warmup=0)
    rec = market.recording.symbols["XRPUSDT"]
    s, sym = rec.klines, SYMBOLS["XRPUSDT"]
    base = s.first_open + market.offset_ms
    for interval in ("5m", "15m", "1h"):
        size = INTERVAL_MS[interval]
        for open_ms in range(base // size * size, market.end_ms + size, size):
            close_ms = open_ms + size - 1
            for m in sorted({q * size // 4 + d for q in range(5) for d in (-1, 0, 1)}):
                now = open_ms + m
                if now > market.end_ms:  # the clock stops there
                    break
                if now < max(open_ms, base):  # before the candle or the recording
                    continue
                got = market._recorded_kline("XRPUSDT", rec, open_ms, close_ms, now)
                lo_i = max(0, (open_ms - base) // s.step_ms)
                hi_i = min(len(s.c) - 1, (min(close_ms, now) - base) // s.step_ms)
                plain = ReplayMarket._candles(
                    s, lo_i, hi_i, open_ms, close_ms, base, s.step_ms, now
                )
                assert repr(got) == repr(kline_object(sym, *plain)), (interval, open_ms, m)


def test_a_replay_mark_is_the_plain_mark_at_every_moment() -> None:
    """A recorded symbol's mark (its steps inline) is ``Market.mark`` of the same moment
    (the held price converted and rounded): quarter steps, a millisecond either side, and
    past the recording's end; asked again at once, the kept one."""
    market = ReplayMarket(load_recording(FIXTURE), reference_ms=0, warmup=0)
    s = market.recording.symbols["XRPUSDT"].klines
    base = s.first_open + market.offset_ms
    for i in range(len(s.c) + 2):
        for m in sorted({q * s.step_ms // 4 + d for q in range(5) for d in (-1, 0, 1)}):
            t = base + i * s.step_ms + m
            got = market.mark("XRPUSDT", t)
            assert repr(got) == repr(Market.mark(market, "XRPUSDT", t)), (i, m)
            assert market.mark("XRPUSDT", t) is got
