"""The mutable in-memory model that passes rewrite.

Plain data classes mirror the TFLite schema, with one change that makes
rewriting safe: references are Python objects, not indices. An operator holds
its input ``Tensor`` objects, a tensor holds its ``Buffer``, a signature holds
its ``Tensor`` objects. Passes can therefore add, replace and drop things
freely, and the writer assigns indices (and so remaps signature defs) once,
at the end.

Nested tables that no pass interprets (quantization, sparsity, builtin options,
variant sub-types) are kept as the schema's own object-API instances, which
pack themselves back byte-for-byte equivalent. Every field of the schema's
``Model``, ``SubGraph``, ``Tensor``, ``Operator`` and ``Buffer`` tables has a
home here; ``tests/test_schema_coverage.py`` fails if the schema grows a field
we do not carry.
"""

from __future__ import annotations

import collections
import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from .schema import NUMPY_DTYPES, fb, op_name, type_name

_U8 = np.dtype(np.uint8)

if TYPE_CHECKING:
    from .pagecache import Backing


# --------------------------------------------------------------------------- data


@dataclass(eq=False, slots=True)
class Buffer:
    """Raw bytes of a constant (or of a metadata entry).

    ``data`` is a 1-D uint8 array that is usually a zero-copy view into the
    input file (mmap) or a new array a pass made. ``None`` means empty.
    ``external`` records that the source stored the bytes after the flatbuffer
    (``Buffer.offset``/``size``, the >2 GB form); the writer keeps that form.
    """

    data: np.ndarray | None = None
    external: bool = False
    #: set when ``data`` is a view of a read-only file mapping (the input, or a
    #: spill file): its pages can then be dropped from memory after use.
    backing: "Backing | None" = field(default=None, repr=False)

    @property
    def nbytes(self) -> int:
        return 0 if self.data is None else int(self.data.nbytes)

    def release(self) -> None:
        """Drop this buffer's pages from resident memory (file-backed only)."""
        if self.backing is not None:
            self.backing.release()

    @staticmethod
    def from_array(array: np.ndarray) -> "Buffer":
        """A new buffer holding ``array``'s bytes in little-endian C order."""
        return Buffer(as_raw_bytes(array))


def as_raw_bytes(array: np.ndarray) -> np.ndarray:
    """``array``'s bytes as a 1-D uint8 array, little-endian, C order (a view when it can be)."""
    arr = np.ascontiguousarray(array)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr.reshape(-1).view(np.uint8)


@dataclass(eq=False, frozen=True)
class OpCode:
    """An entry of the model's operator-code table, kept exactly as stored.

    Codes above 127 live in ``builtin_code`` with ``deprecated_builtin_code``
    pinned at 127 (PLACEHOLDER_FOR_GREATER_OP_CODES); older files only set the
    deprecated field. ``code`` resolves both the way the TFLite runtime does.
    """

    builtin_code: int = 0
    deprecated_builtin_code: int = 0
    custom_code: str | None = None
    version: int = 1

    @functools.cached_property
    def code(self) -> int:
        return max(self.builtin_code, self.deprecated_builtin_code)

    @functools.cached_property
    def name(self) -> str:
        if self.code == fb.BuiltinOperator.CUSTOM:
            return f"CUSTOM({self.custom_code})"
        return op_name(self.code)

    @staticmethod
    def builtin(code: int, version: int = 1) -> "OpCode":
        return OpCode(
            builtin_code=code,
            deprecated_builtin_code=min(code, fb.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES),
            version=version,
        )


def quantization(scale, zero_point=0, axis: int = 0):
    """New quantization parameters: one scale (per tensor) or one per slice
    along ``axis`` (per channel), zero points broadcast to match."""
    s = np.atleast_1d(np.asarray(scale, np.float64))
    zp = np.broadcast_to(np.asarray(zero_point, np.int64), s.shape)
    return fb.QuantizationParametersT(scale=[float(v) for v in s], zeroPoint=[int(v) for v in zp],
                                      quantizedDimension=axis)


