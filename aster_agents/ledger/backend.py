"""The store seam: what the ledger's use-case modules need from a database backend.

The use-case modules (``agents``, ``intents``, ``limits``, ``fills``, ``books``, ``audit``,
``history``) are functions over a ``Conn``: one open transaction, or the store's connection
for single-statement reads. They write SQL both SQLite and PostgreSQL accept (``?``
placeholders, ``INSERT ... ON CONFLICT (...) DO UPDATE/DO NOTHING``, ``RETURNING``); what is
dialect-specific lives in a ``Store``: the schema and its migrations, pragmas, how a write
transaction is begun and made durable, the lock that serialises writers, integrity checks,
and named host locks. ``sqlite.SqliteStore`` is the default store; ``postgres.PostgresStore``
(chosen by a ``postgresql://`` URL) translates placeholders and runs through the same tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from aster_agents.config.view import LEDGER_URL_ENV, mask_url
from aster_agents.errors import LedgerError
from aster_agents.ledger.rows import STATE_DIR_FILE


class Cursor(Protocol):
    """The part of a DB-API cursor the ledger uses."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """A connection as the use-case modules see it (``sqlite3.Connection`` is one)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor: ...


class HeldLock(Protocol):
    """A named lock held by this process; its stamp is an integer kept with the lock."""

    def stamp(self) -> int: ...

    def set_stamp(self, value: int) -> None: ...


class Store(Protocol):
    """One backend: a connection, write transactions under the writer lock, the schema."""

    state_dir: Path
    last_wait_ns: int  # how long the last write waited for the writer lock (diagnostics)
    last_hold_ns: int  # how long it held it

    @property
    def conn(self) -> Conn:
        """For single-statement reads outside a transaction."""
        ...

    def write(
        self, *, durable: bool = True, account: str | None = None
    ) -> AbstractContextManager[Conn]:
        """One transaction under the writer lock, committed (and, if durable, on stable
        storage) when the block exits, rolled back on any error. ``account``: the write
        touches that account only, so a store may lock just it (PostgreSQL does)."""
        ...

    def read(self) -> AbstractContextManager[Conn]:
        """A consistent snapshot for several SELECTs; takes no writer lock."""
        ...

    def integrity_check(self) -> str:
        """``ok`` when the database is healthy, else what is wrong."""
        ...

    def schema_version(self) -> int: ...

    def touch(self) -> float:
        """A committed write that changes nothing; returns the lock wait in ms."""
        ...

    def named_lock(
        self, name: str, *, wait: bool = True
    ) -> AbstractContextManager[HeldLock | None]:
        """Hold the lock ``name``; yields None when it is busy and ``wait`` is off."""
        ...

    def close(self) -> None: ...


def ledger_url(configured: str | None = None) -> str | None:
    """The PostgreSQL URL to use: ``$ASTER_AGENTS_LEDGER_URL``, then ``configured``
    (``ledger.url`` of ``_portfolio.yaml``); None means the SQLite file in the state dir."""
    return os.environ.get(LEDGER_URL_ENV) or configured or None


def open_store(state_dir: Path, url: str | None = None, *, throwaway: bool = False) -> Store:
    """The store for ``url`` (see ``ledger_url``), else the SQLite file in ``state_dir``;
    ``throwaway``: an in-memory SQLite database for this process only, whatever the URL;
    ``url=STATE_DIR_FILE``: the SQLite file, whatever ``$ASTER_AGENTS_LEDGER_URL`` says."""
    if throwaway or url == STATE_DIR_FILE:
        from aster_agents.ledger.sqlite import SqliteStore

        return SqliteStore(state_dir, throwaway=throwaway)
    url = ledger_url(url)
    if url is None:
        from aster_agents.ledger.sqlite import SqliteStore

        return SqliteStore(state_dir)
    from aster_agents.ledger.postgres import PostgresStore, is_postgres_url

    if not is_postgres_url(url):
        raise LedgerError(
            f"ledger url {mask_url(url)}: expected postgresql://user@host:port/database"
        )
    return PostgresStore(url, state_dir)
