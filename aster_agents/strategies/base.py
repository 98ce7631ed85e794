"""The strategy contract: what the runner passes in and what a strategy hands back.

A strategy is pure: ``decide(market, position) -> Signal`` reads no clock, network, disk or
global random state, and never raises for any kline series (too few klines, flat or odd
prices give ``HOLD`` with a reason).

Confidence conventions shared by every rule-based strategy:

* ``LONG``/``SHORT``: 0.5 when the entry rule is only just met, rising linearly towards 1.0
  as the signal strengthens (each module documents its own measure). The runner acts only when
  confidence >= ``trading.min_confidence`` (0.70 in the examples).
* ``CLOSE``: always 1.0, so reducing risk is never filtered out by ``min_confidence``.
* ``HOLD``: 0.0.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Final, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails

if TYPE_CHECKING:
    from pathlib import Path

from aster_agents.errors import ConfigError
from aster_agents.models import Kline


class Action(StrEnum):
    """What the strategy wants done for one symbol this tick."""

    LONG = "long"
    SHORT = "short"
    CLOSE = "close"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class Signal:
    """A decision: the action, a confidence in [0, 1] and a short human reason.

    The optional fields are suggestions (the ``llm`` strategy makes them) that the runner
    clamps into the agent's config: ``size_pct`` is a fraction of ``position_size_pct``,
    the other two are distances from the entry capped at the configured ones.
    """

    action: Action
    confidence: float
    reason: str
    size_pct: float | None = None
    stop_loss_pct: float | None = None
    take_profit_pct: float | None = None


@dataclass(frozen=True, slots=True)
class PositionView:
    """The agent's position in the symbol: ``qty`` > 0 long, < 0 short, 0 flat."""

    qty: Decimal
    entry_price: Decimal
    opened_at_ms: int | None


FLAT = PositionView(qty=Decimal(0), entry_price=Decimal(0), opened_at_ms=None)


@dataclass(frozen=True, slots=True)
class MarketSnapshot:
    """Closed klines (oldest first) plus the live mark price, for one symbol and interval."""

    symbol: str
    interval: str
    klines: tuple[Kline, ...]
    mark_price: Decimal
    time_ms: int


class Strategy(Protocol):
    """What the runner calls. ``min_klines`` is how much history ``decide`` needs."""

    name: str
    min_klines: int

    def decide(self, market: MarketSnapshot, position: PositionView) -> Signal: ...


@dataclass(frozen=True, slots=True)
class RiskLimits:
    """The agent's configured risk limits, for strategies that tell a model about them."""

    position_size_pct: float
    leverage: int
    stop_loss_pct: float
    take_profit_pct: float
    min_confidence: float


@runtime_checkable
class External(Protocol):
    """A strategy that waits on something outside the process (``llm``).

    The runner hands it its stop event (so a SIGTERM interrupts a call in flight), the
    agent's limits and a directory of its own in the state dir (for what must survive a
    restart), and closes it on shutdown.
    """

    def attach(
        self, stop: threading.Event, limits: RiskLimits, home: Path | None = None
    ) -> None: ...

    def close(self) -> None: ...


@contextmanager
def attached(
    strategy: object, stop: threading.Event, limits: RiskLimits, home: Path | None = None
) -> Iterator[None]:
    """Attach an :class:`External` strategy for the block and close it afterwards."""
    if not isinstance(strategy, External):
        yield
        return
    strategy.attach(stop, limits, home)
    try:
        yield
    finally:
        strategy.close()


def hold(reason: str) -> Signal:
    """A HOLD signal (confidence 0)."""
    return Signal(Action.HOLD, 0.0, reason)


def close(reason: str) -> Signal:
    """A CLOSE signal (confidence 1: exits are never filtered by min_confidence)."""
    return Signal(Action.CLOSE, 1.0, reason)


def enter(side: int, confidence: float, reason: str) -> Signal:
    """A LONG (side > 0) or SHORT (side < 0) signal, confidence clamped into [0, 1]."""
    action = Action.LONG if side > 0 else Action.SHORT
    return Signal(action, min(1.0, max(0.0, confidence)), reason)


def signed_pct(fraction: float) -> str:
    """Format a fraction as a signed percentage: 0.0042 -> '+0.42%'."""
    return f"{fraction * 100:+.2f}%"


