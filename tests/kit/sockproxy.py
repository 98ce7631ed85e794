"""A unix-socket proxy in front of the test PostgreSQL server: the network to the database.

``SocketProxy(upstream_socket, directory)`` listens on ``directory/<the same file name>``
(libpq finds a server by the directory in ``host=`` and the port in the file name) and
copies bytes both ways. ``cut()`` drops every connection at once, in the middle of whatever
was being sent (the server going away mid-transaction), and refuses new ones until
``resume()`` (the server unreachable)::

    with SocketProxy(server_socket, tmp_path / "net") as proxy:
        url = proxy.url(pg_url)
        ...
        proxy.cut(); ...; proxy.resume()
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from pathlib import Path
from urllib.parse import quote


class SocketProxy:
    """Forwards connections on a unix socket of its own to ``upstream`` (a unix socket)."""

    def __init__(self, upstream: Path, directory: Path) -> None:
        self.upstream = upstream
        self.directory = directory
        self.path = directory / upstream.name
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.accepted = 0

    def start(self) -> SocketProxy:
        """Listen (again, after a ``cut``)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        self.path.chmod(0o777)
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def url(self, url: str) -> str:
        """``url`` (a ``host=<socket dir>`` URL) pointed at this proxy instead."""
        return re.sub(r"host=[^&]+", "host=" + quote(str(self.directory), safe=""), url)

    def cut(self) -> None:
        """Drop every connection now; no server is found until ``resume()``."""
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def resume(self) -> None:
        self.start()

    def stop(self) -> None:
        self.cut()

    def __enter__(self) -> SocketProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut or stopped
            with self._lock:
                if self._listener is not listener:  # cut while this one was arriving
                    client.close()
                    return
                server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    server.connect(str(self.upstream))
                except OSError:
                    client.close()
                    server.close()
                    continue
                self._open += [client, server]
                self.accepted += 1
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
