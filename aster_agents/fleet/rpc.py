"""XML-RPC to supervisord over its unix socket: the one transport ``up``, ``down`` and ``status``
share. Standard library only (``status`` imports it), with a timeout on every socket operation.
"""

from __future__ import annotations

import http.client
import socket
import xmlrpc.client
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix-domain socket (the host name only fills the Host header)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class UnixTransport(xmlrpc.client.Transport):
    """An ``xmlrpc.client`` transport whose one connection goes to the socket at ``path``."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__()
        self._path = str(path)
        self._timeout = timeout

    def make_connection(self, host: object) -> http.client.HTTPConnection:
        conn = self._connection[1]
        if conn is None:
            conn = _UnixConnection(self._path, self._timeout)
            self._connection = (self._path, conn)  # close() closes it, as in the base class
        return conn


@contextmanager
def supervisor_rpc(path: Path, timeout: float) -> Iterator[xmlrpc.client.ServerProxy]:
    """A proxy to supervisord's XML-RPC interface at the socket ``path``; closed on exit.

    Errors are the standard library's: ``OSError`` (no socket, refused, timeout),
    ``xmlrpc.client.Fault`` and ``ProtocolError``, ``http.client.HTTPException``.
    """
    transport = UnixTransport(path, timeout)
    try:
        yield xmlrpc.client.ServerProxy("http://localhost", transport=transport)
    finally:
        transport.close()
