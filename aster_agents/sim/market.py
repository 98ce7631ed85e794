"""A seeded, deterministic price generator for the simulated exchange.

One base path per symbol: a one-minute random walk with regime switches (trending up or
down, ranging around an anchor, volatile breakouts). The path depends only on the seed and
the minute index counted from the genesis (``history_minutes`` before the UTC midnight that
starts the start day), so two simulators with the same seed started on the same day show the
same price at the same market time. Every interval's klines are aggregated
from the one-minute candles; inside a minute the price moves open -> low/high -> high/low ->
close along straight lines, so the mark price, the current candle and the book agree.
"""

from __future__ import annotations

import calendar
import functools
import itertools
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Final

from aster_agents.models import INTERVAL_MS, Kline
from aster_agents.sim.symbols import SYMBOLS, SimSymbol

MINUTE_MS: Final = 60_000
_CHUNK: Final = 1440
_DAY_MS: Final = 86_400_000
DEFAULT_HISTORY_MINUTES: Final = 30 * 1440
MAX_FUNDING_RATE: Final = Decimal("0.0001")  # +-0.01% per funding interval
_HALF_SPREAD: Final = Decimal("0.00005")  # of the mark: the book's half spread


@dataclass(slots=True)
class _Regime:
    kind: str
    left: int
    drift: float
    anchor: float


@dataclass(slots=True)
class _Path:
    """One symbol's one-minute candles as floats, extended lazily and only forward."""

    sym: SimSymbol
    rng: random.Random
    o: list[float] = field(default_factory=list)
    h: list[float] = field(default_factory=list)
    low: list[float] = field(default_factory=list)
    c: list[float] = field(default_factory=list)
    v: list[float] = field(default_factory=list)
    regime: _Regime | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ensure(self, n: int) -> None:
        if len(self.c) > n:
            return
        with self.lock:
            while len(self.c) <= n:
                self._extend(_CHUNK)

    def _new_regime(self, lp: float) -> _Regime:
        r, vol = self.rng, self.sym.minute_vol
        kind = r.choices(("up", "down", "range", "breakout"), (0.27, 0.27, 0.34, 0.12))[0]
        left = r.randint(90, 900)
        drift = vol * r.uniform(0.06, 0.18)
        if kind == "down":
            drift = -drift
        elif kind == "breakout":
            drift = vol * r.uniform(0.2, 0.4) * r.choice((-1, 1))
            left = r.randint(30, 180)
        return _Regime(kind, left, drift, lp)

    def _step(self, lp: float, lp0: float) -> float:
        if self.regime is None or self.regime.left <= 0:
            self.regime = self._new_regime(lp)
        g, vol = self.regime, self.sym.minute_vol
        g.left -= 1
        shock = self.rng.gauss(0.0, 1.0)
        pull = -0.0004 * (lp - lp0)  # keeps month-long runs near realistic levels
        if g.kind == "range":
            return -0.03 * (lp - g.anchor) + 0.7 * vol * shock + pull
        scale = 1.8 if g.kind == "breakout" else 1.0
        return g.drift + scale * vol * shock + pull

    def _extend(self, count: int) -> None:
        lp0 = math.log(self.sym.start_price)
        lp = math.log(self.c[-1]) if self.c else lp0
        vol, r = self.sym.minute_vol, self.rng
        for _ in range(count):
            op = math.exp(lp)
            ret = self._step(lp, lp0)
            lp += ret
            cl = math.exp(lp)
            self.o.append(op)
            self.c.append(cl)
            self.h.append(max(op, cl) * math.exp(abs(r.gauss(0.0, 0.5)) * vol))
            self.low.append(min(op, cl) * math.exp(-abs(r.gauss(0.0, 0.5)) * vol))
            notional = 2_000_000.0 * (0.3 + abs(ret) / vol) * r.uniform(0.5, 1.5)
            self.v.append(notional / op if op > 0 else 0.0)


_PATHS: dict[tuple[int, str], _Path] = {}
_PATHS_LOCK = threading.Lock()


