"""Matching helpers shared by the passes: the safety questions every fusion
asks before it may remove a tensor, and the shapes of "per-channel" constants.
"""

from __future__ import annotations

import numpy as np

from ..graph import Model, Operator, Subgraph, Tensor
from ..schema import ActivationFunctionType as Act
from ..schema import BuiltinOperator as Op
from ..schema import TensorType

#: Ops whose output feeds a fused activation through ``fusedActivationFunction``.
CONV_OPS = (Op.CONV_2D, Op.DEPTHWISE_CONV_2D, Op.FULLY_CONNECTED, Op.TRANSPOSE_CONV)


def signature_outputs(model: Model, sg: Subgraph) -> set[Tensor]:
    return {t for sd in model.signature_defs if sd.subgraph is sg for _, t in sd.outputs}


def why_not_removable(model: Model, sg: Subgraph, t: Tensor, reader: Operator) -> str | None:
    """Why the intermediate tensor ``t`` cannot disappear into a fusion whose
    next op is ``reader``; ``None`` when it can.

    A fused pattern deletes its intermediate tensors, so each must be read by
    the pattern alone: not by another op, not as a subgraph or signature output
    (someone outside can observe it), and not be a variable (state).
    """
    if t in sg.outputs or t in signature_outputs(model, sg):
        return f"intermediate {t.name!r} is a model output"
    if t.is_variable:
        return f"intermediate {t.name!r} is a variable"
    users = sg.consumers(t)
    if len(users) != 1 or users[0] is not reader:
        return f"intermediate {t.name!r} has {len(users)} consumers"
    if reader.inputs.count(t) != 1:
        return f"intermediate {t.name!r} is read twice by {reader.type_name}"
    return None


def fused_activation(op: Operator) -> int | None:
    """The op's ``fusedActivationFunction``, or None if it has no such field."""
    opts = op.options
    return getattr(opts, "fusedActivationFunction", None) if opts is not None else None


def has_no_activation(op: Operator) -> bool:
    return fused_activation(op) in (None, Act.NONE)


# ------------------------------------------------------------------ rebuilding ops
# (added with the folding passes)


def clone_op(op: Operator, *, inputs=None, outputs=None, opcode=None, **option_changes) -> Operator:
    """A new operator like ``op`` (same options, copied so ``op`` is untouched)
    with the given inputs/outputs/opcode and option fields changed."""
    import copy
    import dataclasses

    opts = copy.copy(op.options)
    for k, v in option_changes.items():
        setattr(opts, k, v)
    ins = list(op.inputs if inputs is None else inputs)
    mvi = op.mutating_variable_inputs
    if mvi is not None and len(mvi) != len(ins):
        mvi = (list(mvi) + [False] * len(ins))[:len(ins)]
    return dataclasses.replace(op, opcode=opcode or op.opcode, inputs=ins,
                               outputs=list(op.outputs if outputs is None else outputs),
                               options=opts, mutating_variable_inputs=mvi,
                               intermediates=list(op.intermediates) if op.intermediates else op.intermediates)


def opcode_at_least(model: Model, op: Operator, version: int):
    """``op``'s opcode entry, or one of at least ``version`` (a rewrite that
    adds e.g. a bias or a fused activation may need a newer kernel)."""
    if op.opcode.version >= version or op.opcode.custom_code is not None:
        return op.opcode
    return model.opcode(op.code, version)


def same_quantization(a: Tensor, b: Tensor) -> bool:
    qa, qb = a.quant_params(), b.quant_params()
    if qa is None or qb is None:
        return qa is None and qb is None
    return (np.array_equal(qa[0], qb[0]) and np.array_equal(qa[1], qb[1])
            and (len(qa[0]) == 1 or qa[2] == qb[2]))


# --------------------------------------------------------------- float constants

