"""A read-only view of the ledger for ``status`` and ``portfolio``: never creates or writes.

``open_readonly(state_dir)`` returns ``None`` when there is no ledger file, so a fresh checkout
shows agents as "never started" without creating a state dir. The connection is opened with
SQLite's ``mode=ro`` URI: no migration, no flock, no WAL switch. Rows are the same frozen
dataclasses the read-write ``Ledger`` hands out.

With a PostgreSQL URL (``ledger.url`` or ``$ASTER_AGENTS_LEDGER_URL``) the same class reads
the shared database through a read-only session (``postgres.readonly_conn``); psycopg is
imported only then, so ``status`` on the SQLite file stays as fast as it was.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from aster_agents.errors import LedgerError
from aster_agents.ledger.counters import Counter
from aster_agents.ledger.counters import read as read_counters
from aster_agents.ledger.rows import (
    ACCOUNT_BOOK_COLS,
    BUSY_TIMEOUT_MS,
    DB_NAME,
    EQUITY_COLS,
    INDEXED_EVENTS,
    POSITION_COLS,
    REBALANCE_COLS,
    STATE_DIR_FILE,
    AccountBooks,
    AccountLimits,
    AgentRow,
    EquityPoint,
    LedgerPosition,
    RebalanceRow,
    account_books_row,
    agent_cols,
    agent_row,
    equity_point,
    position_row,
    rebalance_row,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from aster_agents.ledger.backend import Conn
    from aster_agents.ledger.history import FillRecord
    from aster_agents.ledger.reports import ForcedClose, FundingRow, StateChange, TradeFill


class BucketLevel(NamedTuple):
    """One shared rate bucket: ``used`` of ``capacity`` tokens right now."""

    key: str
    used: float
    capacity: float


class HostPause(NamedTuple):
    until_s: float
    reason: str


class ReadOnlyLedger:
    """SELECT-only access to ``<state_dir>/ledger.sqlite3`` (or, built by ``open_readonly``
    with a URL, to a PostgreSQL ledger: ``where`` then names it, password masked)."""

    backend = "sqlite"

    def __init__(self, path: Path, *, threads: bool = False) -> None:
        """``threads``: the connection may be used from several threads, one at a time (a
        long-lived reader such as the exporter, whose scrapes each run in a thread)."""
        self.path = path
        self.where = str(path)
        self._memo: dict[str, Any] | None = None
        uri = f"file:{_uri_path(path)}?mode=ro"
        try:
            raw = sqlite3.connect(
                uri, uri=True, isolation_level=None, timeout=5, check_same_thread=not threads
            )
            self.conn: Conn = raw
            self._close: Callable[[], None] = raw.close
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._tables = self._table_names()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(
                f"cannot read ledger {path}: {exc}; check the file's permissions or integrity"
            ) from exc

    def _table_names(self) -> set[str]:
        if self.backend != "sqlite":
            sql = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        else:
            sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
        return {str(r[0]) for r in self.conn.execute(sql).fetchall()}

    @classmethod
    def over(
        cls, conn: Conn, close: Callable[[], None], tables: set[str], where: str
    ) -> ReadOnlyLedger:
        """The same reads over another backend's read-only connection (PostgreSQL)."""
        self = cls.__new__(cls)
        self.path, self.where, self.conn, self._close, self._tables = (
            Path(where),
            where,
            conn,
            close,
            tables,
        )
        self.backend = "postgresql"
        self._memo = None
        return self

    def close(self) -> None:
        self._close()

    def __enter__(self) -> ReadOnlyLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def snapshot(self) -> Iterator[ReadOnlyLedger]:
        """One read transaction: every read inside sees the same state of the ledger, and the
        reads several views repeat (agent rows, positions, marks) run once. For a reader that
        gathers many views at once (the exporter's scrape); the memo ends with the block."""
        begin = "BEGIN" if self.backend == "sqlite" else "BEGIN ISOLATION LEVEL REPEATABLE READ"
        self.conn.execute(begin)
        try:
            self._tables = self._table_names()  # a long-lived reader sees later migrations
            self._memo = {}
            yield self
        finally:
            self._memo = None
            self.conn.execute("ROLLBACK")  # nothing was written: ends the read snapshot

    def _memoised(self, key: str, read: Callable[[], Any]) -> Any:
        if self._memo is None:
            return read()
        if key not in self._memo:
            self._memo[key] = read()
        return self._memo[key]

    def _ready(self, table: str) -> bool:
        return table in self._tables

    def _has_column(self, table: str, column: str) -> bool:
        """A file not yet migrated (read as it is) may lack a later migration's column."""
        if self.backend != "sqlite":  # a PostgreSQL ledger is always migrated when opened
            return True
        rows = self._memoised(
            f"columns:{table}", lambda: self.conn.execute(f"PRAGMA table_info({table})").fetchall()
        )
        return any(r[1] == column for r in rows)

    def agent_rows(self) -> list[AgentRow]:
        if not self._ready("agents"):
            return []
        return list(self._memoised("agent_rows", self._agent_rows))

    def _agent_rows(self) -> list[AgentRow]:
        cols = agent_cols(
            self._has_column("agents", "hb_host"), self._has_column("agents", "hb_stopped")
        )
        rows = self.conn.execute(
            f"SELECT {cols} FROM agents a ORDER BY a.user, a.agent_id"
        ).fetchall()
        return [agent_row(r) for r in rows]

    def positions(self, agent_id: str | None = None) -> list[LedgerPosition]:
        if not self._ready("positions"):
            return []
        if agent_id is None:
            return list(self._memoised("positions", self._positions))
        return self._positions(agent_id)

    def _positions(self, agent_id: str | None = None) -> list[LedgerPosition]:
        sql = f"SELECT {POSITION_COLS} FROM positions"
        args: tuple[str, ...] = ()
        if agent_id is not None:
            sql, args = sql + " WHERE agent_id = ?", (agent_id,)
        rows = self.conn.execute(sql + " ORDER BY agent_id, symbol", args).fetchall()
        return [position_row(r) for r in rows]

    def account_limits(self) -> dict[str, AccountLimits]:
        if not self._ready("accounts"):
            return {}
        rows = self.conn.execute(
            "SELECT user, max_total_positions, max_gross_leverage, equity FROM accounts"
        ).fetchall()
        return {
            r[0]: AccountLimits(
                r[0], int(r[1]), Decimal(str(r[2])), None if r[3] is None else Decimal(str(r[3]))
            )
            for r in rows
        }

    def latest_equity(self, agent_id: str) -> tuple[int, Decimal] | None:
        """The newest equity snapshot of one agent, or None."""
        if not self._ready("equity"):
            return None
        row = self.conn.execute(
            "SELECT time_ms, equity FROM equity WHERE agent_id = ? "
            "ORDER BY time_ms DESC, rowid DESC LIMIT 1",
            (agent_id,),
        ).fetchone()
        return None if row is None else (int(row[0]), Decimal(str(row[1])))

    def latest_equities(self) -> dict[str, tuple[int, Decimal]]:
        """``latest_equity`` of every agent of the ``agents`` table, in one statement."""
        if not self._ready("equity") or not self._ready("agents"):
            return {}
        rows = self.conn.execute(
            "SELECT e.agent_id, e.time_ms, e.equity FROM agents a JOIN equity e ON e.rowid = "
            "(SELECT rowid FROM equity WHERE agent_id = a.agent_id "
            "ORDER BY time_ms DESC, rowid DESC LIMIT 1)"
        ).fetchall()
        return {str(r[0]): (int(r[1]), Decimal(str(r[2]))) for r in rows}

    def equity_history(self, agent_id: str) -> list[EquityPoint]:
        """Equity snapshots oldest first: (time_ms, equity, nav per unit or None)."""
        if not self._ready("equity"):
            return []
        cols = EQUITY_COLS if self._ready("rebalances") else "time_ms, equity, NULL"
        rows = self.conn.execute(
            f"SELECT {cols} FROM equity WHERE agent_id = ? ORDER BY time_ms, rowid",
            (agent_id,),
        ).fetchall()
        return [equity_point(r) for r in rows]

    def last_rebalance(self) -> RebalanceRow | None:
        if not self._ready("rebalances"):
            return None
        row = self.conn.execute(
            f"SELECT {REBALANCE_COLS} FROM rebalances ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return None if row is None else rebalance_row(row)

    def nav_after(
        self, agent_id: str, after_ms: int | None = None
    ) -> list[tuple[int, float, float | None]]:
        """Equity snapshots newer than ``after_ms`` as floats (time_ms, equity, nav or None)."""
        if not self._ready("equity"):
            return []
        from aster_agents.ledger import history

        return history.nav_after(self.conn, agent_id, after_ms, has_nav=self._ready("rebalances"))

    def fill_records(self, agent_id: str) -> list[FillRecord]:
        """Every fill of ``agent_id``, oldest first (signed quantities)."""
        if not self._ready("fills"):
            return []
        from aster_agents.ledger import history

        return history.fills(self.conn, agent_id, has_booked=self._has_column("fills", "booked_ms"))

    def operator_enables(self, agent_ids: Sequence[str]) -> dict[str, int]:
        """The time of each agent's latest enable by an operator."""
        if not self._ready("audit"):
            return {}
        from aster_agents.ledger import history

        return history.operator_enables(self.conn, agent_ids)

    # ----------------------------------------------------------- trades and reports

    def trade_fills(
        self, agent_id: str | None = None, symbol: str | None = None
    ) -> list[TradeFill]:
        """Every fill with its intent's kind and note, oldest first (``ledger.reports``)."""
        from aster_agents.ledger import reports

        return reports.trade_fills(self.conn, agent_id, symbol) if self._ready("fills") else []

    def funding_rows(self, agent_id: str | None = None) -> list[FundingRow]:
        from aster_agents.ledger import reports

        return reports.funding_rows(self.conn, agent_id) if self._ready("funding") else []

    def state_changes(self) -> list[StateChange]:
        from aster_agents.ledger import reports

        return reports.state_changes(self.conn) if self._ready("audit") else []

    def forced_closes(self) -> list[ForcedClose]:
        from aster_agents.ledger import reports

        return reports.forced_closes(self.conn) if self._ready("audit") else []

    def rebalance_rows(self) -> list[RebalanceRow]:
        from aster_agents.ledger import reports

        return reports.rebalance_rows(self.conn) if self._ready("rebalances") else []

    def equity_points(self, agent_id: str, since_ms: int | None = None) -> list[EquityPoint]:
        if not self._ready("equity"):
            return []
        from aster_agents.ledger import reports

        return reports.equity_points(
            self.conn, agent_id, since_ms, has_nav=self._ready("rebalances")
        )

    def equity_curve(self, agent_id: str) -> list[tuple[int, Decimal]]:
        """``(time_ms, equity)`` of every snapshot, oldest first (the portfolio's curves)."""
        from aster_agents.ledger import reports

        return reports.equity_curve(self.conn, agent_id) if self._ready("equity") else []

    def marks(self) -> dict[str, dict[str, Decimal]]:
        """The latest recorded mark price per account and symbol."""
        if not self._ready("marks"):
            return {}
        memo: dict[str, dict[str, Decimal]] = self._memoised("marks", self._marks)
        return {user: dict(by_symbol) for user, by_symbol in memo.items()}

    def _marks(self) -> dict[str, dict[str, Decimal]]:
        out: dict[str, dict[str, Decimal]] = {}
        for user, symbol, mark in self.conn.execute("SELECT user, symbol, mark FROM marks"):
            out.setdefault(str(user), {})[str(symbol)] = Decimal(str(mark))
        return out

    def account_books(self) -> dict[str, AccountBooks]:
        """Unallocated cash and the exchange equity last seen, per account."""
        if not self._ready("rebalances"):  # created by the same migration as the columns
            return {}
        rows = self.conn.execute(f"SELECT {ACCOUNT_BOOK_COLS} FROM accounts").fetchall()
        return {str(r[0]): account_books_row(r) for r in rows}

    def buckets(self, now_s: float | None = None) -> list[BucketLevel]:
        """Shared rate buckets refilled to ``now_s`` (tokens used = capacity - level)."""
        if not self._ready("budgets"):
            return []
        now = time.time() if now_s is None else now_s
        out = []
        for key, tokens, capacity, refill, updated in self.conn.execute(
            "SELECT key, tokens, capacity, refill_per_s, updated_s FROM budgets ORDER BY key"
        ):
            level = min(float(capacity), float(tokens) + max(0.0, now - float(updated)) * refill)
            out.append(BucketLevel(str(key), round(float(capacity) - level, 3), float(capacity)))
        return out

    @property
    def rate_group(self) -> str:
        """This host's rate group on this ledger (``liveness.rate_group``) with no
        ``rate_group:`` configured; callers with a config pass theirs to ``host_pause``."""
        from aster_agents.ledger.liveness import rate_group

        return rate_group(None, shared=self.backend != "sqlite")

    def host_pause(self, now_s: float | None = None, group: str | None = None) -> HostPause | None:
        """The pause of this host's rate group after a 429/418, if it is still in force."""
        if self._ready("rate_pauses"):
            row = self.conn.execute(
                "SELECT until_s, reason FROM rate_pauses WHERE grp = ?",
                (group or self.rate_group,),
            ).fetchone()
        elif self._ready("host_pause"):  # a file from before rate groups
            row = self.conn.execute(
                "SELECT until_s, reason FROM host_pause WHERE id = 1"
            ).fetchone()
        else:
            return None
        now = time.time() if now_s is None else now_s
        if row is None or float(row[0]) <= now:
            return None
        return HostPause(float(row[0]), str(row[1]))

    def equity_after(self, rowid: int, limit: int = 50_000) -> list[tuple[int, str, float, float]]:
        """Snapshots appended after ``rowid``, in insertion order: (rowid, agent, equity, nav).

        NAV is 0.0 where it was not recorded. For readers that follow the table incrementally.
        """
        if not self._ready("equity"):
            return []
        nav = "COALESCE(nav, '0')" if self._ready("rebalances") else "'0'"  # TEXT on both
        rows = self.conn.execute(
            f"SELECT rowid, agent_id, equity, {nav} FROM equity WHERE rowid > ? "
            "ORDER BY rowid LIMIT ?",
            (rowid, limit),
        ).fetchall()
        return [(int(r[0]), str(r[1]), float(r[2]), float(r[3])) for r in rows]

    def counters(self) -> list[Counter]:
        """Every counter the exporter publishes (``ledger/counters.py``); [] before v4."""
        if not self._ready("counters"):
            return []
        return read_counters(self.conn)

    def last_reconciles(self) -> dict[str, tuple[int, int]]:
        """Per account: (time_ms, differences found) of the newest reconcile."""
        if not self._ready("counters"):  # the audit_by_event index came with it
            return {}
        if self.backend != "sqlite":
            return self._last_reconciles_pg()
        rows = self.conn.execute(  # SQLite takes the bare columns from the MAX(id) row
            "SELECT json_extract(detail, '$.user'), MAX(id), time_ms, "
            "json_extract(detail, '$.differences') FROM audit "
            f"WHERE event = 'reconcile' AND {INDEXED_EVENTS} GROUP BY 1"
        ).fetchall()
        return {str(r[0]): (int(r[2]), int(r[3] or 0)) for r in rows}

    def _last_reconciles_pg(self) -> dict[str, tuple[int, int]]:
        rows = self.conn.execute(
            "SELECT DISTINCT ON (1) CAST(detail AS json)->>'user', time_ms, "
            "CAST(detail AS json)->>'differences' FROM audit "
            "WHERE event = 'reconcile' ORDER BY 1, id DESC"
        ).fetchall()
        return {str(r[0]): (int(r[1]), int(r[2] or 0)) for r in rows}


def open_readonly(
    state_dir: Path, url: str | None = None, *, threads: bool = False
) -> ReadOnlyLedger | None:
    """The ledger opened read-only, or None if it does not exist yet: the PostgreSQL ledger
    of ``$ASTER_AGENTS_LEDGER_URL`` or ``url`` (``ledger.url``) when one is set, else the
    file under ``state_dir`` (always for ``url=STATE_DIR_FILE``). ``threads``: as for
    ``ReadOnlyLedger``."""
    from aster_agents.config.view import LEDGER_URL_ENV

    if url != STATE_DIR_FILE:
        url = os.environ.get(LEDGER_URL_ENV) or url
    if url and url != STATE_DIR_FILE:
        return _open_postgres(url)
    path = Path(state_dir) / DB_NAME
    if not path.is_file():
        return None
    return ReadOnlyLedger(path, threads=threads)


def _open_postgres(url: str) -> ReadOnlyLedger | None:
    from aster_agents.ledger.postgres import readonly_conn

    conn, where = readonly_conn(url)
    try:
        tables = {
            str(r[0])
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema()"
            ).fetchall()
        }
    except BaseException:
        conn.raw.close()
        raise
    if "schema_migrations" not in tables:
        conn.raw.close()
        return None  # nothing has run against it yet (or it is not a ledger: doctor says)
    closer: Any = conn.raw.close
    return ReadOnlyLedger.over(conn, closer, tables, where)


def _uri_path(path: Path) -> str:
    """The path as the path part of an SQLite ``file:`` URI (urllib costs ms to import)."""
    text = str(path.resolve())
    for char, escaped in (("%", "%25"), ("?", "%3f"), ("#", "%23")):
        text = text.replace(char, escaped)
    return text
