"""Public market data beyond candles: the trade tape, funding config, open interest, index.

The tape is synthetic and deterministic: one market trade per second of market time since
the genesis, trade id = that second's index, at the mark price of the moment, with a seeded
size; the buyer is the maker when the price fell over that second. It does not contain the
simulated accounts' own fills (those are in ``userTrades``). Each aggregate trade holds one
trade (``a`` = ``f`` = ``l``). Shapes and limits follow the V3 docs.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from decimal import ROUND_DOWN, Decimal
from typing import Final

from aster_agents.sim.engine import ApiError, Engine, fmt, missing
from aster_agents.sim.market import MAX_FUNDING_RATE, Market
from aster_agents.sim.symbols import SYMBOLS

Params = Mapping[str, str]
TRADE_MS: Final = 1000
_HOUR_MS: Final = 3_600_000
_INDEX_SOURCES: Final = (("binance", "0.40000000"), ("okex", "0.20000000"))
_MORE_SOURCES: Final = (("bybit", "0.20000000"), ("bitget", "0.20000000"))


def _symbol(p: Params) -> str:
    name = p.get("symbol")
    if not name:
        raise missing("symbol")
    if name not in SYMBOLS:
        raise ApiError(-1121, "Invalid symbol.")
    return name


def _limit(p: Params, default: int = 500, most: int = 1000) -> int:
    text = p.get("limit")
    limit = int(text) if text else default
    if not 1 <= limit <= most:
        raise ApiError(-1130, "Data sent for parameter 'limit' is not valid.")
    return limit


class Tape:
    """The public endpoints that read the market, not an account."""

    def __init__(self, market: Market, engine: Engine) -> None:
        self.market = market
        self.engine = engine

    # ---- trades ---------------------------------------------------------------------------

    def _last_id(self) -> int:
        return max(0, (self.market.now_ms() - self.market.genesis_ms) // TRADE_MS)

    def _trade(self, symbol: str, tid: int) -> tuple[int, Decimal, Decimal, int, bool]:
        """(id, price, qty, time, buyer is maker) of trade ``tid``."""
        t = self.market.genesis_ms + tid * TRADE_MS
        price = self.market.mark(symbol, t)
        before = self.market.mark(symbol, t - TRADE_MS)
        sym = SYMBOLS[symbol]
        notional = Decimal(random.Random(f"{self.market.seed}:{symbol}:{tid}").randint(20, 5000))
        qty = max(sym.min_qty, (notional / price).quantize(sym.step_size, ROUND_DOWN))
        return tid, price, qty, t, price < before

    def _trades_json(self, symbol: str, ids: range) -> list[dict[str, object]]:
        rows = []
        for tid, price, qty, t, buyer_maker in (self._trade(symbol, i) for i in ids):
            rows.append(
                {
                    "id": tid,
                    "price": fmt(price),
                    "qty": fmt(qty),
                    "quoteQty": fmt(price * qty),
                    "time": t,
                    "isBuyerMaker": buyer_maker,
                }
            )
        return rows

    def trades(self, _u: str, p: Params) -> list[dict[str, object]]:
        """GET trades: the most recent ``limit`` (default 500, max 1000)."""
        symbol, limit, last = _symbol(p), _limit(p), self._last_id()
        return self._trades_json(symbol, range(max(0, last - limit + 1), last + 1))

    def historical_trades(self, _u: str, p: Params) -> list[dict[str, object]]:
        """GET historicalTrades: ``limit`` trades from ``fromId`` (default: the most recent)."""
        symbol, limit, last = _symbol(p), _limit(p), self._last_id()
        from_id = int(p["fromId"]) if p.get("fromId") else max(0, last - limit + 1)
        return self._trades_json(symbol, range(max(0, from_id), min(last, from_id + limit - 1) + 1))

    def agg_trades(self, _u: str, p: Params) -> list[dict[str, object]]:
        """GET aggTrades: by ``fromId``, by a time window (< 1 h), or the most recent."""
        symbol, limit, last = _symbol(p), _limit(p), self._last_id()
        start = int(p["startTime"]) if p.get("startTime") else None
        end = int(p["endTime"]) if p.get("endTime") else None
        if start is not None and end is not None and end - start >= _HOUR_MS:
            raise ApiError(-1127, "More than 1 hours between startTime and endTime.")
        genesis = self.market.genesis_ms
        hi = last if end is None else min(last, (end - genesis) // TRADE_MS)
        if p.get("fromId"):
            lo = int(p["fromId"])
        elif start is not None:
            lo = -((genesis - start) // TRADE_MS)  # the first second at or after start
        else:
            lo = hi - limit + 1
        ids = range(max(0, lo), min(hi, max(0, lo) + limit - 1) + 1)
        return [
            {"a": t["id"], "p": t["price"], "q": t["qty"], "f": t["id"], "l": t["id"]}
            | {"T": t["time"], "m": t["isBuyerMaker"]}
            for t in self._trades_json(symbol, ids)
        ]

    # ---- funding, open interest, index ---------------------------------------------------

    def funding_info(self, _u: str, p: Params) -> list[dict[str, object]]:
        """GET fundingInfo: the funding config of one symbol or all (always a list)."""
        names = [_symbol(p)] if p.get("symbol") else list(SYMBOLS)
        hours = self.engine.funding_interval_ms // _HOUR_MS
        now = self.market.now_ms()
        return [
            {
                "symbol": s,
                "interestRate": "0.00010000",
                "time": now,
                "fundingIntervalHours": hours,
                "fundingFeeCap": float(MAX_FUNDING_RATE),
                "fundingFeeFloor": -float(MAX_FUNDING_RATE),
            }
            for s in names
        ]

    def open_interest(self, _u: str, p: Params) -> dict[str, object]:
        """GET openInterest: a seeded base (a fifth of the day's volume) + the accounts' longs."""
        symbol = _symbol(p)
        day = self.market.klines(symbol, "1h", limit=24)
        volume = sum((Decimal(str(k[5])) for k in day), Decimal(0))
        base = (volume / 5).quantize(SYMBOLS[symbol].step_size, ROUND_DOWN)
        total = base + self.engine.open_interest(symbol)
        return {"openInterest": fmt(total), "symbol": symbol, "time": self.market.now_ms()}

    def index_references(self, _u: str, p: Params) -> dict[str, object]:
        """GET indexreferences: the (simulated) venues behind the index price and their weights."""
        name = p.get("symbol")
        if not name:
            raise missing("symbol")
        if name not in SYMBOLS:
            raise ApiError(-1000, "Invalid symbol.")  # the documented code for this endpoint
        base = SYMBOLS[name].base_asset
        pairs = {"binance": f"{base}USDT", "okex": f"{base}-USDT"}
        pairs |= {"bybit": f"{base}USDT", "bitget": f"{base}USDT"}
        return {
            "symbol": name,
            "time": self.market.now_ms(),
            "references": [
                {"exchange": ex, "symbol": pairs[ex], "weight": w}
                for ex, w in _INDEX_SOURCES + _MORE_SOURCES
            ],
        }
