"""Shared market-data cache: N processes reading one (symbol, interval) cost one fetch.

Each key is a file under ``<state_dir>/cache/``; a per-key flock makes one process fetch
while the others wait and then read what it stored. The ledger lock is never involved.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import struct
import threading
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Final

from aster_agents import models
from aster_agents.fsutil import is_disk_full, make_private_dir
from aster_agents.models import Kline

_HEADER: Final = struct.Struct("<qqB")  # fetched_ms, fresh_until_ms, is_text
_SAFE: Final = re.compile(r"[^A-Za-z0-9_.-]")


class MarketDataCache:
    """``get_or_fetch`` serves a stored value while the clock is before its ``fresh_until_ms``;
    ``klines`` does the same for candles (stored as JSON, parsed once per stored value)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / "cache"
        self._parsed: dict[str, tuple[bytes | str, list[Kline]]] = {}  # key -> stored, parsed
        try:
            make_private_dir(self.dir)
        except OSError as exc:
            if not is_disk_full(exc):
                raise

    def _path(self, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return self.dir / f"{_SAFE.sub('_', key)[:80]}-{digest}"

    def get_or_fetch(
        self,
        key: str,
        fresh_until_ms: int,
        fetch: Callable[[], bytes | str],
        *,
        now_ms: int | None = None,
    ) -> bytes | str:
        """The stored value for ``key`` while fresh, else ``fetch()``'s, stored with its times.

        ``fresh_until_ms`` is when a value fetched now goes stale (e.g. the current candle's close).
        """
        path = self._path(key)
        hit = self._read(path, now_ms)
        if hit is not None:
            return hit[0]
        try:
            fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            return fetch()  # no room to cache: serve this caller uncached
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            hit = self._read(path, now_ms)
            if hit is not None:
                return hit[0]
            value = fetch()
            self._write(path, value, fresh_until_ms)
            return value
        finally:
            os.close(fd)

    def klines(
        self,
        key: str,
        fresh_until_ms: int,
        fetch: Callable[[], list[Kline]],
        *,
        now_ms: int | None = None,
    ) -> list[Kline]:
        """``get_or_fetch`` for a list of candles: stored as JSON for the other processes,
        parsed again only when the stored value changed since this instance last read it."""
        fetched: list[Kline] = []

        def fetch_text() -> str:
            fetched.extend(fetch())
            return dump_klines(fetched)

        raw = self.get_or_fetch(key, fresh_until_ms, fetch_text, now_ms=now_ms)
        memo = self._parsed.get(key)
        if memo is not None and memo[0] == raw:
            return memo[1]
        klines = fetched or load_klines(raw)  # fetched just now: already parsed
        self._parsed[key] = (raw, klines)
        return klines

    def fetched_ms(self, key: str) -> int | None:
        """When the stored value for ``key`` was fetched, if any."""
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        return int(_HEADER.unpack_from(data)[0])

    @staticmethod
    def _read(path: Path, now_ms: int | None) -> tuple[bytes | str, int] | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(data) < _HEADER.size:
            return None
        fetched, fresh_until, is_text = _HEADER.unpack_from(data)
        now = models.now_ms() if now_ms is None else now_ms
        if now >= fresh_until:
            return None
        body = data[_HEADER.size :]
        return (body.decode() if is_text else body), fetched

    @staticmethod
    def _write(path: Path, value: bytes | str, fresh_until_ms: int) -> None:
        is_text = isinstance(value, str)
        body = value.encode() if isinstance(value, str) else value
        header = _HEADER.pack(models.now_ms(), fresh_until_ms, int(is_text))
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(header + body)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if not is_disk_full(exc):
                raise


def dump_klines(klines: list[Kline]) -> str:
    return json.dumps(
        [
            [
                k.open_time,
                str(k.open),
                str(k.high),
                str(k.low),
                str(k.close),
                str(k.volume),
                k.close_time,
            ]
            for k in klines
        ]
    )


def load_klines(raw: bytes | str) -> list[Kline]:
    return [
        Kline(
            int(r[0]),
            Decimal(r[1]),
            Decimal(r[2]),
            Decimal(r[3]),
            Decimal(r[4]),
            Decimal(r[5]),
            int(r[6]),
        )
        for r in json.loads(raw)
    ]
