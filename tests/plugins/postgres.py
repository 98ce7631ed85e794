"""pytest fixtures for the PostgreSQL ledger (owned by the postgres work).

- ``pg_server``: a throwaway PostgreSQL server (``pgserver`` from PyPI: the server binaries
  in a wheel) started once per session on a unix socket in a temporary directory, stopped
  at the end. No TCP port is opened. ``fsync`` is off: the tests never crash the machine.
- ``pg_url``: a fresh empty schema on that server for one test, as a URL whose
  ``search_path`` points at it (every process given the URL sees only that schema).
- ``backend``: parametrises a test over ``sqlite`` and ``postgresql``; for the latter it sets
  ``ASTER_AGENTS_LEDGER_URL`` so every ``Ledger`` (in this process and in children) uses it.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

BACKENDS = ("sqlite", "postgresql")
_schemas = itertools.count(1)


class PgServer:
    """The running test server: its base URL and an admin connection helper."""

    def __init__(self, server: Any, uri: str, data: Path) -> None:
        self.server = server
        self.uri = uri
        self.data = data  # the data directory (pg_hba.conf lives there)

    def url_for(self, schema: str) -> str:
        sep = "&" if "?" in self.uri else "?"
        return f"{self.uri}{sep}options={quote(f'-csearch_path={schema}')}"

    def execute(self, sql: str) -> list[Any]:
        import psycopg

        with psycopg.connect(self.uri, autocommit=True) as conn:
            cur = conn.execute(sql.encode())
            return cur.fetchall() if cur.description is not None else []


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server for the whole session (started on first use)."""
    # Not under pytest's tmp dirs: those are 0700 and, as root, pgserver runs the server as
    # its own unprivileged user, which must reach the data directory.
    root = Path(tempfile.mkdtemp(prefix="aster-pg-"))
    root.chmod(0o755)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(root))  # pgserver's lock file lives there
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        server = pgserver.get_server(root / "data", cleanup_mode="stop")
    srv = PgServer(server, server.get_uri(), root / "data")
    srv.execute("ALTER SYSTEM SET fsync = off")
    srv.execute("ALTER SYSTEM SET max_connections = 200")  # read at restart only; harmless
    srv.execute("SELECT pg_reload_conf()")
    try:
        yield srv
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """The URL of a new, empty schema on the session's server."""
    schema = f"t{os.getpid()}_{next(_schemas)}"
    pg_server.execute(f"CREATE SCHEMA {schema}")
    return pg_server.url_for(schema)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """``sqlite`` or ``postgresql``: the ledger backend every ``Ledger`` of the test uses."""
    name: str = request.param
    if name == "postgresql":
        monkeypatch.setenv("ASTER_AGENTS_LEDGER_URL", request.getfixturevalue("pg_url"))
    return name
