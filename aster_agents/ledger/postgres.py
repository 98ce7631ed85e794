"""The PostgreSQL store (``backend.Store``): one ledger shared by agents on several hosts.

The use-case modules write SQLite-flavoured SQL; ``translate`` turns it into PostgreSQL's
(the reserved word ``user`` quoted, ``REAL`` -> double precision), cached per statement, and
``render`` puts the values in as literals, so that a transaction's statements can be sent
in a few simple-query round trips (``_Conn``): the cost of a write on a busy machine is its
round trips, each a wake-up of the server process and of ours. The schema is the same
migration list as SQLite's (``migrations``), run through ``postgres_ddl``.

The critical section: every write is one transaction that first takes an advisory
transaction lock; the server releases it at commit or rollback, and also when the connection
dies, so a SIGKILLed writer never leaves it held (the same meaning as SQLite's ``flock``).
``lock_key`` is derived from the database and schema, so two ledgers in one database never
share it. A write of one account (the intent functions, ``call``; ``write(account=...)``)
takes that key shared and the account's key exclusive (``ledger_lock_account``), so writers
of different accounts run at once; any other write takes ``lock_key`` exclusive, which waits
for all of them and holds them back (what needs ledger-wide state: the reaper, fills, ...).
Every write commits with ``synchronous_commit = off`` (so the lock is not held across an
fsync); a durable one then waits for the WAL flush outside the lock (``write``). Non-durable
writes (a reservation, a release, a heartbeat) become durable with the next durable one,
which flushes the WAL up to itself (the same prefix argument as the SQLite store's group
commit).

The password never appears in anything this module prints: errors name the URL with the
password masked (``mask_url``); the password comes from the URL given by the environment,
or from ``PGPASSWORD`` (libpq reads it).
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import psycopg
import psycopg.pq

from aster_agents.config.view import mask_url
from aster_agents.errors import LedgerError
from aster_agents.ledger.audit import now_ms
from aster_agents.ledger.lock import NamedLock
from aster_agents.ledger.migrations import MIGRATIONS, USER_WORD, postgres_ddl

CONNECT_TIMEOUT_S: Final = 5
SCHEMES: Final = ("postgresql", "postgres")
_TRANSLATED: dict[str, tuple[str, ...]] = {}
MAX_BATCH: Final = 500  # statements sent in one round trip at most
NEXT_SEQ_SQLITE: Final = "COALESCE(MAX(seq), 0) + 1"
NEXT_SEQ: Final = "GREATEST(COALESCE(MAX(seq), 0) + 1, nextval('intents_seq_seq'))"
_DURABLE_SQL: Final = b"SELECT pg_current_xact_id()"


def is_postgres_url(url: str) -> bool:
    return urlsplit(url).scheme in SCHEMES


def translate(sql: str) -> tuple[str, ...]:
    """A statement of the use-case modules in PostgreSQL's dialect, split at its ``?``
    placeholders (cached): the reserved word ``user`` quoted, ``REAL`` as double precision."""
    out = _TRANSLATED.get(sql)
    if out is None:
        text = USER_WORD.sub('"user"', sql).replace(" AS REAL)", " AS DOUBLE PRECISION)")
        if text.startswith("INSERT OR IGNORE INTO"):
            text = "INSERT INTO" + text.removeprefix("INSERT OR IGNORE INTO")
            text += " ON CONFLICT DO NOTHING"
        # intent seqs come from the identity sequence (see migration intent-functions-per-account)
        text = text.replace(NEXT_SEQ_SQLITE, NEXT_SEQ)
        out = tuple(text.split("?"))
        if len(_TRANSLATED) < 4096:
            _TRANSLATED[sql] = out
    return out


def literal(value: Any) -> str:
    """``value`` as a PostgreSQL literal (``standard_conforming_strings`` is checked on)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return f"'{value}'::float8"
        return repr(value)
    text = str(value)
    if "\x00" in text:
        raise LedgerError("a NUL character cannot be stored in the ledger")
    return "'" + text.replace("'", "''") + "'"


def render(sql: str, parameters: Sequence[Any]) -> str:
    parts = translate(sql)
    if len(parts) - 1 != len(parameters):
        raise LedgerError(
            f"ledger statement has {len(parts) - 1} placeholders but {len(parameters)} values"
        )
    if len(parts) == 1:
        return parts[0]
    out = [parts[0]]
    for value, part in zip(parameters, parts[1:], strict=True):
        out.append(literal(value))
        out.append(part)
    return "".join(out)


