"""Agents and accounts: registration, nonce slots, states, account limits and heartbeats.

Functions over a ``backend.Conn``. Capital given at registration is allocated through
``books`` (units at NAV, cash from the unallocated sleeve).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Final, NamedTuple

from aster_agents.errors import LedgerError
from aster_agents.ledger import books
from aster_agents.ledger.audit import now_ms, record, require_agent
from aster_agents.ledger.backend import Conn
from aster_agents.ledger.rows import (
    AGENT_COLS,
    SLEEVE_STATE_COLS,
    AccountLimits,
    AgentRow,
    SleeveState,
    agent_row,
    dec,
    sleeve_state,
)

ZERO: Final = Decimal(0)
MAX_NONCE_SLOTS: Final = 64
AGENT_ID_RE: Final = re.compile(r"[a-z0-9-]{1,20}")


def check_new(agent_id: str, max_positions: int) -> None:
    if not AGENT_ID_RE.fullmatch(agent_id):
        raise LedgerError(f"agent id {agent_id!r} must match [a-z0-9-]{{1,20}}")
    if max_positions < 0:
        raise LedgerError(f"agent {agent_id}: max_positions must be >= 0")


def register(
    conn: Conn,
    agent_id: str,
    user: str,
    *,
    max_positions: int,
    capital: Decimal | None,
    enabled: bool,
) -> int:
    """Insert or update an agent; returns its nonce slot (0..63, unique per user)."""
    row = conn.execute(
        "SELECT user, nonce_slot FROM agents WHERE agent_id = ?", (agent_id,)
    ).fetchone()
    if row is None:
        return _insert(conn, agent_id, user, max_positions, capital, enabled)
    slot = int(row[1]) if row[0] == user else _free_slot(conn, user, agent_id)
    # ``enabled=False`` disables; ``enabled=True`` never re-enables a disabled agent
    # (a kill switch or an operator put it there): only ``set_state`` does that.
    conn.execute(
        "UPDATE agents SET user = ?, nonce_slot = ?, max_positions = ?, "
        "state = CASE WHEN ? = 1 THEN state ELSE 'disabled' END, "
        "enabled = CASE WHEN ? = 1 AND state != 'disabled' THEN 1 ELSE 0 END "
        "WHERE agent_id = ?",
        (user, slot, max_positions, int(enabled), int(enabled), agent_id),
    )
    current = conn.execute("SELECT capital FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
    if capital is not None and dec(current[0]) != capital:
        books.allocate(conn, agent_id, capital, None)
    record(conn, agent_id, "agent_updated", user=user, max_positions=max_positions)
    return slot


def _insert(
    conn: Conn,
    agent_id: str,
    user: str,
    max_positions: int,
    capital: Decimal | None,
    enabled: bool,
) -> int:
    slot = _free_slot(conn, user, agent_id)
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
    books.move_cash(conn, user, -cap)
    record(conn, agent_id, "agent_registered", user=user, slot=slot, capital=cap)
    return slot


def _free_slot(conn: Conn, user: str, agent_id: str) -> int:
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
    conn: Conn,
    user: str,
    *,
    max_total_positions: int,
    max_gross_leverage: Decimal,
    equity: Decimal | None,
    equity_time_ms: int | None,
) -> None:
    """Set the limits every agent of ``user`` shares; ``equity`` also opens its books."""
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
    record(
        conn,
        None,
        "account_limits",
        user=user,
        max_total_positions=max_total_positions,
        max_gross_leverage=max_gross_leverage,
        equity=equity,
    )
    if equity is not None:
        books.ensure_account(conn, user, equity, equity_time_ms)


def account_limits(conn: Conn, user: str) -> AccountLimits | None:
    row = conn.execute(
        "SELECT user, max_total_positions, max_gross_leverage, equity FROM accounts WHERE user = ?",
        (user,),
    ).fetchone()
    if row is None:
        return None
    equity = None if row[3] is None else dec(row[3])
    return AccountLimits(row[0], row[1], dec(row[2]), equity)


def set_state(conn: Conn, agent_id: str, state: str, reason: str, expect: str | None) -> bool:
    """Set the state (compare-and-set when ``expect`` is given); False when it did not match."""
    row = conn.execute("SELECT state FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
    if row is None:
        require_agent(0, agent_id)
    if expect is not None and row[0] != expect:
        return False
    conn.execute(
        "UPDATE agents SET enabled = ?, state = ?, state_reason = ? WHERE agent_id = ?",
        (int(state != "disabled"), state, reason, agent_id),
    )
    record(conn, agent_id, "agent_state", state=state, reason=reason)
    return True


def heartbeat(
    conn: Conn, agent_id: str, pid: int, error: str | None, tick: bool, host: str | None = None
) -> int:
    """Record the heartbeat; returns the ``hb_ms`` written."""
    ms = now_ms()
    cur = conn.execute(
        "UPDATE agents SET hb_pid = ?, hb_ms = ?, hb_error = ?, ticks = ticks + ?, hb_host = ?, "
        "hb_stopped = 0 WHERE agent_id = ?",
        (pid, ms, error, int(tick), host, agent_id),
    )
    require_agent(cur.rowcount, agent_id)
    if error is not None:
        record(conn, agent_id, "error", pid=pid, error=error)
    return ms


class Beat(NamedTuple):
    """A heartbeat a throwaway ledger has not written yet (``Ledger.heartbeat``): the last
    beat's pid, time and host, and how many ticks the beats since the last write counted."""

    pid: int
    ms: int
    host: str | None
    ticks: int

    def then(self, newer: Beat) -> Beat:
        """This beat followed by ``newer``: its pid, time and host, the ticks of both."""
        return Beat(newer.pid, newer.ms, newer.host, self.ticks + newer.ticks)


