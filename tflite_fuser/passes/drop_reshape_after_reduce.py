"""drop-reshape-after-reduce: a reduction that keeps its reduced axes, then a
RESHAPE that squeezes them out, is the reduction without ``keep_dims``.

Pattern (global pooling then flatten, ``x.mean((2, 3), keepdim=True)`` then
``flatten``; TF's converter moves the RESHAPE past the per-channel ops that
follow, such as a batch norm on the pooled features)::

    m  = MEAN(x [N,H,W,C], axes (1,2), keep_dims=True)     m' = MEAN(x, axes (1,2), keep_dims=False)
    m1 = MUL(m [N,1,1,C], gamma [C])                 ->    m1' = MUL(m' [N,C], gamma)
    m2 = ADD(m1, beta [C])                                  y  = ADD(m1', beta)
    y  = RESHAPE(m2, [N, C])

Without ``keep_dims`` the reduced axes are dropped from the output shape,
which is all the RESHAPE did: the elements, their order, their type and
quantization are the same. Per-element ops between the two compute the same
on the squeezed tensor, their constants squeezed alike. The same holds for
``SUM``, ``REDUCE_MAX``, ``REDUCE_MIN`` and ``REDUCE_PROD``, which share the
options.

The interpreter's RESHAPE shares its input's memory, so the op saved costs
next to nothing: measured on the BNNeck fixtures (31 alternating rounds, one
thread), 0.98-1.02x under XNNPACK and 0.98-1.01x on the built-in kernels,
within the noise. It runs by default as the graph's clean-up (one op fewer,
never slower). Exact for every type.

Preconditions (each failure is a skip with its reason):

- the reduction keeps its dimensions and has constant axes;
- from it to the RESHAPE runs a chain of per-element ops (at most
  ``MAX_CHAIN``), each reading the chain once, its other operands constants
  that broadcast without growing the chain's shape, its output of the same
  shape;
- every tensor of the chain before the RESHAPE is read by the chain alone
  and is no model output;
- the RESHAPE's shape (and shape signature, for a dynamic batch) is exactly
  the reduction's with the reduced axes removed: a RESHAPE that also merges
  or splits axes is not a squeeze and stays;
- the RESHAPE keeps its input's type and quantization.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Operator, Subgraph, Tensor
from ..ops import traits
from ..schema import BuiltinOperator as Op
from .base import FusionPass, Match, PassContext, Skip
from .predicates import same_quantization, why_not_removable
from .rebuild import clone_op

REDUCTIONS = (Op.MEAN, Op.SUM, Op.REDUCE_MAX, Op.REDUCE_MIN, Op.REDUCE_PROD)
#: per-element ops followed from the reduction to the RESHAPE
MAX_CHAIN = 8


@dataclass
class SqueezedReduce(Match):
    reduce: Operator
    chain: list[Operator]
    reshape: Operator
    axes: set[int]
    #: constants of the chain that must be reshaped to broadcast the same (id -> shape)
    reshaped: dict[int, list[int]]


def _squeezed(dims, axes: set[int]) -> list[int]:
    return [int(d) for i, d in enumerate(dims) if i not in axes]


def _chain_to_reshape(sg: Subgraph, m: Tensor) -> tuple[list[Operator], Operator] | None:
    """The per-element ops from ``m`` to a RESHAPE of the chain, and the
    RESHAPE; None when ``m`` does not lead to one that way."""
    chain, cur = [], m
    while len(chain) <= MAX_CHAIN:
        readers = sg.consumers(cur)
        if len(readers) != 1:
            return None
        u = readers[0]
        if u.code == Op.RESHAPE:
            return (chain, u) if u.inputs[0] is cur else None
        out = u.outputs[0] if len(u.outputs) == 1 else None
        if not traits(u.code).per_element or out is None or list(out.shape) != list(cur.shape) \
                or u.inputs.count(cur) != 1 or any(t is not cur and t is not None and not t.is_constant
                                                   for t in u.inputs):
            return None
        chain.append(u)
        cur = out
    return None


class DropReshapeAfterReduce(FusionPass):
    name = "drop-reshape-after-reduce"
    summary = ("MEAN/SUM/REDUCE_* with keep_dims -> RESHAPE squeezing the reduced axes => the reduction without "
               "keep_dims (1.00x measured)")
    anchors = REDUCTIONS

    def match(self, ctx: PassContext, sg: Subgraph, op: Operator) -> SqueezedReduce | Skip | None:
        if len(op.inputs) != 2 or len(op.outputs) != 1 or op.outputs[0] is None:
            return None
        if op.options is None or not op.options.keepDims:
            return None
        found = _chain_to_reshape(sg, op.outputs[0])
        if found is None:
            return None  # no squeezing RESHAPE after it: no candidate
        chain, reshape = found
        x, axes_t = op.inputs
        if x is None or axes_t is None or not axes_t.is_constant:
            return Skip(f"the {op.type_name}'s axes are not a constant", reshape)
        rank = len(x.shape)
        axes = {int(a) % rank for a in np.asarray(axes_t.value()).reshape(-1)} if rank else set()
        for t, reader in zip([op.outputs[0]] + [u.outputs[0] for u in chain], chain + [reshape]):
            why = why_not_removable(ctx.model, sg, t, reader)
            if why:
                return Skip(why, reshape)
        m, y = reshape.inputs[0], reshape.outputs[0]
        if y is None or list(y.shape) != _squeezed(m.shape, axes):
            return Skip(f"the RESHAPE to {list(y.shape) if y is not None else '?'} is not the "
                        f"{op.type_name}'s output with axes {sorted(axes)} dropped", reshape)
        sig_x, sig_y = x.shape_signature, y.shape_signature
        if (sig_x or sig_y) and list(sig_y or y.shape) != _squeezed(sig_x or x.shape, axes):
            return Skip(f"the RESHAPE's shape signature {list(sig_y or y.shape)} is not the input's "
                        f"{list(sig_x or x.shape)} without axes {sorted(axes)}", reshape)
        if y.dtype != m.dtype or not same_quantization(y, m):
            return Skip("the RESHAPE changes the type or quantization", reshape)
        reshaped: dict[int, list[int]] = {}
        for u in chain:
            for t in u.inputs:
                if t is None or not t.is_constant:
                    continue
                new = _squeezed([1] * (rank - len(t.shape)) + [int(d) for d in t.shape], axes)
                if [1] * (len(new) - len(t.shape)) + [int(d) for d in t.shape] == new:
                    continue  # broadcasts against the squeezed chain as it is
                q = t.quant_params()
                if q is not None and len(q[0]) > 1:
                    return Skip(f"{u.type_name}'s per-axis quantized constant {list(t.shape)} would need its "
                                "axis moved", reshape)
                reshaped[id(t)] = new
        return SqueezedReduce(op, chain, reshape, axes, reshaped)

    def apply(self, ctx: PassContext, sg: Subgraph, m: SqueezedReduce) -> str:
        y = m.reshape.outputs[0]
        old = [m.reduce.outputs[0]] + [u.outputs[0] for u in m.chain]
        new = [_squeezed_like(sg, t, m.axes) for t in old[:-1]] + [y]
        new_ops = [clone_op(m.reduce, outputs=[new[0]], keepDims=False)]
        for u, src, dst, cur in zip(m.chain, new, new[1:], old):
            ins = [src if t is cur else _constant_for(ctx, sg, t, m.reshaped) for t in u.inputs]
            new_ops.append(clone_op(u, inputs=ins, outputs=[dst]))
        sg.replace([m.reduce, *m.chain, m.reshape], new_ops)
        through = f" (through {', '.join(u.type_name for u in m.chain)})" if m.chain else ""
        return (f"{m.reduce.type_name} -> {y.name!r} drops its reduced axes itself (keep_dims off){through}: "
                f"the RESHAPE to {list(y.shape)} goes")


def _squeezed_like(sg: Subgraph, t: Tensor, axes: set[int]) -> Tensor:
    sig = _squeezed(t.shape_signature, axes) if t.shape_signature else None
    return sg.add_tensor(t.like(f"{t.name}/squeezed", _squeezed(t.shape, axes), sig))


def _constant_for(ctx: PassContext, sg: Subgraph, t: Tensor | None, reshaped: dict[int, list[int]]) -> Tensor | None:
    if t is None or id(t) not in reshaped:
        return t
    v = np.ascontiguousarray(t.value().reshape(reshaped[id(t)]))
    return ctx.model.new_constant(sg, f"{t.name}/squeezed", v, t.dtype, t.quantization)
