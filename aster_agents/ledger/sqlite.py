"""The SQLite store: the file, its pragmas, its flock and its migrations (``backend.Store``).

The only place that opens a read-write connection; everything SQLite-specific the ledger
needs (schema, ``BEGIN IMMEDIATE``, pragmas, the writer flock) is here, behind the seam in
``backend.py``, so another backend is another module like this one.

Every write is one short ``BEGIN IMMEDIATE`` transaction taken while holding a blocking
``fcntl.flock`` on ``ledger.lock``; the flock queues writers fairly in the kernel, so SQLite's
busy-polling never runs on the hot path. Reads use plain WAL snapshots and take no lock.

Group commit: a transaction commits under the flock with ``synchronous=NORMAL`` (its WAL
frames are written, not yet synced), the flock is released, and only then is the ``-wal``
file ``fdatasync``-ed, before ``write`` returns. The caller gets the same promise as with
``synchronous=FULL`` (nothing is acted on before its commit is on stable storage), but the
next writer already works under the flock while this one waits for the disk, and one
sync serves every commit made before it started (``_SyncPoint``: a writer that queued
behind another's sync usually finds its commit already covered and returns at once).

Why that is safe: the WAL is append-only and recovered as the longest prefix of frames whose
salts and cumulative checksums match, up to its last commit frame. An OS crash can therefore
lose only a suffix of commits, each of whose callers is still inside ``write`` (none has
acted on it) or made a non-durable write (below). Whatever another process read from such a
commit and acted on was itself written after it (so it is lost too) or was a denial
(conservative). A checkpoint syncs the WAL before copying it into the database and the
database before the WAL is restarted, and a restart syncs the new WAL header, so no synced
commit is ever overwritten.

Commits that need no sync of their own (``durable=False``) become durable with the next
synced one, because every sync covers the whole prefix before it. That is the case for
writes nothing outside the ledger acts on before a later durable write: a reservation (its
order goes out only after the durable ``mark_sent``), a release, a heartbeat.

A *throwaway* store (``throwaway=True``) is for one process that discards its ledger when it
is done (``backtest``): the database lives in memory, with no file, flock, sync or lock-wait
histogram, and no other process can see it. Everything else (schema, migrations,
transactions, triggers) is the same.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Final

from aster_agents.errors import LedgerError, StateDirFull
from aster_agents.fsutil import free_space, is_disk_full, make_private_dir, touch_private
from aster_agents.ledger.audit import now_ms
from aster_agents.ledger.counters import (
    AUDIT_MARK,
    INF,
    LOCK_WAIT_BUCKETS,
    CounterKey,
    bump,
    key,
)
from aster_agents.ledger.lock import NamedLock
from aster_agents.ledger.migrations import MIGRATIONS
from aster_agents.ledger.rows import BUSY_TIMEOUT_MS, DB_NAME, LOCK_NAME

SYNC_NAME: Final = "ledger.sync"
_SQLITE_IOERR: Final = 10
_SQLITE_FULL: Final = 13
_NEARLY_FULL_BYTES: Final = 256 << 10


def _nearly_full(directory: Path) -> bool:
    try:
        return shutil.disk_usage(directory).free < _NEARLY_FULL_BYTES
    except OSError:
        return False


# Counting for the exporter, in writes that run anyway: each writer keeps the lock waits it
# observed in memory and adds them every ``WAITS_EVERY_S`` (and at close); one writer of the
# host, about every ``FOLD_EVERY_S`` (a clock shared in ``ledger.sync``), folds the audit rows
# past the mark into the ``audit`` counters (``counters.read`` adds the rest). Per write,
# counting then costs a few dict updates instead of four upserts and a ``counters`` page.
WAITS_EVERY_S: Final = 5.0
FOLD_EVERY_S: Final = 1.0
_WAIT: Final = "ledger_lock_wait_seconds"
_WAIT_BUCKETS: Final = tuple(
    (bound, key(f"{_WAIT}_bucket", le=repr(bound))) for bound in LOCK_WAIT_BUCKETS
)
_WAIT_INF: Final = key(f"{_WAIT}_bucket", le=INF)
_WAIT_COUNT: Final = key(f"{_WAIT}_count")
_WAIT_SUM: Final = key(f"{_WAIT}_sum")
_MARK_WHERE: Final = f"name = '{AUDIT_MARK}' AND agent_id = '' AND labels = '{{}}'"
_FOLD_SQL: Final = (
    "INSERT INTO counters (name, agent_id, labels, value) "
    "SELECT 'audit', COALESCE(agent_id, ''), json_object('event', event), COUNT(*) FROM audit "
    f"WHERE id > (SELECT value FROM counters WHERE {_MARK_WHERE}) GROUP BY 1, 2, 3 "
    "ON CONFLICT (name, agent_id, labels) DO UPDATE SET value = counters.value + excluded.value"
)
_MARK_SQL: Final = (
    "UPDATE counters SET value = (SELECT MAX(id) FROM audit) "
    f"WHERE {_MARK_WHERE} AND value < (SELECT MAX(id) FROM audit)"
)


def _wait_bucket(wait_s: float) -> CounterKey:
    for bound, k in _WAIT_BUCKETS:
        if wait_s <= bound:
            return k
    return _WAIT_INF


Sync = Callable[[int], None]
_SYNC_BYTES: Final = 24
DEFAULT_SYNC: Final[Sync] = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


class _SyncPoint:
    """Shared counters in ``<state_dir>/ledger.sync`` so that one sync serves many commits.

    Word 0 counts durable commits (bumped under the writer flock, right after ``COMMIT``);
    word 1 is the highest such count known to be on disk. To make commit ``ticket`` durable,
    a writer takes this file's flock; if word 1 already reaches ``ticket`` another process's
    sync covered it and nothing is left to do. Otherwise it reads word 0 *before* syncing
    (every commit counted there has its WAL frames written) and publishes it after.
    The words are aligned 8-byte values in a shared mapping (single loads and stores); they
    only ever decide to skip a sync, never to report a commit, and a process killed at any
    point leaves them true (a count is only published after its sync returned).
    Word 2 is when a writer last folded the audit counts (``time.monotonic_ns``, the host's
    clock since boot; read and set under the writer flock), so that one writer folds per
    interval for the whole host.
    """

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if os.fstat(self._fd).st_size < _SYNC_BYTES:
            # allocated, not sparse: a store into a mapped hole on a full disk is a SIGBUS
            try:  # zero-fills; never shrinks live counters (a 16-byte file of older versions)
                os.posix_fallocate(self._fd, 0, _SYNC_BYTES)
            except OSError:
                os.close(self._fd)
                raise
        self._map = mmap.mmap(self._fd, _SYNC_BYTES)
        self._words = memoryview(self._map).cast("Q")
        if self._words[1] > self._words[0]:  # not from us (the synced count trails): distrust
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._words[1] = 0
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def committed(self) -> int:
        """Count one durable commit; call under the writer flock. Returns its ticket."""
        ticket = self._words[0] + 1
        self._words[0] = ticket
        return int(ticket)

    def fold_due(self, now_ns: int) -> bool:
        """True when nobody folded in the last ``FOLD_EVERY_S`` (or the clock restarted: a
        reboot)."""
        last = int(self._words[2])
        return now_ns - last >= FOLD_EVERY_S * 1e9 or now_ns < last

    def folded(self, now_ns: int) -> None:
        self._words[2] = now_ns

    def wait_durable(self, ticket: int, sync: Callable[[], None]) -> None:
        """Return once commit ``ticket`` is on disk, syncing only if nobody else did."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if self._words[1] >= ticket:
                return
            covered = self._words[0]
            sync()
            self._words[1] = covered
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._words.release()
        self._map.close()
        os.close(self._fd)


