"""fuse-activation: a clamp after an op that has a ``fusedActivationFunction``
becomes that fused activation.

Pattern::

    y = P(...)                        P in CONV_2D, DEPTHWISE_CONV_2D,
    z = CLAMP1(y) ... CLAMPk(..)            FULLY_CONNECTED, TRANSPOSE_CONV, ADD, MUL, SUB
                           ->   z = P(..., fused activation)

where each CLAMP is ``RELU`` [0, inf), ``RELU6`` [0, 6], ``RELU_N1_TO_1``
[-1, 1], or a written-out form: ``MAXIMUM(y, c)`` [c, inf) and
``MINIMUM(y, c)`` (-inf, c] with a uniform float constant ``c``. Clamping to
[a, b] and then to [c, d] is clamping to [max(a, c), min(b, d)] (when that is
not empty), so P's current activation and the chain compose into one
interval; the longest prefix of the chain whose interval is one TFLite can
fuse (NONE, RELU, RELU6, RELU_N1_TO_1) is fused. This covers
``MINIMUM(MAXIMUM(y, 0), 6)``, ``MAXIMUM(MINIMUM(y, 6), 0)``,
``MINIMUM(MAXIMUM(y, -1), 1)``, and RELU followed by RELU6 (= RELU6). RELU6
after RELU_N1_TO_1 would be [0, 1], which no fused activation is: refused.

Preconditions (each failure is reported with ``ctx.skip``):

- every intermediate tensor is read only by the next op of the chain and is
  neither a graph or signature output nor a variable;
- P has an options table with ``fusedActivationFunction`` and its current
  activation is one of the four above (TANH/SIGN_BIT do not compose);
- float tensors are float32; MAXIMUM/MINIMUM are fused in float models only
  (an int8 MAXIMUM with a constant compares raw integers, whose meaning
  depends on the constant's own quantization).
- int8/uint8/int16 (per-tensor quantized) outputs: a fused activation on a
  quantized op is a clamp of its output in the output's quantization. When
  RELU's input and output quantization are equal this is exact. When they
  differ, P takes the RELU's output quantization, which removes one rounding
  (to the intermediate scale ``s1``) and one clamp (to the intermediate
  range). That stays within one quantization step of the original only if
  ``s1 <= 2 * s2`` (the dropped rounding error ``s1/2`` is at most one output
  step ``s2``, and rounding is monotone) and the fused output range does not
  reach more than one step past the range the intermediate could hold (where
  the original saturated). Otherwise, and whenever P already had an activation
  (a second removed rounding could add up), the fusion is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Operator, Subgraph, Tensor
from ..ops import (ACTIVATION_NAMES, ACTIVATION_RANGE, CLAMP_OPS, INF, activation_for, format_interval,
                   fused_activation, intersect, traits)
from ..schema import ActivationFunctionType as Act
from ..schema import TensorType, op_name
from .base import FusionPass, Match, PassContext, Skip
from .predicates import same_quantization, why_not_removable
from .rebuild import clone_op, drop_dead_dequantize, opcode_for
from .weights import float_weight_of, is_constant_operand

#: float types fused here (float16 activations are not: no kernel check yet)
FLOAT_TYPES = (TensorType.FLOAT32,)


@dataclass
class ClampChain(Match):
    producer: Operator
    chain: list[Operator]
    activation: int


def clamp_of(sg: Subgraph, op: Operator) -> tuple[Tensor, tuple[float, float]] | str | None:
    """(data input, interval) of a clamp op; a reason string when it is a
    MAXIMUM/MINIMUM with a constant that is not a clamp we can fuse; None when
    the op is no clamp at all (e.g. MAXIMUM of two activations)."""
    t = traits(op.code)
    if t.clamp is not None:
        return (op.inputs[0], t.clamp) if op.inputs and op.inputs[0] is not None else None
    if t.clamp_side is None or len(op.inputs) != 2:
        return None
    consts = [i for i, x in enumerate(op.inputs) if is_constant_operand(sg, x)]
    if len(consts) != 1:
        return None
    ci = consts[0]
    x, c_t = op.inputs[1 - ci], op.inputs[ci]
    name = op_name(op.code)
    c = float_weight_of(sg, c_t)
    if isinstance(c, str):
        return f"{name} constant {c}"
    v = c.float64()
    if v.size == 0 or not (v == v.reshape(-1)[0]).all():
        return f"{name} constant is not uniform"
    if list(op.outputs[0].shape) != list(x.shape):
        return f"{name} broadcasts its input"
    k = float(v.reshape(-1)[0])
    return x, ((k, INF) if t.clamp_side == "lower" else (-INF, k))


class FuseActivation(FusionPass):
    name = "fuse-activation"
    summary = "fuse RELU/RELU6/RELU_N1_TO_1 (or MAXIMUM/MINIMUM clamps) into the producing op"
    anchors = CLAMP_OPS

    def match(self, ctx: PassContext, sg: Subgraph, op: Operator) -> ClampChain | Skip | None:
        head = clamp_of(sg, op)
        if head is None:
            return None
        if isinstance(head, str):
            return Skip(head, op)
        y = head[0]
        p = sg.producer(y)
        if p is not None and p.code in CLAMP_OPS and isinstance(clamp_of(sg, p), tuple):
            return None  # part of a chain that starts further up
        if p is None:
            return Skip("its input is not produced by an op (graph input or constant)", op)
        if not traits(p.code).activations:
            return Skip(f"producer {p.type_name} has no fused activation", op)
        if p.options is None or fused_activation(p) is None:
            return Skip(f"producer {p.type_name} has no options table", op)
        p_act = fused_activation(p)
        if p_act not in ACTIVATION_RANGE:
            return Skip(f"producer {p.type_name} already has a fused activation that does not compose", op)
        quantized = y.is_quantized
        if not quantized and y.dtype not in FLOAT_TYPES:
            return Skip(f"{p.type_name} output is not float32", op)

        # Walk the chain of clamps, composing intervals.
        interval = ACTIVATION_RANGE[p_act]
        chain: list[Operator] = []
        best: tuple[int, int] | None = None
        cur, reader = y, op
        failure = None
        while reader is not None:
            c = clamp_of(sg, reader)
            if not isinstance(c, tuple) or c[0] is not cur:
                break
            why = why_not_removable(ctx.model, sg, cur, reader)
            if why:
                failure = why
                break
            if quantized and traits(reader.code).clamp is None:
                failure = f"quantized {reader.type_name} is not fused (it compares raw integers)"
                break
            out = reader.outputs[0]
            if quantized != out.is_quantized or (not quantized and out.dtype not in FLOAT_TYPES):
                failure = f"{reader.type_name} changes the tensor type"
                break
            both = intersect(interval, c[1])
            if both is None:
                failure = f"clamping to {format_interval(interval)} then {format_interval(c[1])} is constant"
                break
            interval = both
            chain.append(reader)
            act = activation_for(interval)
            if act is not None:
                best = (len(chain), act)
            elif len(chain) - (best[0] if best else 0) >= 2:
                break
            cur, reader = out, sg.sole_consumer(out)
        if best is None:
            if failure is None:
                failure = (f"{' then '.join(c.type_name for c in chain) or op.type_name} after "
                           f"{p.type_name} ({ACTIVATION_NAMES[p_act]}) clamps to {format_interval(interval)}, "
                           "which no fused activation expresses")
            return Skip(failure, op)
        n, act = best
        chain = chain[:n]
        if quantized:
            why = quantized_fusion_reason([y] + [c.outputs[0] for c in chain], act, p_act)
            if why:
                return Skip(why, op)
        return ClampChain(p, chain, act)

    def apply(self, ctx: PassContext, sg: Subgraph, m: ClampChain) -> str:
        p, chain, act = m.producer, m.chain, m.activation
        z = chain[-1].outputs[0]
        t = traits(p.code)
        has_bias = t.bias is not None and len(p.inputs) > t.bias and p.inputs[t.bias] is not None
        new_op = clone_op(p, outputs=[z] + list(p.outputs[1:]),
                          opcode=opcode_for(ctx.model, p, bias=has_bias, activation=act != Act.NONE),
                          fusedActivationFunction=act)
        sg.replace([p] + chain, new_op)
        drop_dead_dequantize(ctx.model, sg, [x for c in chain for x in c.inputs])
        return (f"fused {' -> '.join(c.type_name for c in chain)} into {p.type_name} -> {z.name!r} "
                f"as {ACTIVATION_NAMES[act]}")


def quantized_fusion_reason(tensors: list[Tensor], act: int, producer_act: int) -> str | None:
    """Why fusing ``act`` into a quantized producer whose output is
    ``tensors[0]`` and whose chain ends in ``tensors[-1]`` would not stay
    within one quantization step (None: it does). See the module docstring."""
    first = tensors[0]
    qs = [t.quant_params() for t in tensors]
    if any(q is None for q in qs):
        return "a tensor of the chain is not quantized"
    if any(len(q[0]) != 1 for q in qs):
        return "a tensor of the chain is quantized per channel"
    if any(t.dtype != first.dtype for t in tensors):
        return "the chain changes the integer type"
    if all(same_quantization(a, b) for a, b in zip(tensors, tensors[1:])):
        return None  # a pure clamp in the same quantization: exact
    if len(tensors) != 2:
        return "more than one requantizing activation in a row"
    if producer_act != Act.NONE:
        return "the producer already has a fused activation and the quantization changes"
    (s1,), (z1,), _ = qs[0]
    (s2,), (z2,), _ = qs[1]
    if not (s1 > 0 and s2 > 0):
        return "non-positive quantization scale"
    if s1 > 2 * s2:
        return (f"the intermediate scale {s1:.4g} is more than twice the output scale {s2:.4g}: dropping its "
                "rounding could move outputs by more than one step")
    info = np.iinfo(np.dtype({TensorType.INT8: np.int8, TensorType.UINT8: np.uint8,
                              TensorType.INT16: np.int16}.get(first.dtype, np.int8)))
    lo1, hi1 = s1 * (info.min - z1), s1 * (info.max - z1)
    alo, ahi = ACTIVATION_RANGE[act]
    lo_f, hi_f = max(s2 * (info.min - z2), alo), min(s2 * (info.max - z2), ahi)
    if hi_f > hi1 + s2 or lo_f < lo1 - s2:
        return (f"the output range {format_interval((lo_f, hi_f))} reaches past the intermediate range "
                f"{format_interval((lo1, hi1))}, where the original saturates")
    return None
