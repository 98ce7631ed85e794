"""Record an exchange's public market data into the replay format (``recording.py``).

``download`` fetches closed klines, mark-price klines and settled funding rates of one symbol
between two times, oldest first, and appends them to the recording's CSV files. It resumes:
each file continues after its last complete row (a row cut short by a crash is dropped first),
so running it again after an interruption, or later with a later ``until``, only fetches what
is missing. Requests go through a ``PacedBudget`` that keeps the request weight under a
per-minute share of the exchange's limit (and waits out a 429/418 pause).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aster_agents.errors import ConfigError
from aster_agents.exchange.http import AsterClient
from aster_agents.models import INTERVAL_MS, Kline
from aster_agents.sim.recording import FUNDING_COLUMNS, KLINE_COLUMNS, MARK_COLUMNS

PAGE: Final = 1000  # candles per request: weight 5
DEFAULT_WEIGHT_PER_MINUTE: Final = 1200  # half the per-IP limit: running agents keep the rest


class PacedBudget:
    """A token bucket of request weight per minute for one process (``RequestBudget``)."""

    def __init__(
        self,
        weight_per_minute: int = DEFAULT_WEIGHT_PER_MINUTE,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = weight_per_minute / 60.0
        self.capacity = float(weight_per_minute)
        self.tokens = self.capacity
        self.clock, self.sleep = clock, sleep
        self.at = clock()
        self.waited_s = 0.0

    def acquire(self, weight: int, orders: int = 0) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < weight:
            wait = (weight - self.tokens) / self.rate
            self.sleep(wait)
            self.waited_s += wait
            self.tokens, self.at = float(weight), self.clock()
        self.tokens -= weight

    def observe(self, used: int | None, orders_10s: int | None, orders_1m: int | None) -> None:
        return None

    def pause(self, until: float, reason: str) -> None:
        self.sleep(max(0.0, until - time.time()))


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a download stands: ``file`` is done up to ``done_ms`` of ``since_ms..until_ms``."""

    file: str
    since_ms: int
    until_ms: int
    done_ms: int
    rows: int


@dataclass(frozen=True, slots=True)
class FileResult:
    file: str
    added: int
    total: int

    def to_json(self) -> dict[str, object]:
        return {"file": self.file, "added": self.added, "rows": self.total}


def resume(path: Path, columns: tuple[str, ...]) -> tuple[int | None, int]:
    """(last time in ``path``, its rows); creates the file with its header, drops a cut row."""
    if not path.exists() or path.stat().st_size == 0:
        _append(path, [",".join(columns)])
        return None, 0
    with path.open("rb+") as fh:
        data = fh.read()
        cut = data.rfind(b"\n") + 1
        if cut < len(data):  # a crash in the middle of a row: drop what is not complete
            fh.truncate(cut)
    lines = data[:cut].decode("utf-8").splitlines()
    if not lines or lines[0].split(",")[: len(columns)] != list(columns):
        raise ConfigError(f"{path}: line 1: expected the header {','.join(columns)}")
    if len(lines) == 1:
        return None, 0
    return int(lines[-1].split(",", 1)[0]), len(lines) - 1


def _append(path: Path, lines: list[str]) -> None:
    """Whole lines in one write, synced: a crash loses the batch's tail at worst."""
    with path.open("a", encoding="utf-8") as fh:
        fh.write("".join(f"{line}\n" for line in lines))
        fh.flush()
        os.fsync(fh.fileno())


def _candle_line(k: Kline, with_volume: bool) -> str:
    cells = [str(k.open_time), *(format(v, "f") for v in (k.open, k.high, k.low, k.close))]
    return ",".join([*cells, format(k.volume, "f")] if with_volume else cells)


def _klines(
    client: AsterClient,
    symbol: str,
    interval: str,
    kind: str,
    window: tuple[int, int],
    path: Path,
    report: Callable[[Progress], None],
) -> FileResult:
    since, until = window
    columns = KLINE_COLUMNS if kind == "klines" else MARK_COLUMNS
    last, rows = resume(path, columns)
    start, added = since if last is None else last + 1, 0
    while start < until:
        batch = client.klines(
            symbol, interval, PAGE, start_time=start, end_time=until - 1, kind=kind
        )
        batch = [k for k in batch if k.open_time >= start and k.close_time < until]
        if not batch:
            break
        _append(path, [_candle_line(k, kind == "klines") for k in batch])
        added += len(batch)
        start = batch[-1].open_time + 1
        report(Progress(path.name, since, until, batch[-1].close_time + 1, rows + added))
    return FileResult(path.name, added, rows + added)


def _funding(
    client: AsterClient,
    symbol: str,
    window: tuple[int, int],
    path: Path,
    report: Callable[[Progress], None],
) -> FileResult:
    since, until = window
    last, rows = resume(path, FUNDING_COLUMNS)
    start, added = since if last is None else last + 1, 0
    while start < until:
        batch = [
            r for r in client.funding_rates(symbol, start_time=start) if start <= r.time < until
        ]
        if not batch:
            break
        _append(path, [f"{r.time},{format(r.rate, 'f')}" for r in batch])
        added += len(batch)
        start = batch[-1].time + 1
        report(Progress(path.name, since, until, batch[-1].time, rows + added))
    return FileResult(path.name, added, rows + added)


def download(
    client: AsterClient,
    symbol: str,
    interval: str,
    since_ms: int,
    until_ms: int | None,
    out: Path,
    on_progress: Callable[[Progress], None] | None = None,
) -> list[FileResult]:
    """Klines, mark-price klines and funding of ``symbol`` into ``out`` (closed data only)."""
    if interval not in INTERVAL_MS:
        raise ConfigError(f"--interval {interval!r}: expected one of {', '.join(INTERVAL_MS)}")
    now = client.server_time()
    until = now if until_ms is None else min(until_ms, now)
    if until <= since_ms:
        raise ConfigError(f"--since/--until: nothing to record between {since_ms} and {until}")
    out.mkdir(parents=True, exist_ok=True)
    show = on_progress or (lambda _p: None)
    window = (since_ms, until)
    results = [
        _klines(
            client, symbol, interval, kind, window, out / f"{symbol}-{interval}-{kind}.csv", show
        )
        for kind in ("klines", "markPriceKlines")
    ]
    results.append(_funding(client, symbol, window, out / f"{symbol}-fundingRate.csv", show))
    return results
