"""Write the mutable :mod:`graph` back to a TFLite flatbuffer.

Indices are assigned here, once: tensors by their position in each subgraph's
list, buffers by their position in the model's list (the sentinel first), so
every reference a pass rewired - including signature defs - comes out
remapped. Nested tables we never interpret are packed by the schema's own
object API.

Weights never pass through the flatbuffers builder. The file is laid out as
``[tables | weight vectors]``: the builder makes only the tables (small), and
each ``Buffer.data`` field is a forward offset into the tail that follows,
where every weight vector starts on a 16-byte boundary (XNNPACK and the
TFLite runtime map weights without copying when they are aligned). The tail
is streamed from the numpy views straight to the output file, so writing a
1 GB model needs no second gigabyte of memory.

Models whose constants do not fit under flatbuffers' 2 GB limit - or that were
stored that way - keep their buffers after the flatbuffer with absolute
``Buffer.offset`` / ``size``, the form TensorFlow's converter uses for large
models.
"""

from __future__ import annotations

import struct

import flatbuffers
import numpy as np

from .flatbuf import (OFFSET, Layout, scalar_table, write_offset_vector, write_strings, write_tables, write_vectors,
                      write_word_vectors)
from .graph import Buffer, Model, Operator, Subgraph, Tensor
from .schema import FILE_IDENTIFIER, fb

#: the tables written in bulk: each field by the generated reader's name, and
#: how it is stored (slots are read off the generated code)
BUFFER = Layout.of(fb.Buffer, Data=OFFSET, Offset="<u8", Size="<u8")
TENSOR = Layout.of(fb.Tensor, Shape=OFFSET, Type="i1", Buffer="<u4", Name=OFFSET, Quantization=OFFSET,
                   IsVariable="u1", Sparsity=OFFSET, ShapeSignature=OFFSET, HasRank="u1", VariantTensors=OFFSET,
                   ExternalBuffer="<u8")
OPERATOR = Layout.of(fb.Operator, OpcodeIndex="<u4", Inputs=OFFSET, Outputs=OFFSET, BuiltinOptionsType="u1",
                     BuiltinOptions=OFFSET, CustomOptions=OFFSET, CustomOptionsFormat="i1",
                     MutatingVariableInputs=OFFSET, Intermediates=OFFSET, BuiltinOptions2Type="u1",
                     BuiltinOptions2=OFFSET, DebugMetadataIndex="<i4")

ALIGN = 16
#: Above this many bytes of constants, use the external-buffer form.
EXTERNAL_THRESHOLD = 2**31 - 2**26
_PREFIX = 4  # a flatbuffer vector starts with its uint32 length
_LENGTH = struct.Struct("<I").pack
_ZEROS = [bytes(n) for n in range(ALIGN)]


