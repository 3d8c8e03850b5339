"""Operator traits: what the passes know about TFLite's builtins, as data.

One table, one entry per builtin the passes care about, in the manner of Arm
Vela's ``OperatorInfo``: where an op's data, filter and bias inputs sit, what
kind of op it is, which fused activations its kernel honours, which quantized
types its kernels take, and which op version a feature needs (the runtime picks
a kernel by code and version, so a rewrite that adds a bias or an activation
may have to raise it). Activation semantics are data too: each fused
activation is the interval it clamps to, so composing two activations is
intersecting intervals, as the TFLite MLIR optimizer's ``foreach actFnPair``
lists pairs.

Passes ask this module; they never spell out op lists of their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .graph import Operator, Tensor
from .schema import ActivationFunctionType as Act
from .schema import BuiltinOperator as Op
from .schema import TensorType

INF = math.inf

# Kinds. The four weighted kinds are also the layouts folding.py knows.
CONV, DEPTHWISE, FC, TRANSPOSE_CONV = "conv", "depthwise", "fc", "transpose_conv"
ELEMENTWISE, ACTIVATION, SLICING, CONCATENATION, PAD, DEQUANTIZE, UNARY = (
    "elementwise", "activation", "slicing", "concatenation", "pad", "dequantize", "unary")
WEIGHTED = (CONV, DEPTHWISE, FC, TRANSPOSE_CONV)

#: the fused activations the passes compose, each as the interval it clamps to
ACTIVATION_RANGE: dict[int, tuple[float, float]] = {
    Act.NONE: (-INF, INF), Act.RELU: (0.0, INF), Act.RELU6: (0.0, 6.0), Act.RELU_N1_TO_1: (-1.0, 1.0)}
_RANGE_ACTIVATION = {v: k for k, v in ACTIVATION_RANGE.items()}
ACTIVATION_NAMES = {Act.NONE: "NONE", Act.RELU: "RELU", Act.RELU6: "RELU6", Act.RELU_N1_TO_1: "RELU_N1_TO_1"}
_FUSABLE = frozenset(ACTIVATION_RANGE)

QUANTIZED_TYPES = frozenset({TensorType.INT8, TensorType.UINT8, TensorType.INT16})


@dataclass(frozen=True)
class Traits:
    kind: str
    #: input slots: the data tensor, the filter and the bias (None: none)
    data: int = 0
    filter: int | None = None
    bias: int | None = None
    #: fused activations the kernel honours (empty: the op has none, or the
    #: runtime ignores or refuses the schema's field, as CONCATENATION's)
    activations: frozenset = frozenset()
    #: for MUL/ADD/SUB/DIV: the affine step against a constant (folding.compose)
    affine: str | None = None
    #: for RELU-family ops: the interval they clamp to; MAXIMUM/MINIMUM clamp
    #: from below/above against a constant ("lower"/"upper")
    clamp: tuple[float, float] | None = None
    clamp_side: str | None = None
    #: quantized tensor types the kernels take
    quantized: frozenset = frozenset()
    #: the op version a feature needs: {"bias": 3, "activation": 4, ...}
    versions: dict = field(default_factory=dict)

    @property
    def per_element(self) -> bool:
        """Each output element is computed from the same position of the
        operands (broadcast), so the op runs the same in any layout."""
        return self.kind in (ELEMENTWISE, ACTIVATION, UNARY)


_CONV_QUANT = frozenset({TensorType.INT8, TensorType.UINT8, TensorType.INT16})

TRAITS: dict[int, Traits] = {
    # Versions as ``op_version.cc`` and TF 2.21's converter write them: a
    # grouped CONV_2D is version 6, a dilated DEPTHWISE_CONV_2D 2 and a
    # per-channel int8 one 3, a TRANSPOSE_CONV reads a bias from version 3 and
    # its fused activation from version 4, a FULLY_CONNECTED keeps its input's
    # dimensions from version 5.
    Op.CONV_2D: Traits(CONV, 0, 1, 2, _FUSABLE, quantized=_CONV_QUANT, versions={"groups": 6}),
    Op.DEPTHWISE_CONV_2D: Traits(DEPTHWISE, 0, 1, 2, _FUSABLE, quantized=_CONV_QUANT,
                                 versions={"dilation": 2, "int8": 3}),
    Op.FULLY_CONNECTED: Traits(FC, 0, 1, 2, _FUSABLE, quantized=_CONV_QUANT, versions={"keep_num_dims": 5}),
    Op.TRANSPOSE_CONV: Traits(TRANSPOSE_CONV, 2, 1, 3, _FUSABLE, quantized=_CONV_QUANT,
                              versions={"bias": 3, "activation": 4}),
    Op.MUL: Traits(ELEMENTWISE, activations=_FUSABLE, affine="MUL", quantized=QUANTIZED_TYPES),
    Op.ADD: Traits(ELEMENTWISE, activations=_FUSABLE, affine="ADD", quantized=QUANTIZED_TYPES),
    Op.SUB: Traits(ELEMENTWISE, activations=_FUSABLE, affine="SUB", quantized=QUANTIZED_TYPES),
    # DIV's kernel takes an activation, but no pass fuses one into it (none
    # has been seen after a DIV; adding it needs its own verification).
    Op.DIV: Traits(ELEMENTWISE, affine="DIV"),
    Op.MAXIMUM: Traits(ELEMENTWISE, clamp_side="lower", quantized=QUANTIZED_TYPES),
    Op.MINIMUM: Traits(ELEMENTWISE, clamp_side="upper", quantized=QUANTIZED_TYPES),
    Op.RELU: Traits(ACTIVATION, clamp=(0.0, INF), quantized=QUANTIZED_TYPES),
    Op.RELU6: Traits(ACTIVATION, clamp=(0.0, 6.0), quantized=QUANTIZED_TYPES),
    Op.RELU_N1_TO_1: Traits(ACTIVATION, clamp=(-1.0, 1.0), quantized=QUANTIZED_TYPES),
    # No fused activation clamps to [0, 1]: a clamp the passes compose, never fuse.
    Op.RELU_0_TO_1: Traits(ACTIVATION, clamp=(0.0, 1.0)),
    # Per-element ops no pass fuses, which layout rewrites carry along as they are.
    **{code: Traits(UNARY) for code in (Op.HARD_SWISH, Op.LOGISTIC, Op.TANH, Op.ABS, Op.NEG,
                                        Op.EXP, Op.SQRT, Op.RSQRT, Op.SQUARE, Op.LEAKY_RELU, Op.ELU, Op.GELU)},
    **{code: Traits(ELEMENTWISE) for code in (Op.SQUARED_DIFFERENCE, Op.POW)},
    # Comparisons (BOOL out) and the SELECTs that read them: per element too.
    **{code: Traits(ELEMENTWISE) for code in (Op.GREATER, Op.GREATER_EQUAL, Op.LESS, Op.LESS_EQUAL, Op.SELECT,
                                              Op.SELECT_V2)},
    Op.SPLIT: Traits(SLICING, data=1),
    Op.SPLIT_V: Traits(SLICING),
    Op.SLICE: Traits(SLICING),
    Op.STRIDED_SLICE: Traits(SLICING),
    Op.CONCATENATION: Traits(CONCATENATION),
    Op.PAD: Traits(PAD),
    Op.PADV2: Traits(PAD),
    Op.DEQUANTIZE: Traits(DEQUANTIZE),
}

_NONE = Traits("other")

#: clamps: the RELU family, and MAXIMUM/MINIMUM against a constant
CLAMP_OPS = tuple(c for c, t in TRAITS.items() if t.clamp is not None or t.clamp_side is not None)


def traits(code: int) -> Traits:
    return TRAITS.get(code, _NONE)


def codes(kind: str | tuple[str, ...]) -> tuple[int, ...]:
    """The builtin codes of a kind (or kinds), in table order."""
    kinds = (kind,) if isinstance(kind, str) else kind
    return tuple(c for c, t in TRAITS.items() if t.kind in kinds)


def kind(op: Operator) -> str:
    return traits(op.code).kind


def is_weighted(op: Operator | None) -> bool:
    return op is not None and traits(op.code).kind in WEIGHTED


def slot(op: Operator, which: str) -> Tensor | None:
    """The op's ``data``, ``filter`` or ``bias`` input (None when absent)."""
    i = getattr(traits(op.code), which)
    return op.inputs[i] if i is not None and i < len(op.inputs) else None


