"""Read a TFLite flatbuffer into the mutable :mod:`graph`.

All access goes through the generated schema readers; weight buffers become
zero-copy numpy views of the input (an ``mmap`` when reading a file), so
reading a 2 GB model costs page-cache, not a second copy.

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

import mmap
import os
import struct
from pathlib import Path
from typing import Union

import numpy as np

from .errors import BadModelError
from .graph import Buffer, Metadata, Model, OpCode, Operator, SignatureDef, Subgraph, Tensor
from .pagecache import backing_of
from .schema import FILE_IDENTIFIER, SCHEMA_VERSION, fb

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


def _text(raw: bytes | None) -> str | None:
    # surrogateescape keeps arbitrary bytes in names round-trippable.
    return None if raw is None else raw.decode("utf-8", "surrogateescape")


class _Reader:
    def __init__(self, buf: memoryview, label: str):
        self.buf = buf
        self.label = label
        self.mapping = buf.obj if isinstance(buf.obj, mmap.mmap) else None
        # Each table we walk costs one unit; a real file needs >= 4 bytes per
        # table (its offset), so more units than bytes means shared offsets.
        self.budget = len(buf) // 4 + 1024

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
        buffers = [self.buffer(m.Buffers(i), i) for i in range(m.BuffersLength())]
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

        used = set(model.buffer_users())
        used.update(model.metadata_buffer or ())
        model.unreferenced_buffers = {b for b in buffers[1:] if b not in used}
        return model

    def pick(self, items: list, index: int, what: str):
        if not 0 <= index < len(items):
            raise self.bad(f"{what} index {index} out of range (0..{len(items) - 1})")
        return items[index]

    def buffer(self, b, i: int) -> Buffer:
        offset, size = b.Offset(), b.Size()
        if offset > 1:
            data = self.external_bytes(offset, size, f"buffer {i}")
            return Buffer(data, external=True, backing=backing_of(data, self.mapping))
        if b.DataIsNone() or b.DataLength() == 0:
            return Buffer()
        data = b.DataAsNumpy()
        return Buffer(data, backing=backing_of(data, self.mapping))

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
        tensors = [self.tensor(fb.TensorT.InitFromObj(s.Tensors(i)), buffers, f"{where} tensor {i}")
                   for i in range(n_t)]

        def ref(i: int, what: str, optional: bool = False) -> Tensor | None:
            if optional and i == -1:
                return None
            if not 0 <= i < n_t:
                raise self.bad(f"{where}: {what} refers to tensor {i}, but there are {n_t}")
            return tensors[i]

        def refs(arr, what: str, optional: bool = False) -> list:
            if arr is None or isinstance(arr, int):
                return []
            self.charge(len(arr), what)
            return [ref(int(i), what, optional) for i in arr]

        sg = Subgraph(tensors=tensors, name=_text(s.Name()), debug_metadata_index=s.DebugMetadataIndex())
        sg.inputs = refs(s.InputsAsNumpy() if not s.InputsIsNone() else None, "input")
        sg.outputs = refs(s.OutputsAsNumpy() if not s.OutputsIsNone() else None, "output")
        n_op = s.OperatorsLength()
        self.charge(n_op, f"{where} operators")
        referenced: set[Tensor] = set(sg.inputs) | set(sg.outputs)
        for i in range(n_op):
            o = fb.OperatorT.InitFromObj(s.Operators(i))
            what = f"operator {i}"
            op = Operator(
                opcode=self.pick(opcodes, o.opcodeIndex, f"{where} {what} opcode"),
                inputs=refs(o.inputs, f"{what} input", optional=True),
                outputs=refs(o.outputs, f"{what} output", optional=True),
                options=o.builtinOptions,
                options_type=o.builtinOptionsType,
                custom_options=o.customOptions,
                custom_options_format=o.customOptionsFormat,
                mutating_variable_inputs=None if o.mutatingVariableInputs is None
                else [bool(x) for x in o.mutatingVariableInputs],
                intermediates=None if o.intermediates is None
                else refs(o.intermediates, f"{what} intermediate", optional=True),
                options2=o.builtinOptions2,
                options2_type=o.builtinOptions2Type,
                debug_metadata_index=o.debugMetadataIndex,
            )
            if o.largeCustomOptionsOffset > 1:
                op.large_custom_options = self.external_bytes(
                    o.largeCustomOptionsOffset, o.largeCustomOptionsSize, f"{where} {what} custom options")
            sg.operators.append(op)
            referenced.update(t for t in op.inputs + op.outputs + (op.intermediates or []) if t is not None)
        for t in tensors:
            t.unreferenced_in_source = t not in referenced
        return sg

    def tensor(self, t, buffers: list[Buffer], what: str) -> Tensor:
        shape = [] if t.shape is None or isinstance(t.shape, int) else [int(d) for d in t.shape]
        sig = None if t.shapeSignature is None or isinstance(t.shapeSignature, int) \
            else [int(d) for d in t.shapeSignature]
        return Tensor(
            name=_text(t.name) or "",
            shape=shape,
            dtype=t.type,
            buffer=self.pick(buffers, t.buffer, f"{what} buffer"),
            quantization=t.quantization,
            is_variable=bool(t.isVariable),
            sparsity=t.sparsity,
            shape_signature=sig,
            has_rank=bool(t.hasRank),
            variant_tensors=t.variantTensors,
            external_buffer=t.externalBuffer,
        )

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
