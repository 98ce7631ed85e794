"""Write-ahead intents: reserve, mark_sent, confirm, release, finish, and the reaper (design 5.2).

Functions over a ``backend.Conn`` inside the caller's transaction. The reaper keeps its
pacing and the pid-liveness cache between calls, so it is an object one ``Ledger`` owns.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Final, Protocol

from aster_agents.errors import LedgerError
from aster_agents.ledger import limits
from aster_agents.ledger.audit import DETAIL_JSON, record, record_at
from aster_agents.ledger.backend import Conn
from aster_agents.ledger.liveness import PidLiveness
from aster_agents.ledger.rows import INTENT_COLS, UNRESOLVED, Intent, dec
from aster_agents.models import Side

CLIENT_ORDER_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,36}")
STALE_HEARTBEAT_S: Final = 120.0
REAP_INTERVAL_S: Final = 1.0
REAP_MIN_AGE_S: Final = 1.0

# The reaper's candidates: active intents never sent, expired or created at or before a
# cutoff. The ``state IN (...)`` term lets SQLite walk the partial index ``intents_active``
# instead of scanning every intent ever written.
_REAP_SQL: Final = (
    "SELECT i.client_order_id, i.agent_id, i.pid, i.expires_ms, a.hb_pid, a.hb_ms, "
    "i.host, a.hb_host "
    "FROM intents i LEFT JOIN agents a ON a.agent_id = i.agent_id "
    "WHERE i.state IN ('reserved', 'confirmed') AND i.state = 'reserved' AND i.sent = 0 "
    "AND (i.expires_ms <= ? OR i.created_ms <= ?)"
)
_INSERT_SQL: Final = (
    "INSERT INTO intents (seq, client_order_id, agent_id, user, symbol, side, "
    "kind, margin, notional, state, pid, created_ms, expires_ms, updated_ms, reason, host) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'reserved', ?, ?, ?, ?, ?, ?)"
)


# On a store with a ``call`` (PostgreSQL), the common intent writes are each one statement, a
# function of the migrations that takes its account's lock and does the whole write in the
# server (``ledger_reserve_open``, ``ledger_transition``, ``ledger_mark_sent``): one round
# trip, the lock held only while the server runs it, never across a wake-up of the agent.
# ``$1`` and ``$2`` are the lock's keys, which the store fills in (``PostgresStore.call``).


class Call(Protocol):
    """``PostgresStore.call``: one statement that is a whole write; its rows, as text."""

    def __call__(self, sql: str, args: Sequence[Any], /, *, durable: bool = False) -> list[Any]: ...


RESERVE_OPEN_CALL: Final = (
    "SELECT r_seq, r_coid, r_user FROM ledger_reserve_open("
    "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
)
_TRANSITION_CALL: Final = "SELECT ledger_transition($1, $2, $3, $4, $5, $6, $7, $8)"
_MARK_SENT_CALL: Final = "SELECT r_agent, r_known FROM ledger_mark_sent($1, $2, $3, $4, $5, $6)"


def _detail(**detail: Any) -> str:
    return DETAIL_JSON.encode(detail)  # as ``audit.record_at`` writes it


def make_client_order_id(agent_id: str, seq: int, kind: str) -> str:
    """``<agent>-<seq, 6+ digits>-<kind>``; the kind shrinks to one letter past 36 chars."""
    coid = f"{agent_id}-{seq:06d}-{kind}"
    if len(coid) > 36:
        coid = f"{agent_id}-{seq:06d}-{kind[0]}"
    if not CLIENT_ORDER_ID_RE.fullmatch(coid):
        raise LedgerError(f"cannot build a client order id from agent {agent_id!r} and seq {seq}")
    return coid


def intent_row(row: tuple[Any, ...]) -> Intent:
    return Intent(
        client_order_id=row[0],
        seq=row[1],
        agent_id=row[2],
        user=row[3],
        symbol=row[4],
        side=Side(row[5]),
        kind=row[6],
        margin=dec(row[7]),
        notional=dec(row[8]),
        state=row[9],
        pid=row[10],
        created_ms=row[11],
        expires_ms=row[12],
        updated_ms=row[13],
        sent=bool(row[14]),
        reason=row[15],
        nonce=row[16],
    )


class Reaper:
    """Expires reservations whose order was never sent: past their TTL, or a dead owner.

    ``due`` paces the periodic sweep (``interval_s``; it skips reservations younger than
    ``min_age_s``); a denial reaps every stale one regardless (see ``reserve``).

    ``host`` is this host's name: a pid is only looked up in ``/proc`` when the intent was
    written on this host (a NULL host is a row from before hosts were recorded: local). An
    agent on another host is judged by its heartbeat lease (``stale_heartbeat_s``) and the
    intent's TTL alone.
    """

    def __init__(
        self,
        *,
        stale_heartbeat_s: float,
        interval_s: float,
        min_age_s: float,
        host: str | None = None,
    ) -> None:
        self.host = host
        self._liveness = PidLiveness()
        self._stale_heartbeat_ms = int(stale_heartbeat_s * 1000)
        self._interval_s = interval_s
        self.min_age_ms = int(min_age_s * 1000)
        self._next = 0.0  # time.monotonic() from which the next reserve sweeps anyway
        self.reaped = 0  # intents expired so far (a throwaway ledger's kept reads follow it)

    def due(self) -> bool:
        return time.monotonic() >= self._next

    def quiet(self, conn: Conn, now: int) -> bool:
        """Whether a sweep due now would find no candidate, read outside any write; then
        the sweep counts as done. For a store whose write holds its lock across each round
        trip (PostgreSQL's full ``reserve``), so that the one-trip path stays the common one.
        A candidate that appears after this read waits for the next sweep, or for the next
        denial, which reaps every stale reservation first, as always."""
        if conn.execute(_REAP_SQL + " LIMIT 1", (now, now - self.min_age_ms)).fetchone():
            return False
        self._next = time.monotonic() + self._interval_s
        return True

    def reap(self, conn: Conn, now: int, me: int, created_by: int) -> int:
        """Expire the stale among those expired or created at or before ``created_by`` (ms).

        ``me`` is this process's pid; returns how many were expired. An intent marked sent
        is in flight: its order may already be on the exchange, so freeing its slot could
        let the account exceed its limits. Only its owner resolves it, by asking the
        exchange about its client order id at the next start.
        """
        self._next = time.monotonic() + self._interval_s
        reaped = 0
        candidates = conn.execute(_REAP_SQL, (now, created_by)).fetchall()
        for coid, agent_id, pid, expires, hb_pid, hb_ms, host, hb_host in candidates:
            local = host is None or host == self.host
            same = hb_pid == pid and (hb_host == host or hb_host is None)
            why = self._reason(now, me if local else -1, pid, expires, same, hb_ms, local)
            if why is not None:
                conn.execute(
                    "UPDATE intents SET state = 'expired', reason = ?, updated_ms = ? "
                    "WHERE client_order_id = ?",
                    (why, now, coid),
                )
                record(conn, agent_id, "reap", coid=coid, reason=why, pid=pid)
                reaped += 1
                self.reaped += 1
        return reaped

    def _reason(
        self,
        now: int,
        me: int,
        pid: int,
        expires: int,
        same_owner: bool,
        hb_ms: int | None,
        local: bool,
    ) -> str | None:
        if expires <= now:
            return "ttl"
        if local and pid != me and not self._liveness.alive(pid):
            return "pid dead"
        if same_owner and hb_ms is not None and now - hb_ms > self._stale_heartbeat_ms:
            return "heartbeat stale"
        return None


def reserve(
    conn: Conn,
    reaper: Reaper,
    agent_id: str,
    symbol: str,
    side: Side,
    *,
    kind: str,
    margin: Decimal,
    notional: Decimal,
    now: int,
    ttl_ms: int,
    pid: int,
    me: int,
    note: str | None = None,
) -> Intent | str:
    """The checks and the ``reserved`` row of ``Ledger.reserve``; a denial's reason instead.

    Reads the agent, sweeps when due (always before a ``close`` or ``protect``), checks the
    limits, and on a denial reaps every stale reservation and checks once more.
    """
    agent = limits.read_agent(conn, agent_id)
    if kind != "open" or reaper.due():
        reaper.reap(conn, now, me, now - reaper.min_age_ms)
    reason = limits.denial(conn, agent, symbol, kind, margin, notional)
    if reason is not None and reaper.reap(conn, now, me, now):
        reason = limits.denial(conn, agent, symbol, kind, margin, notional)
    if reason is not None:
        return reason
    assert agent is not None
    coid = make_client_order_id(agent_id, agent.next_seq, kind)
    row = (symbol, side.value, kind, str(margin), str(notional), pid)
    conn.execute(
        _INSERT_SQL,
        (
            agent.next_seq,
            coid,
            agent_id,
            agent.user,
            *row,
            now,
            now + ttl_ms,
            now,
            note,
            reaper.host,
        ),
    )
    record_at(conn, now, agent_id, "reserve", coid=coid, kind=kind, pid=pid, symbol=symbol)
    head = (coid, agent.next_seq, agent_id, agent.user, symbol, side, kind, margin, notional)
    return _reserved(head, pid, now, ttl_ms, note)


def reserve_call(
    call: Call,
    agent_id: str,
    symbol: str,
    side: Side,
    *,
    margin: Decimal,
    notional: Decimal,
    now: int,
    ttl_ms: int,
    pid: int,
    note: str | None,
    host: str | None,
) -> Intent | None:
    """An ``open`` reservation that the limits grant, in one statement (see ``Call``).

    None when it was not granted: then nothing was written and the caller runs ``reserve``
    (which reaps, checks again and says why). The caller decides when this may be tried:
    not while the reaper is due.
    """
    args = (agent_id, symbol, side.value, margin, notional, pid, now, ttl_ms, note, host)
    rows = call(RESERVE_OPEN_CALL, (*args, _open_detail(pid, symbol)))
    if not rows:
        return None
    seq, coid, user = rows[0]
    head = (coid, int(seq), agent_id, user, symbol, side, "open", margin, notional)
    return _reserved(head, pid, now, ttl_ms, note)


def _reserved(
    head: tuple[str, int, str, str, str, Side, str, Decimal, Decimal],
    pid: int,
    now: int,
    ttl_ms: int,
    note: str | None,
) -> Intent:
    """The intent just inserted as ``reserved``: ``head`` is its fields up to the notional."""
    return Intent(*head, "reserved", pid, now, now + ttl_ms, now, False, note)


def _open_detail(pid: int, symbol: str) -> str:
    """The audit detail of an open's reservation, its client order id left as ``?`` (the
    function puts it in): ``_detail(coid="?", kind="open", pid=pid, symbol=symbol)``."""
    return f'{{"coid": "?", "kind": "open", "pid": {pid}, "symbol": {json.dumps(symbol)}}}'


def transition_call(
    call: Call,
    coid: str,
    from_states: tuple[str, ...],
    to: str,
    reason: str | None,
    now: int,
    durable: bool,
) -> bool:
    """``transition`` in one statement (see ``Call``)."""
    states = "{" + ",".join(from_states) + "}"
    detail = _detail(coid=coid, reason=reason)
    rows = call(_TRANSITION_CALL, (coid, states, to, reason, now, detail), durable=durable)
    return rows[0][0] is not None


def transition(
    conn: Conn, coid: str, from_states: tuple[str, ...], to: str, reason: str | None, now: int
) -> bool:
    """Move an intent from one of ``from_states`` to ``to``; False if it was in none."""
    marks = ", ".join("?" * len(from_states))
    row = conn.execute(
        f"UPDATE intents SET state = ?, reason = COALESCE(?, reason), updated_ms = ? "
        f"WHERE client_order_id = ? AND state IN ({marks}) RETURNING agent_id",
        (to, reason, now, coid, *from_states),
    ).fetchone()
    if row is None:
        return False
    record_at(conn, now, row[0], to, coid=coid, reason=reason)
    return True


def release_unsent(conn: Conn, coid: str, reason: str, now: int) -> bool:
    """Release a reservation never marked sent (its owner's ``mark_sent`` then fails)."""
    row = conn.execute(
        "UPDATE intents SET state = 'released', reason = ?, updated_ms = ? "
        "WHERE client_order_id = ? AND state = 'reserved' AND sent = 0 RETURNING agent_id",
        (reason, now, coid),
    ).fetchone()
    if row is None:
        return False
    record_at(conn, now, row[0], "released", coid=coid, reason=reason)
    return True


def mark_sent_call(call: Call, coid: str, now: int, nonce: int | None = None) -> bool:
    """``mark_sent`` in one statement (see ``Call``), durable."""
    rows = call(_MARK_SENT_CALL, (coid, nonce, now, _detail(coid=coid)), durable=True)
    agent_id, known = rows[0]
    if agent_id is not None:
        return True
    if known == "t":
        return False
    raise LedgerError(f"no intent with client order id {coid}")


def mark_sent(conn: Conn, coid: str, now: int, nonce: int | None = None) -> bool:
    """Flag a reserved intent as on its way to the wire (with the nonce the order carries);
    False if no longer reserved."""
    row = conn.execute(
        "UPDATE intents SET sent = 1, nonce = ?, updated_ms = ? WHERE client_order_id = ? "
        "AND state = 'reserved' RETURNING agent_id",
        (nonce, now, coid),
    ).fetchone()
    if row is None:
        if exists(conn, coid):
            return False
        raise LedgerError(f"no intent with client order id {coid}")
    record(conn, row[0], "sent", coid=coid)
    return True


def finish(conn: Conn, coid: str, state: str, now: int) -> None:
    """Close an intent with a final state; nothing when it already has it."""
    row = conn.execute(
        "SELECT agent_id, state FROM intents WHERE client_order_id = ?", (coid,)
    ).fetchone()
    if row is None:
        raise LedgerError(f"no intent with client order id {coid}")
    if row[1] == state:
        return
    conn.execute(
        "UPDATE intents SET state = ?, updated_ms = ? WHERE client_order_id = ?",
        (state, now, coid),
    )
    record(conn, row[0], "intent_" + state, coid=coid, was=row[1])


def exists(conn: Conn, coid: str) -> bool:
    row = conn.execute("SELECT 1 FROM intents WHERE client_order_id = ?", (coid,)).fetchone()
    return row is not None


def get(conn: Conn, coid: str) -> Intent | None:
    row = conn.execute(
        f"SELECT {INTENT_COLS} FROM intents WHERE client_order_id = ?", (coid,)
    ).fetchone()
    return None if row is None else intent_row(row)


def unresolved(conn: Conn, agent_id: str) -> list[Intent]:
    """Intents still reserved or confirmed, plus reaped ones that were marked sent."""
    rows = conn.execute(
        f"SELECT {INTENT_COLS} FROM intents WHERE agent_id = ? AND {UNRESOLVED} ORDER BY seq",
        (agent_id,),
    ).fetchall()
    return [intent_row(r) for r in rows]


def symbols(conn: Conn, user: str) -> set[str]:
    """Every symbol an agent of ``user`` ever placed an order on."""
    rows = conn.execute("SELECT DISTINCT symbol FROM intents WHERE user = ?", (user,)).fetchall()
    return {str(r[0]) for r in rows}
