"""Group commit: a durable write commits under the flock, then syncs the WAL before returning.

The sync is observed through ``Store``'s ``sync`` parameter (a callable given the descriptor
to make durable; by default ``os.fdatasync``), wrapped here so it can look at the world at
the moment it runs: is the flock free, is the commit visible, is the descriptor the WAL.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import struct
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from aster_agents.errors import LedgerError
from aster_agents.ledger import Ledger
from aster_agents.ledger.sqlite import SYNC_NAME
from aster_agents.ledger.sqlite import SqliteStore as Store
from aster_agents.models import Side
from tests.kit.wait import wait_for
from tests.plugins.ledger import run_python

AUDIT_ROW = "INSERT INTO audit (time_ms, agent_id, event, detail) VALUES (0, NULL, ?, '{}')"


class SyncProbe:
    """A ``sync`` for ``Store`` that records what it saw, then really syncs."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.fds: list[int] = []
        self.inodes: list[tuple[int, int]] = []  # (descriptor's inode, -wal path's inode)
        self.flock_free: list[bool] = []
        self.audit_rows: list[int] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()

    def reset(self) -> None:
        """Forget the syncs seen so far (those of opening the ledger)."""
        for seen in (self.fds, self.inodes, self.flock_free, self.audit_rows):
            seen.clear()

    def __call__(self, fd: int) -> None:
        self.fds.append(fd)
        wal = self.state_dir / "ledger.sqlite3-wal"
        self.inodes.append((os.fstat(fd).st_ino, os.stat(wal).st_ino))
        self.flock_free.append(self._flock_is_free())
        self.audit_rows.append(self._audit_rows())
        self.entered.set()
        assert self.hold.wait(30), "test never released the sync"
        os.fdatasync(fd)

    def _flock_is_free(self) -> bool:
        fd = os.open(self.state_dir / "ledger.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)  # closing drops the flock if we got it
        return True

    def _audit_rows(self) -> int:
        conn = sqlite3.connect(self.state_dir / "ledger.sqlite3")
        try:
            return int(conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0])
        finally:
            conn.close()


@pytest.fixture
def probe(state_dir: Path) -> SyncProbe:
    return SyncProbe(state_dir)


@pytest.fixture
def store(state_dir: Path, probe: SyncProbe) -> Iterator[Store]:
    st = Store(state_dir, sync=probe)
    probe.reset()
    yield st
    st.close()


def _audit_count(st: Store) -> int:
    return int(st.conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0])


def _committed_count(state_dir: Path) -> int:
    return int(struct.unpack("=Q", (state_dir / SYNC_NAME).read_bytes()[:8])[0])


def test_durable_write_syncs_the_wal_after_the_flock_is_released_and_the_commit_visible(
    store: Store, probe: SyncProbe
) -> None:
    """A durable write syncs the -wal file once, with the flock free and its commit visible."""
    before = _audit_count(store)
    with store.write() as conn:
        conn.execute(AUDIT_ROW, ("one",))
    assert len(probe.fds) == 1
    assert probe.inodes[0][0] == probe.inodes[0][1]
    assert probe.flock_free == [True]
    assert probe.audit_rows == [before + 1]
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_non_durable_and_rolled_back_writes_are_not_synced(store: Store, probe: SyncProbe) -> None:
    """durable=False commits and transactions that raise never call the sync."""
    with store.write(durable=False) as conn:
        conn.execute(AUDIT_ROW, ("heartbeat-like",))
    with pytest.raises(RuntimeError), store.write() as conn:
        conn.execute(AUDIT_ROW, ("rolled back",))
        raise RuntimeError("boom")
    assert probe.fds == []
    assert _audit_count(store) == 1


def test_only_mark_sent_is_synced_and_its_sync_covers_the_reservation(state_dir: Path) -> None:
    """Through the Ledger: reserve, release and heartbeat add no sync; mark_sent, the last
    write before an order goes on the wire, syncs once, with the reservation inside."""
    probe = SyncProbe(state_dir)
    with Ledger(state_dir) as setup:
        setup.set_account_limits(
            "u1", max_total_positions=3, max_gross_leverage=Decimal(5), equity=Decimal(1000)
        )
        setup.register_agent("a1", "u1", max_positions=2, capital=Decimal(100))
    led = Ledger(state_dir)
    led.store.close()
    led.store = Store(state_dir, sync=probe)
    probe.reset()
    before = _audit_count(led.store)
    kept = led.reserve("a1", "BTCUSDT", Side.BUY, margin=Decimal(10), notional=Decimal(20))
    dropped = led.reserve("a1", "ETHUSDT", Side.BUY, margin=Decimal(10), notional=Decimal(20))
    led.release(dropped.client_order_id, "not sent")
    led.heartbeat("a1", os.getpid())
    assert probe.fds == []
    assert led.mark_sent(kept.client_order_id)
    assert len(probe.fds) == 1 and probe.flock_free == [True]
    # At the moment of that sync every earlier commit (two reservations, the release, the
    # "sent" mark) is visible and in the file being synced: the WAL, a prefix of commits.
    assert probe.audit_rows == [before + 4]
    assert probe.inodes[0][0] == probe.inodes[0][1]
    led.close()


