"""The shared ledger: agents, limits, write-ahead intents, fills, P&L and heartbeats.

Invariants kept under concurrency (design.md section 5): an agent's slots (distinct symbols
with an open position or an active ``open`` intent) never exceed ``max_positions``; an
account's slots never exceed ``max_total_positions``; with the exclusive symbol policy a
symbol belongs to at most one agent per account; every state change leaves an audit row.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from aster_agents.errors import LedgerError, ReservationDenied
from aster_agents.ledger.liveness import PidLiveness
from aster_agents.ledger.rows import (
    ACCOUNT_BOOK_COLS,
    ACTIVE_STATES,
    AGENT_COLS,
    AGENT_STATES,
    EQUITY_COLS,
    FINAL_STATES,
    INTENT_KINDS,
    POSITION_COLS,
    REBALANCE_COLS,
    AccountBooks,
    AccountLimits,
    AgentRow,
    AuditEntry,
    EquityPoint,
    Intent,
    LedgerPosition,
    RebalanceRow,
    account_books_row,
    agent_row,
    equity_point,
    position_row,
    rebalance_row,
    sleeve_equity,
)
from aster_agents.ledger.store import Store, now_ms
from aster_agents.models import Side

if TYPE_CHECKING:
    from collections.abc import Mapping

ZERO: Final = Decimal(0)
MAX_NONCE_SLOTS: Final = 64
AGENT_ID_RE: Final = re.compile(r"[a-z0-9-]{1,20}")
CLIENT_ORDER_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,36}")
STALE_HEARTBEAT_S: Final = 120.0

_INTENT_COLS: Final = (
    "client_order_id, seq, agent_id, user, symbol, side, kind, margin, notional, state, pid, "
    "created_ms, expires_ms, updated_ms, sent, reason"
)


# What ``reserve`` reads first: the agent joined with its account's limits (``_Book.agent``
# is this row from ``user`` on), and the next intent seq.
_AGENT_SQL: Final = (
    "SELECT a.agent_id, a.user, a.enabled, a.max_positions, a.capital, a.realized_pnl, a.fees, "
    "a.funding, c.max_total_positions, c.max_gross_leverage, c.equity, "
    "(SELECT COALESCE(MAX(seq), 0) + 1 FROM intents) "
    "FROM agents a LEFT JOIN accounts c ON c.user = a.user WHERE a.agent_id = ?"
)
# The reaper's candidates: active intents never sent, expired or created at or before a
# cutoff. The ``state IN (...)`` term lets SQLite walk the partial index ``intents_active``
# instead of scanning every intent ever written.
_REAP_SQL: Final = (
    "SELECT i.client_order_id, i.agent_id, i.pid, i.expires_ms, a.hb_pid, a.hb_ms "
    "FROM intents i LEFT JOIN agents a ON a.agent_id = i.agent_id "
    "WHERE i.state IN ('reserved', 'confirmed') AND i.state = 'reserved' AND i.sent = 0 "
    "AND (i.expires_ms <= ? OR i.created_ms <= ?)"
)
REAP_INTERVAL_S: Final = 1.0
REAP_MIN_AGE_S: Final = 1.0


def make_client_order_id(agent_id: str, seq: int, kind: str) -> str:
    """``<agent>-<seq, 6+ digits>-<kind>``; the kind shrinks to one letter past 36 chars."""
    coid = f"{agent_id}-{seq:06d}-{kind}"
    if len(coid) > 36:
        coid = f"{agent_id}-{seq:06d}-{kind[0]}"
    if not CLIENT_ORDER_ID_RE.fullmatch(coid):
        raise LedgerError(f"cannot build a client order id from agent {agent_id!r} and seq {seq}")
    return coid


def _dec(value: Any) -> Decimal:
    return Decimal(str(value))


def _intent(row: tuple[Any, ...]) -> Intent:
    return Intent(
        client_order_id=row[0],
        seq=row[1],
        agent_id=row[2],
        user=row[3],
        symbol=row[4],
        side=Side(row[5]),
        kind=row[6],
        margin=_dec(row[7]),
        notional=_dec(row[8]),
        state=row[9],
        pid=row[10],
        created_ms=row[11],
        expires_ms=row[12],
        updated_ms=row[13],
        sent=bool(row[14]),
        reason=row[15],
    )


def _audit(conn: sqlite3.Connection, agent_id: str | None, event: str, **detail: Any) -> None:
    _audit_at(conn, now_ms(), agent_id, event, **detail)


def _audit_at(
    conn: sqlite3.Connection, time_ms: int, agent_id: str | None, event: str, **detail: Any
) -> None:
    conn.execute(
        "INSERT INTO audit (time_ms, agent_id, event, detail) VALUES (?, ?, ?, ?)",
        (time_ms, agent_id, event, json.dumps(detail, default=str, sort_keys=True)),
    )


def apply_fill(
    qty: Decimal, entry: Decimal, fill_qty: Decimal, price: Decimal
) -> tuple[Decimal, Decimal]:
    """(signed qty, entry) after a signed fill: average in, keep on reduce, reset on flip."""
    new_qty = qty + fill_qty
    if new_qty == 0:
        return ZERO, ZERO
    if qty == 0 or (qty > 0) == (fill_qty > 0):
        return new_qty, (abs(qty) * entry + abs(fill_qty) * price) / abs(new_qty)
    if (new_qty > 0) == (qty > 0):
        return new_qty, entry
    return new_qty, price


@dataclass(frozen=True, slots=True)
class _Book:
    """What one reservation check reads, taken inside the write transaction."""

    agent_id: str
    agent: tuple[Any, ...]  # agents row joined with its account's limits
    positions: list[tuple[Any, ...]]  # agent_id, symbol, qty, entry_price, margin
    intents: list[tuple[Any, ...]]  # agent_id, symbol, margin, notional, margin_booked

    @property
    def slots(self) -> set[tuple[str, str]]:
        return {(r[1], r[0]) for r in self.positions} | {(r[1], r[0]) for r in self.intents}

    def open_denial(self, symbol: str, margin: Decimal, notional: Decimal) -> str | None:
        if not self.agent[1]:
            return "agent disabled"
        if self.agent[7] is None:
            return f"account {self.agent[0]} has no limits: set_account_limits first"
        slots = self.slots
        others = sorted(a for s, a in slots if s == symbol and a != self.agent_id)
        if others:
            return f"symbol owned by {others[0]}"
        if (symbol, self.agent_id) not in slots:
            reason = self._slot_denial(slots)
            if reason is not None:
                return reason
        return self._leverage_denial(notional) or self._margin_denial(margin)

    def _slot_denial(self, slots: set[tuple[str, str]]) -> str | None:
        mine = sum(1 for _, a in slots if a == self.agent_id)
        if mine >= self.agent[2]:
            return f"agent at max_positions ({mine} open+reserved of {self.agent[2]})"
        if len(slots) >= self.agent[7]:
            return f"account at max_total_positions ({len(slots)} of {self.agent[7]})"
        return None

    def _leverage_denial(self, notional: Decimal) -> str | None:
        if self.agent[9] is None:
            return None
        limit = _dec(self.agent[8]) * _dec(self.agent[9])
        gross = sum((abs(_dec(r[2])) * _dec(r[3]) for r in self.positions), ZERO)
        gross += sum((_dec(r[3]) for r in self.intents if not r[4]), ZERO)
        if gross + notional > limit:
            return (
                f"gross notional {gross + notional} would exceed {self.agent[8]}x equity ({limit})"
            )
        return None

    def _margin_denial(self, margin: Decimal) -> str | None:
        a = self.agent
        capital = _dec(a[3]) + _dec(a[4]) - _dec(a[5]) + _dec(a[6])
        used = sum((_dec(r[4]) for r in self.positions if r[0] == self.agent_id), ZERO)
        used += sum((_dec(r[2]) for r in self.intents if r[0] == self.agent_id and not r[4]), ZERO)
        if margin > capital - used:
            return f"margin {margin} exceeds free capital {capital - used}"
        return None


class Ledger:
    """The shared ledger at ``<state_dir>/ledger.sqlite3``; one instance per process."""

    def __init__(
        self,
        state_dir: Path,
        *,
        stale_heartbeat_s: float = STALE_HEARTBEAT_S,
        reap_interval_s: float = REAP_INTERVAL_S,
        reap_min_age_s: float = REAP_MIN_AGE_S,
    ) -> None:
        self.store = Store(Path(state_dir))
        self.state_dir = self.store.state_dir
        self._liveness = PidLiveness()
        self._stale_heartbeat_ms = int(stale_heartbeat_s * 1000)
        self._reap_interval_s = reap_interval_s
        self._reap_min_age_ms = int(reap_min_age_s * 1000)
        self._next_reap = 0.0  # time.monotonic() from which the next reserve sweeps anyway

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- agents and accounts

    def register_agent(
        self,
        agent_id: str,
        user: str,
        *,
        max_positions: int,
        capital: Decimal | None = None,
        enabled: bool = True,
    ) -> int:
        """Insert or update an agent; returns its nonce slot (0..63, unique per user)."""
        if not AGENT_ID_RE.fullmatch(agent_id):
            raise LedgerError(f"agent id {agent_id!r} must match [a-z0-9-]{{1,20}}")
        if max_positions < 0:
            raise LedgerError(f"agent {agent_id}: max_positions must be >= 0")
        with self.store.write() as conn:
            row = conn.execute(
                "SELECT user, nonce_slot FROM agents WHERE agent_id = ?", (agent_id,)
            ).fetchone()
            if row is None:
                return self._insert_agent(conn, agent_id, user, max_positions, capital, enabled)
            slot = int(row[1]) if row[0] == user else self._free_slot(conn, user, agent_id)
            # ``enabled=False`` disables; ``enabled=True`` never re-enables a disabled agent
            # (a kill switch or an operator put it there): only ``set_state`` does that.
            conn.execute(
                "UPDATE agents SET user = ?, nonce_slot = ?, max_positions = ?, "
                "state = CASE WHEN ? THEN state ELSE 'disabled' END, "
                "enabled = CASE WHEN ? AND state != 'disabled' THEN 1 ELSE 0 END "
                "WHERE agent_id = ?",
                (user, slot, max_positions, int(enabled), int(enabled), agent_id),
            )
            current = conn.execute(
                "SELECT capital FROM agents WHERE agent_id = ?", (agent_id,)
            ).fetchone()
            if capital is not None and _dec(current[0]) != capital:
                self._allocate(conn, agent_id, capital, None)
            _audit(conn, agent_id, "agent_updated", user=user, max_positions=max_positions)
            return slot

    def _insert_agent(
        self,
        conn: sqlite3.Connection,
        agent_id: str,
        user: str,
        max_positions: int,
        capital: Decimal | None,
        enabled: bool,
    ) -> int:
        slot = self._free_slot(conn, user, agent_id)
        cap = capital if capital is not None else ZERO
        conn.execute(
            "INSERT INTO agents (agent_id, user, nonce_slot, max_positions, enabled, state, "
            "capital, units, realized_pnl, fees, funding, created_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, '0', '0', '0', ?)",
            (
                agent_id,
                user,
                slot,
                max_positions,
                int(enabled),
                "active" if enabled else "disabled",
                str(cap),
                str(cap),
                now_ms(),
            ),
        )
        self._move_cash(conn, user, -cap)
        _audit(conn, agent_id, "agent_registered", user=user, slot=slot, capital=cap)
        return slot

    @staticmethod
    def _free_slot(conn: sqlite3.Connection, user: str, agent_id: str) -> int:
        used = {
            r[0]
            for r in conn.execute(
                "SELECT nonce_slot FROM agents WHERE user = ? AND agent_id != ?", (user, agent_id)
            )
        }
        for slot in range(MAX_NONCE_SLOTS):
            if slot not in used:
                return slot
        raise LedgerError(
            f"account {user} already has {MAX_NONCE_SLOTS} agents: no nonce slot left for "
            f"{agent_id}; remove an agent from the ledger first"
        )

    def set_account_limits(
        self,
        user: str,
        *,
        max_total_positions: int,
        max_gross_leverage: Decimal,
        equity: Decimal | None = None,
        equity_time_ms: int | None = None,
    ) -> None:
        """Set the limits every agent of ``user`` shares; ``equity`` enables the leverage check.

        ``equity`` also opens the account's unallocated sleeve the first time (see
        ``ensure_account``); ``equity_time_ms`` is the exchange's time of that equity.
        """
        with self.store.write() as conn:
            conn.execute(
                "INSERT INTO accounts (user, max_total_positions, max_gross_leverage, equity) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (user) DO UPDATE SET "
                "max_total_positions = excluded.max_total_positions, "
                "max_gross_leverage = excluded.max_gross_leverage, equity = excluded.equity",
                (
                    user,
                    max_total_positions,
                    str(max_gross_leverage),
                    None if equity is None else str(equity),
                ),
            )
            _audit(
                conn,
                None,
                "account_limits",
                user=user,
                max_total_positions=max_total_positions,
                max_gross_leverage=max_gross_leverage,
                equity=equity,
            )
            if equity is not None:
                self._ensure_account(conn, user, equity, equity_time_ms)

    def account_limits(self, user: str) -> AccountLimits | None:
        row = self.store.conn.execute(
            "SELECT user, max_total_positions, max_gross_leverage, equity FROM accounts "
            "WHERE user = ?",
            (user,),
        ).fetchone()
        if row is None:
            return None
        equity = None if row[3] is None else _dec(row[3])
        return AccountLimits(row[0], row[1], _dec(row[2]), equity)

    def set_enabled(self, agent_id: str, enabled: bool, reason: str) -> None:
        """Enable (state active) or disable (state disabled: opens nothing) an agent."""
        self.set_state(agent_id, "active" if enabled else "disabled", reason)

    def set_state(
        self, agent_id: str, state: str, reason: str, *, expect: str | None = None
    ) -> bool:
        """Set active / probation / disabled; only ``disabled`` stops new openings.

        With ``expect``, a compare-and-set: nothing changes (and False is returned) unless the
        agent is still in that state, so an automatic transition computed from an old view
        can never overwrite an operator's ``disable`` made meanwhile.
        """
        if state not in AGENT_STATES:
            raise LedgerError(f"agent state {state!r} is not one of {', '.join(AGENT_STATES)}")
        with self.store.write() as conn:
            row = conn.execute(
                "SELECT state FROM agents WHERE agent_id = ?", (agent_id,)
            ).fetchone()
            if row is None:
                self._require(0, agent_id)
            if expect is not None and row[0] != expect:
                return False
            conn.execute(
                "UPDATE agents SET enabled = ?, state = ?, state_reason = ? WHERE agent_id = ?",
                (int(state != "disabled"), state, reason, agent_id),
            )
            _audit(conn, agent_id, "agent_state", state=state, reason=reason)
            return True

    @staticmethod
    def _require(rowcount: int, agent_id: str) -> None:
        if rowcount == 0:
            raise LedgerError(
                f"agent {agent_id} is not registered in the ledger: register_agent first"
            )

    def allocate(self, agent_id: str, capital: Decimal, *, equity: Decimal | None = None) -> None:
        """Set the agent's capital, issuing/redeeming units at the current NAV per unit.

        ``equity`` is the sleeve's equity including unrealized P&L, if the caller knows it;
        otherwise the sleeve at the recorded marks prices the units. The capital moved comes
        from (or goes back to) the account's unallocated cash once that sleeve exists.
        """
        with self.store.write() as conn:
            self._allocate(conn, agent_id, capital, equity)

    def _allocate(
        self, conn: sqlite3.Connection, agent_id: str, capital: Decimal, equity: Decimal | None
    ) -> None:
        row = conn.execute(
            "SELECT capital, units, user FROM agents WHERE agent_id = ?", (agent_id,)
        ).fetchone()
        if row is None:
            self._require(0, agent_id)
        old_cap, units, user = _dec(row[0]), _dec(row[1]), str(row[2])
        sleeve = _sleeve_equities(conn, user)[agent_id] if equity is None else equity
        nav = sleeve / units if units > 0 and sleeve > 0 else Decimal(1)
        new_units = max(ZERO, units + (capital - old_cap) / nav)
        conn.execute(
            "UPDATE agents SET capital = ?, units = ? WHERE agent_id = ?",
            (str(capital), str(new_units), agent_id),
        )
        self._move_cash(conn, user, old_cap - capital)
        _audit(conn, agent_id, "allocate", capital=capital, units=new_units, nav=nav)

    # ----------------------------------------------------------------- reservations

    def reserve(
        self,
        agent_id: str,
        symbol: str,
        side: Side,
        *,
        margin: Decimal,
        notional: Decimal,
        kind: str = "open",
        ttl_seconds: float = 60,
        pid: int | None = None,
    ) -> Intent:
        """Check every limit and write a ``reserved`` intent, in one transaction.

        Raises ``ReservationDenied`` with the reason when a limit says no. The same
        transaction reaps stale reservations (``_reap``): all of them before any denial, and
        those expired or older than ``reap_min_age_s`` in a sweep at this process's first
        reservation, then at least every ``reap_interval_s`` and before every ``close`` or
        ``protect``. A stale reservation can only make the limits tighter, so it never lets
        one through, and it never causes a denial either. The sweep skips young reservations
        because a live owner resolves its own within moments (sends or releases it), and
        checking whether each owner is alive is most of a sweep's cost.

        The commit is not synced on its own (``durable=False``): nothing outside the ledger
        acts on a reservation until ``mark_sent``, which is durable, and its sync covers this
        commit too (the WAL is recovered as a prefix). A reservation lost in an OS crash
        therefore never had an order, and its seq and client order id are free to reuse.
        """
        if kind not in INTENT_KINDS:
            raise LedgerError(f"intent kind {kind!r} is not one of {', '.join(INTENT_KINDS)}")
        if margin < 0 or notional < 0:
            raise LedgerError(f"agent {agent_id}: margin and notional must be >= 0")
        me = os.getpid()
        pid = me if pid is None else pid
        ttl_ms = int(ttl_seconds * 1000)
        row = (symbol, side.value, kind, str(margin), str(notional), pid)
        with self.store.write(durable=False) as conn:
            now = now_ms()
            agent = conn.execute(_AGENT_SQL, (agent_id,)).fetchone()
            if kind != "open" or time.monotonic() >= self._next_reap:
                self._reap(conn, now, me, now - self._reap_min_age_ms)
            reason = self._check(conn, agent, symbol, kind, margin, notional)
            if reason is not None and self._reap(conn, now, me, now):
                reason = self._check(conn, agent, symbol, kind, margin, notional)
            if reason is None:
                assert agent is not None
                user, seq = agent[1], int(agent[11])
                coid = make_client_order_id(agent_id, seq, kind)
                conn.execute(
                    "INSERT INTO intents (seq, client_order_id, agent_id, user, symbol, side, "
                    "kind, margin, notional, state, pid, created_ms, expires_ms, updated_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'reserved', ?, ?, ?, ?)",
                    (seq, coid, agent_id, user, *row, now, now + ttl_ms, now),
                )
                _audit_at(
                    conn, now, agent_id, "reserve", coid=coid, kind=kind, pid=pid, symbol=symbol
                )
        if reason is not None:
            raise ReservationDenied(f"agent {agent_id} {kind} {symbol}: {reason}")
        return Intent(
            coid,
            seq,
            agent_id,
            user,
            symbol,
            side,
            kind,
            margin,
            notional,
            "reserved",
            pid,
            now,
            now + ttl_ms,
            now,
            False,
            None,
        )

    def _reap(self, conn: sqlite3.Connection, now: int, me: int, created_by: int) -> int:
        """Expire reservations whose order was never sent: past their TTL, or dead owner.

        Looks at those expired or created at or before ``created_by`` (ms). ``me`` is this
        process's pid; returns how many were expired. An intent marked sent
        is in flight: its order may already be on the exchange, so freeing its slot could
        let the account exceed its limits. Only its owner resolves it, by asking the
        exchange about its client order id at the next start.
        """
        self._next_reap = time.monotonic() + self._reap_interval_s
        reaped = 0
        candidates = conn.execute(_REAP_SQL, (now, created_by)).fetchall()
        for coid, agent_id, pid, expires, hb_pid, hb_ms in candidates:
            why = self._reap_reason(now, me, pid, expires, hb_pid, hb_ms)
            if why is not None:
                conn.execute(
                    "UPDATE intents SET state = 'expired', reason = ?, updated_ms = ? "
                    "WHERE client_order_id = ?",
                    (why, now, coid),
                )
                _audit(conn, agent_id, "reap", coid=coid, reason=why, pid=pid)
                reaped += 1
        return reaped

    def _reap_reason(
        self, now: int, me: int, pid: int, expires: int, hb_pid: int | None, hb_ms: int | None
    ) -> str | None:
        if expires <= now:
            return "ttl"
        if pid != me and not self._liveness.alive(pid):
            return "pid dead"
        if hb_pid == pid and hb_ms is not None and now - hb_ms > self._stale_heartbeat_ms:
            return "heartbeat stale"
        return None

    @staticmethod
    def _check(
        conn: sqlite3.Connection,
        agent: tuple[Any, ...] | None,
        symbol: str,
        kind: str,
        margin: Decimal,
        notional: Decimal,
    ) -> str | None:
        if agent is None:
            return "agent not registered"
        agent_id, user = agent[0], agent[1]
        positions = conn.execute(
            "SELECT agent_id, symbol, qty, entry_price, margin FROM positions WHERE user = ?",
            (user,),
        ).fetchall()
        intents = conn.execute(
            "SELECT agent_id, symbol, margin, notional, margin_booked FROM intents "
            "WHERE state IN ('reserved', 'confirmed') AND kind = 'open' AND user = ?",
            (user,),
        ).fetchall()
        book = _Book(agent_id, agent[1:], positions, intents)
        if kind != "open":
            return None if (symbol, agent_id) in book.slots else "agent holds no position on symbol"
        return book.open_denial(symbol, margin, notional)

    def confirm(self, client_order_id: str) -> bool:
        """Mark a reserved intent as sent and accepted; False if it expired or was released."""
        return self._transition(client_order_id, ("reserved",), "confirmed", None)

    def release(self, client_order_id: str, reason: str) -> bool:
        """Give back a reserved or confirmed intent that did not become an order.

        Committed without its own fsync (see ``Store.write``): losing a release in an OS crash
        only keeps a slot busy until the reaper or start-up recovery frees it.
        """
        return self._transition(client_order_id, ACTIVE_STATES, "released", reason, durable=False)

    def finish_intent(self, client_order_id: str, state: str) -> None:
        """Close an intent with a final state (filled, canceled, rejected, ...)."""
        if state not in FINAL_STATES:
            raise LedgerError(f"final intent state {state!r} is not one of {FINAL_STATES}")
        with self.store.write() as conn:
            row = conn.execute(
                "SELECT agent_id, state FROM intents WHERE client_order_id = ?",
                (client_order_id,),
            ).fetchone()
            if row is None:
                raise LedgerError(f"no intent with client order id {client_order_id}")
            if row[1] == state:
                return
            conn.execute(
                "UPDATE intents SET state = ?, updated_ms = ? WHERE client_order_id = ?",
                (state, now_ms(), client_order_id),
            )
            _audit(conn, row[0], "intent_" + state, coid=client_order_id, was=row[1])

    def _transition(
        self,
        coid: str,
        from_states: tuple[str, ...],
        to: str,
        reason: str | None,
        *,
        durable: bool = True,
    ) -> bool:
        marks = ", ".join("?" * len(from_states))
        with self.store.write(durable=durable) as conn:
            now = now_ms()
            row = conn.execute(
                f"UPDATE intents SET state = ?, reason = COALESCE(?, reason), updated_ms = ? "
                f"WHERE client_order_id = ? AND state IN ({marks}) RETURNING agent_id",
                (to, reason, now, coid, *from_states),
            ).fetchone()
            if row is None:
                return False
            _audit_at(conn, now, row[0], to, coid=coid, reason=reason)
            return True

    def mark_sent(self, client_order_id: str) -> bool:
        """Record that the order is about to go on the wire; False if no longer reserved.

        From here on the intent is in flight and is never reaped. False means it expired or
        was released first: its slot may already be someone else's, so do not send.
        Durable: it returns once its commit, and with it the reservation's, is on disk, so
        no order goes out for an intent an OS crash or power cut could take back.
        """
        with self.store.write() as conn:
            row = conn.execute(
                "UPDATE intents SET sent = 1, updated_ms = ? WHERE client_order_id = ? "
                "AND state = 'reserved' RETURNING agent_id",
                (now_ms(), client_order_id),
            ).fetchone()
            if row is None:
                if self.intent_exists(conn, client_order_id):
                    return False
                raise LedgerError(f"no intent with client order id {client_order_id}")
            _audit(conn, row[0], "sent", coid=client_order_id)
            return True

    @staticmethod
    def intent_exists(conn: sqlite3.Connection, client_order_id: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM intents WHERE client_order_id = ?", (client_order_id,)
        ).fetchone()
        return row is not None

    def intent(self, client_order_id: str) -> Intent | None:
        row = self.store.conn.execute(
            f"SELECT {_INTENT_COLS} FROM intents WHERE client_order_id = ?", (client_order_id,)
        ).fetchone()
        return None if row is None else _intent(row)

    def unresolved_intents(self, agent_id: str) -> list[Intent]:
        """Intents still reserved or confirmed, plus reaped ones that were marked sent."""
        rows = self.store.conn.execute(
            f"SELECT {_INTENT_COLS} FROM intents WHERE agent_id = ? AND "
            "(state IN ('reserved', 'confirmed') OR (state = 'expired' AND sent = 1)) "
            "ORDER BY seq",
            (agent_id,),
        ).fetchall()
        return [_intent(r) for r in rows]

    # ----------------------------------------------------------------- fills and funding

    def book_fill(
        self,
        client_order_id: str,
        *,
        trade_id: int,
        symbol: str,
        side: Side,
        qty: Decimal,
        price: Decimal,
        realized_pnl: Decimal,
        commission: Decimal,
        time_ms: int,
    ) -> bool:
        """Book one trade of the order ``client_order_id``; False if already booked."""
        if qty <= 0:
            raise LedgerError(f"fill {trade_id} of {client_order_id}: qty must be > 0")
        with self.store.write() as conn:
            intent = conn.execute(
                "SELECT agent_id, user, kind, margin, margin_booked FROM intents "
                "WHERE client_order_id = ?",
                (client_order_id,),
            ).fetchone()
            if intent is None:
                raise LedgerError(
                    f"fill {trade_id}: no intent with client order id {client_order_id}; "
                    "run reconcile to adopt foreign orders"
                )
            agent_id, user = intent[0], intent[1]
            cur = conn.execute(
                "INSERT OR IGNORE INTO fills (agent_id, trade_id, client_order_id, symbol, side, "
                "qty, price, realized_pnl, commission, time_ms) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    agent_id,
                    trade_id,
                    client_order_id,
                    symbol,
                    side.value,
                    str(qty),
                    str(price),
                    str(realized_pnl),
                    str(commission),
                    time_ms,
                ),
            )
            if cur.rowcount == 0:
                return False
            signed = qty if side is Side.BUY else -qty
            extra_margin = ZERO
            if intent[2] == "open" and not intent[4]:
                extra_margin = _dec(intent[3])
                conn.execute(
                    "UPDATE intents SET margin_booked = 1 WHERE client_order_id = ?",
                    (client_order_id,),
                )
            self._move_position(conn, agent_id, user, symbol, signed, price, extra_margin)
            self._add_pnl(conn, agent_id, realized_pnl, commission)
            _audit(conn, agent_id, "fill", coid=client_order_id, trade_id=trade_id, qty=signed)
            return True

    @staticmethod
    def _move_position(
        conn: sqlite3.Connection,
        agent_id: str,
        user: str,
        symbol: str,
        signed: Decimal,
        price: Decimal,
        extra_margin: Decimal,
    ) -> None:
        now = now_ms()
        row = conn.execute(
            "SELECT qty, entry_price, margin FROM positions WHERE agent_id = ? AND symbol = ?",
            (agent_id, symbol),
        ).fetchone()
        qty, entry, margin = (ZERO, ZERO, ZERO) if row is None else tuple(map(_dec, row))
        new_qty, new_entry = apply_fill(qty, entry, signed, price)
        if new_qty == 0:
            conn.execute(
                "DELETE FROM positions WHERE agent_id = ? AND symbol = ?", (agent_id, symbol)
            )
            _audit(conn, agent_id, "position_closed", symbol=symbol)
            return
        conn.execute(
            "INSERT INTO positions (agent_id, symbol, user, qty, entry_price, margin, opened_ms, "
            "updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent_id, symbol) DO UPDATE "
            "SET qty = excluded.qty, entry_price = excluded.entry_price, "
            "margin = excluded.margin, updated_ms = excluded.updated_ms",
            (
                agent_id,
                symbol,
                user,
                str(new_qty),
                str(new_entry),
                str(margin + extra_margin),
                now,
                now,
            ),
        )

    @staticmethod
    def _add_pnl(
        conn: sqlite3.Connection, agent_id: str, realized: Decimal, commission: Decimal
    ) -> None:
        row = conn.execute(
            "SELECT realized_pnl, fees FROM agents WHERE agent_id = ?", (agent_id,)
        ).fetchone()
        conn.execute(
            "UPDATE agents SET realized_pnl = ?, fees = ? WHERE agent_id = ?",
            (str(_dec(row[0]) + realized), str(_dec(row[1]) + commission), agent_id),
        )

    def close_position(self, agent_id: str, symbol: str, reason: str) -> bool:
        """Drop a position without a fill (reconcile found it flat); frees slot and symbol."""
        with self.store.write() as conn:
            cur = conn.execute(
                "DELETE FROM positions WHERE agent_id = ? AND symbol = ?", (agent_id, symbol)
            )
            if cur.rowcount == 0:
                return False
            _audit(conn, agent_id, "position_closed", symbol=symbol, reason=reason)
            return True

    def book_funding(
        self, agent_id: str, symbol: str, amount: Decimal, tran_id: int, time_ms: int
    ) -> bool:
        """Book one funding payment (signed: + received); False if already booked."""
        with self.store.write() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO funding (agent_id, tran_id, symbol, amount, time_ms) "
                "VALUES (?, ?, ?, ?, ?)",
                (agent_id, tran_id, symbol, str(amount), time_ms),
            )
            if cur.rowcount == 0:
                return False
            row = conn.execute(
                "SELECT funding FROM agents WHERE agent_id = ?", (agent_id,)
            ).fetchone()
            if row is None:
                self._require(0, agent_id)
            conn.execute(
                "UPDATE agents SET funding = ? WHERE agent_id = ?",
                (str(_dec(row[0]) + amount), agent_id),
            )
            _audit(conn, agent_id, "funding", symbol=symbol, amount=amount, tran_id=tran_id)
            return True

    # ----------------------------------------------------------------- queries

    def positions(
        self, agent_id: str | None = None, user: str | None = None
    ) -> list[LedgerPosition]:
        """Open positions, optionally of one agent and/or one account."""
        sql = f"SELECT {POSITION_COLS} FROM positions WHERE 1 = 1"
        args: list[str] = []
        if agent_id is not None:
            sql += " AND agent_id = ?"
            args.append(agent_id)
        if user is not None:
            sql += " AND user = ?"
            args.append(user)
        rows = self.store.conn.execute(sql + " ORDER BY agent_id, symbol", args).fetchall()
        return [position_row(r) for r in rows]

    def symbol_owner(self, user: str, symbol: str) -> str | None:
        """The agent holding ``symbol`` on ``user`` (position or active open intent)."""
        with self.store.read() as conn:
            row = conn.execute(
                "SELECT agent_id FROM positions WHERE user = ? AND symbol = ? LIMIT 1",
                (user, symbol),
            ).fetchone()
            if row is None:
                row = conn.execute(
                    "SELECT agent_id FROM intents WHERE state IN ('reserved', 'confirmed') "
                    "AND kind = 'open' AND user = ? AND symbol = ? LIMIT 1",
                    (user, symbol),
                ).fetchone()
        return None if row is None else str(row[0])

    def counts(self, user: str) -> tuple[int, int]:
        """(open positions, slots reserved by open intents on symbols not yet held)."""
        with self.store.read() as conn:
            held = {
                (r[0], r[1])
                for r in conn.execute(
                    "SELECT agent_id, symbol FROM positions WHERE user = ?", (user,)
                )
            }
            pending = {
                (r[0], r[1])
                for r in conn.execute(
                    "SELECT agent_id, symbol FROM intents WHERE state IN ('reserved', "
                    "'confirmed') AND kind = 'open' AND user = ?",
                    (user,),
                )
            }
        return len(held), len(pending - held)

    # ----------------------------------------------------------------- heartbeats, equity, audit

    def heartbeat(
        self, agent_id: str, pid: int, *, error: str | None = None, tick: bool = False
    ) -> None:
        """Record that ``pid`` runs ``agent_id`` now; ``error`` is the last error (or None)."""
        with self.store.write(durable=False) as conn:
            cur = conn.execute(
                "UPDATE agents SET hb_pid = ?, hb_ms = ?, hb_error = ?, ticks = ticks + ? "
                "WHERE agent_id = ?",
                (pid, now_ms(), error, int(tick), agent_id),
            )
            self._require(cur.rowcount, agent_id)
            if error is not None:
                _audit(conn, agent_id, "error", pid=pid, error=error)

    def snapshot_equity(self, agent_id: str, equity: Decimal, time_ms: int | None = None) -> None:
        """Append a sleeve equity point with the agent's units and NAV per unit at that time."""
        with self.store.write() as conn:
            row = conn.execute(
                "SELECT units FROM agents WHERE agent_id = ?", (agent_id,)
            ).fetchone()
            units = None if row is None else _dec(row[0])
            nav = equity / units if units is not None and units > 0 else None
            conn.execute(
                "INSERT INTO equity (agent_id, time_ms, equity, units, nav) VALUES (?, ?, ?, ?, ?)",
                (
                    agent_id,
                    now_ms() if time_ms is None else time_ms,
                    str(equity),
                    None if units is None else str(units),
                    None if nav is None else str(nav),
                ),
            )

    def equity_history(self, agent_id: str) -> list[EquityPoint]:
        """Equity snapshots oldest first: (time_ms, equity, nav per unit or None)."""
        rows = self.store.conn.execute(
            f"SELECT {EQUITY_COLS} FROM equity WHERE agent_id = ? ORDER BY time_ms, rowid",
            (agent_id,),
        ).fetchall()
        return [equity_point(r) for r in rows]

    def agent(self, agent_id: str) -> AgentRow | None:
        row = self.store.conn.execute(
            f"SELECT {AGENT_COLS} FROM agents a WHERE a.agent_id = ?", (agent_id,)
        ).fetchone()
        return None if row is None else agent_row(row)

    def agent_rows(self) -> list[AgentRow]:
        rows = self.store.conn.execute(
            f"SELECT {AGENT_COLS} FROM agents a ORDER BY a.user, a.agent_id"
        ).fetchall()
        return [agent_row(r) for r in rows]

    def audit(self, limit: int = 100, agent_id: str | None = None) -> list[AuditEntry]:
        """The newest ``limit`` audit entries, newest first."""
        where, args = ("WHERE agent_id = ?", [agent_id]) if agent_id else ("", [])
        rows = self.store.conn.execute(
            f"SELECT id, time_ms, agent_id, event, detail FROM audit {where} "
            "ORDER BY id DESC LIMIT ?",
            [*args, limit],
        ).fetchall()
        return [AuditEntry(*r) for r in rows]

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result (``ok`` when healthy)."""
        return str(self.store.conn.execute("PRAGMA integrity_check").fetchone()[0])

    def schema_version(self) -> int:
        row = self.store.conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0])

    # ----------------------------------------------------------------- accounting (NAV, books)

    def ensure_account(self, user: str, equity: Decimal, time_ms: int | None = None) -> Decimal:
        """Record the exchange equity seen now; the first time, open the unallocated sleeve.

        The unallocated cash starts as ``equity`` - the account's sleeves (at the recorded
        marks), in one transaction, so the books add up to the exchange at that instant.
        Later calls only record the equity. Returns the unallocated cash.
        """
        with self.store.write() as conn:
            return self._ensure_account(conn, user, equity, time_ms)

    def _ensure_account(
        self, conn: sqlite3.Connection, user: str, equity: Decimal, time_ms: int | None
    ) -> Decimal:
        row = conn.execute("SELECT unallocated FROM accounts WHERE user = ?", (user,)).fetchone()
        if row is None:
            raise LedgerError(
                f"account {user} has no limits in the ledger: set_account_limits first"
            )
        when = now_ms() if time_ms is None else time_ms
        free = (
            _dec(row[0])
            if row[0] is not None
            else equity - sum(_sleeve_equities(conn, user).values(), ZERO)
        )
        conn.execute(
            "UPDATE accounts SET equity = ?, equity_ms = ?, unallocated = ?, "
            "opened_ms = COALESCE(opened_ms, ?) WHERE user = ?",
            (str(equity), when, str(free), when, user),
        )
        if row[0] is None:
            _audit(conn, None, "unallocated_opened", user=user, equity=equity, unallocated=free)
        return free

    @staticmethod
    def _move_cash(conn: sqlite3.Connection, user: str, amount: Decimal) -> None:
        """Add ``amount`` to the account's unallocated cash, once that sleeve exists."""
        row = conn.execute("SELECT unallocated FROM accounts WHERE user = ?", (user,)).fetchone()
        if row is not None and row[0] is not None:
            conn.execute(
                "UPDATE accounts SET unallocated = ? WHERE user = ?",
                (str(_dec(row[0]) + amount), user),
            )

    def account_books(self, user: str) -> AccountBooks | None:
        """Unallocated cash and the exchange equity last seen, or None for an unknown account."""
        row = self.store.conn.execute(
            f"SELECT {ACCOUNT_BOOK_COLS} FROM accounts WHERE user = ?", (user,)
        ).fetchone()
        return None if row is None else account_books_row(row)

    def sleeve_equities(
        self, user: str, marks: Mapping[str, Decimal] | None = None
    ) -> dict[str, Decimal]:
        """Each sleeve of ``user`` at ``marks`` (default: the marks recorded in the ledger)."""
        with self.store.read() as conn:
            return _sleeve_equities(conn, user, marks)

    def books_equity(self, user: str, marks: Mapping[str, Decimal] | None = None) -> Decimal:
        """Sum of the account's sleeves at ``marks`` plus its unallocated cash."""
        with self.store.read() as conn:
            sleeves = _sleeve_equities(conn, user, marks)
            row = conn.execute(
                "SELECT unallocated FROM accounts WHERE user = ?", (user,)
            ).fetchone()
        free = _dec(row[0]) if row is not None and row[0] is not None else ZERO
        return sum(sleeves.values(), ZERO) + free

    def reallocate(
        self, moves: Mapping[str, Decimal], *, reason: str, detail: Mapping[str, object]
    ) -> int:
        """Set each agent's capital to its target, in one transaction; returns the rebalance id.

        Units are issued/redeemed at each sleeve's current NAV (sleeve equity at the recorded
        marks), so no NAV per unit moves; the difference comes from / goes to the account's
        unallocated cash. Refused (LedgerError, nothing written) when a target is negative,
        an agent is unknown, an account has no unallocated sleeve yet, unallocated would go
        negative, or a sleeve would have less equity than the margin its open positions and
        active open intents use.
        """
        with self.store.write() as conn:
            plan = _plan_moves(conn, moves)
            for m in plan.moves:
                conn.execute(
                    "UPDATE agents SET capital = ?, units = ? WHERE agent_id = ?",
                    (str(m.capital_after), str(m.units_after), m.agent_id),
                )
                _audit(
                    conn,
                    m.agent_id,
                    "reallocate",
                    capital=m.capital_after,
                    units=m.units_after,
                    nav=m.nav,
                    reason=reason,
                )
            for user, (_, after) in plan.cash.items():
                conn.execute(
                    "UPDATE accounts SET unallocated = ? WHERE user = ?", (str(after), user)
                )
            doc = {**detail, **plan.detail()}
            rid = conn.execute(
                "INSERT INTO rebalances (time_ms, reason, detail) VALUES (?, ?, ?) RETURNING id",
                (now_ms(), reason, json.dumps(doc, default=str, sort_keys=True)),
            ).fetchone()[0]
            _audit(conn, None, "rebalance", id=rid, reason=reason)
            return int(rid)

    def last_rebalance(self) -> RebalanceRow | None:
        row = self.store.conn.execute(
            f"SELECT {REBALANCE_COLS} FROM rebalances ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return None if row is None else rebalance_row(row)

    def rebalances(self, limit: int = 100) -> list[RebalanceRow]:
        """The newest ``limit`` rebalances, newest first."""
        rows = self.store.conn.execute(
            f"SELECT {REBALANCE_COLS} FROM rebalances ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [rebalance_row(r) for r in rows]

    def record_marks(
        self, user: str, marks: Mapping[str, Decimal], time_ms: int | None = None
    ) -> None:
        """Remember the exchange mark price of each symbol (the latest one per symbol)."""
        if not marks:
            return
        when = now_ms() if time_ms is None else time_ms
        with self.store.write(durable=False) as conn:
            conn.executemany(
                "INSERT INTO marks (user, symbol, mark, time_ms) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (user, symbol) DO UPDATE SET mark = excluded.mark, "
                "time_ms = excluded.time_ms",
                [(user, s, str(m), when) for s, m in sorted(marks.items())],
            )

    def marks(self, user: str) -> dict[str, Decimal]:
        with self.store.read() as conn:
            return _marks(conn, user)

    def book_income(
        self,
        user: str,
        tran_id: int,
        *,
        kind: str,
        symbol: str,
        amount: Decimal,
        time_ms: int,
        agent_id: str | None,
    ) -> bool:
        """Book one exchange income entry once per (user, tranId); False if already booked.

        With ``agent_id`` the amount is the agent's funding; without, it goes to the
        account's unallocated cash (funding on a symbol no agent held, transfers, ...).
        """
        with self.store.write() as conn:
            if not _insert_income(
                conn, user, f"tran:{tran_id}", agent_id, kind, symbol, amount, time_ms
            ):
                return False
            if agent_id is None:
                self._require_books(conn, user)
                self._move_cash(conn, user, amount)
            else:
                self._add_funding(conn, agent_id, symbol, amount, tran_id, time_ms)
            _audit(
                conn,
                agent_id,
                "income",
                user=user,
                kind=kind,
                symbol=symbol,
                amount=amount,
                tran_id=tran_id,
            )
            return True

    def _add_funding(
        self,
        conn: sqlite3.Connection,
        agent_id: str,
        symbol: str,
        amount: Decimal,
        tran_id: int,
        time_ms: int,
    ) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO funding (agent_id, tran_id, symbol, amount, time_ms) "
            "VALUES (?, ?, ?, ?, ?)",
            (agent_id, tran_id, symbol, str(amount), time_ms),
        )
        row = conn.execute("SELECT funding FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
        if row is None:
            self._require(0, agent_id)
        conn.execute(
            "UPDATE agents SET funding = ? WHERE agent_id = ?",
            (str(_dec(row[0]) + amount), agent_id),
        )

    def book_unowned_trade(
        self,
        user: str,
        trade_id: int,
        *,
        symbol: str,
        realized_pnl: Decimal,
        commission: Decimal,
        time_ms: int,
    ) -> bool:
        """Book a trade of an order no agent placed (web UI, another tool) to unallocated."""
        amount = realized_pnl - commission
        with self.store.write() as conn:
            if not _insert_income(
                conn, user, f"trade:{trade_id}", None, "TRADE", symbol, amount, time_ms
            ):
                return False
            self._require_books(conn, user)
            self._move_cash(conn, user, amount)
            _audit(
                conn,
                None,
                "unowned_trade",
                user=user,
                symbol=symbol,
                trade_id=trade_id,
                amount=amount,
            )
            return True

    @staticmethod
    def _require_books(conn: sqlite3.Connection, user: str) -> None:
        row = conn.execute("SELECT unallocated FROM accounts WHERE user = ?", (user,)).fetchone()
        if row is None or row[0] is None:
            raise LedgerError(
                f"account {user} has no unallocated sleeve yet: start an agent of it or run "
                "reconcile first (ensure_account)"
            )

    def income_since(self, user: str, kind: str) -> int | None:
        """The time of the newest booked income of ``kind`` (e.g. FUNDING_FEE), or None."""
        row = self.store.conn.execute(
            "SELECT MAX(time_ms) FROM income WHERE user = ? AND kind = ?", (user, kind)
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def income_booked(self, user: str, source: str) -> bool:
        """True when ``source`` (``tran:<id>`` or ``trade:<id>``) is already booked."""
        row = self.store.conn.execute(
            "SELECT 1 FROM income WHERE user = ? AND source = ?", (user, source)
        ).fetchone()
        return row is not None

    def booked_trades(self, user: str, symbol: str) -> dict[int, tuple[Decimal, Decimal] | None]:
        """Trade ids already booked on ``symbol``: ours -> (realized P&L, commission), unowned
        (booked to unallocated) -> None."""
        with self.store.read() as conn:
            rows = conn.execute(
                "SELECT f.trade_id, f.realized_pnl, f.commission FROM fills f JOIN intents i "
                "ON i.client_order_id = f.client_order_id WHERE i.user = ? AND f.symbol = ?",
                (user, symbol),
            ).fetchall()
            foreign = conn.execute(
                "SELECT source FROM income WHERE user = ? AND symbol = ? AND kind = 'TRADE'",
                (user, symbol),
            ).fetchall()
        out: dict[int, tuple[Decimal, Decimal] | None] = {
            int(r[0]): (_dec(r[1]), _dec(r[2])) for r in rows
        }
        out.update({int(str(r[0]).split(":", 1)[1]): None for r in foreign})
        return out

    def intent_symbols(self, user: str) -> set[str]:
        """Every symbol an agent of ``user`` ever placed an order on."""
        rows = self.store.conn.execute(
            "SELECT DISTINCT symbol FROM intents WHERE user = ?", (user,)
        ).fetchall()
        return {str(r[0]) for r in rows}

    def note_reconcile(self, user: str, exchange_ms: int, differences: int) -> None:
        """Remember that reconcile ran for ``user`` up to the exchange time ``exchange_ms``."""
        with self.store.write(durable=False) as conn:
            _audit(
                conn, None, "reconcile", user=user, exchange_ms=exchange_ms, differences=differences
            )

    def last_reconcile_ms(self, user: str) -> int | None:
        """The exchange time the last reconcile of ``user`` saw, or None."""
        row = self.store.conn.execute(
            "SELECT json_extract(detail, '$.exchange_ms') FROM audit WHERE event = 'reconcile' "
            "AND json_extract(detail, '$.user') = ? ORDER BY id DESC LIMIT 1",
            (user,),
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def holder_at(self, user: str, symbol: str, time_ms: int) -> str | None:
        """The agent whose booked fills left it a position on ``symbol`` just before ``time_ms``.

        Used to attribute funding, which has a symbol but no client order id; with the
        exclusive symbol policy at most one agent holds a symbol at a time.
        """
        rows = self.store.conn.execute(
            "SELECT f.agent_id, f.side, f.qty FROM fills f JOIN intents i "
            "ON i.client_order_id = f.client_order_id "
            "WHERE i.user = ? AND f.symbol = ? AND f.time_ms < ? ORDER BY f.time_ms, f.trade_id",
            (user, symbol, time_ms),
        ).fetchall()
        held: dict[str, Decimal] = {}
        for agent_id, side, qty in rows:
            signed = _dec(qty) if side == Side.BUY.value else -_dec(qty)
            held[agent_id] = held.get(agent_id, ZERO) + signed
        owners = sorted(a for a, q in held.items() if q != 0)
        return owners[0] if owners else None


# ---------------------------------------------------------------------- accounting helpers


def _marks(conn: sqlite3.Connection, user: str) -> dict[str, Decimal]:
    rows = conn.execute("SELECT symbol, mark FROM marks WHERE user = ?", (user,)).fetchall()
    return {str(r[0]): _dec(r[1]) for r in rows}


def _sleeve_equities(
    conn: sqlite3.Connection, user: str, marks: Mapping[str, Decimal] | None = None
) -> dict[str, Decimal]:
    """Each agent of ``user``: book equity + unrealized P&L at ``marks`` (default: recorded)."""
    agents = [
        agent_row(r)
        for r in conn.execute(
            f"SELECT {AGENT_COLS} FROM agents a WHERE a.user = ? ORDER BY a.agent_id", (user,)
        )
    ]
    positions = [
        position_row(r)
        for r in conn.execute(f"SELECT {POSITION_COLS} FROM positions WHERE user = ?", (user,))
    ]
    prices = _marks(conn, user) if marks is None else marks
    return {a.agent_id: sleeve_equity(a, positions, prices) for a in agents}


def _insert_income(
    conn: sqlite3.Connection,
    user: str,
    source: str,
    agent_id: str | None,
    kind: str,
    symbol: str,
    amount: Decimal,
    time_ms: int,
) -> bool:
    cur = conn.execute(
        "INSERT OR IGNORE INTO income (user, source, agent_id, kind, symbol, amount, time_ms) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (user, source, agent_id, kind, symbol, str(amount), time_ms),
    )
    return cur.rowcount > 0


class _Move(NamedTuple):
    agent_id: str
    user: str
    capital_before: Decimal
    capital_after: Decimal
    units_before: Decimal
    units_after: Decimal
    nav: Decimal
    equity_before: Decimal
    equity_after: Decimal


@dataclass(frozen=True, slots=True)
class _Plan:
    """A checked reallocation: the agents' new capital and units, each account's cash."""

    moves: tuple[_Move, ...]
    cash: dict[str, tuple[Decimal, Decimal]]  # user -> (unallocated before, after)
    totals: dict[str, Decimal]  # user -> sum of sleeves + unallocated (unchanged by the plan)

    def detail(self) -> dict[str, object]:
        def weight(equity: Decimal, user: str) -> str:
            total = self.totals[user]
            return str(equity / total) if total > 0 else "0"

        return {
            "moves": {
                m.agent_id: {
                    "user": m.user,
                    "capital_before": str(m.capital_before),
                    "capital_after": str(m.capital_after),
                    "units_before": str(m.units_before),
                    "units_after": str(m.units_after),
                    "nav": str(m.nav),
                    "equity_before": str(m.equity_before),
                    "equity_after": str(m.equity_after),
                    "weight_before": weight(m.equity_before, m.user),
                    "weight_after": weight(m.equity_after, m.user),
                }
                for m in self.moves
            },
            "unallocated": {
                u: {"before": str(b), "after": str(a)} for u, (b, a) in self.cash.items()
            },
        }


def _plan_moves(conn: sqlite3.Connection, moves: Mapping[str, Decimal]) -> _Plan:
    users: dict[str, str] = {}
    for agent_id, target in moves.items():
        row = conn.execute("SELECT user FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
        if row is None:
            raise LedgerError(f"reallocate: agent {agent_id} is not registered in the ledger")
        if not target.is_finite() or target < 0:
            raise LedgerError(f"reallocate: capital for {agent_id} must be >= 0, got {target}")
        users[agent_id] = str(row[0])
    planned: list[_Move] = []
    cash: dict[str, tuple[Decimal, Decimal]] = {}
    totals: dict[str, Decimal] = {}
    for user in sorted(set(users.values())):
        free = _unallocated(conn, user)
        sleeves = _sleeve_equities(conn, user)
        totals[user] = sum(sleeves.values(), ZERO) + free
        mine = [
            _move(conn, a, user, moves[a], sleeves[a]) for a in sorted(moves) if users[a] == user
        ]
        after = free - sum((m.capital_after - m.capital_before for m in mine), ZERO)
        if after < 0:
            raise LedgerError(
                f"reallocate: account {user} has {free} unallocated, the moves need "
                f"{free - after}; lower the targets"
            )
        planned += mine
        cash[user] = (free, after)
    return _Plan(tuple(planned), cash, totals)


def _unallocated(conn: sqlite3.Connection, user: str) -> Decimal:
    row = conn.execute("SELECT unallocated FROM accounts WHERE user = ?", (user,)).fetchone()
    if row is None or row[0] is None:
        raise LedgerError(
            f"reallocate: account {user} has no unallocated sleeve yet; start one of its agents "
            "or run reconcile first"
        )
    return _dec(row[0])


def _move(
    conn: sqlite3.Connection, agent_id: str, user: str, target: Decimal, equity: Decimal
) -> _Move:
    row = conn.execute(
        "SELECT capital, units, realized_pnl, fees, funding FROM agents WHERE agent_id = ?",
        (agent_id,),
    ).fetchone()
    capital, units = _dec(row[0]), _dec(row[1])
    nav = equity / units if units > 0 and equity > 0 else Decimal(1)
    delta = target - capital
    used = _margin_in_use(conn, agent_id)
    if equity + delta < used:
        raise LedgerError(
            f"reallocate: {agent_id} would have {equity + delta} equity, below the {used} "
            "margin its open positions and intents use; close positions or lower the cut"
        )
    return _Move(
        agent_id,
        user,
        capital,
        target,
        units,
        max(ZERO, units + delta / nav),
        nav,
        equity,
        equity + delta,
    )


def _margin_in_use(conn: sqlite3.Connection, agent_id: str) -> Decimal:
    used = sum(
        (
            _dec(r[0])
            for r in conn.execute("SELECT margin FROM positions WHERE agent_id = ?", (agent_id,))
        ),
        ZERO,
    )
    used += sum(
        (
            _dec(r[0])
            for r in conn.execute(
                "SELECT margin FROM intents WHERE agent_id = ? AND kind = 'open' "
                "AND state IN ('reserved', 'confirmed') AND margin_booked = 0",
                (agent_id,),
            )
        ),
        ZERO,
    )
    return used
