"""Per-channel affine chains after a tensor, and their fold into weights.

The folding passes share two steps. :func:`walk_chain` follows the constant
MUL/ADD/SUB/DIV ops that read a tensor, one after the other (the batch norm a
converter left apart: ``(y - mean) * inv_std * gamma + beta``), composing them
into one per-channel ``y*scale + shift`` in float64, up to the first op that
cannot join (reported) or one that carries an activation (taken over).
:func:`fold_into` computes the folded filter and bias of one weighted op for
a slice of those channels and rounds them for storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import folding
from ..folding import FoldError
from ..graph import Operator, Subgraph, Tensor
from ..ops import ACTIVATION_RANGE, fused_activation, traits
from ..schema import ActivationFunctionType as Act
from ..schema import TensorType, op_name
from .base import PassContext, Skip
from .predicates import why_not_removable
from .weights import Weight, WeightStore, float_weight_of, is_constant_operand


def constant_readers(sg: Subgraph, t: Tensor) -> list[Operator]:
    """The MUL/ADD/SUB/DIV readers of ``t`` whose other operand is a
    constant. A reader whose other operand is computed (a residual ADD, a
    squeeze-excite gate ``x * s``) is no batch norm left apart: it is not a
    candidate, and saying it was "left alone" would be noise."""
    found = []
    for u in sg.consumers(t):
        if traits(u.code).affine is None or len(u.inputs) != 2:
            continue
        other = u.inputs[1] if u.inputs[0] is t else u.inputs[0]
        if is_constant_operand(sg, other):
            found.append(u)
    return found


@dataclass
class Chain:
    """The ops of a chain, composed: ``output = input * scale + shift``, then
    ``activation`` (the last op's, which the folded op takes over)."""

    ops: list[Operator]
    scale: np.ndarray
    shift: np.ndarray
    activation: int = Act.NONE
    #: a candidate that could not join, and why
    skips: list[Skip] = field(default_factory=list)

    @property
    def output(self) -> Tensor:
        return self.ops[-1].outputs[0]


def walk_chain(ctx: PassContext, sg: Subgraph, y: Tensor, channels: int,
               candidates: list[Operator] | None = None, axis: int = -1, keeps_input: bool = False) -> Chain:
    """The affine chain that reads ``y`` (``channels`` wide on its last axis,
    or on ``axis``).

    Each op joins when ``y`` (or the previous op's output) is read by it alone
    and no one outside observes it (``y`` itself need not be when
    ``keeps_input``: a chain that stays as ops, reading it), its output is float32 of the same shape,
    its constant (FLOAT32, or FLOAT16 behind DEQUANTIZE) broadcasts along the
    channel axis only, and it carries no activation, or one of RELU, RELU6,
    RELU_N1_TO_1, which ends the chain and moves onto the folded op.
    """
    chain = Chain([], *folding.identity(channels))
    candidates = constant_readers(sg, y) if candidates is None else candidates
    cur = y
    while candidates:
        nxt = candidates[0]
        try:
            step, act = affine_step(ctx, sg, cur, nxt, channels, removes_input=not (keeps_input and cur is y),
                                    axis=axis)
            chain.scale, chain.shift = folding.compose(chain.scale, chain.shift, *step)
        except FoldError as e:
            chain.skips.append(Skip(str(e), *candidates))
            break
        chain.ops.append(nxt)
        cur = nxt.outputs[0]
        if act != Act.NONE:
            chain.activation = act
            break
        candidates = constant_readers(sg, cur)
    return chain


def affine_step(ctx: PassContext, sg: Subgraph, cur: Tensor, nxt: Operator, channels: int,
                removes_input: bool = True, axis: int = -1):
    """The composed step ``(op, c, const_first)`` for ``nxt`` reading ``cur``
    and the activation ``nxt`` carries; FoldError with the reason when
    ``nxt`` cannot join the chain (``cur`` need not be removable when it is
    the chain's own input, which stays: ``removes_input`` False)."""
    why = why_not_removable(ctx.model, sg, cur, nxt) if removes_input else None
    if why:
        raise FoldError(why)
    out = nxt.outputs[0]
    if out is None or out.dtype != TensorType.FLOAT32 or out.is_quantized:
        raise FoldError(f"{op_name(nxt.code)} output is not float32")
    if nxt.options is None:
        raise FoldError(f"{op_name(nxt.code)} has no options table")
    a = fused_activation(nxt)
    a = Act.NONE if a is None else a
    if a not in ACTIVATION_RANGE:
        raise FoldError(f"{op_name(nxt.code)} carries an activation the conv cannot take over")
    other = nxt.inputs[1] if nxt.inputs[0] is cur else nxt.inputs[0]
    const = float_weight_of(sg, other)
    if isinstance(const, str):
        raise FoldError(f"the constant operand of {op_name(nxt.code)}: {const}")
    if out.shape != cur.shape:
        raise FoldError(f"the constant broadcasts {list(cur.shape)} to {list(out.shape)}")
    vec = folding.channel_vector(const.raw, channels, len(cur.shape), axis)  # it converts to float64
    return (traits(nxt.code).affine, vec, nxt.inputs[0] is not cur), a


@dataclass
class Folded:
    """One weighted op's folded weights, rounded for storage (None: the old
    tensor stays as it is)."""

    op: Operator
    filter: Weight
    bias: Weight | None
    new_filter: np.ndarray | None
    new_bias: np.ndarray | None


def fold_into(store: WeightStore, op: Operator, weights: tuple[Weight, Weight | None], scale: np.ndarray,
              shift: np.ndarray) -> Folded:
    """``op``'s weights with ``y*scale + shift`` folded in; FoldError when the
    result is not finite or does not fit its storage type. Nothing in the
    graph changes yet (``store`` writes at apply time)."""
    w, b = weights
    kind = traits(op.code).kind
    keep_filter, zero_shift = folding.is_identity(scale, shift)
    new_w, new_b = folding.fold_output_affine(kind, w.raw, None if b is None else b.raw, scale, shift)
    w_arr = None if keep_filter else store.round(new_w, w, "filter")
    b_arr = None if keep_filter and zero_shift and b is not None else store.round(new_b, b, "bias")
    return Folded(op, w, b, w_arr, b_arr)


def folded_inputs(store: WeightStore, f: Folded, name: str) -> dict[int, Tensor]:
    """The input slots of ``f.op`` that change, with the new tensors."""
    t = traits(f.op.code)
    changes = {}
    if f.new_filter is not None:
        changes[t.filter] = store.add(f.new_filter, f.filter, f"{name}/filter")
    if f.new_bias is not None:
        changes[t.bias] = store.add(f.new_bias, f.bias, f"{name}/bias")
    return changes
