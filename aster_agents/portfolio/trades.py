"""Round trips from booked fills: what ``trades`` lists and the report tabulates.

The pairing is pure; ``read_trips`` and ``last_closed_trip`` feed it from a ``Ledger`` or a
``ReadOnlyLedger`` (anything with the ``TradeHistory`` reads), like ``governance`` does for
metrics.

A round trip starts when an agent's position on a symbol leaves zero and ends when it gets
back to zero. A fill that flips the position closes the trip with the part that reaches zero
and opens the next with the rest (its commission is split by quantity, its realized P&L goes
to the trip it closes: the exchange realizes P&L only on the reducing part). A position that
``reconcile`` dropped without a fill ends its trip as ``foreign``. Funding paid or received on
the symbol while the trip was open belongs to it. Trips still open are listed too (``open``),
so the realized P&L, fees and funding of every trip add up to the books'.

How a trip closed, from the order of its last fill:

- ``stop`` / ``take_profit``: a protective order (its note names it; without a note, a loss is
  the stop), or a close the runner sent because the stop was already crossed;
- ``kill_switch``: a close sent while the agent was disabled by a kill switch;
- ``signal``: any other close the strategy asked for;
- ``foreign``: no order of the agent closed it (reconcile found the exchange flat).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Final, Protocol

from aster_agents.ledger.reports import ForcedClose, FundingRow, StateChange, TradeFill

ZERO: Final = Decimal(0)
CLOSED_BY: Final = ("signal", "stop", "take_profit", "kill_switch", "foreign", "open")
FEE_STEP: Final = Decimal("1e-8")  # a flip's commission is split by quantity to this step
STOP_CROSSED: Final = "stop already crossed"  # the runner's reason when a stop was refused


def text(value: Decimal) -> str:
    """A decimal as a plain string without trailing zeros or exponent (``0.18``, ``10``)."""
    return f"{value.normalize():f}"


@dataclass(frozen=True, slots=True)
class RoundTrip:
    """One position from zero back to zero; ``exit_*`` are None while it is open."""

    agent_id: str
    symbol: str
    side: str  # "long" or "short"
    qty: Decimal  # the largest absolute position held
    entry_price: Decimal  # average of the fills that opened or added
    exit_price: Decimal | None  # average of the fills that reduced
    entry_ms: int
    exit_ms: int | None
    realized_pnl: Decimal
    fees: Decimal
    funding: Decimal
    reason: str  # what the strategy gave when it opened
    closed_by: str
    fills: int

    @property
    def pnl(self) -> Decimal:
        """Realized P&L - fees + funding."""
        return self.realized_pnl - self.fees + self.funding

    @property
    def duration_ms(self) -> int | None:
        return None if self.exit_ms is None else self.exit_ms - self.entry_ms

    @property
    def last_ms(self) -> int:
        return self.entry_ms if self.exit_ms is None else self.exit_ms

    def to_json(self) -> dict[str, Any]:
        return {
            "agent": self.agent_id,
            "symbol": self.symbol,
            "side": self.side,
            "qty": text(self.qty),
            "entry_price": text(self.entry_price),
            "exit_price": None if self.exit_price is None else text(self.exit_price),
            "entry_ms": self.entry_ms,
            "exit_ms": self.exit_ms,
            "duration_s": None if self.duration_ms is None else self.duration_ms / 1000,
            "realized_pnl": text(self.realized_pnl),
            "fees": text(self.fees),
            "funding": text(self.funding),
            "pnl": text(self.pnl),
            "reason": self.reason,
            "closed_by": self.closed_by,
            "fills": self.fills,
        }


@dataclass(frozen=True, slots=True)
class Totals:
    """Per agent, over the trips listed."""

    agent_id: str
    trips: int = 0
    closed: int = 0
    wins: int = 0
    realized_pnl: Decimal = ZERO
    fees: Decimal = ZERO
    funding: Decimal = ZERO

    @property
    def pnl(self) -> Decimal:
        return self.realized_pnl - self.fees + self.funding

    def add(self, t: RoundTrip) -> Totals:
        closed = t.exit_ms is not None
        return replace(
            self,
            trips=self.trips + 1,
            closed=self.closed + closed,
            wins=self.wins + (closed and t.pnl > 0),
            realized_pnl=self.realized_pnl + t.realized_pnl,
            fees=self.fees + t.fees,
            funding=self.funding + t.funding,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "agent": self.agent_id,
            "trips": self.trips,
            "closed": self.closed,
            "wins": self.wins,
            "realized_pnl": text(self.realized_pnl),
            "fees": text(self.fees),
            "funding": text(self.funding),
            "pnl": text(self.pnl),
        }


@dataclass(slots=True)
class _Open:
    """The trip being built on one agent and symbol."""

    agent_id: str
    symbol: str
    qty: Decimal = ZERO  # signed position now
    peak: Decimal = ZERO
    entry_ms: int = 0
    reason: str = ""
    cost_in: Decimal = ZERO
    qty_in: Decimal = ZERO
    cost_out: Decimal = ZERO
    qty_out: Decimal = ZERO
    realized: Decimal = ZERO
    fees: Decimal = ZERO
    count: int = 0
    side: str = "long"

    def start(self, fill: TradeFill) -> None:
        self.entry_ms, self.reason = fill.time_ms, fill.note or ""
        self.side = "long" if fill.qty > 0 else "short"
        self.cost_in = self.qty_in = self.cost_out = self.qty_out = ZERO
        self.realized = self.fees = self.peak = ZERO
        self.count = 0

    def add_in(self, qty: Decimal, price: Decimal) -> None:
        self.qty += qty
        self.cost_in += abs(qty) * price
        self.qty_in += abs(qty)
        self.peak = max(self.peak, abs(self.qty))

    def add_out(self, qty: Decimal, price: Decimal) -> None:
        self.qty += qty
        self.cost_out += abs(qty) * price
        self.qty_out += abs(qty)

    def trip(self, exit_ms: int | None, closed_by: str, funding: Decimal) -> RoundTrip:
        return RoundTrip(
            agent_id=self.agent_id,
            symbol=self.symbol,
            side=self.side,
            qty=self.peak,
            entry_price=self.cost_in / self.qty_in if self.qty_in else ZERO,
            exit_price=self.cost_out / self.qty_out if self.qty_out and exit_ms else None,
            entry_ms=self.entry_ms,
            exit_ms=exit_ms,
            realized_pnl=self.realized,
            fees=self.fees,
            funding=funding,
            reason=self.reason,
            closed_by=closed_by,
            fills=self.count,
        )


class _Funding:
    """Funding of one agent and symbol, summed over a time range."""

    def __init__(self, rows: Sequence[FundingRow]) -> None:
        self.times = [r.time_ms for r in rows]
        self.sums = [ZERO]
        for r in rows:
            self.sums.append(self.sums[-1] + r.amount)

    def between(self, start: int, end: int | None) -> Decimal:
        lo = bisect.bisect_left(self.times, start)
        hi = len(self.times) if end is None else bisect.bisect_right(self.times, end)
        return self.sums[hi] - self.sums[lo] if hi > lo else ZERO


class _KillSwitch:
    """Whether an agent was disabled by a kill switch at a given time."""

    def __init__(self, changes: Iterable[StateChange]) -> None:
        self.by_agent: dict[str, list[StateChange]] = {}
        for c in changes:
            self.by_agent.setdefault(c.agent_id, []).append(c)

    def at(self, agent_id: str, time_ms: int) -> bool:
        changes = self.by_agent.get(agent_id, [])
        i = bisect.bisect_right([c.time_ms for c in changes], time_ms) - 1
        return i >= 0 and changes[i].state == "disabled" and "kill switch" in changes[i].reason


def closed_by(fill: TradeFill, killed: bool) -> str:
    """How the fill that brought a position to zero closed it (see the module docstring)."""
    note = (fill.note or "").lower()
    if fill.kind == "protect":
        if note.startswith("take"):
            return "take_profit"
        if note.startswith("stop"):
            return "stop"
        return "stop" if fill.realized_pnl < 0 else "take_profit"
    if fill.kind is None:
        return "foreign"
    if fill.kind == "close" and note == STOP_CROSSED:
        return "stop"
    return "kill_switch" if killed else "signal"


def round_trips(
    fills: Iterable[TradeFill],
    funding: Iterable[FundingRow] = (),
    states: Iterable[StateChange] = (),
    forced: Iterable[ForcedClose] = (),
) -> list[RoundTrip]:
    """Every round trip in the fills, newest first (open trips first of all)."""
    per: dict[tuple[str, str], list[tuple[int, int, TradeFill | ForcedClose]]] = {}
    for f in fills:
        per.setdefault((f.agent_id, f.symbol), []).append((f.time_ms, 0, f))
    for c in forced:
        per.setdefault((c.agent_id, c.symbol), []).append((c.time_ms, 1, c))
    money: dict[tuple[str, str], list[FundingRow]] = {}
    for r in funding:
        money.setdefault((r.agent_id, r.symbol), []).append(r)
    kill = _KillSwitch(states)
    trips: list[RoundTrip] = []
    for key, events in per.items():
        events.sort(key=lambda e: (e[0], e[1]))
        trips += _replay(key, events, _Funding(money.get(key, [])), kill)
    return sorted(trips, key=lambda t: (t.exit_ms is None, t.last_ms), reverse=True)


def _replay(
    key: tuple[str, str],
    events: Sequence[tuple[int, int, TradeFill | ForcedClose]],
    funding: _Funding,
    kill: _KillSwitch,
) -> list[RoundTrip]:
    out: list[RoundTrip] = []
    cur = _Open(*key)
    for time_ms, _, event in events:
        if isinstance(event, ForcedClose):
            if cur.qty != 0:
                out.append(cur.trip(time_ms, "foreign", funding.between(cur.entry_ms, time_ms)))
                cur.qty = ZERO
            continue
        out += _apply(cur, event, funding, kill)
    if cur.qty != 0:
        out.append(cur.trip(None, "open", funding.between(cur.entry_ms, None)))
    return out


def _apply(cur: _Open, fill: TradeFill, funding: _Funding, kill: _KillSwitch) -> list[RoundTrip]:
    """Book one fill into ``cur``; the trip it closed, if any."""
    if cur.qty == 0:
        cur.start(fill)
    cur.count += 1
    cur.realized += fill.realized_pnl
    if cur.qty == 0 or (cur.qty > 0) == (fill.qty > 0):
        cur.fees += fill.commission
        cur.add_in(fill.qty, fill.price)
        return []
    closing = fill.qty if abs(fill.qty) <= abs(cur.qty) else -cur.qty
    fee = fill.commission * abs(closing) / abs(fill.qty)
    if int(fee.as_tuple().exponent) < -8:
        fee = fee.quantize(FEE_STEP)
    cur.fees += fee
    cur.add_out(closing, fill.price)
    if cur.qty != 0:
        return []
    how = closed_by(fill, kill.at(cur.agent_id, fill.time_ms))
    done = cur.trip(fill.time_ms, how, funding.between(cur.entry_ms, fill.time_ms))
    rest = fill.qty - closing
    if rest != 0:  # a flip: the rest opens the next trip
        cur.start(fill._replace(qty=rest, realized_pnl=ZERO))
        cur.count = 1
        cur.fees += fill.commission - fee  # the two parts add up to the commission exactly
        cur.add_in(rest, fill.price)
    return [done]


def totals(trips: Iterable[RoundTrip]) -> dict[str, Totals]:
    """Per agent, sorted by agent id."""
    out: dict[str, Totals] = {}
    for t in trips:
        out[t.agent_id] = out.get(t.agent_id, Totals(t.agent_id)).add(t)
    return dict(sorted(out.items()))


def select(
    trips: Sequence[RoundTrip],
    *,
    since_ms: int | None = None,
    limit: int | None = None,
) -> list[RoundTrip]:
    """Trips active at or after ``since_ms`` (open, or closed since), the newest ``limit``."""
    chosen = [t for t in trips if since_ms is None or t.exit_ms is None or t.exit_ms >= since_ms]
    return chosen if not limit else chosen[:limit]


def by_agent(trips: Iterable[RoundTrip]) -> Mapping[str, list[RoundTrip]]:
    out: dict[str, list[RoundTrip]] = {}
    for t in trips:
        out.setdefault(t.agent_id, []).append(t)
    return out


# ---------------------------------------------------------------------- reading


class TradeHistory(Protocol):
    """The ledger reads round trips need (``Ledger``, or ``ReadOnlyLedger`` for the CLI)."""

    def trade_fills(
        self, agent_id: str | None = None, symbol: str | None = None
    ) -> list[TradeFill]: ...

    def funding_rows(self, agent_id: str | None = None) -> list[FundingRow]: ...

    def state_changes(self) -> list[StateChange]: ...

    def forced_closes(self) -> list[ForcedClose]: ...


def read_trips(
    ledger: TradeHistory, agent_id: str | None = None, symbol: str | None = None
) -> list[RoundTrip]:
    """Every round trip in the ledger (of one agent and/or symbol), newest first."""
    forced = [
        c
        for c in ledger.forced_closes()
        if agent_id in (None, c.agent_id) and symbol in (None, c.symbol)
    ]
    money = [r for r in ledger.funding_rows(agent_id) if symbol in (None, r.symbol)]
    fills = ledger.trade_fills(agent_id, symbol)
    return round_trips(fills, money, ledger.state_changes(), forced)


def last_closed_trip(ledger: TradeHistory, agent_id: str, symbol: str) -> RoundTrip | None:
    """The newest closed round trip of one agent on one symbol (for the close log line)."""
    return next((t for t in read_trips(ledger, agent_id, symbol) if t.exit_ms is not None), None)
