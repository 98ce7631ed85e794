"""Atomic, owner-only file writes, shared by the keystores and the agents' own state files."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def write_private_file(target: Path, data: bytes, *, replace: bool) -> None:
    """Write ``data`` to ``target`` atomically, mode 0600, in a 0700 directory.

    The temporary file is created 0600 (never briefly readable), fsynced, then renamed;
    without ``replace`` it is hard-linked into place, which raises ``FileExistsError`` if
    ``target`` exists. A reader, or a crash, sees the old file or the new one, never half.
    """
    _private_dir(target.parent)
    fd, tmp = _private_temp(target.parent, target.name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if replace:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)
        _fsync_dir(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _private_dir(directory: Path) -> None:
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
        os.chmod(directory, 0o700)


def _private_temp(directory: Path, name: str) -> tuple[int, str]:
    tmp = directory / f".{name}.{secrets.token_hex(6)}.tmp"
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), str(tmp)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