class FloatConst:
    """A float constant an op reads: a FLOAT32 constant tensor, or the FLOAT32
    output of a DEQUANTIZE of a FLOAT16 constant (how TFLite stores
    float16-quantized weights). ``values()`` is float64 either way."""

    def __init__(self, tensor: Tensor, source: Tensor, dequantize: Operator | None):
        self.tensor = tensor
        self.source = source
        self.dequantize = dequantize

    def values(self) -> np.ndarray:
        return np.asarray(self.source.value(), np.float64)

    @property
    def is_fp16(self) -> bool:
        return self.dequantize is not None


def float_constant(sg: Subgraph, t: Tensor | None) -> tuple[FloatConst | None, str | None]:
    """``t`` as a :class:`FloatConst`, or (None, why not)."""
    if t is None:
        return None, "is absent"
    if t.is_quantized:
        return None, f"{t.name!r} is quantized"
    if t.is_constant:
        if t.dtype != TensorType.FLOAT32 or t.value() is None:
            return None, f"constant {t.name!r} is not float32"
        return FloatConst(t, t, None), None
    p = sg.producer(t)
    if p is not None and p.code == Op.DEQUANTIZE and p.inputs and p.inputs[0] is not None:
        src = p.inputs[0]
        if (src.is_constant and src.dtype == TensorType.FLOAT16 and not src.is_quantized
                and t.dtype == TensorType.FLOAT32 and src.value() is not None):
            return FloatConst(t, src, p), None
        return None, f"{t.name!r} is a DEQUANTIZE of a {'constant' if src.is_constant else 'tensor'} " \
                     f"that is not plain float16"
    return None, f"{t.name!r} is not a constant"


class WeightWriter:
    """Stores the folded weights of one rewrite the way the old ones were
    stored, and applies the rewrite.

    A FLOAT32 constant becomes a new FLOAT32 constant. A float16 weight behind
    DEQUANTIZE becomes a new FLOAT16 constant behind a DEQUANTIZE (the model
    keeps its size; re-rounded with ``fp16_weights == "keep"``, which the
    context counts so verification can use float16-grid tolerances, and only
    when exactly representable with ``"exact"``) or, with ``"float32"``, a
    FLOAT32 constant read directly. A DEQUANTIZE only the rewritten op reads is replaced in its
    own slot (or dropped); one that others read too is left to them and a new
    DEQUANTIZE is placed just before the new op. New buffers always: an old
    buffer may be shared.
    """

    def __init__(self, model: Model, sg: Subgraph, reader: Operator, ctx):
        self.model, self.sg, self.reader, self.ctx = model, sg, reader, ctx
        self.fp16_as_float32 = ctx.options.fp16_weights == "float32"
        #: may a fold re-round float16 weights? That moves outputs by up to
        #: 2^-11 relative; the pipeline widens its tolerance when it happened.
        self.fp16_reround = ctx.options.fp16_weights == "keep"
        self._before: list[Operator] = []
        self._in_place: list[tuple[Operator, Operator]] = []
        self._drop: list[Operator] = []

    def storage_dtype(self, old: FloatConst | None) -> np.dtype:
        if old is not None and old.is_fp16 and not self.fp16_as_float32:
            return np.dtype(np.float16)
        return np.dtype(np.float32)

    def round(self, values: np.ndarray, old: FloatConst | None, what: str) -> np.ndarray:
        """``values`` (float64) rounded once for storage where ``old`` was
        stored; FoldError if not finite, too large, or (float16 without
        ``fp16_reround``) not exactly representable."""
        from ..folding import round_once

        dt = self.storage_dtype(old)
        out = round_once(values, dt, what, exact=dt == np.float16 and not self.fp16_reround)
        if dt == np.float16 and np.any(out.astype(np.float64) != values):
            self.ctx.fp16_rerounded += 1
        return out

    def _private(self, deq: Operator) -> bool:
        out = deq.outputs[0]
        return (self.sg.consumers(out) == [self.reader] and self.reader.inputs.count(out) == 1
                and out not in self.sg.outputs and out not in signature_outputs(self.model, self.sg))

    def store(self, old: FloatConst | None, array: np.ndarray, name: str) -> Tensor:
        """A tensor the new op reads for ``array`` (already rounded to
        :meth:`storage_dtype`)."""
        model, sg = self.model, self.sg
        if array.dtype == np.float16:
            assert old is not None and old.dequantize is not None
            deq = old.dequantize
            src = model.new_constant(sg, f"{name}_fp16", array, TensorType.FLOAT16)
            if self._private(deq):
                self._in_place.append((deq, clone_op(deq, inputs=[src] + deq.inputs[1:])))
                return deq.outputs[0]
            out = sg.add_tensor(Tensor(name=name, shape=list(array.shape), dtype=TensorType.FLOAT32))
            self._before.append(clone_op(deq, inputs=[src] + deq.inputs[1:], outputs=[out]))
            return out
        t = model.new_constant(sg, name, np.asarray(array, np.float32), TensorType.FLOAT32)
        if old is not None and old.dequantize is not None and self._private(old.dequantize):
            self._drop.append(old.dequantize)
        return t

    def store_conv_weights(self, slots: tuple[int, int], old: tuple, arrays: tuple, name: str) -> dict:
        """Store a folded (filter, bias) pair - either may be None when the fold
        left it as it was - and return ``{input slot: new tensor}``."""
        changes = {}
        for slot, prev, array, what in zip(slots, old, arrays, ("filter", "bias")):
            if array is not None:
                changes[slot] = self.store(prev, array, f"{name}/{what}")
        return changes

    def commit(self, old_ops: list[Operator], new_op: Operator) -> None:
        sg = self.sg
        for old, new in self._in_place:
            sg.replace([old], new)
        sg.replace(old_ops, self._before + [new_op] if self._before else new_op)
        for d in self._drop:
            if d in sg.uses.position:
                sg.remove_operator(d)


