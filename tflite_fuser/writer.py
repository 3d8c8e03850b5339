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

from .graph import Buffer, Model, Operator, Subgraph, Tensor
from .schema import FILE_IDENTIFIER, fb

ALIGN = 16
#: Above this many bytes of constants, use the external-buffer form.
EXTERNAL_THRESHOLD = 2**31 - 2**26
_PREFIX = 4  # a flatbuffer vector starts with its uint32 length


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
        pad = (-(pos + _PREFIX)) % ALIGN
        pos += pad
        refs[b] = -pos  # builder offset of a position ``pos`` bytes past the tables' end
        tail += [bytes(pad), struct.pack("<I", b.nbytes), (b.data, b)]
        pos += _PREFIX + b.nbytes
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


class _Writer:
    def __init__(self, b: flatbuffers.Builder, model: Model, inline: dict[Buffer, int],
                 external: dict[Buffer, tuple[int, int]] | None):
        self.b = b
        self.m = model
        self.inline = inline
        self.external = external
        self.buffer_index = {buf: i for i, buf in enumerate(model.buffers)}
        self.opcode_index = {oc: i for i, oc in enumerate(model.opcodes)}

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
        buffers = [self.buffer(buf) for buf in m.buffers]
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
        v_buf = self.offsets(buffers)
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

    def buffer(self, buf: Buffer) -> int:
        b = self.b
        fb.BufferStart(b)
        if self.external is not None and buf.nbytes:
            offset, size = self.external[buf]
            fb.BufferAddOffset(b, offset)
            fb.BufferAddSize(b, size)
        elif buf.nbytes:
            # A negative builder offset points past the end of the tables,
            # into the weight tail (never 0: the first vector is preceded by
            # padding to 16).
            fb.BufferAddData(b, self.inline[buf])
        return fb.BufferEnd(b)

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

        def idx(ts) -> list[int]:
            return [-1 if t is None else t_index[t] for t in ts]

        tensors = [self.tensor(t) for t in sg.tensors]
        ops = [self.operator(op, idx) for op in sg.operators]
        name = self.string(sg.name)
        v_t = self.offsets(tensors)
        v_in = self.ints(idx(sg.inputs))
        v_out = self.ints(idx(sg.outputs))
        v_ops = self.offsets(ops)
        fb.SubGraphStart(b)
        fb.SubGraphAddTensors(b, v_t)
        fb.SubGraphAddInputs(b, v_in)
        fb.SubGraphAddOutputs(b, v_out)
        fb.SubGraphAddOperators(b, v_ops)
        if name is not None:
            fb.SubGraphAddName(b, name)
        fb.SubGraphAddDebugMetadataIndex(b, sg.debug_metadata_index)
        return fb.SubGraphEnd(b)

    def tensor(self, t: Tensor) -> int:
        b = self.b
        shape = self.ints(t.shape)
        name = self.string(t.name)
        quant = t.quantization.Pack(b) if t.quantization is not None else None
        sparsity = t.sparsity.Pack(b) if t.sparsity is not None else None
        sig = self.ints(t.shape_signature) if t.shape_signature is not None else None
        variants = None
        if t.variant_tensors is not None:
            variants = self.offsets([v.Pack(b) for v in t.variant_tensors])
        fb.TensorStart(b)
        fb.TensorAddShape(b, shape)
        fb.TensorAddType(b, t.dtype)
        fb.TensorAddBuffer(b, self.buffer_index[t.buffer] if t.buffer is not None else 0)
        fb.TensorAddName(b, name)
        if quant is not None:
            fb.TensorAddQuantization(b, quant)
        fb.TensorAddIsVariable(b, t.is_variable)
        if sparsity is not None:
            fb.TensorAddSparsity(b, sparsity)
        if sig is not None:
            fb.TensorAddShapeSignature(b, sig)
        fb.TensorAddHasRank(b, t.has_rank)
        if variants is not None:
            fb.TensorAddVariantTensors(b, variants)
        fb.TensorAddExternalBuffer(b, t.external_buffer)
        return fb.TensorEnd(b)

    def operator(self, op: Operator, idx) -> int:
        b = self.b
        v_in = self.ints(idx(op.inputs))
        v_out = self.ints(idx(op.outputs))
        opts = op.options.Pack(b) if op.options is not None else None
        opts2 = op.options2.Pack(b) if op.options2 is not None else None
        # Custom options the source kept after the flatbuffer (>2 GB models)
        # go back inline: the runtime reads either form, and the tables of an
        # external-buffer model stay far below the 2 GB limit.
        raw = op.custom_options if op.custom_options is not None else op.large_custom_options
        custom = self.b.CreateNumpyVector(np.asarray(raw, np.uint8)) if raw is not None else None
        mut = self.b.CreateNumpyVector(np.asarray(op.mutating_variable_inputs, np.bool_)) \
            if op.mutating_variable_inputs is not None else None
        inter = self.ints(idx(op.intermediates)) if op.intermediates is not None else None
        fb.OperatorStart(b)
        fb.OperatorAddOpcodeIndex(b, self.opcode_index[op.opcode])
        fb.OperatorAddInputs(b, v_in)
        fb.OperatorAddOutputs(b, v_out)
        if opts is not None:
            fb.OperatorAddBuiltinOptionsType(b, op.options_type)
            fb.OperatorAddBuiltinOptions(b, opts)
        if custom is not None:
            fb.OperatorAddCustomOptions(b, custom)
        fb.OperatorAddCustomOptionsFormat(b, op.custom_options_format)
        if mut is not None:
            fb.OperatorAddMutatingVariableInputs(b, mut)
        if inter is not None:
            fb.OperatorAddIntermediates(b, inter)
        if opts2 is not None:
            fb.OperatorAddBuiltinOptions2Type(b, op.options2_type)
            fb.OperatorAddBuiltinOptions2(b, opts2)
        fb.OperatorAddDebugMetadataIndex(b, op.debug_metadata_index)
        return fb.OperatorEnd(b)

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
