"""Read a TFLite flatbuffer into the mutable :mod:`graph`.

All access goes through the generated schema readers; weight buffers become
zero-copy numpy views of the input (an ``mmap`` when reading a file), so
reading a 2 GB model costs page-cache, not a second copy.

The tables there are many of (tensors, operators, buffers) are read as
columns with numpy (:mod:`flatbuf`): a 100,000-op model is a few dozen array
operations instead of millions of generated accessor calls. Options tables of
scalars (most ops') are decoded the same way, a column at a time; the few
others go through the object API here, so that a corrupt one is a
:class:`BadModelError` now and not an exception in a pass or the writer later.

Python's flatbuffers runtime has no verifier, so this module is the first line
of defence against hostile files. Every exception raised while walking the
tables (``IndexError``, ``struct.error``, ``ValueError`` from numpy views past
the end, ...) becomes a :class:`BadModelError`; every index is range-checked
when it is turned into an object reference; and the number of tables walked is
bounded by the file size, so that offsets shared to amplify a small file into
an enormous object graph fail fast instead of hanging. :mod:`validate` then
checks what the interpreter would otherwise trip over.
"""

from __future__ import annotations

import functools
import mmap
import os
import struct
from pathlib import Path
from typing import Union

import numpy as np

from .errors import BadModelError
from .flatbuf import Bytes, Tables, decode_scalar_tables, field, scalar_table, split_lists, table_at
from .graph import Buffer, Metadata, Model, OpCode, Operator, SignatureDef, Subgraph, Tensor
from .pagecache import Backing, backing_of
from .schema import FILE_IDENTIFIER, SCHEMA_VERSION, fb

_I32, _U32, _U64, _I8, _U8, _U16 = (np.dtype(d) for d in ("<i4", "<u4", "<u8", "i1", "u1", "<u2"))

Source = Union[str, os.PathLike, bytes, bytearray, memoryview]

_HEADER = 8  # root offset + file identifier


