"""Walk every field of a TFLite model through the schema's object API.

Used by the lossless tests: ``unpack`` gives the full ``ModelT`` tree of a file,
independent of our reader and graph, and ``diff`` lists every field where two
trees differ (numpy arrays by value), so a test can say exactly what a
round trip lost.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from tflite_fuser.schema import fb


def unpack(data: bytes) -> Any:
    model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    # External buffers: the object API sees only offset/size; load the bytes.
    for b in model.buffers or []:
        if b.offset > 1:
            b.data = np.frombuffer(data, np.uint8, b.size, b.offset)
            b.offset = b.size = 0
    return model


def _is_empty(x: Any) -> bool:
    return x is None or (isinstance(x, (list, np.ndarray)) and len(x) == 0)


def diff(a: Any, b: Any, path: str = "model") -> Iterator[str]:
    """Yield a line per differing leaf. Absent and empty vectors are equal
    (flatbuffers cannot tell them apart after a default-skipping writer)."""
    if _is_empty(a) and _is_empty(b):
        return
    if isinstance(a, (list, np.ndarray)) or isinstance(b, (list, np.ndarray)):
        if a is None or b is None:
            yield f"{path}: {_short(a)} != {_short(b)}"
            return
        if len(a) != len(b):
            yield f"{path}: length {len(a)} != {len(b)}"
            return
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            aa, bb = np.asarray(a), np.asarray(b)
            if aa.dtype.kind in "OV" or bb.dtype.kind in "OV":
                for i, (x, y) in enumerate(zip(a, b)):
                    yield from diff(x, y, f"{path}[{i}]")
            elif not np.array_equal(aa, bb):
                yield f"{path}: arrays differ"
            return
        for i, (x, y) in enumerate(zip(a, b)):
            yield from diff(x, y, f"{path}[{i}]")
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in a.keys() | b.keys():
            yield from diff(a.get(k), b.get(k), f"{path}.{k}")
        return
    if hasattr(a, "__dict__") and hasattr(b, "__dict__"):
        if type(a) is not type(b):
            yield f"{path}: {type(a).__name__} != {type(b).__name__}"
            return
        for k in a.__dict__:
            yield from diff(a.__dict__[k], b.__dict__.get(k), f"{path}.{k}")
        return
    if a != b:
        yield f"{path}: {_short(a)} != {_short(b)}"


def _short(x: Any) -> str:
    s = repr(x)
    return s if len(s) < 60 else s[:57] + "..."


def buffer_data_offsets(data: bytes) -> list[int]:
    """File offsets of every non-empty inline buffer's bytes."""
    m = fb.Model.GetRootAs(data, 0)
    out = []
    for i in range(m.BuffersLength()):
        b = m.Buffers(i)
        if not b.DataIsNone() and b.DataLength():
            tab = b._tab
            out.append(tab.Vector(tab.Offset(4)))
    return out