class _Cursor:
    """What ``backend.Cursor`` promises; filled when its batch has been sent."""

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn
        self._rows: list[Any] = []
        self._at = 0
        self._rowcount = -1
        self.done = False

    def fill(self, rows: list[Any], rowcount: int) -> None:
        self._rows, self._rowcount, self.done = rows, rowcount, True

    def _ready(self) -> None:
        if not self.done:
            self._conn.flush()

    @property
    def rowcount(self) -> int:
        self._ready()
        return self._rowcount

    def fetchone(self) -> Any:
        self._ready()
        if self._at >= len(self._rows):
            return None
        self._at += 1
        return self._rows[self._at - 1]

    def fetchall(self) -> list[Any]:
        self._ready()
        rest = self._rows[self._at :]
        self._at = len(self._rows)
        return rest

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


class _Conn:
    """``backend.Conn`` over one psycopg connection, batching statements.

    Statements are rendered with their values as literals and queued; the queue goes out
    as one simple-query round trip when a result is asked for (or at COMMIT). Inside a
    write, BEGIN and the lock go out with the first read, and the INSERTs nobody reads the
    result of go out with COMMIT; the driver is called once per round trip rather than once
    per statement. (The intent writes do not come this way: see ``PostgresStore.call``.)
    """

    def __init__(self, raw: psycopg.Connection[Any], where: str) -> None:
        self.raw = raw
        self.where = where
        self.batching = False  # inside write()/read(); otherwise every statement goes at once
        self._queue: list[tuple[str, _Cursor | None]] = []

    def queue(self, sql: str, cursor: _Cursor | None = None) -> None:
        self._queue.append((sql, cursor))
        if not self.batching or len(self._queue) >= MAX_BATCH:
            self.flush()

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> _Cursor:
        cursor = _Cursor(self)
        self.queue(render(sql, parameters), cursor)
        return cursor

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> _Cursor:
        cursor = _Cursor(self)
        for values in parameters:
            self.queue(render(sql, values))
        self.queue("SELECT 1", cursor)  # done once the whole batch went through
        return cursor

    def discard(self) -> None:
        self._queue.clear()

    def flush(self) -> None:
        """Send every queued statement in one round trip and fill their cursors."""
        if not self._queue:
            return
        batch, self._queue = self._queue, []
        text = ";\n".join(sql for sql, _ in batch)
        try:
            cur = self.raw.cursor()
            cur.execute(text.encode())
            for i, (_, cursor) in enumerate(batch):
                if i and not cur.nextset():
                    raise LedgerError(f"ledger {self.where}: a batch came back short")
                if cursor is not None:
                    rows = cur.fetchall() if cur.description is not None else []
                    cursor.fill(rows, cur.rowcount)
        except psycopg.Error as exc:
            raise _error(self.where, exc) from None


