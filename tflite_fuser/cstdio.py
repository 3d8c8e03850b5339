"""What C++ runtimes print, caught: TFLite Micro's load errors and arena
report, the GPU delegate's list of the ops it refuses. They write to file
descriptors 1 and 2 directly, past Python's ``sys.stdout``/``sys.stderr``."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Callable


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


@contextlib.contextmanager
def runtime_errors(explain: Callable[[str, Exception], str]):
    """Run a C++ runtime call with its stderr captured: a RuntimeError or
    ValueError it raises comes out as one RuntimeError whose text is
    ``explain(what it printed, the exception)``, the runtime's own words
    rather than the binding's generic message. What it printed is in the
    yielded list afterwards, as with :func:`captured`."""
    with captured(2) as err:
        try:
            yield err
        except (RuntimeError, ValueError) as e:
            failure = e
        else:
            failure = None
    if failure is not None:
        raise RuntimeError(explain("".join(err), failure)) from None


def first_line(said: str, failure: Exception) -> str:
    """The first line the runtime printed, else the exception's text."""
    lines = [ln.strip() for ln in said.splitlines() if ln.strip()]
    return lines[0] if lines else str(failure)
