"""Ways to break a TFLite file, for the fuzz harness and the property tests.

Byte-level mutations know the file's structure (they are aimed at table and
vector boundaries, length prefixes and offsets found by walking the real
schema), and semantic mutations edit the schema's object tree and pack it
again, so they reach past the flatbuffer layer into what the interpreter would
trust: indices, shapes, subgraph references, buffer offsets.
"""

from __future__ import annotations

import copy
import random
import struct
from typing import Callable

import flatbuffers
import numpy as np

from tflite_fuser.schema import FILE_IDENTIFIER, fb


# --------------------------------------------------------------- structure


def structure(data: bytes) -> tuple[list[int], list[int]]:
    """(boundaries, length_prefixes): file offsets where tables and vectors
    start or end, and where vector length prefixes sit."""
    bounds: set[int] = {0, 4, 8, len(data)}
    prefixes: set[int] = set()
    m = fb.Model.GetRootAs(data, 0)

    def table(obj) -> None:
        bounds.add(obj._tab.Pos)

    def vector(obj, slot: int, elem: int) -> None:
        o = obj._tab.Offset(slot)
        if o:
            start = obj._tab.Vector(o)
            n = obj._tab.VectorLen(o)
            prefixes.add(start - 4)
            bounds.update({start - 4, start, start + n * elem})

    table(m)
    for slot in (6, 8, 12, 14, 16, 18):  # operator codes, subgraphs, buffers, metadata_buffer, metadata, sigs
        vector(m, slot, 4)
    for i in range(m.BuffersLength()):
        b = m.Buffers(i)
        table(b)
        vector(b, 4, 1)
    for i in range(m.SubgraphsLength()):
        sg = m.Subgraphs(i)
        table(sg)
        for slot in (4, 6, 8, 10):
            vector(sg, slot, 4)
        for j in range(sg.TensorsLength()):
            t = sg.Tensors(j)
            table(t)
            vector(t, 4, 4)
        for j in range(sg.OperatorsLength()):
            op = sg.Operators(j)
            table(op)
            vector(op, 6, 4)
            vector(op, 8, 4)
    return sorted(x for x in bounds if 0 <= x <= len(data)), sorted(prefixes)


# ------------------------------------------------------------- byte level


def truncate(data: bytes, rng: random.Random) -> bytes:
    bounds, _ = structure(data)
    cut = rng.choice(bounds[:-1])
    return data[: max(0, cut + rng.choice((-1, 0, 1)))]