# ------------------------------------------------------------ weighted ops

#: :mod:`tflite_fuser.folding` kind of each op with a filter and a bias
CONV_KIND = {Op.CONV_2D: "conv", Op.DEPTHWISE_CONV_2D: "depthwise", Op.FULLY_CONNECTED: "fc",
             Op.TRANSPOSE_CONV: "transpose_conv"}


def conv_slots(op: Operator) -> tuple[int, int, int]:
    """(data, filter, bias) input positions: TRANSPOSE_CONV reads
    (output_shape, filter, x[, bias]), the others (x, filter[, bias])."""
    return (2, 1, 3) if op.code == Op.TRANSPOSE_CONV else (0, 1, 2)


def conv_input(op: Operator, slot: int) -> Tensor | None:
    return op.inputs[slot] if slot < len(op.inputs) else None


def with_inputs(op: Operator, changes: dict[int, Tensor]) -> list[Tensor | None]:
    """``op``'s input list with ``changes`` applied (extended with omitted
    inputs if a change is past its end, e.g. a bias a FULLY_CONNECTED lacked)."""
    ins = list(op.inputs)
    need = max(changes) + 1 if changes else 0
    ins.extend([None] * (need - len(ins)))
    for i, t in changes.items():
        ins[i] = t
    return ins


def drop_dead_dequantize(model: Model, sg: Subgraph, tensors) -> None:
    """Remove the DEQUANTIZE ops producing ``tensors`` (constants of ops a
    rewrite just removed, e.g. a float16 MUL operand) once nothing reads
    their output: dead code the rewrite created."""
    for t in tensors:
        if t is None or t.is_constant:
            continue
        p = sg.producer(t)
        if (p is not None and p.code == Op.DEQUANTIZE and not sg.consumers(t) and t not in sg.outputs
                and t not in signature_outputs(model, sg) and p.inputs and p.inputs[0] is not None
                and p.inputs[0].is_constant):
            sg.remove_operator(p)