@dataclass(frozen=True, slots=True)
class Series:
    """Kline columns converted to float once; prices are finite and > 0.

    Lists, not tuples: a strategy carries its series on to the next window in place (see
    :class:`_Window`), so a series handed to ``entry``/``exit`` holds for that call only.
    """

    opens: list[float]
    highs: list[float]
    lows: list[float]
    closes: list[float]
    volumes: list[float]

    @classmethod
    def from_klines(cls, klines: tuple[Kline, ...]) -> Series | None:
        """Convert klines, or None when any price is not a finite positive number."""
        return _converted(klines)[0]

    @property
    def last(self) -> float:
        """The last close."""
        return self.closes[-1]


def _converted(klines: tuple[Kline, ...]) -> tuple[Series | None, bool]:
    """:meth:`Series.from_klines` and whether it zeroed the volumes (one is not finite)."""
    if not klines:
        return Series([], [], [], [], []), False
    rows = _FLOATS.rows(klines)  # 7-tuples: the columns, then the two checks
    opens, highs, lows, closes, volumes, ok, volumes_ok = zip(*rows, strict=True)
    if not all(ok):
        return None, False
    zeroed = not all(volumes_ok)
    vols = [0.0] * len(klines) if zeroed else list(volumes)
    return Series(list(opens), list(highs), list(lows), list(closes), vols), zeroed


class _Window:
    """The last window a strategy decided on and its series, carried on to the next one.

    The runner hands a strategy the window it had, moved or grown by one candle (the same
    Kline objects): converting only the new candle and shifting the columns in place
    (a C memmove, no new list) gives the values :meth:`Series.from_klines` would.
    """

    __slots__ = ("klines", "series", "zeroed")

    def __init__(self, klines: tuple[Kline, ...], series: Series, zeroed: bool) -> None:
        self.klines = klines
        self.series = series
        self.zeroed = zeroed  # volumes zeroed for a non-finite one: convert afresh

    def advance(self, klines: tuple[Kline, ...]) -> bool:
        """Carry the series on to ``klines`` if it is this window (at least two candles)
        moved or grown by one candle, not zeroed and with a finite volume; else False and
        nothing changed."""
        before = self.klines
        n = len(before)
        if n < 2 or self.zeroed or not (n <= len(klines) <= n + 1):
            return False
        grown = len(klines) == n + 1
        if klines[:-1] != (before if grown else before[1:]):  # the same objects: C speed
            return False
        o, h, lo, c, v, ok, volume_ok = _FLOATS.row(klines[-1])
        if not (ok and volume_ok):
            return False
        s = self.series
        if not grown:
            del s.opens[0], s.highs[0], s.lows[0], s.closes[0], s.volumes[0]
        s.opens.append(o)
        s.highs.append(h)
        s.lows.append(lo)
        s.closes.append(c)
        s.volumes.append(v)
        self.klines = klines
        return True


_Row = tuple[float, float, float, float, float, bool, bool]


class _KlineFloats:
    """Each kline's columns as floats, converted once: the runner hands a strategy the same
    Kline objects tick after tick (a window that moves by one candle), so a pure memo keyed
    by the object spares converting the whole window again. Bounded; one per process."""

    LIMIT: Final = 20_000

    def __init__(self) -> None:
        self._rows: dict[int, tuple[Kline, _Row]] = {}

    def rows(self, klines: tuple[Kline, ...]) -> list[_Row]:
        # An entry keeps its kline alive, so no other live object can have its id.
        hits = list(map(self._rows.get, map(id, klines)))
        if None in hits:  # the window moved on: convert only the new candles
            return [self.row(k) if h is None else h[1] for h, k in zip(hits, klines, strict=True)]
        return [h[1] for h in hits]  # type: ignore[index]  # no None, checked above

    def row(self, k: Kline) -> _Row:
        """(open, high, low, close, volume >= 0, prices finite and > 0, volume finite)."""
        hit = self._rows.get(id(k))
        if hit is not None:  # the entry keeps its kline alive: the same object
            return hit[1]
        o, h, lo, c = float(k.open), float(k.high), float(k.low), float(k.close)
        v = max(0.0, float(k.volume))
        inf = math.inf  # 0 < x < inf: finite and > 0 (False for NaN), without a generator
        ok = 0.0 < o < inf and 0.0 < h < inf and 0.0 < lo < inf and 0.0 < c < inf
        row = (o, h, lo, c, v, ok, v < inf)  # v >= 0, not NaN (max gave 0.0 for one)
        if len(self._rows) >= self.LIMIT:
            self._rows.clear()
        self._rows[id(k)] = (k, row)
        return row