def bit_flips(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def offset_outside(data: bytes, rng: random.Random) -> bytes:
    """Point a random aligned uint32 (often an offset) past the end."""
    out = bytearray(data)
    pos = rng.randrange(0, max(4, len(out) // 4)) * 4
    pos = min(pos, len(out) - 4)
    struct.pack_into("<I", out, pos, len(data) + rng.randint(1, 1 << 30))
    return bytes(out)


def huge_length(data: bytes, rng: random.Random) -> bytes:
    _, prefixes = structure(data)
    out = bytearray(data)
    pos = rng.choice(prefixes)
    struct.pack_into("<I", out, pos, rng.choice((0x7FFFFFFF, 0xFFFFFFFF, 1 << 24, len(data))))
    return bytes(out)


def wrong_identifier(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    out[4:8] = rng.choice((b"TFL2", b"ONNX", b"\0\0\0\0", b"tfl3"))
    return bytes(out)


# ---------------------------------------------------------------- semantic


def _repack(model) -> bytes:
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=FILE_IDENTIFIER)
    return bytes(b.Output())


def _with_model(edit: Callable) -> Callable[[bytes, random.Random], bytes]:
    def mutate(data: bytes, rng: random.Random) -> bytes:
        m = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
        m = copy.deepcopy(m)
        edit(m, rng)
        return _repack(m)

    mutate.__name__ = edit.__name__
    return mutate


def _some_op(m, rng):
    sgs = [sg for sg in m.subgraphs if sg.operators]
    sg = rng.choice(sgs)
    return sg, rng.choice(sg.operators)


@_with_model
def negative_tensor_index(m, rng):
    sg, op = _some_op(m, rng)
    ins = np.array(op.inputs, np.int32)
    ins[rng.randrange(len(ins))] = rng.choice((-2, -5, -(1 << 30)))
    op.inputs = ins


@_with_model
def op_input_out_of_range(m, rng):
    sg, op = _some_op(m, rng)
    ins = np.array(op.inputs, np.int32)
    ins[rng.randrange(len(ins))] = len(sg.tensors) + rng.randint(0, 1000)
    op.inputs = ins


@_with_model
def opcode_index_out_of_range(m, rng):
    _, op = _some_op(m, rng)
    op.opcodeIndex = len(m.operatorCodes) + rng.randint(0, 5)


@_with_model
def buffer_index_out_of_range(m, rng):
    sg = rng.choice(m.subgraphs)
    rng.choice(sg.tensors).buffer = len(m.buffers) + rng.randint(0, 5)


@_with_model
def huge_shape(m, rng):
    sg = rng.choice(m.subgraphs)
    t = rng.choice(sg.tensors)
    t.shape = np.array([1 << 20, 1 << 20, 1 << 12][: max(1, len(t.shape) if t.shape is not None else 1)],
                       np.int32)


@_with_model
def negative_dimension(m, rng):
    sg = rng.choice(m.subgraphs)
    t = rng.choice(sg.tensors)
    t.shape = np.array([-3] + list(t.shape[1:] if t.shape is not None and len(t.shape) else []), np.int32)


@_with_model
def constant_size_mismatch(m, rng):
    full = [b for b in m.buffers if b.data is not None and len(b.data) > 4]
    if full:
        b = rng.choice(full)
        b.data = np.asarray(b.data)[: len(b.data) // 2].copy()


@_with_model
def buffer_outside_file(m, rng):
    full = [b for b in m.buffers if b.data is not None and len(b.data)]
    if full:
        b = rng.choice(full)
        b.offset, b.size, b.data = rng.choice(((1 << 40, 16), (8, 1 << 30), (16, len(b.data) + (1 << 20)))) + (None,)


@_with_model
def buffer_overlapping_tables(m, rng):
    """A buffer whose external bytes overlap the flatbuffer's own tables."""
    full = [b for b in m.buffers if b.data is not None and len(b.data)]
    if full:
        b = rng.choice(full)
        n = len(b.data)
        b.offset, b.size, b.data = 8, n, None


@_with_model
def self_calling_subgraph(m, rng):
    """Every WHILE/IF points at the subgraph it sits in: endless recursion."""
    for i, sg in enumerate(m.subgraphs):
        for op in sg.operators or []:
            o = op.builtinOptions
            for f in ("condSubgraphIndex", "bodySubgraphIndex", "thenSubgraphIndex", "elseSubgraphIndex"):
                if hasattr(o, f):
                    setattr(o, f, i)


@_with_model
def op_reads_its_own_output(m, rng):
    sg, op = _some_op(m, rng)
    if op.outputs is not None and len(op.outputs) and op.inputs is not None and len(op.inputs):
        ins = np.array(op.inputs, np.int32)
        ins[0] = op.outputs[0]
        op.inputs = ins


@_with_model
def signature_index_out_of_range(m, rng):
    if m.signatureDefs:
        sd = rng.choice(m.signatureDefs)
        (sd.inputs or sd.outputs)[0].tensorIndex = 1 << 20
    else:
        m.subgraphs[0].inputs = np.array([1 << 20], np.int32)


@_with_model
def schema_version(m, rng):
    m.version = rng.choice((0, 2, 4, 1 << 20))


BYTE_MUTATIONS = [truncate, bit_flips, offset_outside, huge_length, wrong_identifier]
SEMANTIC_MUTATIONS = [negative_tensor_index, op_input_out_of_range, opcode_index_out_of_range,
                      buffer_index_out_of_range, huge_shape, negative_dimension, constant_size_mismatch,
                      buffer_outside_file, buffer_overlapping_tables, self_calling_subgraph,
                      op_reads_its_own_output, signature_index_out_of_range, schema_version]
ALL_MUTATIONS = BYTE_MUTATIONS + SEMANTIC_MUTATIONS