def _path(seed: int, symbol: str) -> _Path:
    key = (seed, symbol)
    with _PATHS_LOCK:
        path = _PATHS.get(key)
        if path is None:
            path = _Path(SYMBOLS[symbol], random.Random(f"aster-sim:{seed}:{symbol}"))
            _PATHS[key] = path
        return path


def _points(o: float, h: float, lo: float, c: float) -> tuple[tuple[float, float], ...]:
    if c >= o:
        return ((0.0, o), (0.25, lo), (0.7, h), (1.0, c))
    return ((0.0, o), (0.25, h), (0.7, lo), (1.0, c))


def _intra(o: float, h: float, lo: float, c: float, frac: float) -> tuple[float, float, float]:
    """(price, high so far, low so far) at ``frac`` of the way through one minute."""
    pts = _points(o, h, lo, c)
    hi = low = o
    for (f0, p0), (f1, p1) in itertools.pairwise(pts):
        if frac >= f1:
            hi, low = max(hi, p1), min(low, p1)
            continue
        price = p0 + (p1 - p0) * (frac - f0) / (f1 - f0)
        return price, max(hi, price), min(low, price)
    return c, hi, low


def kline_row(
    sym: SimSymbol,
    open_ms: int,
    close_ms: int,
    op: float,
    hi: float,
    low: float,
    cl: float,
    vol: float,
) -> list[object]:
    """One candle in the exchange's kline array form, on the symbol's tick and step."""
    pp, qp = _places(sym.tick_size), _places(sym.step_size)
    mid = (op + cl) / 2
    return [
        open_ms,
        _text(op, pp),
        _text(hi, pp),
        _text(low, pp),
        _text(cl, pp),
        _text(vol, qp),
        close_ms,
        _text(vol * mid, 4),
        int(vol * mid / 500) + 1,
        _text(vol / 2, qp),
        _text(vol * mid / 2, 4),
        "0",
    ]


def kline_object(
    sym: SimSymbol,
    open_ms: int,
    close_ms: int,
    op: float,
    hi: float,
    low: float,
    cl: float,
    vol: float,
) -> Kline:
    """The ``Kline`` that parsing ``kline_row`` of the same values gives, without the row:
    the in-process client's candles (the same text, so the same Decimal digits)."""
    pp, qp = symbol_places(sym)
    known = _DECIMALS.get  # ``decimal``'s memo read inline; a miss, or a held value that
    # reads as zero (falsy), is asked of ``decimal`` itself: the same Decimal either way
    return Kline(
        open_ms,
        known((op, pp)) or decimal(op, pp),
        known((hi, pp)) or decimal(hi, pp),
        known((low, pp)) or decimal(low, pp),
        known((cl, pp)) or decimal(cl, pp),
        known((vol, qp)) or decimal(vol, qp),
        close_ms,
    )


CandleValues = tuple[int, int, float, float, float, float, float]  # open, close, o, h, l, c, v


def _fmt(x: float, places: int) -> Decimal:
    return Decimal(f"{x:.{places}f}")


DECIMALS_KEPT: Final = 4096  # recent (float, places) -> Decimal conversions remembered
_DECIMALS: dict[tuple[float, int], Decimal] = {}


def decimal(x: float, places: int) -> Decimal:
    """``Decimal(_text(x, places))`` (equally ``_fmt(x, places)``), remembered for recent
    values: a replay's held price is a recorded open, high, low or close, converted as a mark
    at each quarter of its candle and again in the candle's kline.

    Zero is never remembered: 0.0 and -0.0 are one key but two texts.
    """
    if not x:
        return Decimal(_text(x, places))
    key = (x, places)
    hit = _DECIMALS.get(key)
    if hit is None:
        hit = Decimal(_text(x, places))
        if len(_DECIMALS) >= DECIMALS_KEPT:
            _DECIMALS.clear()
        _DECIMALS[key] = hit
    return hit


def _text(x: float, places: int) -> str:
    """``str(_fmt(x, places))`` without the Decimal while it would print the same text: a
    finite number with at most 6 places is never shown in exponent form."""
    if places > 6:
        return str(_fmt(x, places))
    text = format(x, _FIXED[places])
    return text if text[-1].isdigit() else str(Decimal(text))