_FLOATS = _KlineFloats()


class RuleStrategy(ABC):
    """Template for the indicator strategies: history check, then entry or exit rules.

    Subclasses implement :meth:`entry` (flat: LONG, SHORT or HOLD) and :meth:`exit`
    (in a position: CLOSE or HOLD). ``side`` is +1 for a long position, -1 for a short one.
    Rules read closed candles only (``mark_price`` is ignored) so that a decision can be
    replayed exactly from kline history.
    """

    name: str = "rule"
    min_klines: int = 1
    WINDOWS_KEPT: Final = 64  # (symbol, interval) windows memoised per strategy object
    _windows: dict[tuple[str, str], _Window] | None = None  # see _series

    def decide(self, market: MarketSnapshot, position: PositionView) -> Signal:
        """Entry rules when flat, exit rules in a position; HOLD when history is short."""
        have = len(market.klines)
        if have < self.min_klines:
            return hold(f"need {self.min_klines} closed klines, have {have}")
        series = self._series(market.klines, (market.symbol, market.interval))
        if series is None:
            return hold("klines contain non-positive or non-finite prices")
        if position.qty == 0:
            return self.entry(series)
        side = 1 if position.qty > 0 else -1
        return self.exit(series, side, _entry_price(position))

    def _series(self, klines: tuple[Kline, ...], key: tuple[str, str] = ("", "")) -> Series | None:
        """``Series.from_klines(klines)``, carried on from the last call's for ``key`` (the
        symbol and interval) when the window only moved by a candle (the runner's next
        tick): a pure memo of one window per key, so an agent trading several symbols in
        turn keeps each one's."""
        windows = self._windows
        if windows is None:
            windows = self._windows = {}
        window = windows.get(key)
        # advance first: on a moved window it compares only identical objects (fast) where
        # ``==`` would compare the first, differing, candles field by field
        if window is not None and (window.advance(klines) or klines == window.klines):
            return window.series
        found, zeroed = _converted(klines)
        if found is None:
            windows.pop(key, None)
            return None
        if len(windows) >= self.WINDOWS_KEPT:
            windows.clear()
        windows[key] = _Window(klines, found, zeroed)
        return found

    @abstractmethod
    def entry(self, s: Series) -> Signal:
        """Flat: LONG, SHORT or HOLD."""

    @abstractmethod
    def exit(self, s: Series, side: int, entry_price: float) -> Signal:
        """In a position (side +1 long, -1 short): CLOSE or HOLD. entry_price 0 if unknown."""


def _entry_price(position: PositionView) -> float:
    value = float(position.entry_price)
    return value if math.isfinite(value) and value > 0.0 else 0.0


class StrategyParams(BaseModel):
    """Base for per-strategy params: unknown keys refused, no type coercion, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class FastSlowParams(StrategyParams):
    """Params with a ``fast`` and a ``slow`` period (declared by the subclass): slow > fast."""

    @field_validator("slow", check_fields=False)
    @classmethod
    def _slower_than_fast(cls, slow: int, info: ValidationInfo) -> int:
        fast = info.data.get("fast")
        if isinstance(fast, int) and slow <= fast:
            raise ValueError(f"must be greater than fast ({fast})")
        return slow


P = TypeVar("P", bound=StrategyParams)

PARAMS_PATH = "trading.params"


def parse_params(model: type[P], params: Mapping[str, object]) -> P:
    """Validate ``params`` into ``model`` or raise ConfigError naming each bad key path."""
    if not isinstance(params, Mapping):
        line = f"{PARAMS_PATH}: must be a mapping of parameter names to values, got {params!r}"
        raise ConfigError(line)
    try:
        return model.model_validate(dict(params))
    except ValidationError as exc:
        problems = [_problem_line(model, err) for err in exc.errors()]
        raise ConfigError("; ".join(problems), problems) from None


def _problem_line(model: type[StrategyParams], err: ErrorDetails) -> str:
    path = ".".join([PARAMS_PATH, *(str(p) for p in err["loc"])])
    if err["type"] == "extra_forbidden":
        valid = ", ".join(model.model_fields) or "none"
        return f"{path}: unknown key (valid keys: {valid}), got {err['input']!r}"
    msg = err["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    return f"{path}: {msg}, got {err['input']!r}"