def beaten(row: AgentRow, beat: Beat) -> AgentRow:
    """``row`` as it reads once ``beat`` is written (what ``carry_beats`` sets). Built
    field by field rather than by ``_replace``, which costs several times as much: a
    backtest does this once per agent tick."""
    return AgentRow(
        *row[:12],  # agent_id .. funding
        beat.pid,
        beat.ms,
        None,
        row.ticks + beat.ticks,
        row.positions,
        row.reserved,
        beat.host,
        False,
    )


def carry_beats(conn: Conn, beats: Mapping[str, Beat]) -> None:
    """Write the heartbeats not written yet: the UPDATE ``heartbeat`` makes, ticks summed."""
    conn.executemany(
        "UPDATE agents SET hb_pid = ?, hb_ms = ?, hb_error = NULL, ticks = ticks + ?, "
        "hb_host = ?, hb_stopped = 0 WHERE agent_id = ?",
        [(b.pid, b.ms, b.ticks, b.host, agent_id) for agent_id, b in beats.items()],
    )


def stopped(conn: Conn, agent_id: str, pid: int, host: str | None) -> bool:
    """Mark the last heartbeat as one of a run that ended normally, if it is ``pid``'s on
    ``host`` (a newer run's heartbeat stays as it is); False when it was not."""
    cur = conn.execute(
        "UPDATE agents SET hb_stopped = 1 WHERE agent_id = ? AND hb_pid = ? "
        "AND COALESCE(hb_host, '') = COALESCE(?, '')",
        (agent_id, pid, host),
    )
    return cur.rowcount == 1


def user_of(conn: Conn, agent_id: str) -> str | None:
    """The account of ``agent_id``, or None when it is not registered."""
    row = conn.execute("SELECT user FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
    return None if row is None else str(row[0])


def get(conn: Conn, agent_id: str) -> AgentRow | None:
    row = conn.execute(
        f"SELECT {AGENT_COLS} FROM agents a WHERE a.agent_id = ?", (agent_id,)
    ).fetchone()
    return None if row is None else agent_row(row)


def rows(conn: Conn) -> list[AgentRow]:
    found = conn.execute(f"SELECT {AGENT_COLS} FROM agents a ORDER BY a.user, a.agent_id")
    return [agent_row(r) for r in found.fetchall()]


def sleeve_states(conn: Conn, user: str) -> list[SleeveState]:
    """The state and units of every agent of ``user``, by agent id."""
    found = conn.execute(
        f"SELECT {SLEEVE_STATE_COLS} FROM agents WHERE user = ? ORDER BY agent_id", (user,)
    )
    return [sleeve_state(r) for r in found.fetchall()]
