"""The notifier's state in the ledger: a cursor over ``audit`` and what was sent.

The cursor (``notify_state.audit_id``) moves in the same transaction that records a sent
message (``notify_sent``), so a notifier restarted after any crash resumes right after the
last message it knows was delivered. Before a message is handed to Apprise it is written
whole to ``notify_state.sending`` (synced), and that same commit clears it: a notifier
restarted with a message there resends exactly that message, under the same id. Only
``aster-agent notify`` writes these tables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from aster_agents.ledger.audit import now_ms
from aster_agents.ledger.backend import open_store
from aster_agents.ledger.rows import INDEXED_EVENTS, AuditEntry


class SentMessage(NamedTuple):
    id: int
    time_ms: int
    first_audit_id: int | None
    last_audit_id: int | None
    events: int
    title: str


class NotifyStore:
    """Cursor, sent messages and the notifier's own audit rows (supervisord states)."""

    def __init__(self, state_dir: Path, url: str | None = None) -> None:
        self.store = open_store(Path(state_dir), url)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> NotifyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cursor(self) -> int:
        """The last audit id handled; a first start begins at the newest row (no backlog)."""
        with self.store.write(durable=False) as conn:
            conn.execute(
                "INSERT OR IGNORE INTO notify_state (id, audit_id) "
                "SELECT 1, COALESCE(MAX(id), 0) FROM audit"
            )
            return int(conn.execute("SELECT audit_id FROM notify_state").fetchone()[0])

    def events_after(self, audit_id: int, limit: int = 1000) -> list[AuditEntry]:
        rows = self.store.conn.execute(
            "SELECT id, time_ms, agent_id, event, detail FROM audit WHERE id > ? "
            "ORDER BY id LIMIT ?",
            (audit_id, limit),
        ).fetchall()
        return [AuditEntry(*r) for r in rows]

    def advance(self, audit_id: int) -> None:
        """Move the cursor past rows that needed no message (not synced: re-reading is safe)."""
        with self.store.write(durable=False) as conn:
            conn.execute(
                "UPDATE notify_state SET audit_id = ? WHERE id = 1 AND audit_id < ?",
                (audit_id, audit_id),
            )

    def sending(self, message: str) -> None:
        """Remember the message about to be handed over (synced before it leaves)."""
        with self.store.write() as conn:
            conn.execute("UPDATE notify_state SET sending = ? WHERE id = 1", (message,))

    def in_flight(self) -> str | None:
        """The message a previous run handed over without recording it as delivered."""
        row = self.store.conn.execute("SELECT sending FROM notify_state").fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def sent(self, first: int | None, last: int | None, events: int, title: str) -> None:
        """Record a delivered message, clear the one in flight and move the cursor to
        ``last``, in one transaction."""
        with self.store.write() as conn:
            conn.execute("UPDATE notify_state SET sending = NULL WHERE id = 1")
            conn.execute(
                "INSERT INTO notify_sent (time_ms, first_audit_id, last_audit_id, events, title) "
                "VALUES (?, ?, ?, ?, ?)",
                (now_ms(), first, last, events, title),
            )
            if last is not None:
                conn.execute(
                    "UPDATE notify_state SET audit_id = ? WHERE id = 1 AND audit_id < ?",
                    (last, last),
                )

    def summary_day(self) -> str | None:
        row = self.store.conn.execute("SELECT summary_day FROM notify_state").fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def summary_sent(self, day: str, events: int, title: str) -> None:
        """Record the daily summary of ``day`` as delivered (once per day, across restarts)."""
        with self.store.write() as conn:
            conn.execute("UPDATE notify_state SET summary_day = ? WHERE id = 1", (day,))
            conn.execute(
                "INSERT INTO notify_sent (time_ms, events, title) VALUES (?, ?, ?)",
                (now_ms(), events, title),
            )

    def messages(self, since_ms: int = 0) -> list[SentMessage]:
        rows = self.store.conn.execute(
            "SELECT id, time_ms, first_audit_id, last_audit_id, events, title FROM notify_sent "
            "WHERE time_ms >= ? ORDER BY id",
            (since_ms,),
        ).fetchall()
        return [SentMessage(*r) for r in rows]

    def record(self, agent_id: str | None, event: str, **detail: Any) -> None:
        """Add an audit row the notifier observed itself (a supervisord state change)."""
        with self.store.write(durable=False) as conn:
            conn.execute(
                "INSERT INTO audit (time_ms, agent_id, event, detail) VALUES (?, ?, ?, ?)",
                (now_ms(), agent_id, event, json.dumps(detail, sort_keys=True)),
            )

    def last_event(self, event: str) -> dict[str, AuditEntry]:
        """The newest row of ``event`` per agent (what the notifier last recorded)."""
        rows = self.store.conn.execute(  # no bare columns beside MAX(): PostgreSQL refuses them
            "SELECT a.id, a.time_ms, a.agent_id, a.event, a.detail FROM audit a JOIN "
            f"(SELECT MAX(id) AS id FROM audit WHERE event = ? AND {INDEXED_EVENTS} "
            "GROUP BY agent_id) m ON a.id = m.id",
            (event,),
        ).fetchall()
        return {str(r[2]): AuditEntry(*r) for r in rows}
