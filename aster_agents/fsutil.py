"""Atomic, owner-only file writes, shared by the keystores and the agents' own state files;
owner-only directories for the state dir; free space and disk-full detection."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Final

PRIVATE_DIR: Final = 0o700
PRIVATE_FILE: Final = 0o600
PRIVATE_UMASK: Final = 0o077  # for processes whose every file is the fleet's (agents, supervisord)
_FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def make_private_dir(directory: Path) -> None:
    """Create ``directory`` and its missing parents owner-only, 0700; existing ones are left."""
    if directory.is_dir():
        return
    for parent in reversed([d for d in directory.parents if not d.exists()]):
        parent.mkdir(mode=PRIVATE_DIR, exist_ok=True)
    directory.mkdir(mode=PRIVATE_DIR, exist_ok=True)  # FileExistsError if a file is in the way


def touch_private(path: Path) -> None:
    """Create ``path`` empty and 0600 unless it exists, so whatever opens it later keeps that."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE))


def is_disk_full(exc: BaseException) -> bool:
    """True for "no space left" (or over quota, or past the file-size limit) from the OS."""
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


def free_bytes(path: Path) -> int | None:
    """Bytes free on the filesystem holding ``path`` (its nearest existing parent)."""
    target = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    try:
        st = os.statvfs(target)  # shutil.disk_usage's figure, without importing shutil (status)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def free_space(path: Path) -> str:
    """Free space on the filesystem holding ``path``, for humans ("1.5 MiB free")."""
    raw = free_bytes(path)
    if raw is None:
        return "free space unknown"
    free = float(raw)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if free < 1024 or unit == "GiB":
            return f"{free:.0f} {unit} free" if unit == "bytes" else f"{free:.1f} {unit} free"
        free /= 1024
    return "free space unknown"  # pragma: no cover - the loop always returns


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
    tmp = directory / f".{name}.{os.urandom(6).hex()}.tmp"  # no secrets/random import: status
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), str(tmp)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