_FIXED: Final = tuple(f".{n}f" for n in range(7))  # format specs of 0..6 places


@functools.cache  # a handful of tick and step sizes
def _places(step: Decimal) -> int:
    return max(0, -int(step.normalize().as_tuple().exponent))


_SYMBOL_PLACES: dict[str, tuple[SimSymbol, tuple[int, int]]] = {}


def symbol_places(sym: SimSymbol) -> tuple[int, int]:
    """(price places, quantity places) of ``sym``: ``_places`` of its tick and step sizes,
    kept per symbol object (a candle asks for both; hashing two Decimals costs more than
    the candle's other conversions)."""
    hit = _SYMBOL_PLACES.get(sym.symbol)
    if hit is None or hit[0] is not sym:
        hit = (sym, (_places(sym.tick_size), _places(sym.step_size)))
        _SYMBOL_PLACES[sym.symbol] = hit
    return hit[1]


def bucket_open(interval: str, t: int) -> int:
    """Open time of the ``interval`` candle that contains ``t`` (Binance's calendar rules)."""
    if interval == "1M":
        d = datetime.fromtimestamp(t / 1000, UTC)
        return calendar.timegm((d.year, d.month, 1, 0, 0, 0)) * 1000
    size = INTERVAL_MS[interval]
    if interval == "1w":  # weeks open on Monday 00:00 UTC; the epoch was a Thursday
        return (t - 4 * _DAY_MS) // size * size + 4 * _DAY_MS
    return t // size * size


def bucket_close(interval: str, open_ms: int) -> int:
    """Close time (inclusive, ms) of the candle opening at ``open_ms``."""
    if interval == "1M":
        d = datetime.fromtimestamp(open_ms / 1000, UTC)
        y, m = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
        return calendar.timegm((y, m, 1, 0, 0, 0)) * 1000 - 1
    return open_ms + INTERVAL_MS[interval] - 1


def _walk_forward(interval: str, first: int, end: int, limit: int) -> list[int]:
    """Opens from ``first`` to ``end`` (at most ``limit``), candle after candle: the plain
    rule, for any interval (``Market._opens_forward`` takes it for 1M, whose months differ)."""
    out: list[int] = []
    t = first
    while t <= end and len(out) < limit:
        out.append(t)
        t = bucket_close(interval, t) + 1
    return out


def _walk_backward(interval: str, end: int, limit: int, genesis_ms: int) -> list[int]:
    """The latest ``limit`` opens up to ``end`` of candles closing at or after genesis,
    oldest first, candle before candle (the plain rule; see ``_walk_forward``)."""
    out: list[int] = []
    t = bucket_open(interval, end)
    while len(out) < limit and bucket_close(interval, t) >= genesis_ms:
        out.append(t)
        t = bucket_open(interval, t - 1)
    out.reverse()
    return out