def test_wal_descriptor_stays_on_the_live_wal_through_restarts_and_other_closers(
    store: Store, probe: SyncProbe, state_dir: Path
) -> None:
    """After checkpoints that restart/truncate the WAL and another process's close, the
    synced descriptor is still the inode at the -wal path."""
    for i in range(300):
        with store.write() as conn:
            conn.execute(AUDIT_ROW, (f"row {i}",))
    other = sqlite3.connect(state_dir / "ledger.sqlite3")
    assert other.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0] == 0
    assert other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    other.close()
    done = run_python(
        "import sys; from pathlib import Path; from aster_agents.ledger import Ledger; "
        "Ledger(Path(sys.argv[1])).close(); print('closed')",
        str(state_dir),
    )
    assert done.returncode == 0 and done.stdout.strip() == "closed", done.stderr
    for i in range(5):
        with store.write() as conn:
            conn.execute(AUDIT_ROW, (f"after {i}",))
    assert len(probe.fds) == 305
    assert all(fd_ino == path_ino for fd_ino, path_ino in probe.inodes)
    assert len(set(probe.fds)) == 1  # opened once, never had to be reopened


def test_one_sync_serves_the_commits_queued_behind_it(state_dir: Path) -> None:
    """Three writers: the first syncs while two more commit; one sync then covers both."""
    probe = SyncProbe(state_dir)
    stores = [Store(state_dir, sync=probe) for _ in range(3)]
    probe.reset()
    probe.hold.clear()
    base = _committed_count(state_dir)

    def write(st: Store, name: str) -> None:
        with st.write() as conn:
            conn.execute(AUDIT_ROW, (name,))

    first = threading.Thread(target=write, args=(stores[0], "first"))
    first.start()
    assert probe.entered.wait(30)
    rest = [threading.Thread(target=write, args=(st, f"w{i}")) for i, st in enumerate(stores[1:])]
    for thread in rest:
        thread.start()
    wait_for(lambda: _committed_count(state_dir) == base + 3, what="two more commits")
    probe.hold.set()
    for thread in [first, *rest]:
        thread.join(30)
    assert len(probe.fds) == 2
    assert _audit_count(stores[0]) == 3
    for st in stores:
        st.close()


def test_a_sync_file_claiming_more_than_was_committed_is_not_trusted(
    state_dir: Path, probe: SyncProbe
) -> None:
    """A ledger.sync whose synced count is ahead of its commit count never skips a sync."""
    Store(state_dir).close()
    (state_dir / SYNC_NAME).write_bytes(struct.pack("=QQ", 5, 10**9))
    st = Store(state_dir, sync=probe)
    probe.reset()
    with st.write() as conn:
        conn.execute(AUDIT_ROW, ("must be synced",))
    assert len(probe.fds) == 1
    st.close()


def test_a_failing_sync_is_a_ledger_error_after_the_commit(state_dir: Path) -> None:
    """An fdatasync error surfaces as LedgerError naming the WAL; the commit itself stands."""
    fail = False

    def sync(fd: int) -> None:
        if fail:
            raise OSError(5, "Input/output error")

    st = Store(state_dir, sync=sync)
    fail = True
    failed = r"syncing .*ledger\.sqlite3-wal failed .*check the disk"
    with pytest.raises(LedgerError, match=failed), st.write() as conn:
        conn.execute(AUDIT_ROW, ("committed, not synced",))
    assert _audit_count(st) == 1
    st.close()


def test_vanished_wal_file_is_reported_instead_of_silently_unsynced(store: Store) -> None:
    """If the -wal file disappears under an open ledger, a durable write raises LedgerError."""
    os.unlink(store.wal_path)
    with pytest.raises(LedgerError, match=r"WAL file .* vanished"), store.write() as conn:
        conn.execute(AUDIT_ROW, ("lost",))