def load_bytes(source: Source) -> tuple[memoryview, str]:
    """Return the model bytes as a read-only memoryview and a label for messages.

    Paths are memory-mapped read-only: the input file is never opened for
    writing, and its pages are shared with the page cache.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return memoryview(source).cast("B"), "<bytes>"
    path = Path(os.fspath(source))
    label = str(path)
    try:
        if path.is_dir():
            raise BadModelError(f"{label}: is a directory, not a .tflite file")
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise BadModelError(f"{label}: file is empty")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise BadModelError(f"{label}: no such file") from None
    except PermissionError:
        raise BadModelError(f"{label}: permission denied") from None
    except OSError as e:
        raise BadModelError(f"{label}: cannot read ({e.strerror or e})") from None
    return memoryview(mm), label


def read_model(source: Source) -> Model:
    """Parse ``source`` (path or bytes) into a :class:`Model`.

    Raises :class:`BadModelError` with a one-line message on anything that is
    not a well-formed TFLite model.
    """
    buf, label = load_bytes(source)
    return parse(buf, label)


def parse(buf: memoryview, label: str = "<bytes>") -> Model:
    if len(buf) < _HEADER + 4:
        raise BadModelError(f"{label}: too small to be a TFLite model ({len(buf)} bytes)")
    if bytes(buf[4:8]) != FILE_IDENTIFIER:
        raise BadModelError(
            f"{label}: not a TFLite model (file identifier {bytes(buf[4:8])!r}, expected {FILE_IDENTIFIER!r})")
    try:
        return _Reader(buf, label).model()
    except BadModelError:
        raise
    except (IndexError, struct.error, ValueError) as e:
        # Reads past the end: what a cut-off download or copy looks like
        # (a flipped offset looks the same, so both are named).
        raise BadModelError(f"{label}: truncated or corrupt: the model refers to data past the end of the "
                            f"file ({len(buf)} bytes; {type(e).__name__}: {e})") from None
    except (TypeError, OverflowError, UnicodeDecodeError, AttributeError, KeyError, RecursionError,
            MemoryError) as e:
        raise BadModelError(f"{label}: corrupt or truncated flatbuffer ({type(e).__name__}: {e})") from None


@functools.lru_cache(maxsize=None)
def _options_class(union, kind: int) -> type | None:
    """The object-API class of options of union type ``kind`` (``fb.Conv2DOptionsT``)."""
    names = {v: k for k, v in vars(union).items() if isinstance(v, int) and not k.startswith("_")}
    return getattr(fb, f"{names.get(kind, '')}T", None)


def _text(raw: bytes | None) -> str | None:
    # surrogateescape keeps arbitrary bytes in names round-trippable.
    return None if raw is None else raw.decode("utf-8", "surrogateescape")


class _Reader:
    def __init__(self, buf: memoryview, label: str):
        self.buf = buf
        self.data = Bytes(buf)
        self.label = label
        self.mapping = buf.obj if isinstance(buf.obj, mmap.mmap) else None
        # Each table we walk costs one unit; a real file needs >= 4 bytes per
        # table (its offset), so more units than bytes means shared offsets.
        self.budget = len(buf) // 4 + 1024
        #: each subgraph's tensor -> buffer index column
        self.buffer_refs: list[np.ndarray] = []

    def bad(self, what: str) -> BadModelError:
        return BadModelError(f"{self.label}: {what}")

    def charge(self, n: int, what: str) -> None:
        if n < 0 or n > len(self.buf):
            raise self.bad(f"truncated or corrupt: {what}: {n} entries cannot fit in the file ({len(self.buf)} bytes)")
        self.budget -= n
        if self.budget < 0:
            raise self.bad(f"corrupt flatbuffer: {what} references more tables than the file can hold")

    def external_bytes(self, offset: int, size: int, what: str) -> np.ndarray:
        if offset + size > len(self.buf):
            raise self.bad(f"truncated or corrupt: {what} lies past the end of the file "
                           f"(offset {offset}, size {size}, file {len(self.buf)} bytes)")
        return np.frombuffer(self.buf, np.uint8, size, offset)

    # ------------------------------------------------------------------ model

    def model(self) -> Model:
        m = fb.Model.GetRootAs(self.buf, 0)
        if m.Version() != SCHEMA_VERSION:
            raise self.bad(f"unsupported TFLite schema version {m.Version()} (supported: {SCHEMA_VERSION})")

        self.charge(m.BuffersLength(), "buffers")
        buffers = self.buffers(m)
        if not buffers:
            buffers = [Buffer()]
        self.charge(m.OperatorCodesLength(), "operator codes")
        opcodes = [self.opcode(m.OperatorCodes(i)) for i in range(m.OperatorCodesLength())]
        n_sg = m.SubgraphsLength()
        if n_sg == 0:
            raise self.bad("model has no subgraphs")
        self.charge(n_sg, "subgraphs")
        subgraphs = [self.subgraph(m.Subgraphs(i), i, buffers, opcodes) for i in range(n_sg)]

        model = Model(
            version=m.Version(),
            opcodes=opcodes,
            subgraphs=subgraphs,
            description=_text(m.Description()),
            buffers=buffers,
            source_mapping=self.mapping,
        )
        if not m.MetadataBufferIsNone():
            idx = m.MetadataBufferAsNumpy()
            self.charge(len(idx), "metadata_buffer")
            model.metadata_buffer = [self.pick(buffers, int(i), "metadata_buffer") for i in idx]
        self.charge(m.MetadataLength(), "metadata")
        for i in range(m.MetadataLength()):
            md = m.Metadata(i)
            model.metadata.append(Metadata(_text(md.Name()) or "", self.pick(buffers, md.Buffer(), "metadata")))
        self.charge(m.SignatureDefsLength(), "signature defs")
        for i in range(m.SignatureDefsLength()):
            model.signature_defs.append(self.signature(m.SignatureDefs(i), subgraphs))
        if not m.ExternalBufferGroupsIsNone():
            self.charge(m.ExternalBufferGroupsLength(), "external buffer groups")
            model.external_buffer_groups = [fb.ExternalBufferGroupT.InitFromObj(m.ExternalBufferGroups(i))
                                            for i in range(m.ExternalBufferGroupsLength())]
        if not m.ExternalBuffersIsNone():
            self.charge(m.ExternalBuffersLength(), "external buffers")
            model.external_buffers = [fb.ExternalBufferT.InitFromObj(m.ExternalBuffers(i))
                                      for i in range(m.ExternalBuffersLength())]

        # Which buffers nothing refers to, from the tensors' buffer index
        # columns (not a walk over every tensor object)
        used = np.zeros(len(buffers), bool)
        for idx in self.buffer_refs:
            used[idx] = True
        named = set(model.metadata_buffer or ()) | {md.buffer for md in model.metadata}
        unused = (np.flatnonzero(~used[1:]) + 1).tolist()  # buffer 0 is the sentinel
        model.unreferenced_buffers = {buffers[i] for i in unused} - named
        return model

    def pick(self, items: list, index: int, what: str):
        if not 0 <= index < len(items):
            raise self.bad(f"{what} index {index} out of range (0..{len(items) - 1})")
        return items[index]

    def buffers(self, m) -> list[Buffer]:
        if m.BuffersIsNone():
            return []
        bt = Tables.vector(self.data, self.vector_pos(m, fb.Model, "Buffers"))
        data_pos = bt.targets(field(fb.Buffer, "Data"))
        sizes = np.zeros(len(bt), np.int64)
        inline = data_pos > 0
        if inline.any():
            sizes[inline] = self.data.u32(data_pos[inline])
        offsets = bt.scalars(field(fb.Buffer, "Offset"), _U64).astype(np.int64)
        ext_sizes = bt.scalars(field(fb.Buffer, "Size"), _U64).astype(np.int64)
        buffers = []
        u8, mapping, size = self.data.u8, self.mapping, len(self.buf)
        for i, (dp, n, off, ext) in enumerate(zip(data_pos.tolist(), sizes.tolist(), offsets.tolist(),
                                                 ext_sizes.tolist())):
            if off > 1:
                data = self.external_bytes(off, ext, f"buffer {i}")
                buffers.append(Buffer(data, True, backing_of(data, mapping)))
            elif dp == 0 or n == 0:
                buffers.append(Buffer())
            else:
                if dp + 4 + n > size:
                    raise self.bad(f"truncated or corrupt: buffer {i} ({n} bytes) reaches past the end of "
                                   f"the file ({size} bytes)")
                # positional arguments: a big model has a hundred thousand buffers
                buffers.append(Buffer(u8[dp + 4:dp + 4 + n], False,
                                      Backing(mapping, dp + 4, n) if mapping is not None else None))
        return buffers

    def vector_pos(self, obj, cls, accessor: str) -> int:
        """Where the vector field ``accessor`` of the generated object ``obj`` starts (its length)."""
        f = field(cls, accessor)
        return int(Tables(self.data, np.array([obj._tab.Pos])).targets(f)[0])

    def opcode(self, oc) -> OpCode:
        return OpCode(
            builtin_code=oc.BuiltinCode(),
            deprecated_builtin_code=oc.DeprecatedBuiltinCode(),
            custom_code=_text(oc.CustomCode()),
            version=oc.Version(),
        )

    # -------------------------------------------------------------- subgraph

    def subgraph(self, s, index: int, buffers: list[Buffer], opcodes: list[OpCode]) -> Subgraph:
        where = f"subgraph {index}"
        n_t = s.TensorsLength()
        self.charge(n_t, f"{where} tensors")
        tensors = self.tensors(s, buffers, where) if n_t else []
        lookup = np.array(tensors + [None], dtype=object)  # index -1 (an omitted input) is the None
        referenced = np.zeros(n_t + 1, bool)  # by an op or as a graph input/output (the last: index -1)

        def refs(values: np.ndarray, what: str, optional: bool) -> np.ndarray:
            bad = (values < (-1 if optional else 0)) | (values >= n_t)
            if bad.any():
                i = int(values[np.argmax(bad)])
                raise self.bad(f"{where}: {what} refers to tensor {i}, but there are {n_t}")
            referenced[values] = True
            return lookup[values]

        def ref_lists(tables: Tables, accessor: str, what: str, optional: bool) -> list[list | None]:
            values, starts, lengths = tables.vectors(field(fb.Operator, accessor), _I32)
            self.charge(len(values), what)
            objs = refs(values.astype(np.int64), what, optional).tolist()
            return [None if n < 0 else objs[a:a + n] for a, n in zip(starts.tolist(), lengths.tolist())]

        sg = Subgraph(tensors=tensors, name=_text(s.Name()), debug_metadata_index=s.DebugMetadataIndex())
        for attr, accessor in (("inputs", "Inputs"), ("outputs", "Outputs")):
            values = s.InputsAsNumpy() if attr == "inputs" else s.OutputsAsNumpy()
            if isinstance(values, int):  # the field is absent
                continue
            self.charge(len(values), attr[:-1])
            setattr(sg, attr, refs(np.asarray(values, np.int64), attr[:-1], False).tolist())
        n_op = s.OperatorsLength()
        self.charge(n_op, f"{where} operators")
        if n_op:
            sg.operators = self.operators(s, where, opcodes, ref_lists)
        for i in np.flatnonzero(~referenced[:n_t]).tolist():  # the rest keep False, as made
            tensors[i].unreferenced_in_source = True
        return sg

    def operators(self, s, where: str, opcodes: list[OpCode], ref_lists) -> list[Operator]:
        F = lambda name: field(fb.Operator, name)  # noqa: E731
        ot = Tables.vector(self.data, self.vector_pos(s, fb.SubGraph, "Operators"))
        codes = ot.scalars(F("OpcodeIndex"), _U32).astype(np.int64)
        if len(codes) and (codes.max() >= len(opcodes)):
            i = int(np.argmax(codes >= len(opcodes)))
            raise self.bad(f"{where} operator {i} opcode index {int(codes[i])} out of range (0..{len(opcodes) - 1})")
        inputs = ref_lists(ot, "Inputs", "input", True)
        outputs = ref_lists(ot, "Outputs", "output", True)
        intermediates = ref_lists(ot, "Intermediates", "intermediate", True)
        opt_type = ot.scalars(F("BuiltinOptionsType"), _U8)
        options = self.options(ot.targets(F("BuiltinOptions")), opt_type, fb.BuiltinOptions, fb.BuiltinOptionsCreator)
        opt2_type = ot.scalars(F("BuiltinOptions2Type"), _U8)
        options2 = self.options(ot.targets(F("BuiltinOptions2")), opt2_type, fb.BuiltinOptions2,
                                fb.BuiltinOptions2Creator)
        opt_type, opt2_type = opt_type.tolist(), opt2_type.tolist()
        custom_vec = ot.targets(F("CustomOptions"))
        custom_fmt = ot.scalars(F("CustomOptionsFormat"), _I8).tolist()
        mvi = ot.vectors(F("MutatingVariableInputs"), _U8)
        mvi_lists = split_lists(*mvi)
        large_off = ot.scalars(F("LargeCustomOptionsOffset"), _U64).astype(np.int64).tolist()
        large_size = ot.scalars(F("LargeCustomOptionsSize"), _U64).astype(np.int64).tolist()
        debug = ot.scalars(F("DebugMetadataIndex"), _I32).tolist()
        ops = []
        large = [i for i, off in enumerate(large_off) if off > 1]
        # Positional arguments in the constructor's order, lists not arrays
        # indexed per op: a big model has a hundred thousand ops.
        for i, (code, ins, outs, custom_at, mvi_i) in enumerate(zip(codes.tolist(), inputs, outputs,
                                                                   custom_vec.tolist(), mvi_lists)):
            ops.append(Operator(opcodes[code], ins if ins is not None else [], outs if outs is not None else [],
                                options[i], opt_type[i], self.data.vector_at(custom_at, _U8) if custom_at else None,
                                custom_fmt[i], None if mvi_i is None else [bool(x) for x in mvi_i], intermediates[i],
                                None, options2[i], opt2_type[i], debug[i]))
        for i in large:
            ops[i].large_custom_options = self.external_bytes(large_off[i], large_size[i],
                                                              f"{where} operator {i} custom options")
        return ops

    def options(self, pos: np.ndarray, types: np.ndarray, union, creator) -> list:
        """Each operator's options table: decoded in bulk where the table
        holds scalars only (all but a few kinds), by the object API otherwise."""
        out: list = [None] * len(pos)
        present = pos > 0
        for kind in np.unique(types[present]).tolist():
            rows = np.flatnonzero(present & (types == kind))
            cls = _options_class(union, kind)
            if cls is not None and scalar_table(cls) is not None:
                for i, obj in zip(rows.tolist(), decode_scalar_tables(self.data, pos[rows], cls)):
                    out[i] = obj
            else:
                for i in rows.tolist():
                    out[i] = creator(kind, table_at(self.buf, pos[i]))
        return out

    def tensors(self, s, buffers: list[Buffer], where: str) -> list[Tensor]:
        F = lambda name: field(fb.Tensor, name)  # noqa: E731
        tt = Tables.vector(self.data, self.vector_pos(s, fb.SubGraph, "Tensors"))
        shapes = split_lists(*tt.vectors(F("Shape"), _I32))
        signatures = split_lists(*tt.vectors(F("ShapeSignature"), _I32))
        self.charge(sum(len(x) for x in shapes if x) + sum(len(x) for x in signatures if x), f"{where} shapes")
        types = tt.scalars(F("Type"), _I8).tolist()
        buf_idx = tt.scalars(F("Buffer"), _U32).astype(np.int64)
        if len(buf_idx) and buf_idx.max() >= len(buffers):
            i = int(np.argmax(buf_idx >= len(buffers)))
            raise self.bad(f"{where} tensor {i} buffer index {int(buf_idx[i])} out of range "
                           f"(0..{len(buffers) - 1})")
        self.buffer_refs.append(buf_idx)
        names = tt.strings(F("Name"))
        is_var = tt.scalars(F("IsVariable"), _U8).astype(bool).tolist()
        has_rank = tt.scalars(F("HasRank"), _U8).astype(bool).tolist()
        ext = tt.scalars(F("ExternalBuffer"), _U64).astype(np.int64).tolist()
        quant = tt.targets(F("Quantization"))
        sparse = tt.targets(F("Sparsity"))
        variants = tt.targets(F("VariantTensors"))
        # TF's converter gives every tensor a quantization table, most of them
        # empty: those need no object-API read (a third of a split MobileNetV2's load)
        empty_quant = _empty_tables(self.data, quant)
        is_nested = (sparse != 0) | (variants != 0) | ((quant != 0) & ~empty_quant)
        nested = np.flatnonzero(is_nested).tolist()
        empty = np.flatnonzero((quant != 0) & empty_quant & ~is_nested).tolist()
        # Positional arguments, in the dataclass's field order (keywords cost
        # three times as much, and a big model has hundreds of thousands of tensors).
        out = [Tensor(_text(names[i]) or "", shapes[i] if shapes[i] is not None else [], types[i], buffers[b], None,
                      is_var[i], None, signatures[i], has_rank[i], None, ext[i], False, i)
               for i, b in enumerate(buf_idx.tolist())]
        for i in nested:  # nested tables: object API
            self.nested(out[i], int(tt.pos[i]))
        for i in empty:
            out[i].quantization = fb.QuantizationParametersT()
        return out

    def nested(self, t: Tensor, pos: int) -> None:
        """Quantization, sparsity and variant tables of a tensor, as the
        schema's own objects (kept whole, never interpreted beyond reading)."""
        ft = fb.Tensor()
        ft.Init(self.buf, pos)
        if ft.Quantization() is not None:
            t.quantization = fb.QuantizationParametersT.InitFromObj(ft.Quantization())
        if ft.Sparsity() is not None:
            t.sparsity = fb.SparsityParametersT.InitFromObj(ft.Sparsity())
        if not ft.VariantTensorsIsNone():
            self.charge(ft.VariantTensorsLength(), "variant tensors")
            t.variant_tensors = [fb.VariantSubTypeT.InitFromObj(ft.VariantTensors(j))
                                 for j in range(ft.VariantTensorsLength())]

    def signature(self, sd, subgraphs: list[Subgraph]) -> SignatureDef:
        sg = self.pick(subgraphs, sd.SubgraphIndex(), "signature def subgraph")
        key = _text(sd.SignatureKey()) or ""

        def maps(n: int, get, what: str) -> list[tuple[str, Tensor]]:
            self.charge(n, what)
            out = []
            for i in range(n):
                tm = get(i)
                out.append((_text(tm.Name()) or "", self.pick(sg.tensors, tm.TensorIndex(),
                                                                f"signature {key!r} {what}")))
            return out

        return SignatureDef(key=key, subgraph=sg,
                            inputs=maps(sd.InputsLength(), sd.Inputs, "input"),
                            outputs=maps(sd.OutputsLength(), sd.Outputs, "output"))


def _empty_tables(data, pos: np.ndarray) -> np.ndarray:
    """For each table at ``pos`` (0: none), whether it sets no field at all
    (every vtable entry 0, whatever the schema version knows)."""
    empty = np.zeros(len(pos), bool)
    at = np.flatnonzero(pos)
    if not len(at):
        return empty
    tables = Tables(data, pos[at])
    fields = (tables.vt_size - 4) // 2
    none_set = np.ones(len(at), bool)
    for k in range(int(fields.max()) if len(fields) else 0):
        has = k < fields
        entry = np.zeros(len(at), np.int64)
        entry[has] = data.gather(tables.vt[has] + 4 + 2 * k, _U16)
        none_set &= entry == 0
    empty[at] = none_set
    return empty