def layout_constant(op: Operator) -> list[int] | None:
    """A TRANSPOSE's permutation or a RESHAPE's target shape, when constant:
    the second input's value, else (RESHAPE) its options' ``new_shape``."""
    t = op.inputs[1] if len(op.inputs) > 1 else None
    v = t.value() if t is not None else None
    if v is None and op.code == Op.RESHAPE:
        new_shape = getattr(op.options, "newShape", None)
        v = None if new_shape is None or len(new_shape) == 0 else new_shape
    return None if v is None else [int(d) for d in np.asarray(v).reshape(-1)]


def version_for(op_code: int, floor: int = 1, **features: bool) -> int:
    """The op version a new op of ``op_code`` with these features needs, never
    below ``floor`` (an op's current version: a higher version of a kernel
    takes what a lower one does)."""
    needs = traits(op_code).versions
    version = floor
    for f, used in features.items():
        if used and needs.get(f, 0) > version:
            version = needs[f]
    return version


# ------------------------------------------------------------------ activations


def fused_activation(op: Operator) -> int | None:
    """The op's ``fusedActivationFunction``, or None if its options have no such field."""
    opts = op.options
    return getattr(opts, "fusedActivationFunction", None) if opts is not None else None


def has_no_activation(op: Operator) -> bool:
    return fused_activation(op) in (None, Act.NONE)


def activation_for(interval: tuple[float, float]) -> int | None:
    """The fused activation that clamps to exactly ``interval``, if one does."""
    return _RANGE_ACTIVATION.get(interval)


def intersect(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float] | None:
    """Clamping to ``a`` then to ``b`` is clamping to this (None: the result
    would be a constant, which no activation is)."""
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if lo <= hi else None


def compose_activations(inner: int, outer: int) -> int | None:
    """The one fused activation equal to ``outer(inner(x))``, if there is one."""
    if inner not in ACTIVATION_RANGE or outer not in ACTIVATION_RANGE:
        return None
    both = intersect(ACTIVATION_RANGE[inner], ACTIVATION_RANGE[outer])
    return None if both is None else activation_for(both)


def format_interval(iv: tuple[float, float]) -> str:
    lo, hi = iv
    return f"{'(' if lo == -INF else '['}{lo:g}, {hi:g}{')' if hi == INF else ']'}"
