"""Flatbuffer tables read and written many at a time, with numpy.

A TFLite model of 100,000 ops holds some 300,000 tensor and operator tables.
The generated readers and writers (flatc's Python code) spend a Python call
per field of each, which is what made a plain object-API round trip of such a
model take 25 s. Here the *same* tables are read as columns: for a vector of N
tables, one numpy gather finds every vtable, one finds every field offset, one
reads every value of a field. Writing mirrors it: N tables of one layout are
laid out as one ``(N, size)`` byte block with one vtable, and placed into the
flatbuffers ``Builder`` in one piece, their offsets computed with numpy.

Nothing here knows the TFLite schema by heart: field slots and defaults are
read off the generated accessors (``Tensor.Shape`` reads vtable slot 4, and so
on), so a schema that grows a field grows here too. The format itself is
flatbuffers' (``flatbuffers/table.py``, ``builder.py``): a table starts with a
signed offset back to its vtable (``[vtable size, table size, field offsets]``
as uint16); a vector is a uint32 length then its elements; a uoffset points
forward, relative to where it is stored.

Hostile input: every position is bounds-checked before numpy indexes with it
(a negative index would wrap around), and an out-of-range one raises
``IndexError``, which the reader turns into a one-line error.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from functools import lru_cache

import flatbuffers
import numpy as np

_U8, _U16, _U32, _I32 = np.dtype("u1"), np.dtype("<u2"), np.dtype("<u4"), np.dtype("<i4")


@dataclass(frozen=True)
class Field:
    """Where a field sits in its table's vtable, and its default."""

    slot: int  # byte offset in the vtable: 4 + 2 * field id
    default: float | int | None


@lru_cache(maxsize=None)
def field(cls: type, accessor: str) -> Field | None:
    """The vtable slot and default of ``cls.accessor`` (a generated reader
    method), or None when this schema version has no such field."""
    fn = getattr(cls, accessor, None)
    if fn is None:
        return None
    src = inspect.getsource(fn)
    slot = int(re.search(r"Offset\((\d+)\)", src).group(1))
    tail = re.findall(r"return ([-\w.]+)\s*$", src, re.M)
    return Field(slot, _literal(tail[-1]) if tail else None)


def _literal(text: str):
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None


_FLAG_DTYPES = {"Bool": "u1", "Uint8": "u1", "Int8": "i1", "Uint16": "<u2", "Int16": "<i2", "Uint32": "<u4",
                "Int32": "<i4", "Uint64": "<u8", "Int64": "<i8", "Float32": "<f4", "Float64": "<f8"}


@lru_cache(maxsize=None)
def scalar_table(object_cls: type) -> tuple[tuple[str, Field, np.dtype, bool], ...] | None:
    """For an object-API class (``fb.Conv2DOptionsT``) whose table holds
    scalars only: each attribute with its field, dtype and whether it is a
    bool, read off the generated reader (``fb.Conv2DOptions``). None when the
    table has vectors, strings or sub-tables (those go through the object API)."""
    reader = getattr(_schema_module(object_cls), object_cls.__name__[:-1], None)
    if reader is None:
        return None
    spec = []
    for attr, value in vars(object_cls()).items():
        if not isinstance(value, (bool, int, float)):
            return None
        accessor = attr[0].upper() + attr[1:]
        fn = getattr(reader, accessor, None)
        if fn is None:
            return None
        m = re.search(r"Get\(flatbuffers\.number_types\.(\w+)Flags", inspect.getsource(fn))
        if m is None or m.group(1) not in _FLAG_DTYPES:
            return None
        spec.append((attr, field(reader, accessor), np.dtype(_FLAG_DTYPES[m.group(1)]), m.group(1) == "Bool"))
    return tuple(spec)


def _schema_module(cls: type):
    import sys

    return sys.modules[cls.__module__]


def decode_scalar_tables(data: "Bytes", pos: np.ndarray, object_cls: type) -> list:
    """The tables at ``pos`` (all of one scalar-only type) as object-API
    instances, read a field at a time for all of them."""
    spec = scalar_table(object_cls)
    tables = Tables(data, pos)
    columns = []
    for attr, f, dt, is_bool in spec:
        col = tables.scalars(f, dt)
        columns.append((attr, col.astype(bool).tolist() if is_bool else col.tolist()))
    names = [a for a, _ in columns]
    out = []
    new = object_cls.__new__
    for row in zip(*(c for _, c in columns)) if columns else [() for _ in range(len(tables))]:
        obj = new(object_cls)
        obj.__dict__.update(zip(names, row))
        out.append(obj)
    return out