class SqliteStore:
    """One connection to ``<state_dir>/ledger.sqlite3`` plus the writer flock.

    ``sync`` makes a file descriptor's data durable (``os.fdatasync`` where it exists); it is
    a parameter so tests can count and inspect what is synced. ``throwaway``: an in-memory
    database for this process alone (see the module docstring).
    """

    def __init__(
        self, state_dir: Path, *, sync: Sync = DEFAULT_SYNC, throwaway: bool = False
    ) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / DB_NAME
        self.wal_path = self.state_dir / f"{DB_NAME}-wal"
        self._sync = sync
        self._wal_fd = -1
        self._wal_ino = -1
        self._lock_fd = -1
        self._syncpoint: _SyncPoint | None = None
        self._thread_lock = threading.RLock()
        self.last_wait_ns = 0  # how long the last write waited for the flock (diagnostics)
        self.last_hold_ns = 0  # how long it held the flock
        self._counting = False  # set once migrations have created ``counters``
        self.throwaway = throwaway
        self.writes = 0  # write transactions begun: a throwaway's readers know nothing moved
        self._waits: dict[CounterKey, float] = {}  # lock waits not yet in ``counters``
        self._waits_due = 0  # time.monotonic_ns() from which a write adds them
        try:
            if not throwaway:
                self._open_files()
            self.conn = sqlite3.connect(
                ":memory:" if throwaway else self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=10,
            )
            if not throwaway:
                self._configure()
            self._migrate()
            self._counting = not throwaway
        except OSError as exc:
            self.close()
            if is_disk_full(exc):
                raise self._full() from exc
            raise
        except sqlite3.DatabaseError as exc:
            self.close()
            if self._is_full(exc):
                raise self._full() from exc
            raise LedgerError(
                f"cannot open ledger {self.path}: {exc}; check the file or move it aside"
            ) from exc
        except LedgerError:
            self.close()
            raise

    def _open_files(self) -> None:
        """The state dir 0700, and the database, the writer lock and the sync counters 0600
        (SQLite gives its -wal and -shm files the database file's mode)."""
        make_private_dir(self.state_dir)
        touch_private(self.path)
        self._lock_fd = os.open(self.state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        self._syncpoint = _SyncPoint(self.state_dir / SYNC_NAME)

    def _full(self) -> StateDirFull:
        return StateDirFull(self.state_dir, free_space(self.state_dir))

    def _is_full(self, exc: BaseException) -> bool:
        """SQLITE_FULL or ENOSPC, or an I/O error while the disk has no room left (SQLite
        reports a -shm file it cannot extend as SQLITE_IOERR_SHMSIZE)."""
        if is_disk_full(exc) or "database or disk is full" in str(exc):
            return True
        code = getattr(exc, "sqlite_errorcode", None)
        if code is None:
            return False
        return code & 0xFF == _SQLITE_FULL or (
            code & 0xFF == _SQLITE_IOERR and _nearly_full(self.state_dir)
        )

    def _configure(self) -> None:
        self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        with self._flock():
            mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise LedgerError(f"ledger {self.path}: could not switch to WAL mode (got {mode})")
        self.conn.execute("PRAGMA synchronous = NORMAL")  # the WAL is synced in write()
        # No mmap of the database file: whenever another process has committed, SQLite drops
        # its whole mapping at the next transaction and maps it again (munmap + mmap + page
        # faults), which costs more than the few pread()s a transaction needs.

    def _migrate(self) -> None:
        with self.write() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms INTEGER NOT NULL)"
            )
            row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
            current = int(row[0])
            if current > len(MIGRATIONS):
                raise LedgerError(
                    f"ledger {self.path} has schema version {current}, newer than this "
                    f"aster-agents knows ({len(MIGRATIONS)}): upgrade aster-agents, "
                    "or use another --state-dir"
                )
            for version, (name, sql) in enumerate(MIGRATIONS, start=1):
                if version > current:
                    self._apply(conn, version, name, sql)

    @staticmethod
    def _apply(conn: sqlite3.Connection, version: int, name: str, sql: str) -> None:
        pending = ""
        for piece in sql.split(";"):  # a trigger's body holds ";": join until complete
            pending += piece + ";"
            if sqlite3.complete_statement(pending):
                if pending.strip(" \n;"):
                    conn.execute(pending)
                pending = ""
        conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_ms) VALUES (?, ?, ?)",
            (version, name, now_ms()),
        )

    @contextmanager
    def _flock(self) -> Iterator[None]:
        if self.throwaway:  # no other process: nothing to queue behind
            yield
            return
        started = time.perf_counter_ns()
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        locked = time.perf_counter_ns()
        self.last_wait_ns = locked - started
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            self.last_hold_ns = time.perf_counter_ns() - locked

    def write(
        self, *, durable: bool = True, account: str | None = None
    ) -> AbstractContextManager[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction under the flock; rolled back on any error.

        A durable write returns only after the WAL holding its commit is synced, which is
        done after the flock is released (group commit, see the module docstring).
        ``durable=False`` skips that sync, for writes whose loss in an OS crash errs on the
        safe side (a reservation not yet sent, a release, a heartbeat): the next durable
        write's sync covers them, and a reservation whose release was lost is reaped as soon
        as its (dead) pid is noticed.
        A process crash never loses a committed transaction either way.
        ``account`` changes nothing here: one flock covers every account of the file.
        """
        if self.throwaway:
            return _MemoryWrite(self)
        return self._file_write(durable)

    @contextmanager
    def _file_write(self, durable: bool) -> Iterator[sqlite3.Connection]:
        try:
            with self._thread_lock:
                self.writes += 1
                with self._flock():
                    self.conn.execute("BEGIN IMMEDIATE")
                    try:
                        yield self.conn
                        counted = self._count(self.last_wait_ns) if self._counting else None
                        self.conn.execute("COMMIT")
                        if counted is not None:
                            self._counted(*counted)
                    except BaseException:
                        if self.conn.in_transaction:
                            self.conn.execute("ROLLBACK")
                        raise
                    ticket = self._syncpoint.committed() if self._syncpoint and durable else 0
                if ticket and self._syncpoint:
                    self._syncpoint.wait_durable(ticket, self._sync_wal)
        except (sqlite3.Error, OSError) as exc:
            if self._is_full(exc):
                raise self._full() from exc
            raise

    def full_error(self, exc: BaseException) -> StateDirFull | None:
        """The error to raise instead of ``exc`` when it says the state dir is full."""
        if isinstance(exc, (sqlite3.Error, OSError)) and self._is_full(exc):
            return self._full()
        return None

    def _count(self, wait_ns: int) -> tuple[int, bool] | None:
        """Observe this write's lock wait; when due, add the waits (and, when the host's turn
        is due, fold the audit rows) in the caller's transaction. Returns (now, folded) for
        ``_counted`` once that transaction has committed, or None when nothing was added."""
        waits, wait_s = self._waits, wait_ns / 1e9
        bucket = _wait_bucket(wait_s)
        waits[bucket] = waits.get(bucket, 0.0) + 1
        waits[_WAIT_COUNT] = waits.get(_WAIT_COUNT, 0.0) + 1
        waits[_WAIT_SUM] = waits.get(_WAIT_SUM, 0.0) + wait_s
        now = time.monotonic_ns()
        fold = self._syncpoint is not None and self._syncpoint.fold_due(now)
        if not fold and now < self._waits_due:
            return None
        bump(self.conn, waits)  # with a fold the counters page is written anyway
        if fold:
            self.conn.execute(_FOLD_SQL)
            self.conn.execute(_MARK_SQL)
        return now, fold

    def _counted(self, now: int, folded: bool) -> None:
        """The waits are in the ledger now, and the audit rows folded if ``folded``."""
        self._waits, self._waits_due = {}, now + int(WAITS_EVERY_S * 1e9)
        if folded and self._syncpoint is not None:
            self._syncpoint.folded(now)

    def _flush_counts(self) -> None:
        """Add the lock waits still in memory (at close); best effort, like any metric."""
        if not self._waits or not self._counting or getattr(self, "conn", None) is None:
            return
        self._waits_due = 0
        with suppress(LedgerError, sqlite3.Error, OSError), self.write(durable=False):
            pass

    def _sync_wal(self) -> None:
        try:
            self._sync(self._wal())
        except OSError as exc:
            if is_disk_full(exc):
                raise self._full() from exc
            raise LedgerError(
                f"ledger {self.path}: syncing {self.wal_path} failed ({exc}); the last write "
                "is committed but may not survive a power cut: check the disk"
            ) from exc

    def _wal(self) -> int:
        """A descriptor of the current ``-wal`` file, reopened if the file was replaced.

        SQLite keeps one WAL inode for as long as any connection (ours included) is open,
        rewriting it in place after a checkpoint; the inode check guards that assumption.
        No SQLite lock lives on the WAL (they are on the database file and ``-shm``), so
        opening and closing our own descriptor on it cannot drop one.
        """
        try:
            ino = os.stat(self.wal_path).st_ino
        except FileNotFoundError:
            raise LedgerError(
                f"ledger {self.path}: the WAL file {self.wal_path} vanished while the ledger "
                "was open; stop every process using this state dir and check it"
            ) from None
        if ino != self._wal_ino:
            self._close_wal()
            self._wal_fd = os.open(self.wal_path, os.O_RDONLY | os.O_CLOEXEC)
            self._wal_ino = os.fstat(self._wal_fd).st_ino
        return self._wal_fd

    def _close_wal(self) -> None:
        if self._wal_fd >= 0:
            os.close(self._wal_fd)
            self._wal_fd, self._wal_ino = -1, -1

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent WAL snapshot for several SELECTs; takes no lock."""
        with self._thread_lock:
            self.conn.execute("BEGIN")
            try:
                yield self.conn
            finally:
                self.conn.execute("COMMIT")

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result (``ok`` when healthy)."""
        return str(self.conn.execute("PRAGMA integrity_check").fetchone()[0])

    def schema_version(self) -> int:
        row = self.conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0])

    def touch(self) -> float:
        """A committed write of an unchanged value; returns how long it waited for the lock (ms)."""
        try:
            with self.write() as conn:
                conn.execute("UPDATE schema_migrations SET name = name WHERE version = 1")
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(f"{self.path} is not writable: {exc}") from exc
        return self.last_wait_ns / 1e6

    @contextmanager
    def named_lock(self, name: str, *, wait: bool = True) -> Iterator[NamedLock | None]:
        """Hold ``<state_dir>/<name>.lock`` (for this host); None when busy and not ``wait``."""
        lock = NamedLock(self.state_dir / f"{name}.lock")
        try:
            yield lock if lock.acquire(wait=wait) else None
        finally:
            lock.release()

    def close(self) -> None:
        self._flush_counts()
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()
            del self.conn
        self._close_wal()
        if self._syncpoint is not None:
            self._syncpoint.close()
            self._syncpoint = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


class _MemoryWrite:
    """A throwaway store's write: one transaction under the thread lock, with no flock,
    counters or sync (one process, in memory). A plain class rather than a generator:
    a backtest runs a few per agent tick, where the generator machinery cost about as
    much as the in-memory ``BEGIN``/``COMMIT`` themselves."""

    __slots__ = ("store",)

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        store = self.store
        store._thread_lock.acquire()
        try:
            store.writes += 1
            store.conn.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            store._thread_lock.release()
            full = store.full_error(exc)
            if full is not None:
                raise full from exc
            raise
        return store.conn

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Commit, or roll back when the block (or the commit) failed; the block's error
        propagates, a full state dir as ``StateDirFull``."""
        store = self.store
        try:
            if exc is None:
                try:
                    store.conn.execute("COMMIT")
                except BaseException as failed:
                    exc = failed
            if exc is not None:
                if store.conn.in_transaction:
                    store.conn.execute("ROLLBACK")
                full = store.full_error(exc)
                if full is not None:
                    raise full from exc
                if kind is None:  # the commit failed: its error, not the block's (none)
                    raise exc
        finally:
            store._thread_lock.release()
