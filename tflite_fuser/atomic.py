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
    """Write ``chunks`` (an object with ``write_to(f)``, or bytes) next to
    ``dst``, with the mode the finished file should have (see
    :func:`apply_mode`)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    except OSError as e:
        raise WriteError(f"{dst}: cannot create the output there ({e.strerror or e})") from None
    try:
        apply_mode(fd, dst)
        with os.fdopen(fd, "wb") as f:
            if isinstance(chunks, (bytes, bytearray, memoryview)):
                f.write(chunks)
            else:
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


def apply_mode(fd: int, dst: Path) -> None:
    """Give the file open as ``fd`` the permissions ``dst`` should end with.

    ``mkstemp`` creates files 0600 whatever the umask. A file that replaces an
    existing one (``--in-place``, or an OUT that exists) keeps that file's
    mode, and its owner and group where we may set them; a new file gets
    ``0666 & ~umask``, like the output of any other tool.
    """
    try:
        st = os.stat(dst)
    except OSError:
        os.fchmod(fd, 0o666 & ~current_umask())
        return
    os.fchmod(fd, st.st_mode & 0o7777)
    if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
        except OSError:  # not ours to give away: keep the mode at least
            pass


def current_umask() -> int:
    """The process umask, read without changing it where the OS tells it
    (``os.umask`` can only be read by setting it, which races with threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def free_backup_name(dst: Path) -> Path:
    """``dst.orig``, or ``dst.orig.1``, ``dst.orig.2`` ... when earlier runs
    left backups: an existing backup is never overwritten (it may be the only
    copy of the user's original model)."""
    first = dst.with_name(dst.name + ".orig")
    if not first.exists():
        return first
    n = 1
    while dst.with_name(f"{first.name}.{n}").exists():
        n += 1
    return dst.with_name(f"{first.name}.{n}")


def commit(tmp: Path, dst: Path, backup: Path | None = None) -> None:
    """Move ``tmp`` over ``dst``; keep the previous ``dst`` as ``backup`` first
    (``backup`` must not exist: see :func:`free_backup_name`)."""
    try:
        if backup is not None and dst.exists():
            os.link(dst, backup)  # the old inode stays intact under the new name; fails if backup exists
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
