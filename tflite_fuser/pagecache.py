"""Keep weights in the page cache, not in the process's resident memory.

A 2 GB model fused naively holds the input's weights (touched while folding
and writing) *and* every folded weight at once: more than twice the model in
RAM. Two file-backed tricks keep the resident set near one model's worth:

- weights read from the input stay views of its read-only ``mmap``; once a
  pass or the writer is done with them, ``MADV_DONTNEED`` drops their pages
  from our resident set (the kernel keeps them cached and re-reads them if we
  touch them again, so this never changes a byte we see);
- in models of :data:`SPILL_MODEL_BYTES` or more, folded weights above
  :data:`SPILL_BYTES` are written to an unlinked temporary file and mapped
  back read-only, so they too live in the page cache until the writer streams
  them out. (Smaller models keep them in memory: spilling costs about a
  second of copying per 500 MB, and for small models the interpreter
  library's own ~55 MB dominate the resident set anyway.)

Only file-backed mappings are ever released: ``MADV_DONTNEED`` on anonymous
memory would zero it.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from .graph import Buffer, Model, as_raw_bytes

#: in models at least this large, folded arrays of SPILL_BYTES or more are
#: spilled to a temporary file
SPILL_MODEL_BYTES = 256 << 20
SPILL_BYTES = 1 << 20
#: after this many bytes of new weights, drop the input's pages again (a pass
#: that folds every filter of a large model touches all of them)
RELEASE_EVERY = 64 << 20


@dataclass(eq=False, slots=True)
class Backing:
    """Where a buffer's bytes sit in a read-only file mapping."""

    mapping: mmap.mmap
    offset: int
    length: int

    def release(self) -> None:
        release_range(self.mapping, self.offset, self.length)


def release_range(mapping: mmap.mmap, offset: int, length: int) -> None:
    if length <= 0 or mapping.closed:
        return
    start = offset - offset % mmap.PAGESIZE
    end = min(len(mapping), offset + length)
    try:
        mapping.madvise(mmap.MADV_DONTNEED, start, end - start)
    except (OSError, ValueError):  # pragma: no cover - an optimisation only
        pass


def release_all(mapping: mmap.mmap) -> None:
    release_range(mapping, 0, len(mapping))


def backing_of(array: np.ndarray, mapping: mmap.mmap | None) -> Backing | None:
    """The backing of ``array`` if it is a view into ``mapping``."""
    if mapping is None or array.nbytes == 0:
        return None
    base = np.frombuffer(mapping, np.uint8, 1).ctypes.data
    offset = array.ctypes.data - base
    if 0 <= offset and offset + array.nbytes <= len(mapping):
        return Backing(mapping, offset, array.nbytes)
    return None


def spill(raw: np.ndarray) -> tuple[np.ndarray, Backing | None]:
    """Copy ``raw`` (uint8) to an unlinked temporary file; return a read-only
    view of its mapping. The caller drops ``raw``; the bytes then live in the
    page cache, and in our resident set only while someone reads them."""
    try:
        with tempfile.TemporaryFile(prefix="tflite-fuse-", dir=os.environ.get("TFLITE_FUSE_SPILL_DIR")) as f:
            f.write(memoryview(np.ascontiguousarray(raw)).cast("B"))
            f.flush()
            mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError:  # no room for the spill file: keep the bytes in memory
        return raw, None
    return np.frombuffer(mapping, np.uint8), Backing(mapping, 0, len(mapping))


class WeightPages:
    """The memory policy of one run, installed as the model's
    ``buffer_factory``: new constants of a large model are spilled, and the
    input's pages are dropped again after every :data:`RELEASE_EVERY` bytes
    of new weights (a pass that folds every filter touches all of them).
    :meth:`release` drops everything file-backed between passes."""

    def __init__(self, model: Model):
        self.model = model
        mapping = model.source_mapping
        self.spill = mapping is not None and len(mapping) >= SPILL_MODEL_BYTES
        self.new_bytes = 0
        self.spilled: list[Buffer] = []

    @classmethod
    def install(cls, model: Model) -> "WeightPages":
        policy = cls(model)
        model.buffer_factory = policy.new_buffer
        return policy

    def new_buffer(self, array: np.ndarray) -> Buffer:
        raw = as_raw_bytes(array)
        if self.spill and raw.nbytes >= SPILL_BYTES:
            data, backing = spill(raw)
            buf = Buffer(data, backing=backing)
            self.spilled.append(buf)
        else:
            buf = Buffer(raw)
        self.new_bytes += buf.nbytes
        if self.new_bytes >= RELEASE_EVERY and self.model.source_mapping is not None:
            self.new_bytes = 0
            release_all(self.model.source_mapping)
        return buf

    def release(self) -> None:
        """Drop weight pages from resident memory; they stay in the page
        cache and come back on the next read."""
        mapping = self.model.source_mapping
        if mapping is not None:
            release_all(mapping)
        for b in self.spilled:
            b.release()
