"""Market sources for the simulator beyond the seeded generator of ``market.py``.

``ReplayMarket`` plays a recording (``recording.py``) with the same interface as ``Market``,
so the engine, fees, funding, filters, limits and the nonce rule are untouched by the choice.

Market time runs through the recording's candles. The recording is shifted by whole weeks so
that the replay starts at or after the reference time (default: now): the agents keep their
books on the wall clock and look for their fills from the moment they sent an order, so a
market living in 2021 would hide every fill from them. Whole weeks keep weekdays, the UTC
day and the 8-hour funding grid; the served klines are the recording's candles, time-shifted.
The clock stops at the end of the recording (the last close holds from then on).

Inside a recorded candle the price holds four values for a quarter of the candle each:
open, the first extreme, the second extreme (the low first when the candle closes up), close.
A held path makes a replay independent of when the engine happens to look: every order and
every stop triggered inside one quarter meets the same price, whatever the speed.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Final, TypeVar

from aster_agents.errors import AsterAgentsError
from aster_agents.exchange.base import Exchange
from aster_agents.models import INTERVAL_MS, Kline, PremiumIndex
from aster_agents.sim.engine import ApiError
from aster_agents.sim.market import (
    CandleValues,
    Market,
    bucket_close,
    decimal,
    kline_object,
    symbol_places,
)
from aster_agents.sim.recording import Recording, Series, SymbolRecording
from aster_agents.sim.symbols import SYMBOLS, SimSymbol

WEEK_MS: Final = 7 * 86_400_000
_INF: Final = math.inf
_NEG_INF: Final = -math.inf
DEFAULT_WARMUP: Final = 100  # base candles of history before the replay's market time starts


def held(o: float, h: float, lo: float, c: float, frac: float) -> tuple[float, float, float]:
    """(price, high so far, low so far) at ``frac`` of a candle on the held four-step path."""
    path = (o, lo, h, c) if c >= o else (o, h, lo, c)
    seen = path[: min(3, int(frac * 4)) + 1]
    return seen[-1], max(seen), min(seen)


def held_price(o: float, h: float, lo: float, c: float, frac: float) -> float:
    """``held(o, h, lo, c, frac)[0]`` for ``frac`` in [0, 1]: the price alone (a mark needs
    no high and low so far, and the engine asks for every symbol's at every step)."""
    path = (o, lo, h, c) if c >= o else (o, h, lo, c)
    return path[min(3, int(frac * 4))]


def week_offset(recording_start: int, reference_ms: int) -> int:
    """The whole-week shift that moves ``recording_start`` to at or after ``reference_ms``."""
    return max(0, math.ceil((reference_ms - recording_start) / WEEK_MS)) * WEEK_MS


CLOSED_ROWS_KEPT: Final = 50_000  # closed candle rows (and Klines) a replay keeps built

FORMING_KEPT: Final = 1_000  # forming candles remembered (a few per symbol and interval)

_K = TypeVar("_K")
_V = TypeVar("_V")


def _keep(cache: dict[_K, _V], key: _K, value: _V) -> None:
    """Remember a closed candle; past ``CLOSED_ROWS_KEPT`` start over (a month of 1m candles
    of ten symbols would otherwise all stay in memory)."""
    if len(cache) >= CLOSED_ROWS_KEPT:
        cache.clear()
    cache[key] = value


class ReplayMarket(Market):
    """Recorded prices as a pure function of (recording, market time); synthetic elsewhere.

    Symbols the recording does not hold keep the seeded generator's path.
    """

    def __init__(
        self,
        recording: Recording,
        *,
        seed: int = 1,
        speed: float = 1.0,
        reference_ms: int | None = None,
        warmup: int = DEFAULT_WARMUP,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.recording = recording
        reference = int(wall() * 1000) if reference_ms is None else reference_ms
        self.offset_ms = week_offset(recording.start_ms, reference)
        first = min(recording.symbols.values(), key=lambda s: s.klines.first_open).klines
        start = first.first_open + min(warmup, max(0, len(first.c) - 1)) * first.step_ms
        super().__init__(seed, start + self.offset_ms, speed, history_minutes=0, wall=wall)
        self.genesis_ms = recording.start_ms + self.offset_ms
        self.end_ms = recording.end_ms + self.offset_ms - 1
        self._held_now: int | None = None  # now_ms of the frozen clock (``_hold``)
        self._closed: dict[tuple[str, str, int], list[object]] = {}
        self._closed_klines: dict[tuple[str, str, int], Kline] = {}
        # (symbol, interval, open) -> (the moment, the forming candle then)
        self._forming: dict[tuple[str, str, int], tuple[int, Kline]] = {}
        self._marks: dict[str, tuple[int, Decimal]] = {}  # symbol -> the last (time, mark)
        self._books: dict[str, tuple[int, tuple[Decimal, Decimal]]] = {}

    def now_ms(self) -> int:
        held = self._held_now
        if held is not None:  # a backtest asks often, always frozen
            return held
        return min(super().now_ms(), self.end_ms)

    def freeze(self, at_ms: int | None = None) -> int:
        frozen = super().freeze(at_ms)
        self._hold()
        return frozen

    def advance(self, ms: int) -> int:
        moved = super().advance(ms)
        self._hold()
        return moved

    def thaw(self) -> None:
        super().thaw()
        self._hold()

    def _hold(self) -> None:
        """Keep the frozen clock's answer (the frozen time, at most the end) for ``now_ms``:
        a backtest asks for it thousands of times at each moment. None while it runs."""
        frozen = self._frozen_ms
        self._held_now = None if frozen is None else min(frozen, self.end_ms)

    @property
    def finished(self) -> bool:
        """True once market time has reached the recording's last close."""
        return self.now_ms() >= self.end_ms

    def _recorded(self, symbol: str) -> SymbolRecording | None:
        return self.recording.symbols.get(symbol)

    def funding_rate(self, symbol: str, funding_time_ms: int) -> Decimal:
        """The recorded rate settled at this time; zero when the recording has none there."""
        rec = self._recorded(symbol)
        if rec is None:
            return super().funding_rate(symbol, funding_time_ms)
        return rec.funding.get(funding_time_ms - self.offset_ms, Decimal(0))

    def mark(self, symbol: str, t: int | None = None) -> Decimal:
        """As ``Market.mark``, kept for the last time asked per symbol (a price is a pure
        function of the time; the engine and every agent ask again at the same instant).
        A pinned or shocked symbol's mark is never kept, and ``pin`` and ``shock`` drop the
        symbol's kept one: a kept mark is always the path's."""
        if t is None:
            t = self._held_now  # ``now_ms`` of a frozen clock, read inline
            if t is None:
                t = self.now_ms()
        hit = self._marks.get(symbol)
        if hit is not None and hit[0] == t:
            return hit[1]
        rec = self.recording.symbols.get(symbol)
        if rec is None or symbol in self._pinned or symbol in self._shocks:
            price = super().mark(symbol, t)
            if symbol not in self._pinned and symbol not in self._shocks:
                self._marks[symbol] = (t, price)
            return price
        # ``Market.mark`` of a recorded symbol on its path, its steps inline (a new moment
        # asks it of every held symbol)
        sym = SYMBOLS[symbol]
        price = decimal(self._held_at(rec, t), symbol_places(sym)[0]).quantize(sym.tick_size)
        self._marks[symbol] = (t, price)
        return price

    def book(self, symbol: str, t: int | None = None) -> tuple[Decimal, Decimal]:
        """As ``Market.book``, kept like ``mark``."""
        if t is None:
            t = self._held_now
            if t is None:
                t = self.now_ms()
        hit = self._books.get(symbol)
        if hit is not None and hit[0] == t:
            return hit[1]
        quote = super().book(symbol, t)
        if symbol not in self._pinned and symbol not in self._shocks:
            self._books[symbol] = (t, quote)
        return quote

    def pin(self, symbol: str, price: Decimal | None) -> None:
        super().pin(symbol, price)
        self._forget(symbol)

    def shock(self, symbol: str, pct: Decimal, at_ms: int | None = None) -> int:
        when = super().shock(symbol, pct, at_ms)
        self._forget(symbol)
        return when

    def _forget(self, symbol: str) -> None:
        """Drop the kept mark and book of ``symbol``: its price just left (or rejoined) the
        path."""
        self._marks.pop(symbol, None)
        self._books.pop(symbol, None)

    def raw_price(self, symbol: str, t: int | None = None) -> float:
        rec = self._recorded(symbol)
        if rec is None:
            return super().raw_price(symbol, t)
        return self._held_at(rec, self.now_ms() if t is None else t)

    def _held_at(self, rec: SymbolRecording, t: int) -> float:
        """The recorded symbol's held price at market time ``t`` (``raw_price``)."""
        series = rec.mark or rec.klines
        step = INTERVAL_MS[series.interval]  # ``series.step_ms``, without the property's call
        rel = t - self.offset_ms - series.first_open
        i = min(max(0, rel // step), len(series.c) - 1)
        frac = min(1.0, max(0.0, (rel - i * step) / step))
        return held_price(series.o[i], series.h[i], series.low[i], series.c[i], frac)

    def klines(
        self,
        symbol: str,
        interval: str,
        start: int | None = None,
        end: int | None = None,
        limit: int = 500,
    ) -> list[list[object]]:
        self._check_interval(symbol, interval)
        return super().klines(symbol, interval, start, end, limit)

    def kline_objects(
        self,
        symbol: str,
        interval: str,
        start: int | None = None,
        end: int | None = None,
        limit: int = 500,
    ) -> list[Kline]:
        self._check_interval(symbol, interval)
        return super().kline_objects(symbol, interval, start, end, limit)

    def _check_interval(self, symbol: str, interval: str) -> None:
        """A recorded symbol has no candles finer than its recording's."""
        rec = self._recorded(symbol)
        if rec is not None and INTERVAL_MS[interval] < rec.klines.step_ms:
            raise ApiError(
                -1120,
                f"Invalid interval: the recording of {symbol} starts at {rec.klines.interval}.",
            )

    def _candle(self, symbol: str, interval: str, open_ms: int, now: int) -> list[object]:
        if self._recorded(symbol) is None:
            return super()._candle(symbol, interval, open_ms, now)
        key = (symbol, interval, open_ms)
        row = self._closed.get(key)
        if row is None:
            row = super()._candle(symbol, interval, open_ms, now)
            if bucket_close(interval, open_ms) <= now:  # closed candles never change
                _keep(self._closed, key, row)
        return row

    def _kline(self, symbol: str, interval: str, open_ms: int, now: int) -> Kline:
        """The candle as ``Market._kline`` builds it: a closed one built once per run, the
        forming one once per moment (every client asking at that moment shares it)."""
        key = (symbol, interval, open_ms)
        kline = self._closed_klines.get(key)  # a recorded symbol's, or none
        if kline is not None:
            return kline
        rec = self.recording.symbols.get(symbol)
        if rec is None:
            return super()._kline(symbol, interval, open_ms, now)
        close_ms = bucket_close(interval, open_ms)
        if close_ms <= now:  # closed candles never change
            kline = self._recorded_kline(symbol, rec, open_ms, close_ms, now)
            _keep(self._closed_klines, key, kline)
            return kline
        forming = self._forming.get(key)
        if forming is not None and forming[0] == now:
            return forming[1]
        kline = self._recorded_kline(symbol, rec, open_ms, close_ms, now)
        if len(self._forming) >= FORMING_KEPT:
            self._forming.clear()
        self._forming[key] = (now, kline)
        return kline

    def _recorded_kline(
        self, symbol: str, rec: SymbolRecording, open_ms: int, close_ms: int, now: int
    ) -> Kline:
        """``kline_object(SYMBOLS[symbol], *self._values(rec, open_ms, close_ms, now))``. A
        candle of the recording's own interval (a backtest builds two per agent-tick) is
        ``_one_candle``'s expressions inline, without the calls and the values' tuple."""
        s = rec.klines
        step = INTERVAL_MS[s.interval]
        base = s.first_open + self.offset_ms
        i = max(0, (open_ms - base) // step)
        if i != min(len(s.c) - 1, (min(close_ms, now) - base) // step):
            return kline_object(SYMBOLS[symbol], *self._values(rec, open_ms, close_ms, now))
        h, lw, c, v = s.h[i], s.low[i], s.c[i], s.v[i]
        if base + (i + 1) * step - 1 > now:
            frac = min(1.0, max(0.0, (now - base - i * step) / step))
            c, h, lw = held(s.o[i], h, lw, c, frac)
            v *= frac
        sym = SYMBOLS[symbol]
        return kline_object(
            sym, open_ms, close_ms, s.o[i], max(_NEG_INF, h), min(_INF, lw), c, 0.0 + v
        )

    def _candle_values(self, symbol: str, interval: str, open_ms: int, now: int) -> CandleValues:
        rec = self._recorded(symbol)
        if rec is None:
            return super()._candle_values(symbol, interval, open_ms, now)
        return self._values(rec, open_ms, bucket_close(interval, open_ms), now)

    def _values(self, rec: SymbolRecording, open_ms: int, close_ms: int, now: int) -> CandleValues:
        """``_candle_values`` of a recorded symbol's candle ``open_ms``..``close_ms``: what
        ``Market._kline`` would convert (``_kline`` calls it with the close it has found)."""
        s = rec.klines
        step = INTERVAL_MS[s.interval]  # ``s.step_ms`` without the property's call
        base = s.first_open + self.offset_ms
        lo_i = max(0, (open_ms - base) // step)
        hi_i = min(len(s.c) - 1, (min(close_ms, now) - base) // step)
        if lo_i == hi_i:  # one recorded candle (the recording's own interval)
            return self._one_candle(s, lo_i, open_ms, close_ms, base, step, now)
        return self._candles(s, lo_i, hi_i, open_ms, close_ms, base, step, now)

    @staticmethod
    def _candles(
        s: Series,
        lo_i: int,
        hi_i: int,
        open_ms: int,
        close_ms: int,
        base: int,
        step: int,
        now: int,
    ) -> CandleValues:
        """Recorded candles ``lo_i..hi_i`` (the last one as of ``now``) as one candle; ``base``
        is the first candle's open in market time, ``step`` a candle's length."""
        op, hi, low, cl, vol = s.o[lo_i], -math.inf, math.inf, s.o[lo_i], 0.0
        for i in range(lo_i, hi_i + 1):
            h, lw, c, v = s.h[i], s.low[i], s.c[i], s.v[i]
            candle_end = base + (i + 1) * step - 1
            if candle_end > now:
                frac = min(1.0, max(0.0, (now - base - i * step) / step))
                c, h, lw = held(s.o[i], h, lw, c, frac)
                v *= frac
            hi, low, cl, vol = max(hi, h), min(low, lw), c, vol + v
        return open_ms, close_ms, op, hi, low, cl, vol

    @staticmethod
    def _one_candle(
        s: Series, i: int, open_ms: int, close_ms: int, base: int, step: int, now: int
    ) -> CandleValues:
        """``_candles(s, i, i, ...)``: the loop's one turn, the same expressions (``max(-inf,
        h)`` and ``0.0 + v`` included) without its bookkeeping. A replay in the recording's
        own interval (a backtest's) builds two such candles per agent-tick."""
        h, lw, c, v = s.h[i], s.low[i], s.c[i], s.v[i]
        if base + (i + 1) * step - 1 > now:
            frac = min(1.0, max(0.0, (now - base - i * step) / step))
            c, h, lw = held(s.o[i], h, lw, c, frac)
            v *= frac
        return open_ms, close_ms, s.o[i], max(_NEG_INF, h), min(_INF, lw), c, 0.0 + v


# premiumIndex + bookTicker per symbol (weight 1 each) every LIVE_POLL_S: at most a quarter of
# the exchange's 2400 REQUEST_WEIGHT a minute per IP (4.2 s for 21 symbols), and never under 2 s
LIVE_POLL_WEIGHT_PER_MIN: Final = 600
LIVE_POLL_S: Final = max(2.0, 2 * len(SYMBOLS) * 60 / LIVE_POLL_WEIGHT_PER_MIN)
LIVE_KLINES_TTL_MS: Final = 2_000


class LiveMarket(Market):
    """A real exchange's public market data (no keys); orders are matched locally on it.

    Mark and index prices, the last funding rate and the best bid/ask of every simulator
    symbol are polled from ``upstream`` every ``poll_s``; klines are fetched on request (cached
    for two seconds). Market time is the wall clock. Nothing but public GET requests is ever
    sent upstream.
    """

    def __init__(
        self,
        upstream: Exchange,
        *,
        seed: int = 1,
        poll_s: float = LIVE_POLL_S,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(seed, None, 1.0, history_minutes=0, wall=wall)
        self.upstream = upstream
        self.poll_s = poll_s
        self._premium: dict[str, PremiumIndex] = {}
        self._book: dict[str, tuple[Decimal, Decimal]] = {}
        self._klines: dict[tuple[object, ...], tuple[int, list[Kline]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.poll()  # the first answers (or a clear error) before the simulator serves anything
        self._thread = threading.Thread(target=self._run, name="sim-live-poller", daemon=True)
        self._thread.start()

    def poll(self) -> None:
        """Fetch every symbol's premium index and best bid/ask once."""
        for symbol in SYMBOLS:
            premium = self.upstream.premium_index(symbol)
            book = self.upstream.book_ticker(symbol)
            with self._lock:
                self._premium[symbol] = premium
                self._book[symbol] = (book.bid_price, book.ask_price)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except AsterAgentsError as exc:  # keep the last prices; say why they are old
                print(f"sim: upstream poll failed: {exc}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def mark(self, symbol: str, t: int | None = None) -> Decimal:
        pinned = self._pinned.get(symbol)
        if pinned is not None:
            return pinned
        with self._lock:
            return self._premium[symbol].mark_price

    def index(self, symbol: str) -> Decimal:
        with self._lock:
            return self._premium[symbol].index_price

    def raw_price(self, symbol: str, t: int | None = None) -> float:
        return float(self.mark(symbol, t))

    def book(self, symbol: str, t: int | None = None) -> tuple[Decimal, Decimal]:
        if symbol in self._pinned:
            return super().book(symbol, t)
        with self._lock:
            return self._book[symbol]

    def funding_rate(self, symbol: str, funding_time_ms: int) -> Decimal:
        """The upstream's last settled rate (the settlement the simulator applies now)."""
        with self._lock:
            return self._premium[symbol].last_funding_rate

    def klines(
        self,
        symbol: str,
        interval: str,
        start: int | None = None,
        end: int | None = None,
        limit: int = 500,
    ) -> list[list[object]]:
        return [
            _row(k, SYMBOLS[symbol])
            for k in self.kline_objects(symbol, interval, start, end, limit)
        ]

    def kline_objects(
        self,
        symbol: str,
        interval: str,
        start: int | None = None,
        end: int | None = None,
        limit: int = 500,
    ) -> list[Kline]:
        """The upstream's candles (parsing ``klines``' rows gives them back: each text is
        ``str`` of the upstream's Decimal)."""
        key = (symbol, interval, start, end, limit)
        now = self.now_ms()
        hit = self._klines.get(key)
        if hit is not None and now < hit[0]:
            return hit[1]
        klines = self.upstream.klines(symbol, interval, limit, start_time=start, end_time=end)
        self._klines[key] = (now + LIVE_KLINES_TTL_MS, klines)
        return klines


def _row(k: Kline, sym: SimSymbol) -> list[object]:
    """A Binance-shaped kline row from the upstream's candle (derived volume fields)."""
    mid = (k.open + k.close) / 2
    quote = (k.volume * mid).quantize(Decimal("0.0001"))
    half = (k.volume / 2).quantize(sym.step_size)
    return [
        k.open_time,
        str(k.open),
        str(k.high),
        str(k.low),
        str(k.close),
        str(k.volume),
        k.close_time,
        str(quote),
        int(quote / 500) + 1,
        str(half),
        str((quote / 2).quantize(Decimal("0.0001"))),
        "0",
    ]