def _next_result(pg: psycopg.pq.abc.PGconn) -> psycopg.pq.abc.PGresult | None:
    """libpq's next result, waited for in ``select`` (which lets go of the GIL: libpq's own
    wait would hold it, and stop every other thread of the process while a lock is waited)."""
    while pg.is_busy():
        select.select([pg.socket], [], [])
        pg.consume_input()
    return pg.get_result()


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
        self._lock_sql = ""
        self._prepared: dict[str, bytes] = {}  # statement -> its name on this connection
        try:
            row = self._conn.execute(
                "SELECT hashtext(current_database() || '/' || current_schema()), "
                "current_setting('standard_conforming_strings'), "
                "to_regclass('schema_migrations') IS NOT NULL, "
                "hashtext(current_database() || '/' || current_schema() || '/accounts')"
            ).fetchone()
            if row[1] != "on":  # literals are rendered for standard strings (see ``literal``)
                raise LedgerError(
                    f"ledger {self.where}: standard_conforming_strings is off; turn it on"
                )
            self.lock_key = int(row[0])
            self.account_space = int(row[3])
            self._keys = (str(self.lock_key).encode(), str(self.account_space).encode())
            self._lock_sql = (
                "SELECT set_config('synchronous_commit', 'off', true), "
                f"pg_advisory_xact_lock({self.lock_key})"
            )
            if not row[2] or self.schema_version() != len(MIGRATIONS):
                self._migrate(create)  # under the lock; a current schema needs no write
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
        if raw.closed or raw.broken or raw.pgconn.status != psycopg.pq.ConnStatus.OK:
            raw.close()
            self._prepared.clear()  # a new session knows no prepared statement
            raw = self._conn.raw = self._connect()
        return raw

    @property
    def backend_pid(self) -> int:
        """The server process serving this store's connection (diagnostics, benchmarks)."""
        with self._thread_lock:
            return int(self._live().info.backend_pid)

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
                    conn.flush()  # BEGIN and the lock are on the server; then the script
                    try:
                        self._conn.raw.execute(postgres_ddl(name, sql).encode())
                    except psycopg.Error as exc:
                        raise _error(self.where, exc) from None
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, applied_ms) "
                        "VALUES (?, ?, ?)",
                        (version, name, now_ms()),
                    )

    @contextmanager
    def write(self, *, durable: bool = True, account: str | None = None) -> Iterator[_Conn]:
        """One transaction holding the ledger's advisory lock; rolled back on any error.

        ``account``: the lock of that account only (``ledger_lock_account``: the ledger's
        lock shared, the account's exclusive), for a write that touches nothing of another
        account; writers of other accounts then go on meanwhile.

        Statements are batched (see ``_Conn``): BEGIN and the lock go out with the first
        read. ``last_hold_ns`` is the whole transaction, lock wait included (the wait is
        not separable from the first read's round trip).

        Group commit, as in the SQLite store: the transaction commits without waiting for
        its WAL to reach the disk (``synchronous_commit = off``), so the advisory lock is
        released at once and no writer waits behind another's fsync. A durable write then
        runs, in the same round trip, a one-statement transaction that takes a transaction
        id and commits synchronously: it returns only once the WAL is flushed past its own
        commit record, which lies after ours. Whatever another process read from our
        commit and acted on was itself committed later (lost with ours) or was a denial.
        """
        with self._thread_lock:
            self._live()
            conn = self._conn
            conn.discard()
            started = time.perf_counter_ns()
            conn.batching = True
            try:
                conn.queue("BEGIN")
                if account is None:
                    conn.queue(self._lock_sql)  # with SET LOCAL synchronous_commit = off
                else:
                    conn.queue(
                        f"SELECT ledger_lock_account({self.lock_key}, {self.account_space}, "
                        f"{literal(account)})"
                    )
                yield conn
                conn.queue("COMMIT")
                if durable:  # after COMMIT: the lock is already released (see docstring)
                    conn.queue("SELECT pg_current_xact_id()")
                conn.flush()
            except BaseException:
                self._rollback()
                raise
            finally:
                conn.batching = False
                self.last_wait_ns = 0
                self.last_hold_ns = time.perf_counter_ns() - started

    def call(self, sql: str, args: Sequence[Any], *, durable: bool = False) -> list[Any]:
        """One statement that is a whole write (an intent function taking its own account
        lock, see migration intent-functions-per-account), as its own transaction; its rows.

        ``sql`` is PostgreSQL's, with ``$1, $2, ...`` for the lock's two keys and then ``args``.
        It is prepared once per session, then each call is one round trip of libpq's
        extended protocol: no parse or plan in the server, no batch text built here.
        Values travel as text (None as NULL) and come back as text. ``durable``: a second
        transaction follows in the same round trip (pipeline mode) and returns once the WAL
        is flushed past the first one's commit (see ``write``).
        """
        with self._thread_lock:
            pg = self._live().pgconn
            name = self._prepared.get(sql)
            try:
                if name is None:
                    name = self._prepare(pg, sql)
                values: list[bytes | None] = [self._keys[0], self._keys[1]]
                values += [None if v is None else str(v).encode() for v in args]
                started = time.perf_counter_ns()
                if durable:
                    rows = self._call_durable(pg, name, values)
                else:
                    pg.send_query_prepared(name, values)
                    rows = self._rows(pg)
                self.last_wait_ns = 0
                self.last_hold_ns = time.perf_counter_ns() - started
                return rows
            except psycopg.Error as exc:
                raise _error(self.where, exc) from None
            except BaseException:  # interrupted mid-call (Ctrl-C): a result may be pending
                if pg.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    self._conn.raw.close()  # the server rolls back; the next call reconnects
                raise

    def _prepare(self, pg: psycopg.pq.abc.PGconn, sql: str) -> bytes:
        if not self._prepared:
            pg.send_prepare(b"ledger_durable", _DURABLE_SQL)
            self._rows(pg)
        name = f"ledger_{len(self._prepared)}".encode()
        pg.send_prepare(name, sql.encode())
        self._rows(pg)
        self._prepared[sql] = name
        return name

    def _call_durable(
        self, pg: psycopg.pq.abc.PGconn, name: bytes, values: list[bytes | None]
    ) -> list[Any]:
        pg.enter_pipeline_mode()
        failed: LedgerError | None = None
        try:
            pg.send_query_prepared(name, values)
            pg.pipeline_sync()
            pg.send_query_prepared(b"ledger_durable", [])
            pg.pipeline_sync()
            try:
                rows = self._rows(pg, pipeline=True)
            except LedgerError as exc:  # the second still runs: read it before leaving
                failed, rows = exc, []
            self._rows(pg, pipeline=True)
        finally:
            if pg.status == psycopg.pq.ConnStatus.OK:
                pg.exit_pipeline_mode()
        if failed is not None:
            raise failed
        return rows

    def _rows(self, pg: psycopg.pq.abc.PGconn, *, pipeline: bool = False) -> list[Any]:
        """The rows of the next result, read to its end (a pipeline: to its sync point)."""
        res = _next_result(pg)
        rows: list[Any] = []
        error = None
        while res is not None:
            if res.status == psycopg.pq.ExecStatus.TUPLES_OK:
                rows = [
                    tuple(
                        None if v is None else v.decode()
                        for v in (res.get_value(r, c) for c in range(res.nfields))
                    )
                    for r in range(res.ntuples)
                ]
            elif res.status == psycopg.pq.ExecStatus.PIPELINE_SYNC:
                break
            elif res.status not in (psycopg.pq.ExecStatus.COMMAND_OK,):
                error = error or res
            res = _next_result(pg)
            if res is None and pipeline:
                res = _next_result(pg)  # past the end of one query: its sync point is next
        if error is not None:
            self._check(error)
        return rows

    def _check(self, res: psycopg.pq.abc.PGresult) -> None:
        if res.status in (psycopg.pq.ExecStatus.COMMAND_OK, psycopg.pq.ExecStatus.TUPLES_OK):
            return
        text = (res.error_message or b"").decode(errors="replace")
        if self._conn.raw.pgconn.status != psycopg.pq.ConnStatus.OK:
            raise LedgerError(f"ledger {self.where}: database unreachable or gone: {text}")
        raise LedgerError(f"ledger {self.where}: {' '.join(text.split())}")

    def _rollback(self) -> None:
        self._conn.discard()
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
            self._live()
            conn = self._conn
            conn.discard()
            conn.batching = True
            try:
                conn.queue("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                yield conn
            finally:
                conn.batching = False
                self._rollback()

    def integrity_check(self) -> str:
        """PostgreSQL checks its own pages; this checks the ledger's own consistency."""
        row = self._conn.execute(
            "SELECT COUNT(*) FROM intents WHERE state NOT IN "
            "('reserved', 'confirmed', 'released', 'expired', 'filled', 'canceled', 'rejected')"
        ).fetchone()
        return "ok" if int(row[0]) == 0 else f"{row[0]} intents in an unknown state"

    def schema_version(self) -> int:
        row = self._conn.execute(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
        ).fetchone()
        return int(row[0])

    def touch(self) -> float:
        with self.write() as conn:
            conn.execute("UPDATE schema_migrations SET name = name WHERE version = 1")
        return self.last_wait_ns / 1e6

    @contextmanager
    def named_lock(self, name: str, *, wait: bool = True) -> Iterator[NamedLock | None]:
        """Hold the lock ``name`` for every host of this ledger (e.g. the rebalance lock).

        A session advisory lock on a connection of its own, taken inside this host's
        ``<state_dir>/<name>.lock`` flock (which keeps the lock's stamp, the last attempt on
        this host). The server drops the advisory lock with its connection, so a holder
        SIGKILLed on any host never leaves it held.
        """
        lock = NamedLock(self.state_dir / f"{name}.lock")
        session: psycopg.Connection[Any] | None = None
        try:
            if lock.acquire(wait=wait):
                session = self._advisory_session(name, wait)
            yield lock if session is not None else None
        finally:
            if session is not None:
                session.close()
            lock.release()

    def _advisory_session(self, name: str, wait: bool) -> psycopg.Connection[Any] | None:
        """A connection holding the advisory lock ``name`` (two-key form: apart from the
        write lock's one-key space), or None when ``wait`` is off and another session has it."""
        take = "pg_advisory_lock" if wait else "pg_try_advisory_lock"
        sql = (
            f"SELECT {take}(hashtext(current_database() || '/' || current_schema()), "
            f"hashtext({literal(name)}))"
        )
        raw = self._connect()
        try:
            row = raw.execute(sql.encode()).fetchone()
        except psycopg.Error as exc:
            raw.close()
            raise _error(self.where, exc) from None
        if not wait and not (row and row[0]):
            raw.close()
            return None
        return raw

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


def readonly_conn(url: str) -> tuple[_Conn, str]:
    """A session on the ledger at ``url`` that cannot write (``status``, ``portfolio``, the
    exporter): every statement goes at once, each its own snapshot. Returns it with the
    URL as it may be shown (password masked)."""
    where = mask_url(url)
    try:
        raw = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        raw.execute(b"SET default_transaction_read_only = on")
    except psycopg.Error as exc:
        raise _error(where, exc) from None
    except Exception as exc:
        text = " ".join(str(exc).split())
        raise LedgerError(f"ledger {where}: not a usable PostgreSQL URL: {text}") from None
    return _Conn(raw, where), where