@dataclass(eq=False, slots=True)
class Tensor:
    name: str
    shape: list[int]
    dtype: int = fb.TensorType.FLOAT32
    buffer: Buffer | None = None
    quantization: Any = None  # fb.QuantizationParametersT
    is_variable: bool = False
    sparsity: Any = None  # fb.SparsityParametersT
    shape_signature: list[int] | None = None
    has_rank: bool = False
    variant_tensors: list[Any] | None = None  # [fb.VariantSubTypeT]
    external_buffer: int = 0
    #: the tensor was referenced by nothing in the source file; such tensors are
    #: preserved as they were, while tensors orphaned by a rewrite are dropped.
    unreferenced_in_source: bool = False
    #: its index in its subgraph of the source file (-1: made by a rewrite);
    #: region proofs read the original's value of a tensor by it
    source_index: int = -1

    def like(self, name: str, shape: list[int] | None = None, shape_signature: list[int] | None = None,
             quantized: bool = True) -> "Tensor":
        """A new intermediate tensor of this one's type (and quantization, unless
        not ``quantized``) that a rewrite puts in: this shape and signature, or
        ``shape`` and ``shape_signature`` (None: no signature) when it has another."""
        if shape is None:
            shape, shape_signature = self.shape, self.shape_signature
        return Tensor(name=name, shape=list(shape), dtype=self.dtype,
                      quantization=self.quantization if quantized else None,
                      shape_signature=list(shape_signature) if shape_signature else None)

    @property
    def is_constant(self) -> bool:
        buf = self.buffer
        return buf is not None and buf.data is not None and buf.data.nbytes > 0

    def value(self) -> np.ndarray | None:
        """The constant value as a read-only numpy array, or None.

        This is a zero-copy view of the buffer; it is ``None`` when the tensor
        has no data or its byte count does not match its shape.
        """
        buf = self.buffer
        raw = buf.data if buf is not None else None
        if raw is None:
            return None
        dt = NUMPY_DTYPES.get(self.dtype)
        n = raw.nbytes
        if not n or dt is None or n != dt.itemsize * math.prod(self.shape):
            return None
        arr = raw.view(dt).reshape(self.shape) if raw.dtype is _U8 else np.frombuffer(raw, dt).reshape(self.shape)
        if arr.flags.writeable:  # a view of the input file is read-only already (and asking is cheaper than setting)
            arr.flags.writeable = False
        return arr

    @property
    def value_bytes(self) -> int:
        """The bytes one value of this tensor takes (a dynamic dimension counted as 1)."""
        dt = NUMPY_DTYPES.get(self.dtype)
        return (dt.itemsize if dt is not None else 1) * math.prod(max(1, int(d)) for d in self.shape)

    def quant_params(self) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(scale, zero_point, quantized_dimension) or None when not quantized."""
        q = self.quantization
        if q is None or q.scale is None or len(q.scale) == 0:
            return None
        zp = q.zeroPoint if q.zeroPoint is not None else np.zeros(len(q.scale), np.int64)
        return np.asarray(q.scale, np.float64), np.asarray(zp, np.int64), int(q.quantizedDimension)

    @property
    def is_quantized(self) -> bool:
        """``quant_params()`` is not None, without making its arrays (asked of every tensor a pass looks at)."""
        q = self.quantization
        return q is not None and q.scale is not None and len(q.scale) > 0

    def __repr__(self) -> str:
        return f"Tensor({self.name!r}, {type_name(self.dtype)}{list(self.shape)})"


class Operator:
    """One operator: its opcode entry, input and output tensors (``None`` is an
    omitted optional input, -1 in the file), and its options.

    ``options`` is the schema's object-API table (``fb.Conv2DOptionsT`` ...).
    """

    __slots__ = ("opcode", "inputs", "outputs", "options", "options_type", "custom_options",
                 "custom_options_format", "mutating_variable_inputs", "intermediates", "large_custom_options",
                 "options2", "options2_type", "debug_metadata_index", "__weakref__")

    def __init__(self, opcode: OpCode, inputs: list[Tensor | None], outputs: list[Tensor | None],
                 options: Any = None, options_type: int = 0, custom_options: np.ndarray | None = None,
                 custom_options_format: int = 0, mutating_variable_inputs: list[bool] | None = None,
                 intermediates: list[Tensor | None] | None = None, large_custom_options: np.ndarray | None = None,
                 options2: Any = None, options2_type: int = 0, debug_metadata_index: int = -1):
        self.opcode = opcode
        self.inputs = inputs
        self.outputs = outputs
        self.options = options  # fb.*OptionsT
        self.options_type = options_type  # fb.BuiltinOptions enum
        self.custom_options = custom_options
        self.custom_options_format = custom_options_format
        self.mutating_variable_inputs = mutating_variable_inputs
        self.intermediates = intermediates
        #: custom options stored after the flatbuffer (>2 GB models); bytes held here
        self.large_custom_options = large_custom_options
        self.options2 = options2
        self.options2_type = options2_type
        self.debug_metadata_index = debug_metadata_index

    @property
    def code(self) -> int:
        return self.opcode.code

    @property
    def type_name(self) -> str:
        return self.opcode.name

    def __repr__(self) -> str:
        outs = ",".join(t.name if t is not None else "-" for t in self.outputs)
        return f"Operator({self.type_name} -> {outs})"

    def copy(self, **changes: Any) -> "Operator":
        """A new operator with this one's fields, some changed (shallow)."""
        new = Operator.__new__(Operator)
        new.opcode, new.inputs, new.outputs = self.opcode, self.inputs, self.outputs
        new.options, new.options_type, new.options2, new.options2_type = (
            self.options, self.options_type, self.options2, self.options2_type)
        new.custom_options, new.custom_options_format = self.custom_options, self.custom_options_format
        new.large_custom_options, new.mutating_variable_inputs = self.large_custom_options, self.mutating_variable_inputs
        new.intermediates, new.debug_metadata_index = self.intermediates, self.debug_metadata_index
        for k, v in changes.items():
            setattr(new, k, v)
        return new


