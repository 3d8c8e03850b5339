"""Write output files so that a crash, a full disk or a kill leaves either the
old file or the complete new one, never half of one.

The bytes go to a temporary file in the destination's own directory (so the
final ``os.replace`` is a same-filesystem rename, which POSIX makes atomic),
are flushed and fsynced, and only then renamed over the destination.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import UsageError, WriteError


def check_destination(src: str | os.PathLike | None, dst: str | os.PathLike, in_place: bool) -> Path:
    """Fail early, before any work, when ``dst`` cannot be written."""
    dst = Path(dst)
    if dst.is_dir():
        raise UsageError(f"{dst}: output path is a directory")
    parent = dst.parent if str(dst.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{dst}: output directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{dst}: output directory {parent} is not writable")
    if dst.exists() and not os.access(dst, os.W_OK) and not in_place:
        raise UsageError(f"{dst}: output file is not writable")
    if src is not None and not in_place and _same_file(src, dst):
        raise UsageError(f"{dst}: output is the input file; pass --in-place to overwrite it (a backup is kept)")
    return dst


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def write_temp(dst: Path, chunks) -> Path:
    """Write ``chunks`` (an object with ``write_to(f)``) next to ``dst``."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    except OSError as e:
        raise WriteError(f"{dst}: cannot create the output there ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            chunks.write_to(f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        _unlink(tmp)
        raise WriteError(f"{dst}: cannot write output ({e.strerror or e})") from None
    except BaseException:
        _unlink(tmp)
        raise
    return Path(tmp)


def commit(tmp: Path, dst: Path, backup: Path | None = None) -> None:
    """Move ``tmp`` over ``dst``; keep the previous ``dst`` as ``backup`` first."""
    try:
        if backup is not None and dst.exists():
            if backup.exists():
                backup.unlink()
            os.link(dst, backup)  # the old inode stays intact under the new name
        os.replace(tmp, dst)
        _fsync_dir(dst.parent)
    except OSError as e:
        _unlink(tmp)
        raise WriteError(f"{dst}: cannot replace output ({e.strerror or e})") from None


def discard(tmp: Path | None) -> None:
    if tmp is not None:
        _unlink(tmp)


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path if str(path) else ".", os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
