"""fold-constants: an op whose inputs are all constants becomes its constant
result; so does the SHAPE of a tensor whose shape is static.

Pattern (onnx2tf computes a RESHAPE's target shape at run time from the
input's SHAPE even when every dimension is fixed: ``SHAPE, SLICE,
CONCATENATION, SLICE, SHAPE, SLICE, EQUAL, SELECT, SLICE, CONCATENATION ->
RESHAPE``)::

    s = SHAPE(x)                       (x static)   ->   s = constant
    z = OP(c1, c2, ...)                (constants)  ->   z = constant

One rewrite per op; the pipeline's rounds carry the folding down the chain.
Each op is computed in numpy the way its TFLite kernel computes it, for the
ops and types where that is exact: data movement of any type (SLICE,
CONCATENATION, RESHAPE, TRANSPOSE, SQUEEZE, EXPAND_DIMS, GATHER, PACK),
comparisons, SELECT, integer ADD/SUB/MUL (wrapping as int32 does), and
float32 ADD/SUB/MUL/DIV/MAXIMUM/MINIMUM, SQRT, RSQRT (as the kernel's
``1 / sqrt``), SQUARE, NEG, ABS (each one IEEE rounding, as in the kernel;
EXP, LOG, TANH are not folded: libraries round them differently). onnx2tf
scales attention scores by ``DIV(x, SQRT(head_dim))`` with a constant head
dimension: LiteRT's GPU delegate refuses a SQRT of a constant ("Expected 0
const input tensor(s)"), so the fold moves the whole attention block onto
the GPU. A float16 DEQUANTIZE of weights is not folded: it costs nothing at
run time and keeps the file half the size. A result more than 16 KiB larger
than the constants it replaces (a broadcast of a scalar, say) is not folded:
the file would grow for little.

Preconditions: every input constant (no variable, no sparse tensor); no
quantized tensor (an int8 ADD rescales); no fused activation; the result's
shape and type equal the output tensor's; for SHAPE, no dynamic dimension
(``shape_signature``) and an int32/int64 output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Operator, Subgraph
from ..ops import has_no_activation
from ..schema import NUMPY_DTYPES
from ..schema import BuiltinOperator as Op
from ..schema import TensorType
from .base import FusionPass, Match, PassContext, Skip
from .rebuild import bypass

#: how much larger a folded constant may be than the constants it replaces
GROWTH_LIMIT = 16 << 10

_FLOAT = {TensorType.FLOAT32}
_INT = {TensorType.INT32, TensorType.INT64, TensorType.INT16, TensorType.INT8, TensorType.UINT8}


def _slice(x, begin, size):
    return x[tuple(slice(int(b), None if int(s) < 0 else int(b) + int(s)) for b, s in zip(begin, size))]


def _reshape(op, x, shape=None):
    target = shape if shape is not None else getattr(op.options, "newShape", None) or op.outputs[0].shape
    return x.reshape([int(d) for d in target])


def _axis(op, ndim):
    a = int(op.options.axis)
    return a + ndim if a < 0 else a


#: op -> (numpy evaluator of the input values, the types it is exact for: None for any)
_EVAL = {
    Op.SLICE: (lambda op, x, b, s: _slice(x, b, s), None),
    Op.CONCATENATION: (lambda op, *xs: np.concatenate(xs, axis=_axis(op, xs[0].ndim)), None),
    Op.RESHAPE: (lambda op, x, *shape: _reshape(op, x, *shape), None),
    Op.TRANSPOSE: (lambda op, x, perm: np.transpose(x, [int(p) for p in perm]), None),
    Op.SQUEEZE: (lambda op, x: x.reshape(op.outputs[0].shape), None),
    Op.EXPAND_DIMS: (lambda op, x, axis: x.reshape(op.outputs[0].shape), None),
    Op.PACK: (lambda op, *xs: np.stack(xs, axis=_axis(op, xs[0].ndim + 1)), None),
    Op.GATHER: (lambda op, x, idx: np.take(x, idx, axis=_axis(op, x.ndim)) if not op.options.batchDims
                else None, None),
    Op.EQUAL: (lambda op, a, b: np.equal(a, b), None),
    Op.NOT_EQUAL: (lambda op, a, b: np.not_equal(a, b), None),
    Op.LESS: (lambda op, a, b: np.less(a, b), None),
    Op.GREATER: (lambda op, a, b: np.greater(a, b), None),
    Op.SELECT: (lambda op, c, a, b: np.where(c, a, b), None),
    Op.SELECT_V2: (lambda op, c, a, b: np.where(c, a, b), None),
    Op.ADD: (lambda op, a, b: a + b, _FLOAT | _INT),
    Op.SUB: (lambda op, a, b: a - b, _FLOAT | _INT),
    Op.MUL: (lambda op, a, b: a * b, _FLOAT | _INT),
    Op.DIV: (lambda op, a, b: a / b, _FLOAT),
    Op.MAXIMUM: (lambda op, a, b: np.maximum(a, b), _FLOAT | _INT),
    Op.MINIMUM: (lambda op, a, b: np.minimum(a, b), _FLOAT | _INT),
    # IEEE rounds a square root correctly, as it does + - * /: numpy's is the kernel's
    Op.SQRT: (lambda op, a: np.sqrt(a), _FLOAT),
    Op.RSQRT: (lambda op, a: np.float32(1) / np.sqrt(a), _FLOAT),
    Op.SQUARE: (lambda op, a: a * a, _FLOAT | _INT),
    Op.NEG: (lambda op, a: -a, _FLOAT | _INT),
    Op.ABS: (lambda op, a: np.abs(a), _FLOAT | _INT),
}


@dataclass
class Folded(Match):
    op: Operator
    value: np.ndarray


class FoldConstants(FusionPass):
    name = "fold-constants"
    summary = "an op of constants (or the SHAPE of a static tensor) => its constant result (exact)"
    anchors = (Op.SHAPE, *_EVAL)

    def match(self, ctx: PassContext, sg: Subgraph, op: Operator) -> Folded | Skip | None:
        if len(op.outputs) != 1 or op.outputs[0] is None or not op.inputs:
            return None
        y = op.outputs[0]
        if op.code == Op.SHAPE:
            value = self._shape(op)
        else:
            ins = [t for t in op.inputs if t is not None]
            if not all(t.is_constant and t.sparsity is None for t in ins) or any(t.is_variable for t in ins):
                return None  # computed at run time: nothing to fold
            if any(t.is_quantized for t in ins + [y]) or not has_no_activation(op):
                return Skip("constant inputs, but quantized or with a fused activation", op)
            evaluate, exact_for = _EVAL[op.code]
            if exact_for is not None and y.dtype not in exact_for:
                return Skip(f"constant inputs, but numpy's {op.type_name} is not the kernel's for this type", op)
            values = [t.value() for t in ins]
            if any(v is None for v in values):
                return None
            try:
                with np.errstate(all="ignore"):
                    value = evaluate(op, *values)
            except (ValueError, IndexError, TypeError, AttributeError):
                return Skip(f"constant inputs, but {op.type_name} could not be computed from them", op)
            if value is None:
                return None
            value = np.asarray(value)
            if value.nbytes > sum(v.nbytes for v in values) + GROWTH_LIMIT:
                return Skip(f"folding {op.type_name} would add {value.nbytes:,} bytes of constant", op)
        if value is None:
            return None
        if ctx.model.is_observed(sg, y) or y.is_variable:
            return Skip(f"{op.type_name} computes a constant, but its output {y.name!r} is a model output", op)
        dt = NUMPY_DTYPES.get(y.dtype)
        if dt is None or list(value.shape) != list(y.shape) or (value.dtype != dt and not (
                np.can_cast(value.dtype, dt, "same_kind") and np.array_equal(value.astype(dt), value))):
            return Skip(f"the folded {op.type_name} does not match its output's shape or type", op)
        return Folded(op, np.ascontiguousarray(value.astype(dt)))

    @staticmethod
    def _shape(op: Operator) -> np.ndarray | None:
        x = op.inputs[0]
        if x is None or any(d < 0 for d in (x.shape_signature or [])) or any(d < 0 for d in x.shape):
            return None  # a dynamic dimension: the shape is known at run time only
        return np.array(list(x.shape), np.int64)

    def apply(self, ctx: PassContext, sg: Subgraph, m: Folded) -> str:
        y = m.op.outputs[0]
        # A name of its own: the tensor is a constant now, the readers rewritten to read it
        const = ctx.model.new_constant(sg, f"{y.name}/folded", m.value, y.dtype)
        bypass(ctx.model, sg, m.op, const)
        return f"folded {m.op.type_name} -> {y.name!r} into a constant {list(m.value.shape)}"
