"""What a group of per-element ops computes, as a function of one tensor.

Converters write activations out of elementwise ops (tanh-GELU as nine:
``x*x, *x, *0.044715, +x, *0.7978846, TANH, +1, *x, *0.5``), in whatever order
the source expression had. Rather than list orders, a pass evaluates the
ops on probe values of their one varying input and compares the result with
the activation's formula: two chains that compute the same function on
thousands of points across the range that matters are the same activation
(and the interpreter then proves the rewrite on real data, as always).

:func:`evaluate` runs ops in float64 with numpy, constants read from the
graph; :data:`PROBE` is the probe. Pure arithmetic; no graph edits.
"""

from __future__ import annotations

import math

import numpy as np

from .graph import Operator, Tensor
from .ops import ACTIVATION_RANGE, fused_activation
from .schema import ActivationFunctionType as Act
from .schema import BuiltinOperator as Op

#: probe values: dense where activations bend, sparse out to where they saturate
PROBE = np.concatenate([np.linspace(-8.0, 8.0, 4001), [-30.0, -16.0, 16.0, 30.0]])

UNARY = {
    Op.TANH: np.tanh,
    Op.LOGISTIC: lambda v: 0.5 * (1.0 + np.tanh(0.5 * v)),  # 1 / (1 + exp(-v)) without overflow
    Op.EXP: np.exp,
    Op.NEG: np.negative,
    Op.ABS: np.abs,
    Op.SQUARE: np.square,
    Op.RELU: lambda v: np.maximum(v, 0.0),
    Op.RELU6: lambda v: np.clip(v, 0.0, 6.0),
    Op.RELU_N1_TO_1: lambda v: np.clip(v, -1.0, 1.0),
    Op.RELU_0_TO_1: lambda v: np.clip(v, 0.0, 1.0),
}
BINARY = {
    Op.MUL: np.multiply,
    Op.ADD: np.add,
    Op.SUB: np.subtract,
    Op.DIV: np.divide,
    Op.MAXIMUM: np.maximum,
    Op.MINIMUM: np.minimum,
    Op.POW: np.power,
    Op.SQUARED_DIFFERENCE: lambda a, b: np.square(a - b),
    # Comparisons give BOOL, which a SELECT reads (litert-torch writes ELU as
    # SELECT(x >= 0, x, EXP(x) - 1)).
    Op.GREATER: np.greater,
    Op.GREATER_EQUAL: np.greater_equal,
    Op.LESS: np.less,
    Op.LESS_EQUAL: np.less_equal,
}
TERNARY = {Op.SELECT: np.where, Op.SELECT_V2: np.where}
#: ops whose output is BOOL (a condition), not a number
COMPARISONS = frozenset({Op.GREATER, Op.GREATER_EQUAL, Op.LESS, Op.LESS_EQUAL})
EVALUABLE = frozenset(UNARY) | frozenset(BINARY) | frozenset(TERNARY)

_ERF = np.vectorize(math.erf, otypes=[np.float64])

#: custom ops of the same kind, by custom code: TF ops the converter kept as
#: Flex ops (onnx2tf's tf_converter backend writes ONNX's ``Erf`` as FlexErf,
#: which the stock interpreter cannot run)
CUSTOM_UNARY = {"FlexErf": _ERF}


def kernel(op: Operator):
    """The numpy function ``op`` computes, or None when it is no per-element op we know."""
    if op.code in UNARY:
        return UNARY[op.code]
    if op.code in BINARY:
        return BINARY[op.code]
    if op.code in TERNARY:
        return TERNARY[op.code]
    return CUSTOM_UNARY.get(op.opcode.custom_code) if op.code == Op.CUSTOM else None


def evaluable(op: Operator) -> bool:
    return kernel(op) is not None


def evaluate(ops: list[Operator], x: Tensor, xs: np.ndarray, constant) -> np.ndarray:
    """The last op's output when ``x`` takes the values ``xs``. ``ops`` are in
    graph order; every input is ``x``, an earlier op's output, or a constant
    (``constant(t)`` gives its float64 value, broadcast like the op does)."""
    return run_ops(ops, {x: xs}, constant)[ops[-1].outputs[0]]


def run_ops(ops: list[Operator], values: dict, constant) -> dict:
    """Every op's output, in float64, from ``values`` (tensor -> array) of
    the tensors the ops read that are not constants; ``values`` is extended."""
    with np.errstate(all="ignore"):
        for op in ops:
            args = [values[t] if t in values else constant(t) for t in op.inputs]
            v = kernel(op)(*args)
            act = fused_activation(op)
            if act not in (None, Act.NONE):
                lo, hi = ACTIVATION_RANGE[act]
                v = np.clip(v, lo, hi)
            values[op.outputs[0]] = v
    return values


def elu(v: np.ndarray) -> np.ndarray:
    """ELU as TFLite's kernel defines it (alpha 1): ``x`` above 0, ``exp(x) - 1`` below."""
    return np.where(v > 0, v, np.expm1(np.minimum(v, 0.0)))


def gelu(v: np.ndarray, approximate: bool) -> np.ndarray:
    """GELU as TFLite's kernel defines it: ``x * Phi(x)`` (erf), or its tanh form."""
    if approximate:
        return 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))
    return 0.5 * v * (1.0 + _ERF(v / math.sqrt(2.0)))


def same_function(got: np.ndarray, want: np.ndarray, rtol: float = 1e-5) -> bool:
    """Equal on every probe point, to ``rtol`` of ``max(1, |want|)`` (float32
    constants such as 0.7978846 stand for sqrt(2/pi))."""
    return bool(np.all(np.isfinite(got)) and np.all(np.abs(got - want) <= rtol * np.maximum(1.0, np.abs(want))))
