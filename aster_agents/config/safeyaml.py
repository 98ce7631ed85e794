"""Bounded reading of the YAML files in ``agents.d`` (used by the loader and the fast view).

A config file can exhaust a machine long before it is validated: a FIFO blocks the reader,
a symlink to ``/dev/zero`` never ends, a 100 MB file or an alias bomb (``&a [*a, *a, ...]``
nested a few times) takes gigabytes, and deep nesting overflows the parser's recursion.
So a file must be a regular file of at most ``MAX_BYTES``, aliases are refused and nesting
is capped at ``MAX_DEPTH``; each refusal is a :class:`BadYamlFile` whose message names the
file's problem in one line.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Final

MAX_BYTES: Final = 1 << 20  # 1 MiB: an agent file is a few hundred bytes
MAX_DEPTH: Final = 32  # the schema nests three levels; params a few more


class BadYamlFile(Exception):
    """A file refused before or while parsing; the message says why (without the path)."""


def read_text(path: Path) -> str:
    """The file's text if it is a regular file of at most MAX_BYTES of UTF-8."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise BadYamlFile(f"cannot read file: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise BadYamlFile(f"not a regular file ({_kind(mode)}); expected a YAML file")
        data = _read_at_most(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise BadYamlFile(f"file larger than {MAX_BYTES} bytes; expected a small YAML file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadYamlFile(f"cannot read file: not UTF-8 ({exc.reason})") from None


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, min(1 << 16, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def load(text: str) -> Any:
    """``yaml.safe_load`` without aliases and with nesting capped at MAX_DEPTH.

    Raises ``yaml.YAMLError`` (with a ``problem`` and a ``problem_mark``) for both.
    """
    loader = _loader_class()(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


_LOADER: type[Any] | None = None


def _loader_class() -> type[Any]:
    global _LOADER
    if _LOADER is None:
        _LOADER = _make_loader()
    return _LOADER


def _make_loader() -> type[Any]:
    import yaml
    from yaml.composer import ComposerError
    from yaml.events import AliasEvent

    class BoundedLoader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            peek: Any = self.peek_event  # untyped in the yaml stubs
            event = peek()
            mark: Any = event.start_mark
            if isinstance(event, AliasEvent):
                raise ComposerError(None, None, "aliases (*name) are not allowed", mark)
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return BoundedLoader