# ------------------------------------------------------------------ reading


class Bytes:
    """The model file as uint8, with bounds-checked gathers."""

    def __init__(self, buf) -> None:
        self.u8 = np.frombuffer(buf, np.uint8)
        self.n = len(self.u8)

    def gather(self, pos: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """The ``dtype`` value stored at each position (little-endian)."""
        pos = np.asarray(pos, np.int64)
        size = dtype.itemsize
        if pos.size and (pos.min() < 0 or pos.max() + size > self.n):
            raise IndexError(f"a table or vector reaches past the end of the file ({self.n} bytes)")
        if size == 1:
            return self.u8[pos].view(dtype)
        return self.u8[pos[:, None] + np.arange(size)].view(dtype).reshape(pos.shape)

    def u32(self, pos) -> np.ndarray:
        return self.gather(pos, _U32).astype(np.int64)

    def vector_at(self, pos: int, dtype) -> np.ndarray:
        """The vector (length, then elements) at ``pos``, zero-copy when aligned."""
        n = int(self.u32(np.array([pos]))[0])
        dt = np.dtype(dtype)
        end = pos + 4 + n * dt.itemsize
        if end > self.n:
            raise IndexError(f"a vector of {n} elements at {pos} reaches past the end of the file")
        raw = self.u8[pos + 4:end]
        return raw.view(dt) if (pos + 4) % dt.itemsize == 0 else raw.copy().view(dt)


class Tables:
    """N tables of one type, at ``pos``: each field read for all at once."""

    def __init__(self, data: Bytes, pos: np.ndarray):
        self.data = data
        self.pos = np.asarray(pos, np.int64)
        vt = self.pos - data.gather(self.pos, _I32).astype(np.int64)
        self.vt = vt
        self.vt_size = data.gather(vt, _U16).astype(np.int64)

    @staticmethod
    def vector(data: Bytes, vec_pos: int) -> "Tables":
        """The tables a vector of uoffsets at ``vec_pos`` points to."""
        n = int(data.u32(np.array([vec_pos]))[0])
        if 4 * n > data.n:
            raise IndexError(f"a vector of {n} tables cannot fit in the file")
        elems = vec_pos + 4 + 4 * np.arange(n, dtype=np.int64)
        return Tables(data, elems + data.u32(elems))

    def __len__(self) -> int:
        return len(self.pos)

    def field_pos(self, f: Field | None) -> np.ndarray:
        """Absolute position of the field in each table; 0 where absent."""
        if f is None or not len(self.pos):
            return np.zeros(len(self.pos), np.int64)
        has = f.slot + 2 <= self.vt_size
        off = np.zeros(len(self.pos), np.int64)
        if has.any():
            off[has] = self.data.gather(self.vt[has] + f.slot, _U16)
        return np.where(off > 0, self.pos + off, 0)

    def scalars(self, f: Field | None, dtype) -> np.ndarray:
        dt = np.dtype(dtype)
        default = 0 if f is None or f.default is None else f.default
        out = np.full(len(self.pos), default, dt)
        p = self.field_pos(f)
        present = p > 0
        if present.any():
            out[present] = self.data.gather(p[present], dt)
        return out

    def targets(self, f: Field | None) -> np.ndarray:
        """Where each table's offset field (table, vector, string) points; 0 where absent."""
        p = self.field_pos(f)
        present = p > 0
        out = np.zeros(len(self.pos), np.int64)
        if present.any():
            out[present] = p[present] + self.data.u32(p[present])
        return out

    def vectors(self, f: Field | None, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every table's vector field as one flat array of values, with each
        table's start and length in it (length -1 where the field is absent)."""
        dt = np.dtype(dtype)
        vec = self.targets(f)
        present = vec > 0
        lengths = np.full(len(self.pos), -1, np.int64)
        if present.any():
            lengths[present] = self.data.u32(vec[present])
        n = np.maximum(lengths, 0)
        if int(n.sum()) * dt.itemsize > self.data.n:
            raise IndexError("vectors reach past the end of the file")
        starts = np.concatenate([[0], np.cumsum(n)[:-1]]) if len(n) else n
        total = int(n.sum())
        first = np.repeat(vec + 4, n)
        within = np.arange(total, dtype=np.int64) - np.repeat(starts, n)
        values = self.data.gather(first + within * dt.itemsize, dt) if total else np.zeros(0, dt)
        return values, starts, lengths

    def strings(self, f: Field | None) -> list[bytes | None]:
        values, starts, lengths = self.vectors(f, _U8)
        raw = values.tobytes()
        return [None if n < 0 else raw[s:s + n] for s, n in zip(starts.tolist(), lengths.tolist())]


def split_lists(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> list[list | None]:
    """:meth:`Tables.vectors` as one Python list per table (None where absent)."""
    flat = values.tolist()
    return [None if n < 0 else flat[s:s + n] for s, n in zip(starts.tolist(), lengths.tolist())]


def table_at(buf, pos: int) -> flatbuffers.table.Table:
    """A generated-code view of the table at ``pos`` (for the rare nested
    tables we hand to the object API: quantization, sparsity, options)."""
    return flatbuffers.table.Table(buf, int(pos))


# ------------------------------------------------------------------ writing


def place(b: flatbuffers.Builder, chunk, align: int) -> int:
    """Put ``chunk`` (bytes) into the builder, its start aligned to ``align``;
    return the builder offset of its first byte (``Builder.Offset()`` terms:
    distance from the end of the finished buffer)."""
    data = memoryview(chunk).cast("B")
    n = len(data)
    b.Prep(align, n)
    b.head -= n
    b.Bytes[b.head:b.head + n] = data
    return b.Offset()


OFFSET = "offset"  # a field that points to a table, vector or string


class Layout:
    """The fields of one kind of table written in bulk: ``(name, Field,
    dtype)``, the dtype :data:`OFFSET` for a uoffset. Each group of tables
    that has the same fields gets its own packed arrangement (only the fields
    it has, largest first, each aligned), as flatbuffers' own builder does."""

    def __init__(self, fields: list[tuple[str, Field | None, object]]):
        self.fields: dict[str, tuple[Field, np.dtype, bool]] = {
            n: (f, np.dtype(_U32) if dt == OFFSET else np.dtype(dt), dt == OFFSET)
            for n, f, dt in fields if f is not None}

    @staticmethod
    def of(reader: type, **storage) -> "Layout":
        """The layout of ``reader``'s table (a generated class such as
        ``fb.Tensor``) from ``Accessor=dtype`` pairs; fields are named in
        snake case (``ShapeSignature`` -> ``shape_signature``). A field this
        schema version lacks is left out."""
        return Layout([(re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower(), field(reader, name), dt)
                       for name, dt in storage.items()])

    @lru_cache(maxsize=None)
    def arrange(self, present: frozenset[str]) -> tuple[dict[str, int], int, int, bytes]:
        """(position of each present field, table size, alignment, vtable bytes)."""
        at: dict[str, int] = {}
        pos, align = 4, 4  # after the soffset to the vtable
        for name in sorted(present, key=lambda n: (-self.fields[n][1].itemsize, self.fields[n][0].slot)):
            size = self.fields[name][1].itemsize
            pos += (-pos) % size
            at[name] = pos
            pos += size
            align = max(align, size)
        size = pos + (-pos) % align
        slots = max((self.fields[n][0].slot for n in present), default=2) + 2
        vt = np.zeros(slots // 2, np.uint16)
        vt[0], vt[1] = slots, size
        for name, p in at.items():
            vt[self.fields[name][0].slot // 2] = p
        return at, size, align, vt.tobytes()


def write_tables(b: flatbuffers.Builder, layout: Layout, values: dict[str, np.ndarray],
                 present: dict[str, np.ndarray], vtables: dict[bytes, int]) -> np.ndarray:
    """Write N tables of ``layout`` in one block per group of tables with the
    same fields; return their builder offsets.

    ``values`` holds one value per table for each field: scalars as they are,
    offset fields as the builder offsets of what they point to (written
    before). ``present`` says, for fields that may be left out, which tables
    have them (a field left out reads as its default: flatbuffers omits
    defaults); fields not named there are always written. ``vtables``
    (vtable bytes -> builder offset, kept by the caller for one builder) lets
    every table with the same vtable share it.
    """
    values = {k: np.asarray(v) for k, v in values.items() if k in layout.fields}
    n = len(next(iter(values.values()))) if values else 0
    result = np.zeros(n, np.int64)
    optional = sorted(k for k in present if k in values)
    keys = np.zeros(n, np.int64)
    for i, k in enumerate(optional):
        keys |= np.asarray(present[k], bool).astype(np.int64) << i
    for key in np.unique(keys).tolist() if n else []:
        rows = np.flatnonzero(keys == key)
        have = frozenset({k for i, k in enumerate(optional) if key >> i & 1} | (set(values) - set(optional)))
        at, size, align, vtable = layout.arrange(have)
        vt_off = vtables.get(vtable)
        if vt_off is None:
            vt_off = vtables[vtable] = place(b, vtable, 2)
        m = len(rows)
        block = np.zeros((m, size), np.uint8)
        b.Prep(align, m * size)
        start = b.Offset() + m * size  # builder offset of the block's first byte
        table_off = start - np.arange(m, dtype=np.int64) * size
        _put(block, 0, _I32, vt_off - table_off)
        for name, pos in at.items():
            _, dt, is_offset = layout.fields[name]
            col = values[name][rows]
            _put(block, pos, dt, (table_off - pos) - col if is_offset else col)
        b.head -= m * size
        b.Bytes[b.head:b.head + m * size] = block.tobytes()
        result[rows] = table_off
    return result


def _put(block: np.ndarray, pos: int, dt: np.dtype, values: np.ndarray) -> None:
    dt = np.dtype(dt)
    block[:, pos:pos + dt.itemsize] = np.asarray(values).astype(dt.newbyteorder("<")).reshape(-1, 1).view(np.uint8)


def write_vectors(b: flatbuffers.Builder, values: list[np.ndarray], dtype) -> np.ndarray:
    """Write one vector per array (length-prefixed, aligned to 4 and to the
    element size) in one block; return their builder offsets."""
    dt = np.dtype(dtype).newbyteorder("<")
    if dt.itemsize == 4:
        lengths = [len(v) for v in values]
        flat = np.concatenate([np.asarray(v, dt).reshape(-1) for v in values]) if values else []
        return write_word_vectors(b, flat, lengths, dt)
    align = max(4, dt.itemsize)
    parts, rel, pos = [], [], 0
    for v in values:
        v = np.ascontiguousarray(v, dt)
        pad = (-(pos + 4)) % align  # the elements, after the length, aligned
        parts.append(b"\0" * pad)
        pos += pad
        rel.append(pos)
        parts.append(np.uint32(len(v)).tobytes())
        parts.append(v.tobytes())
        pos += 4 + v.nbytes
    chunk = b"".join(parts)
    chunk += b"\0" * ((-len(chunk)) % align)
    start = place(b, chunk, align)
    return start - np.asarray(rel, np.int64)


def write_word_vectors(b: flatbuffers.Builder, flat, lengths: list[int], dtype) -> np.ndarray:
    """:func:`write_vectors` for 4-byte elements given as the vectors' values
    end to end (``flat``) and their ``lengths``; their builder offsets.

    No vector of 4-byte elements needs padding (each starts a word after a
    word-long length), so the block is one array of words made at once, not
    numpy calls per vector (a 100,000-op model writes 200,000 input and output
    lists)."""
    dt = np.dtype(dtype).newbyteorder("<")
    n = len(lengths)
    if not n:
        return np.zeros(0, np.int64)
    lens = np.asarray(lengths, np.int64)
    at = np.arange(n, dtype=np.int64)  # word of each length: one length and the vectors before it per vector
    at[1:] += np.cumsum(lens[:-1])
    block = np.empty(n + int(lens.sum()), dt)
    is_value = np.ones(len(block), bool)
    is_value[at] = False
    block[at] = lens
    block[is_value] = np.asarray(flat, dt)
    start = place(b, block.tobytes(), 4)
    return start - 4 * at


def write_strings(b: flatbuffers.Builder, strings: list[bytes]) -> np.ndarray:
    """Write NUL-terminated flatbuffer strings in one block; their builder offsets."""
    parts, rel, pos = [], [], 0
    for s in strings:
        rel.append(pos)
        body = len(s).to_bytes(4, "little") + s + b"\0"
        body += b"\0" * ((-len(body)) % 4)
        parts.append(body)
        pos += len(body)
    start = place(b, b"".join(parts), 4)
    return start - np.asarray(rel, np.int64)


def write_offset_vector(b: flatbuffers.Builder, targets: np.ndarray) -> int:
    """A vector of uoffsets to ``targets`` (builder offsets, all written); its offset."""
    targets = np.asarray(targets, np.int64)
    n = len(targets)
    b.Prep(4, 4 * (n + 1))
    start = b.Offset() + 4 * (n + 1)  # the length field
    elem = start - 4 - 4 * np.arange(n, dtype=np.int64)
    block = np.concatenate([[n], elem - targets]).astype("<u4")
    b.head -= block.nbytes
    b.Bytes[b.head:b.head + block.nbytes] = block.tobytes()
    return start