class Market:
    """Prices as a pure function of (seed, market time), plus a clock for market time."""

    def __init__(
        self,
        seed: int = 1,
        start_ms: int | None = None,
        speed: float = 1.0,
        history_minutes: int = DEFAULT_HISTORY_MINUTES,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.seed = seed
        self.speed = speed
        self._wall = wall
        self._wall0 = wall()
        self.start_ms = int(self._wall0 * 1000) if start_ms is None else start_ms
        # genesis on a UTC day boundary: same seed, same day -> same price at the same time
        self.genesis_ms = self.start_ms // _DAY_MS * _DAY_MS - history_minutes * MINUTE_MS
        self._pinned: dict[str, Decimal] = {}
        self._shocks: dict[str, list[tuple[int, Decimal]]] = {}
        self._frozen_ms: int | None = None

    def now_ms(self) -> int:
        """Market time: start + speed x wall-clock time elapsed since the start (or frozen)."""
        if self._frozen_ms is not None:
            return self._frozen_ms
        return self.start_ms + int((self._wall() - self._wall0) * self.speed * 1000)

    @property
    def frozen(self) -> bool:
        return self._frozen_ms is not None

    def freeze(self, at_ms: int | None = None) -> int:
        """Stop the market clock (now, or at ``at_ms``): prices and funding stand still.

        Lets a caller compare figures at one instant (the demo's books-vs-exchange check)
        or step time by hand (property tests). Returns the frozen market time.
        """
        self._frozen_ms = self.now_ms() if at_ms is None else at_ms
        return self._frozen_ms

    def advance(self, ms: int) -> int:
        """Move a frozen clock forward by ``ms``; returns the new market time."""
        if self._frozen_ms is None:
            raise RuntimeError("Market.advance: the clock runs; freeze() it first")
        self._frozen_ms += max(0, ms)
        return self._frozen_ms

    def thaw(self) -> None:
        """Restart the clock from the frozen time at the configured speed."""
        if self._frozen_ms is None:
            return
        self.start_ms, self._wall0 = self._frozen_ms, self._wall()
        self._frozen_ms = None

    def funding_rate(self, symbol: str, funding_time_ms: int) -> Decimal:
        """The funding rate settled at ``funding_time_ms``: small, seeded, deterministic."""
        rng = random.Random(f"{self.seed}:{symbol}:{funding_time_ms}")
        return (MAX_FUNDING_RATE * Decimal(rng.uniform(-1.0, 1.0))).quantize(Decimal("1e-8"))

    def pin(self, symbol: str, price: Decimal | None) -> None:
        """Force the mark price of ``symbol`` (tests); ``None`` returns it to the path."""
        if price is None:
            self._pinned.pop(symbol, None)
        else:
            self._pinned[symbol] = price

    def shock(self, symbol: str, pct: Decimal, at_ms: int | None = None) -> int:
        """From market time ``at_ms`` (default now) on, move the mark of ``symbol`` by ``pct``
        percent (a crash when negative, a spike when positive); shocks compound.

        The mark price, the book and every account figure follow; klines keep the generated
        path. Returns the market time the shock applies from.
        """
        if pct <= -100:
            raise ValueError(f"shock {symbol} {pct}%: must be above -100%")
        when = self.now_ms() if at_ms is None else at_ms
        self._shocks.setdefault(symbol, []).append((when, 1 + pct / 100))
        return when

    def _shock_factor(self, symbol: str, t: int) -> Decimal:
        factor = Decimal(1)
        for when, f in self._shocks.get(symbol, ()):
            if t >= when:
                factor *= f
        return factor

    def _minute(self, symbol: str, index: int) -> tuple[float, float, float, float, float]:
        p = _path(self.seed, symbol)
        p.ensure(index)
        return p.o[index], p.h[index], p.low[index], p.c[index], p.v[index]

    def raw_price(self, symbol: str, t: int | None = None) -> float:
        t = self.now_ms() if t is None else t
        index = max(0, (t - self.genesis_ms) // MINUTE_MS)
        o, h, lo, c, _ = self._minute(symbol, index)
        frac = ((t - self.genesis_ms) % MINUTE_MS) / MINUTE_MS
        return _intra(o, h, lo, c, frac)[0]

    def mark(self, symbol: str, t: int | None = None) -> Decimal:
        """Mark price, rounded to the symbol's tick size."""
        pinned = self._pinned.get(symbol)
        if pinned is not None:
            return pinned
        sym = SYMBOLS[symbol]
        t = self.now_ms() if t is None else t
        price = decimal(self.raw_price(symbol, t), symbol_places(sym)[0])
        if symbol in self._shocks:
            price = max(sym.tick_size, price * self._shock_factor(symbol, t))
        return price.quantize(sym.tick_size)

    def book(self, symbol: str, t: int | None = None) -> tuple[Decimal, Decimal]:
        """(best bid, best ask): a tight spread around the mark, on the tick grid."""
        sym = SYMBOLS[symbol]
        mark = self.mark(symbol, t)
        half = max(sym.tick_size, mark * _HALF_SPREAD)
        bid = ((mark - half) / sym.tick_size).to_integral_value(ROUND_FLOOR) * sym.tick_size
        ask = ((mark + half) / sym.tick_size).to_integral_value(ROUND_CEILING) * sym.tick_size
        return bid, ask

    def klines(
        self,
        symbol: str,
        interval: str,
        start: int | None = None,
        end: int | None = None,
        limit: int = 500,
    ) -> list[list[object]]:
        """Binance-shaped kline rows, oldest first, never before genesis or after now."""
        now = self.now_ms()
        opens = self._opens(interval, start, end, limit, now)
        return [self._candle(symbol, interval, o, now) for o in opens]

    def kline_objects(
        self,
        symbol: str,
        interval: str,
        start: int | None = None,
        end: int | None = None,
        limit: int = 500,
    ) -> list[Kline]:
        """The candles of ``klines`` as the ``Kline`` objects parsing its rows gives: the
        in-process client's typed path (no text rows built and parsed back every tick)."""
        now = self.now_ms()
        opens = self._opens(interval, start, end, limit, now)
        return [self._kline(symbol, interval, o, now) for o in opens]

    def _opens(
        self, interval: str, start: int | None, end: int | None, limit: int, now: int
    ) -> list[int]:
        """Open times of the candles a klines query answers with."""
        end = now if end is None else min(end, now)
        if start is not None:
            first = max(bucket_open(interval, max(start, self.genesis_ms)), 0)
            if first < start:
                first = bucket_close(interval, first) + 1
            return self._opens_forward(interval, first, end, limit)
        return self._opens_backward(interval, end, limit)

    def _opens_forward(self, interval: str, first: int, end: int, limit: int) -> list[int]:
        """Opens from ``first`` (a candle's open) to ``end``, at most ``limit``. Candles of a
        fixed length (all but 1M) follow one another every ``size`` ms: a range, not a walk
        (the in-process client asks for the candles after its last closed one every tick)."""
        if interval == "1M":
            return _walk_forward(interval, first, end, limit)
        size = INTERVAL_MS[interval]
        count = min(limit, (end - first) // size + 1) if first <= end else 0
        return list(range(first, first + max(0, count) * size, size))

    def _opens_backward(self, interval: str, end: int, limit: int) -> list[int]:
        """The latest ``limit`` opens up to ``end``, none of a candle closed before genesis;
        for a fixed length, as a range (see ``_opens_forward``)."""
        if interval == "1M":
            return _walk_backward(interval, end, limit, self.genesis_ms)
        size = INTERVAL_MS[interval]
        last = bucket_open(interval, end)
        reach = last + size - 1 - self.genesis_ms  # candles closing at or after genesis
        count = min(limit, reach // size + 1) if reach >= 0 else 0
        return list(range(last - (max(0, count) - 1) * size, last + 1, size)) if count > 0 else []

    def _candle(self, symbol: str, interval: str, open_ms: int, now: int) -> list[object]:
        return kline_row(SYMBOLS[symbol], *self._candle_values(symbol, interval, open_ms, now))

    def _kline(self, symbol: str, interval: str, open_ms: int, now: int) -> Kline:
        return kline_object(SYMBOLS[symbol], *self._candle_values(symbol, interval, open_ms, now))

    def _candle_values(self, symbol: str, interval: str, open_ms: int, now: int) -> CandleValues:
        """The candle opening at ``open_ms`` as of ``now``, aggregated from the minutes."""
        close_ms = bucket_close(interval, open_ms)
        lo_i = max(0, (open_ms - self.genesis_ms) // MINUTE_MS)
        hi_i = (min(close_ms, now) - self.genesis_ms) // MINUTE_MS
        p = _path(self.seed, symbol)
        p.ensure(hi_i)
        op, hi, low, cl, vol = p.o[lo_i], -math.inf, math.inf, 0.0, 0.0
        for i in range(lo_i, hi_i + 1):
            h, lw, c, v = p.h[i], p.low[i], p.c[i], p.v[i]
            if i == hi_i and close_ms > now:
                frac = ((now - self.genesis_ms) % MINUTE_MS) / MINUTE_MS
                c, h, lw = _intra(p.o[i], h, lw, c, frac)
                v *= frac
            hi, low, cl, vol = max(hi, h), min(low, lw), c, vol + v
        return open_ms, close_ms, op, hi, low, cl, vol
