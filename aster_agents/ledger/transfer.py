"""``ledger info`` and ``ledger migrate --to``: which backend, and moving a file to PostgreSQL.

``copy_to_postgres`` copies every table of the SQLite ledger (history included: intents,
fills, funding, income, equity, audit, rebalances) into an empty PostgreSQL ledger in one
transaction under the ledger's advisory lock, checks the row counts and each account's books
inside that transaction, and commits only when both agree: a failure leaves the target as
empty as it was. The exporter's counters and the notifier's state (which audit row it has
delivered up to, what it sent) come along, so neither starts over. The rate-budget tables
(``budgets``, ``host_pause``, ``rate_pauses``) are not copied: they refill within a minute.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Final

from aster_agents.config.view import mask_url
from aster_agents.errors import LedgerError
from aster_agents.ledger import books, counters
from aster_agents.ledger.backend import Conn, ledger_url
from aster_agents.ledger.migrations import MIGRATIONS
from aster_agents.ledger.rows import DB_NAME

# Parents before children; the order rows are inserted in (equity and audit keep theirs).
SHARED_TABLES: Final = (
    "accounts",
    "agents",
    "intents",
    "positions",
    "fills",
    "funding",
    "equity",
    "audit",
    "rebalances",
    "marks",
    "income",
    "counters",
    "notify_state",
    "notify_sent",
)
HOST_TABLES: Final = ("budgets", "host_pause", "rate_pauses")
# Keys PostgreSQL generates (identity columns): their sequences continue after the copy.
_IDENTITY: Final = (
    ("intents", "seq"),
    ("audit", "id"),
    ("rebalances", "id"),
    ("notify_sent", "id"),
)
# Filled by a trigger as the audit rows arrive: emptied before the file's own rows go in.
_DERIVED: Final = ("counters",)
_ORDER: Final = {"counters": "name, agent_id, labels"}  # WITHOUT ROWID in SQLite


@dataclass(frozen=True, slots=True)
class LedgerInfo:
    backend: str  # sqlite | postgresql
    where: str  # the file, or the URL with its password masked
    schema_version: int  # 0: no ledger there yet
    known_version: int  # the newest this aster-agents knows


@dataclass(frozen=True, slots=True)
class CopyReport:
    target: str  # masked URL
    rows: dict[str, int]
    books: dict[str, str]  # account -> books equity (the same on both sides)


def info(state_dir: Path, url: str | None = None) -> LedgerInfo:
    """Where the ledger of ``state_dir`` / ``url`` lives and its schema version; writes nothing."""
    chosen = ledger_url(url)
    if chosen is None:
        path = Path(state_dir) / DB_NAME
        version = 0
        if path.exists():
            try:
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
                try:
                    row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
                finally:
                    conn.close()
            except sqlite3.Error as exc:
                raise LedgerError(f"ledger {path}: cannot read its schema: {exc}") from None
            version = int(row[0] or 0)
        return LedgerInfo("sqlite", str(path), version, len(MIGRATIONS))
    from aster_agents.ledger.postgres import read_schema_version

    return LedgerInfo("postgresql", mask_url(chosen), read_schema_version(chosen), len(MIGRATIONS))


def copy_to_postgres(state_dir: Path, url: str) -> CopyReport:
    """Copy the SQLite ledger of ``state_dir`` into the empty PostgreSQL ledger at ``url``."""
    from aster_agents.ledger.postgres import PostgresStore, is_postgres_url
    from aster_agents.ledger.sqlite import SqliteStore

    if not is_postgres_url(url):
        raise LedgerError(f"--to {mask_url(url)}: expected postgresql://user@host:port/database")
    source_path = Path(state_dir) / DB_NAME
    if not source_path.exists():
        raise LedgerError(f"no SQLite ledger at {source_path}: nothing to migrate")
    source = SqliteStore(Path(state_dir))  # brings an older file to the current schema
    try:
        target = PostgresStore(url, Path(state_dir))
        try:
            return _copy(source, target)
        finally:
            target.close()
    finally:
        source.close()


def _copy(source: object, target: object) -> CopyReport:
    from aster_agents.ledger.postgres import PostgresStore
    from aster_agents.ledger.sqlite import SqliteStore

    assert isinstance(source, SqliteStore) and isinstance(target, PostgresStore)
    counts: dict[str, int] = {}
    with source.read() as src, target.write() as dst:
        for table in SHARED_TABLES:
            n = int(dst.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
            if n:
                raise LedgerError(
                    f"ledger {target.where} is not empty ({table} has {n} rows): "
                    "migrate into an empty database"
                )
        for table in SHARED_TABLES:
            cols = [r[1] for r in src.execute(f"PRAGMA table_info({table})").fetchall()]
            names = ", ".join(cols)
            order = _ORDER.get(table, "rowid")
            rows = src.execute(f"SELECT {names} FROM {table} ORDER BY {order}").fetchall()
            if table == "counters":  # as read (the file's unfolded audit rows in, no mark)
                rows = _counter_rows(src, cols)
            if table in _DERIVED:
                dst.execute(f"DELETE FROM {table}")
            if rows:
                marks = ", ".join("?" * len(cols))
                dst.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)
            counts[table] = len(rows)
        for table, column in _IDENTITY:
            dst.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                f"COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)"
            )
        _verify_counts(dst, counts, target.where)
        totals = _verify_books(src, dst, target.where)
    return CopyReport(target.where, counts, totals)


def _counter_rows(src: Conn, cols: list[str]) -> list[tuple[object, ...]]:
    """The file's counters as a reader sees them: the audit rows past the SQLite store's fold
    mark counted in and the mark left out (PostgreSQL counts audit rows with its trigger)."""
    assert cols == ["name", "agent_id", "labels", "value"], cols
    return [
        (c.name, c.agent_id, json.dumps(c.labels, sort_keys=True, separators=(",", ":")), c.value)
        for c in counters.read(src)
    ]


def _verify_counts(dst: Conn, counts: dict[str, int], where: str) -> None:
    for table, expected in counts.items():
        got = int(dst.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        if got != expected:
            raise LedgerError(
                f"ledger {where}: {table} has {got} rows after the copy, the file {expected}; "
                "nothing was committed"
            )


def _verify_books(src: Conn, dst: Conn, where: str) -> dict[str, str]:
    users = sorted(str(r[0]) for r in src.execute("SELECT user FROM accounts").fetchall())
    totals: dict[str, str] = {}
    for user in users:
        before: Decimal = books.books_equity(src, user)
        after: Decimal = books.books_equity(dst, user)
        if before != after:
            raise LedgerError(
                f"ledger {where}: account {user} books {after} after the copy, the file "
                f"{before}; nothing was committed"
            )
        totals[user] = str(after)
    return totals
