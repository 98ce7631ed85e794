"""The PostgreSQL store (``backend.Store``): one ledger shared by agents on several hosts.

The use-case modules write SQLite-flavoured SQL; ``translate`` turns it into PostgreSQL's
(``?`` -> ``%s``, the reserved word ``user`` quoted, ``REAL`` -> double precision), cached
per statement. The schema is the same migration list as SQLite's (``migrations``), run
through ``postgres_ddl``.

The critical section: every write is one transaction that first takes
``pg_advisory_xact_lock(key)``; the lock is released by the server at commit or rollback,
and also when the connection dies, so a SIGKILLed writer never leaves it held (the same
meaning as SQLite's ``flock``). ``key`` is derived from the database and schema, so two
ledgers in one database never share it. Non-durable writes (a reservation, a release, a
heartbeat) commit with ``synchronous_commit = off``: a later durable commit flushes the WAL
up to itself, which covers them (the same prefix argument as the SQLite store's group
commit).

The password never appears in anything this module prints: errors name the URL with the
password masked (``mask_url``); the password comes from the URL given by the environment,
or from ``PGPASSWORD`` (libpq reads it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import psycopg

from aster_agents.config.view import mask_url
from aster_agents.errors import LedgerError
from aster_agents.ledger.audit import now_ms
from aster_agents.ledger.lock import NamedLock
from aster_agents.ledger.migrations import MIGRATIONS, USER_WORD, postgres_ddl

CONNECT_TIMEOUT_S: Final = 5
SCHEMES: Final = ("postgresql", "postgres")
_TRANSLATED: dict[str, str] = {}


def is_postgres_url(url: str) -> bool:
    return urlsplit(url).scheme in SCHEMES


def translate(sql: str) -> str:
    """A statement of the use-case modules in PostgreSQL's dialect (cached)."""
    out = _TRANSLATED.get(sql)
    if out is None:
        out = USER_WORD.sub('"user"', sql.replace("%", "%%").replace("?", "%s"))
        out = out.replace(" AS REAL)", " AS DOUBLE PRECISION)")
        if len(_TRANSLATED) < 4096:
            _TRANSLATED[sql] = out
    return out


class _Cursor:
    """What ``backend.Cursor`` promises, over a psycopg cursor.

    Results are fetched when asked for: inside a write (pipeline mode) a statement whose
    result nobody reads (an INSERT, an audit row) costs no round trip of its own.
    """

    def __init__(self, cur: psycopg.Cursor[Any], conn: _Conn) -> None:
        self._cur = cur
        self._conn = conn

    @property
    def rowcount(self) -> int:
        with self._conn.errors():
            self._conn.sync()
            return self._cur.rowcount

    def fetchone(self) -> Any:
        with self._conn.errors():
            return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        with self._conn.errors():
            return self._cur.fetchall()

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


class _Conn:
    """``backend.Conn`` over one psycopg connection (statements translated on the way)."""

    def __init__(self, raw: psycopg.Connection[Any], where: str) -> None:
        self.raw = raw
        self.where = where
        self.pipeline: psycopg.Pipeline | None = None

    @contextmanager
    def errors(self) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            raise _error(self.where, exc) from None

    def sync(self) -> None:
        if self.pipeline is not None:
            self.pipeline.sync()

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> _Cursor:
        with self.errors():
            return _Cursor(self.raw.execute(translate(sql), tuple(parameters)), self)

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> _Cursor:
        with self.errors():
            cur = self.raw.cursor()
            cur.executemany(translate(sql), [tuple(p) for p in parameters])
            return _Cursor(cur, self)


