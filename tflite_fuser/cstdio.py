"""What C++ runtimes print, caught: TFLite Micro's load errors and arena
report, the GPU delegate's list of the ops it refuses. They write to file
descriptors 1 and 2 directly, past Python's ``sys.stdout``/``sys.stderr``."""

from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def captured(fd: int):
    """Collect what C++ code writes to ``fd`` while the block runs; the text
    is in the yielded list afterwards."""
    out: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(fd)
        os.dup2(tmp.fileno(), fd)
        try:
            yield out
        finally:
            flush_c_stdio()  # C code buffers what it prints; push it out before fd points back
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", "replace"))


def flush_c_stdio() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # pragma: no cover - not a libc platform
        pass
