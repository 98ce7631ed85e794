"""Recorded market data on disk: the file format ``sim --market replay`` and ``backtest`` read.

A recording is a directory of plain CSV files with a header line, times in epoch ms (UTC)::

    XRPUSDT-5m-klines.csv           open_time,open,high,low,close,volume
    XRPUSDT-5m-markPriceKlines.csv  open_time,open,high,low,close        (optional)
    XRPUSDT-fundingRate.csv         funding_time,funding_rate             (optional)

Per symbol, the finest kline interval present is the *base*: it must be continuous (each
``open_time`` one interval after the last). Coarser intervals are aggregated from it; other
kline files of the symbol are ignored. Mark-price klines are used only at the base interval
(the mark price follows the klines otherwise). Funding rates apply at the settlement at or
after their time (times are rounded to the minute).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Final

from aster_agents.errors import ConfigError
from aster_agents.models import INTERVAL_MS
from aster_agents.sim.market import MINUTE_MS

KLINE_COLUMNS: Final = ("open_time", "open", "high", "low", "close", "volume")
MARK_COLUMNS: Final = ("open_time", "open", "high", "low", "close")
FUNDING_COLUMNS: Final = ("funding_time", "funding_rate")
_KLINE_FILE: Final = re.compile(r"^([A-Z0-9]+)-(\d+[mhdwM])-(klines|markPriceKlines)\.csv$")
_FUNDING_FILE: Final = re.compile(r"^([A-Z0-9]+)-fundingRate\.csv$")


@dataclass(slots=True)
class Series:
    """One symbol's base-interval candles as floats (fast to index), oldest first."""

    interval: str
    first_open: int
    o: list[float] = field(default_factory=list)
    h: list[float] = field(default_factory=list)
    low: list[float] = field(default_factory=list)
    c: list[float] = field(default_factory=list)
    v: list[float] = field(default_factory=list)

    @property
    def step_ms(self) -> int:
        return INTERVAL_MS[self.interval]

    @property
    def end_ms(self) -> int:
        """Close time (exclusive) of the last candle."""
        return self.first_open + len(self.c) * self.step_ms


@dataclass(slots=True)
class SymbolRecording:
    symbol: str
    klines: Series
    mark: Series | None = None
    funding: dict[int, Decimal] = field(default_factory=dict)  # minute-rounded time -> rate


@dataclass(frozen=True, slots=True)
class Recording:
    """Everything a recording directory holds, checked."""

    path: Path
    symbols: dict[str, SymbolRecording]

    @property
    def start_ms(self) -> int:
        return min(s.klines.first_open for s in self.symbols.values())

    @property
    def end_ms(self) -> int:
        return max(s.klines.end_ms for s in self.symbols.values())


def _rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header[: len(columns)]) != columns:
            raise ConfigError(f"{path}: line 1: expected the header {','.join(columns)}")
        for row in reader:
            if row:
                yield reader.line_num, row


def _number(path: Path, line: int, value: str, what: str) -> Decimal:
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ConfigError(
            f"{path}: line {line}: {what}: expected a number, got {value!r}"
        ) from None
    if not number.is_finite():
        raise ConfigError(f"{path}: line {line}: {what}: expected a finite number, got {value}")
    return number


def _float(path: Path, line: int, value: str, what: str) -> float:
    """``float(_number(...))`` without the Decimal for the usual text: ``float`` reads a subset
    of what ``Decimal`` reads and rounds the same exact value the same way (``Decimal``'s own
    ``float`` goes through its text). Anything else, or a value that is not finite, takes
    ``_number``, which names the fault. A month of 1m candles is millions of numbers."""
    try:
        x = float(value)
    except ValueError:
        return float(_number(path, line, value, what))
    return x if math.isfinite(x) else float(_number(path, line, value, what))


def read_series(path: Path, interval: str, columns: tuple[str, ...]) -> Series:
    """Read one kline file; continuous, one row per ``interval``, prices > 0, high >= low."""
    series: Series | None = None
    for line, row in _rows(path, columns):
        if len(row) < len(columns):
            raise ConfigError(f"{path}: line {line}: expected {len(columns)} columns")
        t = int(_number(path, line, row[0], "open_time"))
        o, h, lo, c = (_float(path, line, row[i], columns[i]) for i in range(1, 5))
        if min(o, h, lo, c) <= 0 or h < max(o, c, lo) or lo > min(o, c):
            raise ConfigError(f"{path}: line {line}: expected 0 < low <= open,close <= high")
        if series is None:
            series = Series(interval, t)
        elif t != series.end_ms:
            raise ConfigError(
                f"{path}: line {line}: open_time {t}: expected {series.end_ms} "
                f"(rows must be continuous, one every {interval})"
            )
        series.o.append(o)
        series.h.append(h)
        series.low.append(lo)
        series.c.append(c)
        series.v.append(_float(path, line, row[5], "volume") if len(columns) > 5 else 0.0)
    if series is None:
        raise ConfigError(f"{path}: no rows: expected at least one candle")
    return series


def read_funding(path: Path) -> dict[int, Decimal]:
    rates: dict[int, Decimal] = {}
    for line, row in _rows(path, FUNDING_COLUMNS):
        if len(row) < 2:
            raise ConfigError(f"{path}: line {line}: expected funding_time,funding_rate")
        t = int(_number(path, line, row[0], "funding_time"))
        rates[(t + MINUTE_MS // 2) // MINUTE_MS * MINUTE_MS] = _number(
            path, line, row[1], "funding_rate"
        )
    return rates


def _finest(files: dict[str, Path]) -> tuple[str, Path]:
    interval = min(files, key=lambda i: INTERVAL_MS[i])
    return interval, files[interval]


def load_recording(directory: Path, symbols: frozenset[str] | None = None) -> Recording:
    """Read a recording directory; ``symbols`` (the simulator's) limits what is accepted."""
    if not directory.is_dir():
        raise ConfigError(f"{directory}: not a directory: expected a recording (see sim --help)")
    klines: dict[str, dict[str, Path]] = {}
    marks: dict[str, dict[str, Path]] = {}
    funding: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if m := _KLINE_FILE.match(path.name):
            if m[2] not in INTERVAL_MS:
                raise ConfigError(f"{path}: unknown interval {m[2]!r}")
            (klines if m[3] == "klines" else marks).setdefault(m[1], {})[m[2]] = path
        elif m := _FUNDING_FILE.match(path.name):
            funding[m[1]] = path
    if not klines:
        raise ConfigError(
            f"{directory}: no SYMBOL-INTERVAL-klines.csv file: expected a recording "
            "(aster-agent data download writes one)"
        )
    out: dict[str, SymbolRecording] = {}
    for symbol, files in sorted(klines.items()):
        if symbols is not None and symbol not in symbols:
            raise ConfigError(
                f"{files[next(iter(files))]}: symbol {symbol} is not offered by the simulator "
                f"(it offers {', '.join(sorted(symbols))})"
            )
        interval, path = _finest(files)
        rec = SymbolRecording(symbol, read_series(path, interval, KLINE_COLUMNS))
        if interval in marks.get(symbol, {}):
            rec.mark = read_series(marks[symbol][interval], interval, MARK_COLUMNS)
        if symbol in funding:
            rec.funding = read_funding(funding[symbol])
        out[symbol] = rec
    return Recording(directory, out)


def write_csv(path: Path, columns: tuple[str, ...], rows: list[list[str]]) -> None:
    """Write one recording file atomically (a temporary file renamed over the target)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    tmp.replace(path)