@dataclass(eq=False)
class SignatureDef:
    key: str
    subgraph: "Subgraph"
    inputs: list[tuple[str, Tensor]]
    outputs: list[tuple[str, Tensor]]


class Subgraph:
    """Tensors, inputs, outputs and operators of one graph (the main model, a
    WHILE body, ...).

    ``operators`` is always in order and never holds a hole. Rewrites go
    through :meth:`replace`, :meth:`remove_operator` and
    :meth:`append_operator`, which keep a producer/consumer index current so
    that a pass with thousands of rewrites stays linear. (Removal empties a
    slot in O(1), a rewrite into several ops puts them in one slot; the list
    is compacted, once, the next time someone reads ``operators``.)
    """

    def __init__(self, tensors: list[Tensor] | None = None, inputs: list[Tensor] | None = None,
                 outputs: list[Tensor] | None = None, operators: list[Operator] | None = None,
                 name: str | None = None, debug_metadata_index: int = -1):
        self.tensors: list[Tensor] = list(tensors or [])
        self.inputs: list[Tensor] = list(inputs or [])
        self.outputs: list[Tensor] = list(outputs or [])
        self.name = name
        self.debug_metadata_index = debug_metadata_index
        self._ops: list[Operator | None] = list(operators or [])
        self._holes = 0
        self._index: _UseIndex | None = None
        #: when a list, every edit is recorded in it as (removed ops, added ops):
        #: how a pass's rewrite is known op for op (region proofs cut it out)
        self.journal: list[tuple[set, list]] | None = None

    def __repr__(self) -> str:
        return f"Subgraph({self.name!r}, {len(self.operators)} operators, {len(self.tensors)} tensors)"

    @property
    def operators(self) -> list[Operator]:
        """The operators in order. Read it; change it through the methods (a
        list assigned whole is fine: the index is rebuilt on demand)."""
        if self._holes:
            self._compact()
        return self._ops  # type: ignore[return-value]

    @operators.setter
    def operators(self, ops: Iterable[Operator]) -> None:
        self._ops = list(ops)
        self._holes = 0
        self._index = None

    # ---------------------------------------------------------------- queries

    @property
    def uses(self) -> "_UseIndex":
        if self._index is None:
            self._index = _UseIndex(self._ops)
        return self._index

    # (The queries below are asked millions of times in a big model: each
    # reads the index directly once it exists.)

    def producer(self, tensor: Tensor) -> Operator | None:
        return (self._index or self.uses).producer.get(tensor)

    def consumers(self, tensor: Tensor) -> list[Operator]:
        """Operators reading ``tensor``, in the order they were indexed (a
        new list: the caller may edit the graph while walking it)."""
        users = (self._index or self.uses).consumers.get(tensor)
        return list(users) if users else []

    def consumer_count(self, tensor: Tensor) -> int:
        users = (self._index or self.uses).consumers.get(tensor)
        return len(users) if users else 0

    def sole_consumer(self, tensor: Tensor) -> Operator | None:
        """The one operator reading ``tensor``; None when none or several do."""
        users = (self._index or self.uses).consumers.get(tensor)
        if users and len(users) == 1:
            for op in users:
                return op
        return None

    def contains(self, op: Operator) -> bool:
        """``op`` is (still) one of this graph's operators."""
        return op in (self._index or self.uses).position

    def times_read(self, op: Operator, tensor: Tensor) -> int:
        """How many of ``op``'s inputs are ``tensor`` (the index counts a
        reader once). A CONCATENATION of 15,000 branches is asked about each
        of them: its inputs are counted once, not scanned per branch."""
        if len(op.inputs) <= 16:
            return op.inputs.count(tensor)
        counts = (self._index or self.uses).input_counts
        if op not in counts:
            counts[op] = collections.Counter(op.inputs)
        return counts[op][tensor]

    # -------------------------------------------------------------- mutations

    def add_tensor(self, tensor: Tensor) -> Tensor:
        self.tensors.append(tensor)
        return tensor

    def append_operator(self, op: Operator) -> Operator:
        if self._index is not None:
            self._index.add(op, len(self._ops))
        self._ops.append(op)
        if self.journal is not None:
            self.journal.append((set(), [op]))
        return op

    def replace(self, old_ops: Iterable[Operator], new_ops: Operator | list[Operator]) -> None:
        """Replace a connected set of operators by one or more new operators.

        The new operators take the slot of the last old operator in list order
        (in the given order). Every value a new operator reads comes from
        outside the replaced set, so it is produced before the first old op,
        and every value it writes was written by the replaced set and read only
        after it: the operator list stays topologically sorted.
        """
        old = set(old_ops)
        news = [new_ops] if isinstance(new_ops, Operator) else list(new_ops)
        if self.journal is not None:
            self.journal.append((old, news))
        idx = self.uses
        position, ops = idx.position, self._ops
        last = -1
        for op in old:
            i = position[op]
            if type(ops[i]) is list:
                self._compact()  # an op of an earlier several-op rewrite: give each its own slot first
                last = max(position[o] for o in old)
                break
            if i > last:
                last = i
        for op in old:
            self._ops[position[op]] = None
            idx.remove(op)
        self._holes += len(old) - 1
        if len(news) == 1:
            self._ops[last] = news[0]
        else:
            # Several new ops share the one slot, in order, until the next
            # compaction gives each its own: no list insertion, so a pass that
            # rewrites one op into two thousands of times stays linear.
            self._ops[last] = news
            self._holes += 1
        for op in news:
            idx.add(op, last)

    def remove_operator(self, op: Operator) -> None:
        if self.journal is not None:
            self.journal.append(({op}, []))
        idx = self.uses
        if type(self._ops[idx.position[op]]) is list:
            self._compact()
        self._ops[idx.position[op]] = None
        idx.remove(op)
        self._holes += 1

    def _compact(self) -> None:
        """Drop emptied slots, give shared slots' ops their own, renumber."""
        ops: list[Operator] = []
        for x in self._ops:
            if type(x) is list:
                ops.extend(x)
            elif x is not None:
                ops.append(x)
        self._ops = ops
        self._holes = 0
        if self._index is not None:
            self._index.position = {op: i for i, op in enumerate(ops)}

    def referenced_tensors(self) -> set[Tensor]:
        refs: set[Tensor] = set(self.inputs) | set(self.outputs)
        for op in self.operators:  # whole lists, the omitted inputs' None dropped once at the end
            refs.update(op.inputs)
            refs.update(op.outputs)
            if op.intermediates:
                refs.update(op.intermediates)
        refs.discard(None)
        return refs

    def op_counts(self) -> dict[str, int]:
        """Operators per type, most frequent first."""
        counts: dict[str, int] = {}
        for op in self.operators:
            counts[op.type_name] = counts.get(op.type_name, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


class _UseIndex:
    """Producer, consumers and list position of every operator, kept current by
    :meth:`Subgraph.replace` so that a pass with thousands of rewrites stays
    linear instead of rescanning the graph after each one. (Positions only
    order operators: several new ops may share a number until the next
    compaction renumbers them.)"""

    def __init__(self, ops: list[Operator | None]):
        #: each wide operator's inputs counted, when first asked (Subgraph.times_read)
        self.input_counts: dict[Operator, collections.Counter] = {}
        # An insertion-ordered set per tensor: removing one reader of a
        # constant shared by thousands of ops stays O(1). (Built with
        # comprehensions and a defaultdict: a 100,000-op graph is indexed
        # once per run, and op-by-op ``add`` took three times as long.)
        self.consumers: dict[Tensor, dict[Operator, None]] = collections.defaultdict(dict)
        if any(type(op) is not Operator for op in ops):  # holes, or ops sharing a slot (see Subgraph.replace)
            self.producer: dict[Tensor, Operator] = {}
            self.position: dict[Operator, int] = {}
            for i, op in enumerate(ops):
                for o in (op if type(op) is list else () if op is None else (op,)):
                    self.add(o, i)
            return
        self.position = {op: i for i, op in enumerate(ops)}
        self.producer = {t: op for op in ops for t in op.outputs if t is not None}
        consumers = self.consumers
        for op in ops:
            for t in op.inputs:  # an op reading a tensor twice is one consumer: a dict key
                if t is not None:
                    consumers[t][op] = None

    def add(self, op: Operator, position: int) -> None:
        self.position[op] = position
        producer, consumers = self.producer, self.consumers
        for t in op.outputs:
            if t is not None:
                producer[t] = op
        for t in op.inputs:  # an op reading a tensor twice is one consumer: a dict key
            if t is not None:
                consumers[t][op] = None

    def remove(self, op: Operator) -> None:
        del self.position[op]
        self.input_counts.pop(op, None)
        producer, consumers = self.producer, self.consumers
        for t in op.outputs:
            if t is not None and producer.get(t) is op:
                del producer[t]
        for t in op.inputs:
            if t is not None:
                users = consumers.get(t)
                if users is not None:
                    users.pop(op, None)


@dataclass(eq=False)
class Metadata:
    name: str
    buffer: Buffer


@dataclass(eq=False)
class Model:
    version: int = 3
    opcodes: list[OpCode] = field(default_factory=list)
    subgraphs: list[Subgraph] = field(default_factory=list)
    description: str | None = None
    #: buffers[0] is the schema's mandatory empty sentinel buffer.
    buffers: list[Buffer] = field(default_factory=lambda: [Buffer()])
    metadata_buffer: list[Buffer] | None = None
    metadata: list[Metadata] = field(default_factory=list)
    signature_defs: list[SignatureDef] = field(default_factory=list)
    external_buffer_groups: list[Any] | None = None
    external_buffers: list[Any] | None = None
    #: buffers present but referenced by nothing in the source file (kept as is)
    unreferenced_buffers: set[Buffer] = field(default_factory=set, repr=False)
    #: the read-only mapping of the source file, when it was read from a path
    source_mapping: Any = field(default=None, repr=False)
    #: makes the buffer of each new constant (the pipeline installs a
    #: page-cache policy for large models: see :mod:`pagecache`)
    buffer_factory: Callable[[np.ndarray], Buffer] = field(default=Buffer.from_array, repr=False)

    @property
    def main(self) -> Subgraph:
        return self.subgraphs[0]

    def opcode(self, code: int, version: int = 1) -> OpCode:
        """The model's entry for a builtin op, created (at ``version``) if absent.

        An existing entry with a higher version is reused: the runtime picks a
        kernel by (code, version), and a higher version of an op accepts what
        a lower one does.
        """
        best = None
        for oc in self.opcodes:
            if oc.code == code and oc.custom_code is None and oc.version >= version:
                if best is None or oc.version < best.version:
                    best = oc
        if best is None:
            best = OpCode.builtin(code, version)
            self.opcodes.append(best)
        return best

    def add_buffer(self, array: np.ndarray) -> Buffer:
        buf = self.buffer_factory(array)
        self.buffers.append(buf)
        return buf

    def new_constant(self, sg: Subgraph, name: str, array: np.ndarray, dtype: int,
                     quantization: Any = None) -> Tensor:
        """A new constant tensor with its own new buffer (never shared)."""
        # positional: keywords cost three times as much, and a fold makes two
        return sg.add_tensor(Tensor(name, list(array.shape), dtype, self.add_buffer(array), quantization))

    def signature_outputs(self, sg: Subgraph) -> set[Tensor]:
        return {t for sd in self.signature_defs if sd.subgraph is sg for _, t in sd.outputs}

    def is_observed(self, sg: Subgraph, t: Tensor) -> bool:
        """Someone outside the graph sees ``t``: a subgraph or signature output."""
        return t in sg.outputs or (bool(self.signature_defs) and t in self.signature_outputs(sg))

    def buffer_users(self) -> dict[Buffer, int]:
        """How many tensors (in any subgraph) and metadata entries use each buffer."""
        count: dict[Buffer, int] = {}
        for sg in self.subgraphs:
            for t in sg.tensors:
                if t.buffer is not None:
                    count[t.buffer] = count.get(t.buffer, 0) + 1
        for m in self.metadata:
            count[m.buffer] = count.get(m.buffer, 0) + 1
        return count

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for sg in self.subgraphs:
            for name, n in sg.op_counts().items():
                counts[name] = counts.get(name, 0) + n
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def num_operators(self) -> int:
        return sum(len(sg.operators) for sg in self.subgraphs)

    def num_tensors(self) -> int:
        return sum(len(sg.tensors) for sg in self.subgraphs)

    # ------------------------------------------------------------ clean up

    def prune(self) -> None:
        """Drop tensors and buffers that a rewrite left unreferenced.

        Tensors and buffers that the *source* already left unreferenced are
        kept: dropping them is not our call, and a no-op round trip must keep
        the file as it was.
        """
        for sg in self.subgraphs:
            refs = sg.referenced_tensors()
            for sd in self.signature_defs:
                if sd.subgraph is sg:
                    refs.update(t for _, t in sd.inputs)
                    refs.update(t for _, t in sd.outputs)
            sg.tensors = [t for t in sg.tensors if t in refs or t.unreferenced_in_source]
        used = set(self.buffer_users())
        if self.metadata_buffer:
            used.update(self.metadata_buffer)
        sentinel = self.buffers[0]
        self.buffers = [b for b in self.buffers
                        if b is sentinel or b in used or b in self.unreferenced_buffers]