def _error(where: str, exc: BaseException) -> LedgerError:
    """One line naming the ledger (password masked) and what the server said."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, psycopg.OperationalError):
        return LedgerError(f"ledger {where}: database unreachable or gone: {text}")
    return LedgerError(f"ledger {where}: {text}")


class PostgresStore:
    """One connection to the PostgreSQL ledger at ``url``; ``state_dir`` stays host-local
    (agent locks, the market-data cache, the rate budgets of this host, named locks)."""

    backend: Final = "postgresql"

    def __init__(self, url: str, state_dir: Path, *, create: bool = True) -> None:
        self.url = url
        self.where = mask_url(url)
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._thread_lock = threading.RLock()
        self.last_wait_ns = 0
        self.last_hold_ns = 0
        self._conn = _Conn(self._connect(), self.where)
        self._lock_sql = b""
        try:
            row = self._conn.execute(
                "SELECT hashtext(current_database() || '/' || current_schema())"
            ).fetchone()
            self.lock_key = int(row[0])
            self._lock_sql = f"SELECT pg_advisory_xact_lock({self.lock_key})".encode()
            self._migrate(create)
        except BaseException:
            self.close()
            raise

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            raise _error(self.where, exc) from None
        except Exception as exc:  # a malformed URL is refused before any connection
            text = " ".join(str(exc).split())
            raise LedgerError(f"ledger {self.where}: not a usable PostgreSQL URL: {text}") from None

    def _live(self) -> psycopg.Connection[Any]:
        """The connection, opened again if the server closed it (a restart, a failover)."""
        raw = self._conn.raw
        if raw.closed or raw.broken:
            raw = self._conn.raw = self._connect()
        return raw

    @property
    def conn(self) -> _Conn:
        with self._thread_lock:
            self._live()
        return self._conn

    def _tables(self) -> set[str]:
        rows = self._conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
        return {str(r[0]) for r in rows}

    def _migrate(self, create: bool) -> None:
        with self.write() as conn:
            tables = self._tables()
            if "schema_migrations" not in tables:
                if tables:
                    raise LedgerError(
                        f"ledger {self.where}: the database has tables but no aster-agents "
                        "schema (no schema_migrations): use an empty database for the ledger"
                    )
                if not create:
                    raise LedgerError(f"ledger {self.where}: no aster-agents schema in it")
                conn.execute(
                    "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, "
                    "name TEXT NOT NULL, applied_ms BIGINT NOT NULL)"
                )
            row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
            current = int(row[0])
            if current > len(MIGRATIONS):
                raise LedgerError(
                    f"ledger {self.where} has schema version {current}, newer than this "
                    f"aster-agents knows ({len(MIGRATIONS)}): upgrade aster-agents"
                )
            for version, (name, sql) in enumerate(MIGRATIONS, start=1):
                if version > current:
                    for statement in postgres_ddl(sql).split(";"):
                        if statement.strip():
                            self._conn.raw.execute(statement.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, applied_ms) "
                        "VALUES (?, ?, ?)",
                        (version, name, now_ms()),
                    )

    @contextmanager
    def write(self, *, durable: bool = True) -> Iterator[_Conn]:
        """One transaction holding the ledger's advisory lock; rolled back on any error.

        Run in pipeline mode: BEGIN and the lock go out with the first statement whose
        result is read, and statements nobody reads the result of go out with COMMIT, so a
        reservation costs four round trips instead of seven. ``last_hold_ns`` is the whole
        transaction, lock wait included (the wait is not separable in a pipeline).
        """
        with self._thread_lock:
            raw = self._live()
            conn = self._conn
            started = time.perf_counter_ns()
            try:
                with raw.pipeline() as pipeline:
                    conn.pipeline = pipeline
                    raw.execute(b"BEGIN")
                    if not durable:
                        raw.execute(b"SET LOCAL synchronous_commit = off")
                    raw.execute(self._lock_sql)
                    yield conn
                    raw.execute(b"COMMIT")
            except psycopg.Error as exc:
                self._rollback()
                raise _error(self.where, exc) from None
            except BaseException:
                self._rollback()
                raise
            finally:
                conn.pipeline = None
                self.last_wait_ns = 0
                self.last_hold_ns = time.perf_counter_ns() - started

    def _rollback(self) -> None:
        raw = self._conn.raw
        if raw.closed:
            return
        try:
            if raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                raw.execute(b"ROLLBACK")
        except psycopg.Error:
            pass  # the connection is gone: the server rolled the transaction back

    @contextmanager
    def read(self) -> Iterator[_Conn]:
        """A consistent snapshot (REPEATABLE READ, read only); takes no lock."""
        with self._thread_lock:
            raw = self._live()
            try:
                raw.execute(b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            except psycopg.Error as exc:
                raise _error(self.where, exc) from None
            try:
                yield self._conn
            finally:
                self._rollback()

    def integrity_check(self) -> str:
        """PostgreSQL checks its own pages; this checks the ledger's own consistency."""
        row = self._conn.execute(
            "SELECT COUNT(*) FROM intents WHERE state NOT IN "
            "('reserved', 'confirmed', 'released', 'expired', 'filled', 'canceled', 'rejected')"
        ).fetchone()
        return "ok" if int(row[0]) == 0 else f"{row[0]} intents in an unknown state"

    def schema_version(self) -> int:
        row = self._conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0])

    def touch(self) -> float:
        with self.write() as conn:
            conn.execute("UPDATE schema_migrations SET name = name WHERE version = 1")
        return self.last_wait_ns / 1e6

    @contextmanager
    def named_lock(self, name: str, *, wait: bool = True) -> Iterator[NamedLock | None]:
        """Hold ``<state_dir>/<name>.lock`` (this host's lock, as with SQLite)."""
        lock = NamedLock(self.state_dir / f"{name}.lock")
        try:
            yield lock if lock.acquire(wait=wait) else None
        finally:
            lock.release()

    def close(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None and not conn.raw.closed:
            conn.raw.close()


def read_schema_version(url: str) -> int:
    """The schema version of the ledger at ``url`` (0: no ledger there yet); writes nothing."""
    where = mask_url(url)
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as raw:
            found = raw.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
            if not found or not found[0]:
                return 0
            row = raw.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
            return int(row[0]) if row else 0
    except psycopg.Error as exc:
        raise _error(where, exc) from None
    except Exception as exc:
        text = " ".join(str(exc).split())
        raise LedgerError(f"ledger {where}: not a usable PostgreSQL URL: {text}") from None