def _enc(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


class Chunks:
    """The finished model as a list of byte chunks, written without joining them
    (joining would copy every weight a second time). A chunk that is a
    buffer's bytes carries the buffer, whose file-backed pages are released
    once written (see :mod:`pagecache`)."""

    def __init__(self, parts: list):
        self.parts = [p if isinstance(p, tuple) else (p, None) for p in parts]

    @property
    def nbytes(self) -> int:
        return sum(memoryview(p).nbytes for p, _ in self.parts)

    def tobytes(self) -> bytes:
        return b"".join(memoryview(p).cast("B") for p, _ in self.parts)

    def write_to(self, f) -> None:
        for p, buf in self.parts:
            f.write(memoryview(p).cast("B"))
            if buf is not None:
                buf.release()


def serialize(model: Model, external: bool | None = None) -> Chunks:
    """Serialise ``model``; ``external=None`` keeps the source's form and
    switches to external buffers only when inline ones cannot fit."""
    model.prune()
    data = [b for b in model.buffers if b.nbytes]
    if external is None:
        external = sum(b.nbytes for b in data) > EXTERNAL_THRESHOLD or any(b.external for b in data)
    return _serialize_external(model, data) if external else _serialize_inline(model, data)


def _serialize_inline(model: Model, data: list[Buffer]) -> Chunks:
    # Tail layout: [pad][len][bytes] per buffer, bytes 16-aligned in the file
    # (the tables in front are padded to a multiple of 16, see _build).
    refs, tail, pos = {}, [], 0
    for b in data:
        n = b.nbytes
        pad = (-(pos + _PREFIX)) % ALIGN
        pos += pad
        refs[b] = -pos  # builder offset of a position ``pos`` bytes past the tables' end
        tail += [_ZEROS[pad], _LENGTH(n), (b.data, b)]
        pos += _PREFIX + n
    return Chunks([_build(model, inline=refs)] + tail)


def _serialize_external(model: Model, data: list[Buffer]) -> Chunks:
    # Build once to learn the tables' size (offset values never change it:
    # every one is a non-default uint64), then again with the real offsets.
    size = len(_build(model, external={b: (1 << 40, b.nbytes) for b in data}))
    offsets, pos = {}, size
    for b in data:
        pos += (-pos) % ALIGN
        offsets[b] = (pos, b.nbytes)
        pos += b.nbytes
    head = _build(model, external=offsets)
    if len(head) != size:  # pragma: no cover - would be a flatbuffers change
        raise RuntimeError("flatbuffer size changed between the two external-buffer passes")
    parts: list = [head]
    end = size
    for b in data:
        start = offsets[b][0]
        parts += [bytes(start - end), (b.data, b)]
        end = start + b.nbytes
    return Chunks(parts)


def write_model(model: Model, external: bool | None = None) -> bytes:
    """Serialise ``model`` to one ``bytes`` object (convenient for small models)."""
    return serialize(model, external).tobytes()


def _build(model: Model, inline: dict[Buffer, int] | None = None,
           external: dict[Buffer, tuple[int, int]] | None = None) -> memoryview:
    b = flatbuffers.Builder(min(65536 + 64 * model.num_tensors() + 128 * model.num_operators(),
                                flatbuffers.Builder.MAX_BUFFER_SIZE))
    b.Prep(ALIGN, 0)  # minalign 16: Finish pads the tables to a multiple of 16
    root = _Writer(b, model, inline or {}, external).model()
    b.Finish(root, file_identifier=FILE_IDENTIFIER)
    return memoryview(b.Bytes)[b.Head():]


def _is_empty_quantization(q) -> bool:
    """An object-API quantization table with no field set: it packs to a
    table without fields. (Every field is asked, by the object's own
    attributes, so a field a newer schema adds counts too.)"""
    return all(v is None or (type(v) is int and v == 0) for v in q.__dict__.values())


class _Writer:
    def __init__(self, b: flatbuffers.Builder, model: Model, inline: dict[Buffer, int],
                 external: dict[Buffer, tuple[int, int]] | None):
        self.b = b
        self.m = model
        self.inline = inline
        self.external = external
        self.buffer_index = {buf: i for i, buf in enumerate(model.buffers)}
        self.opcode_index = {oc: i for i, oc in enumerate(model.opcodes)}
        #: options tables and int vectors already written, by content
        self.shared: dict = {}
        self.int_vectors: dict = {}
        self.vtables: dict[bytes, int] = {}
        self.empty_quantization: int | None = None

    # --------------------------------------------------------------- helpers

    def string(self, s: str | None):
        return None if s is None else self.b.CreateString(_enc(s))

    def ints(self, values, dtype=np.int32):
        return self.b.CreateNumpyVector(np.asarray(values, dtype=dtype))

    def offsets(self, offs: list[int]):
        self.b.StartVector(4, len(offs), 4)
        for o in reversed(offs):
            self.b.PrependUOffsetTRelative(o)
        return self.b.EndVector()

    # ----------------------------------------------------------------- model

    def model(self) -> int:
        m, b = self.m, self.b
        v_buf = self.buffers(m.buffers)
        opcodes = [self.opcode(oc) for oc in m.opcodes]
        subgraphs = [self.subgraph(sg) for sg in m.subgraphs]
        desc = self.string(m.description)
        metadata = [self.metadata(md.name, md.buffer) for md in m.metadata]
        sg_index = {sg: i for i, sg in enumerate(m.subgraphs)}
        sigs = [self.signature(sd, sg_index) for sd in m.signature_defs]
        groups = [g.Pack(b) for g in m.external_buffer_groups] if m.external_buffer_groups is not None else None
        ext = [e.Pack(b) for e in m.external_buffers] if m.external_buffers is not None else None

        v_op = self.offsets(opcodes)
        v_sg = self.offsets(subgraphs)
        v_mdb = self.ints([self.buffer_index[x] for x in m.metadata_buffer]) if m.metadata_buffer is not None else None
        v_md = self.offsets(metadata)
        v_sig = self.offsets(sigs)
        v_groups = self.offsets(groups) if groups is not None else None
        v_ext = self.offsets(ext) if ext is not None else None

        fb.ModelStart(b)
        fb.ModelAddVersion(b, m.version)
        fb.ModelAddOperatorCodes(b, v_op)
        fb.ModelAddSubgraphs(b, v_sg)
        if desc is not None:
            fb.ModelAddDescription(b, desc)
        fb.ModelAddBuffers(b, v_buf)
        if v_mdb is not None:
            fb.ModelAddMetadataBuffer(b, v_mdb)
        fb.ModelAddMetadata(b, v_md)
        fb.ModelAddSignatureDefs(b, v_sig)
        if v_groups is not None:
            fb.ModelAddExternalBufferGroups(b, v_groups)
        if v_ext is not None:
            fb.ModelAddExternalBuffers(b, v_ext)
        return fb.ModelEnd(b)

    def buffers(self, buffers: list[Buffer]) -> int:
        """The buffer tables, all at once, and the vector of them."""
        n = len(buffers)
        sizes = np.array([buf.nbytes for buf in buffers], np.int64)
        if self.external is not None:
            where = [self.external.get(buf, (0, 0)) for buf in buffers]
            offsets = np.array([w[0] for w in where], np.int64)
            values = {"offset": offsets, "size": np.array([w[1] for w in where], np.int64)}
            present = {"offset": sizes > 0, "size": sizes > 0}
        else:
            # A negative builder offset points past the end of the tables, into
            # the weight tail (never 0: the first vector is preceded by padding).
            values = {"data": np.array([self.inline.get(buf, 0) for buf in buffers], np.int64)}
            present = {"data": sizes > 0}
        return write_offset_vector(self.b, write_tables(self.b, BUFFER, values, present, self.vtables) if n else [])

    def opcode(self, oc) -> int:
        b = self.b
        custom = self.string(oc.custom_code)
        fb.OperatorCodeStart(b)
        fb.OperatorCodeAddDeprecatedBuiltinCode(b, oc.deprecated_builtin_code)
        if custom is not None:
            fb.OperatorCodeAddCustomCode(b, custom)
        fb.OperatorCodeAddVersion(b, oc.version)
        fb.OperatorCodeAddBuiltinCode(b, oc.builtin_code)
        return fb.OperatorCodeEnd(b)

    def metadata(self, name: str, buf: Buffer) -> int:
        b = self.b
        s = self.string(name)
        fb.MetadataStart(b)
        fb.MetadataAddName(b, s)
        fb.MetadataAddBuffer(b, self.buffer_index[buf])
        return fb.MetadataEnd(b)

    # -------------------------------------------------------------- subgraph

    def subgraph(self, sg: Subgraph) -> int:
        b = self.b
        t_index = {t: i for i, t in enumerate(sg.tensors)}
        t_index[None] = -1

        v_t = write_offset_vector(b, self.tensors(sg.tensors))
        v_ops = write_offset_vector(b, self.operators(sg.operators, t_index))
        name = self.string(sg.name)
        v_in = self.ints([t_index[t] for t in sg.inputs])
        v_out = self.ints([t_index[t] for t in sg.outputs])
        fb.SubGraphStart(b)
        fb.SubGraphAddTensors(b, v_t)
        fb.SubGraphAddInputs(b, v_in)
        fb.SubGraphAddOutputs(b, v_out)
        fb.SubGraphAddOperators(b, v_ops)
        if name is not None:
            fb.SubGraphAddName(b, name)
        fb.SubGraphAddDebugMetadataIndex(b, sg.debug_metadata_index)
        return fb.SubGraphEnd(b)

    def tensors(self, tensors: list[Tensor]) -> np.ndarray:
        """Every tensor table of a subgraph in one block (children first)."""
        b = self.b
        if not tensors:
            return np.zeros(0, np.int64)
        names = write_strings(b, [_enc(t.name) for t in tensors])
        shapes = self.shared_int_vectors([t.shape for t in tensors])
        sigs = self.shared_int_vectors([t.shape_signature for t in tensors])
        # Nested tables we never interpret: packed by the schema's object API.
        quant = np.array([self.quantization_table(t.quantization) for t in tensors], np.int64)
        sparsity = np.array([t.sparsity.Pack(b) if t.sparsity is not None else 0 for t in tensors], np.int64)
        variants = np.array([self.offsets([v.Pack(b) for v in t.variant_tensors])
                             if t.variant_tensors is not None else 0 for t in tensors], np.int64)
        values = {
            "shape": shapes, "name": names, "quantization": quant, "sparsity": sparsity,
            "shape_signature": sigs, "variant_tensors": variants,
            "type": np.array([t.dtype for t in tensors], np.int64),
            "buffer": np.array([self.buffer_index[t.buffer] if t.buffer is not None else 0 for t in tensors],
                               np.int64),
            "is_variable": np.array([t.is_variable for t in tensors], np.int64),
            "has_rank": np.array([t.has_rank for t in tensors], np.int64),
            "external_buffer": np.array([t.external_buffer for t in tensors], np.int64),
        }
        present = {k: values[k] != 0 for k in ("quantization", "sparsity", "shape_signature", "variant_tensors",
                                                "type", "buffer", "is_variable", "has_rank", "external_buffer")}
        return write_tables(b, TENSOR, values, present, self.vtables)

    def operators(self, ops: list[Operator], t_index: dict) -> np.ndarray:
        """Every operator table of a subgraph in one block (children first)."""
        b = self.b
        if not ops:
            return np.zeros(0, np.int64)
        # end to end, with their lengths: no list per op (write_word_vectors)
        ins = write_word_vectors(b, [t_index[t] for op in ops for t in op.inputs],
                                 [len(op.inputs) for op in ops], np.int32)
        outs = write_word_vectors(b, [t_index[t] for op in ops for t in op.outputs],
                                  [len(op.outputs) for op in ops], np.int32)
        inter = self.optional_vectors([None if op.intermediates is None else [t_index[t] for t in op.intermediates]
                                       for op in ops], np.int32)
        # Custom options the source kept after the flatbuffer (>2 GB models)
        # go back inline: the runtime reads either form, and the tables of an
        # external-buffer model stay far below the 2 GB limit.
        custom = self.optional_vectors([op.custom_options if op.custom_options is not None
                                        else op.large_custom_options for op in ops], np.uint8)
        mvi = self.optional_vectors([op.mutating_variable_inputs for op in ops], np.bool_)
        opts = np.array([self.options_table(op.options) for op in ops], np.int64)
        opts2 = np.array([self.options_table(op.options2) for op in ops], np.int64)
        values = {
            "opcode_index": np.array([self.opcode_index[op.opcode] for op in ops], np.int64),
            "inputs": ins, "outputs": outs, "intermediates": inter, "custom_options": custom,
            "mutating_variable_inputs": mvi, "builtin_options": opts, "builtin_options2": opts2,
            "builtin_options_type": np.array([op.options_type for op in ops], np.int64) * (opts != 0),
            "builtin_options2_type": np.array([op.options2_type for op in ops], np.int64) * (opts2 != 0),
            "custom_options_format": np.array([op.custom_options_format for op in ops], np.int64),
            "debug_metadata_index": np.array([op.debug_metadata_index for op in ops], np.int64),
        }
        present = {k: values[k] != 0 for k in ("opcode_index", "intermediates", "custom_options",
                                                "mutating_variable_inputs", "builtin_options", "builtin_options2",
                                                "builtin_options_type", "builtin_options2_type",
                                                "custom_options_format")}
        present["debug_metadata_index"] = values["debug_metadata_index"] != -1
        return write_tables(b, OPERATOR, values, present, self.vtables)

    def quantization_table(self, q) -> int:
        """The builder offset of a tensor's quantization table (0: none). TF's
        converter gives every tensor one, most of them empty: the empty table
        is written once and shared (5 us a tensor, a second on a
        200,000-tensor model); others are packed per tensor."""
        if q is None:
            return 0
        if _is_empty_quantization(q):
            if self.empty_quantization is None:
                self.empty_quantization = q.Pack(self.b)
            return self.empty_quantization
        return q.Pack(self.b)

    def options_table(self, opts) -> int:
        """The builder offset of an options table (0: none). Tables of
        scalars are written once per distinct content and shared by every op
        that has it (a network's convs mostly share a handful); others are
        packed per op by the object API."""
        if opts is None:
            return 0
        if scalar_table(type(opts)) is None:
            return opts.Pack(self.b)
        key = (type(opts), tuple(opts.__dict__.values()))
        off = self.shared.get(key)
        if off is None:
            off = self.shared[key] = opts.Pack(self.b)
        return off

    def shared_int_vectors(self, lists: list) -> np.ndarray:
        """int32 vectors (None: absent -> 0), each distinct one written once."""
        keys = [None if v is None else tuple(v) for v in lists]
        distinct = [k for k in dict.fromkeys(keys) if k is not None and k not in self.int_vectors]
        if distinct:
            offsets = write_word_vectors(self.b, [x for k in distinct for x in k], [len(k) for k in distinct], np.int32)
            self.int_vectors.update(zip(distinct, offsets.tolist()))
        return np.array([0 if k is None else self.int_vectors[k] for k in keys], np.int64)

    def optional_vectors(self, lists: list, dtype) -> np.ndarray:
        """A vector per entry that is not None, written in one block; 0 for None."""
        out = np.zeros(len(lists), np.int64)
        rows = [i for i, v in enumerate(lists) if v is not None]
        if rows:
            out[rows] = write_vectors(self.b, [np.asarray(lists[i], dtype) for i in rows], dtype)
        return out

    def signature(self, sd, sg_index) -> int:
        b = self.b
        t_index = {t: i for i, t in enumerate(sd.subgraph.tensors)}

        def maps(items) -> int:
            offs = []
            for name, t in items:
                s = self.string(name)
                fb.TensorMapStart(b)
                fb.TensorMapAddName(b, s)
                fb.TensorMapAddTensorIndex(b, t_index[t])
                offs.append(fb.TensorMapEnd(b))
            return self.offsets(offs)

        v_in = maps(sd.inputs)
        v_out = maps(sd.outputs)
        key = self.string(sd.key)
        fb.SignatureDefStart(b)
        fb.SignatureDefAddInputs(b, v_in)
        fb.SignatureDefAddOutputs(b, v_out)
        fb.SignatureDefAddSignatureKey(b, key)
        fb.SignatureDefAddSubgraphIndex(b, sg_index[sd.subgraph])
        return fb.SignatureDefEnd(b)
