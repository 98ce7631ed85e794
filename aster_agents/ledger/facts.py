"""What the ledger remembers about the exchange, and the answers it refused to believe.

Functions over a read-write :class:`~aster_agents.ledger.core.Ledger`, kept in the audit
table (no schema of their own):

- ``margin_type`` / ``note_margin_type``: the margin type last seen set on a symbol of an
  account, so a restarted agent does not ask the exchange to change it again (each ask costs
  request weight, and an unchanged type is answered -4046);
- ``booked_qty``: how much of one order the ledger has booked, the cap against which a fill is
  checked (never more than the order's ``executedQty``);
- ``note_distrusted`` / ``distrusted_count``: an exchange answer that did not match the
  intent it was about (a fill of another symbol or order, more than the order executed); it
  is logged, counted here and left to ``reconcile``.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import TYPE_CHECKING, Final

from aster_agents.ledger import audit
from aster_agents.ledger.rows import INDEXED_EVENTS, dec

if TYPE_CHECKING:
    from aster_agents.ledger.core import Ledger

MARGIN_TYPE: Final = "margin_type"
DISTRUSTED: Final = "distrusted"


def _note(ledger: Ledger, agent_id: str | None, event: str, **detail: object) -> None:
    with ledger.store.write(durable=False) as conn:
        audit.record(conn, agent_id, event, **detail)


def margin_type(ledger: Ledger, user: str, symbol: str) -> str | None:
    """The margin type last noted for ``symbol`` of ``user``, or None."""
    # JSON read here, not in SQL: SQLite's json_extract is not PostgreSQL's (a few rows: one
    # per account and symbol whose type was ever set)
    rows = ledger.store.conn.execute(
        f"SELECT detail FROM audit WHERE event = ? AND {INDEXED_EVENTS} ORDER BY id DESC",
        (MARGIN_TYPE,),
    ).fetchall()
    for (detail,) in rows:
        seen = json.loads(detail)
        if seen.get("user") == user and seen.get("symbol") == symbol:
            value = seen.get("margin_type")
            return None if value is None else str(value)
    return None


def note_margin_type(ledger: Ledger, user: str, symbol: str, value: str) -> None:
    _note(ledger, None, MARGIN_TYPE, user=user, symbol=symbol, margin_type=value)


def booked_qty(ledger: Ledger, agent_id: str, client_order_id: str) -> Decimal:
    """The quantity of ``agent_id``'s order ``client_order_id`` booked so far (unsigned)."""
    rows = ledger.store.conn.execute(
        "SELECT qty FROM fills WHERE agent_id = ? AND client_order_id = ?",
        (agent_id, client_order_id),
    ).fetchall()
    return sum((dec(r[0]) for r in rows), Decimal(0))


def trade_booked(ledger: Ledger, agent_id: str, trade_id: int) -> bool:
    """True when ``agent_id`` has booked the exchange trade ``trade_id``."""
    row = ledger.store.conn.execute(
        "SELECT 1 FROM fills WHERE agent_id = ? AND trade_id = ?", (agent_id, trade_id)
    ).fetchone()
    return row is not None


def note_distrusted(ledger: Ledger, agent_id: str | None, what: str) -> None:
    _note(ledger, agent_id, DISTRUSTED, what=what[:300])


def distrusted_count(ledger: Ledger, agent_id: str | None = None) -> int:
    """How many exchange answers were refused (of ``agent_id``, or of everyone)."""
    sql = f"SELECT COUNT(*) FROM audit WHERE event = ? AND {INDEXED_EVENTS}"
    args: tuple[str, ...] = (DISTRUSTED,)
    if agent_id is not None:
        sql += " AND agent_id = ?"
        args += (agent_id,)
    return int(ledger.store.conn.execute(sql, args).fetchone()[0])
