"""fuse-gelu: GELU written out of elementwise ops becomes one GELU.

Pattern (onnx2tf writes PyTorch's ``gelu(x, approximate="tanh")`` so; the
order and grouping vary with the source expression)::

    y = 0.5 * x * (1 + TANH(0.7978846 * (x + 0.044715 * x*x*x)))   ->   y = GELU(x, approximate=True)
    y = 0.5 * x * (1 + erf(x / sqrt(2)))  (any elementwise form)   ->   y = GELU(x, approximate=False)

The group is found from its last op up: each op joins while the tensor it
writes is read by the group alone, until one tensor ``x`` remains that the
group reads (several times: GELU needs ``x`` at both ends). What the group
computes is then evaluated on probe values of ``x`` (:mod:`~tflite_fuser.
elementwise_eval`) and compared with TFLite's two GELU formulas, so every
order and grouping of the expression is one comparison. The tanh form
(GELU's common approximation) and the erf form differ by up to 2e-4 of
``x``: far beyond the 1e-5 the comparison allows, so the variant is never
confused. GELU is one kernel where the written form is nine passes over the
tensor; TFLite Micro has no GELU kernel (``targets.GELU``).

Preconditions: float32 throughout; constants are float32 scalars; every
tensor of the group except ``x`` is read inside the group alone and is no
model output; ops are per-element ones the evaluator knows, with no fused
activation beyond the RELU family.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..elementwise_eval import EVALUABLE, PROBE, evaluate, gelu, same_function
from ..graph import Operator, Subgraph, Tensor
from ..ops import ACTIVATION_RANGE, fused_activation
from ..schema import BuiltinOperator as Op
from ..schema import BuiltinOptions, fb
from ..targets import GELU
from .base import FusionPass, Match, PassContext, Skip
from .predicates import is_float32
from .rebuild import drop_dead_dequantize
from .weights import scalar_of

#: the fewest ops a written-out GELU takes (x * Phi(x) needs a product, a
#: transcendental, a shift and a scale), and the most a group is grown to
#: (a polynomial erf takes ~20; the cap keeps long elementwise chains linear)
_MIN_OPS, _MAX_OPS = 4, 64


@dataclass
class WrittenGelu(Match):
    x: Tensor
    ops: list[Operator]
    approximate: bool


def _is_scalar_constant(sg: Subgraph, t: Tensor) -> bool:
    return scalar_of(sg, t) is not None


def _joinable(sg: Subgraph, op: Operator | None) -> bool:
    """An op the evaluator computes: per-element, float32, its constants scalars."""
    return (op is not None and op.code in EVALUABLE and len(op.outputs) == 1 and is_float32(op.outputs[0])
            and fused_activation(op) in (None, *ACTIVATION_RANGE)
            and all(t is not None and (_is_scalar_constant(sg, t) or (not t.is_constant and is_float32(t)))
                    for t in op.inputs))


def _variables(sg: Subgraph, op: Operator) -> list[Tensor]:
    return [t for t in op.inputs if not _is_scalar_constant(sg, t)]


def _group(ctx: PassContext, sg: Subgraph, last: Operator) -> set[Operator]:
    """The largest set of joinable ops ending at ``last`` in which every
    tensor an op writes (but ``last``'s) is read inside the set alone."""
    members = {last}
    changed = True
    while changed and len(members) < _MAX_OPS:
        changed = False
        for op in list(members):
            for t in _variables(sg, op):
                p = sg.producer(t)
                if (p is not None and p not in members and _joinable(sg, p) and not ctx.model.is_observed(sg, t)
                        and all(c in members for c in sg.consumers(t))):
                    members.add(p)
                    changed = True
    return members


def _inputs_to_try(sg: Subgraph, group: set[Operator]) -> list[Tensor]:
    """Tensors the activation may be a function of: what the group reads
    from outside, and what it reads more than once inside (the activation's
    own input is read at least twice), earliest first (the largest group)."""
    reads: dict[Tensor, int] = {}
    for op in group:
        for t in _variables(sg, op):
            reads[t] = reads.get(t, 0) + 1
    position = sg.uses.position
    made = {op.outputs[0] for op in group}
    found = [t for t, n in reads.items() if t not in made or n > 1]
    return sorted(found, key=lambda t: -1 if sg.producer(t) is None else position[sg.producer(t)])


def _computed_from(sg: Subgraph, group: set[Operator], x: Tensor, last: Operator) -> list[Operator] | None:
    """The ops of ``group`` that compute ``last``'s output from ``x`` alone,
    in graph order; None when some op there reads another varying tensor,
    or writes one that an op outside them reads."""
    position = sg.uses.position
    known, ops = {x}, []
    for op in sorted(group, key=lambda o: position[o]):
        if any(t in known for t in _variables(sg, op)):
            ops.append(op)
            known.add(op.outputs[0])
    if not ops or ops[-1] is not last:
        return None
    chosen = set(ops)
    for op in ops:
        if any(t not in known for t in _variables(sg, op)):
            return None
        if op is not last and any(c not in chosen for c in sg.consumers(op.outputs[0])):
            return None
    return ops


class FuseGelu(FusionPass):
    name = "fuse-gelu"
    summary = "GELU written out of elementwise ops (tanh or erf form, any order) => GELU"
    anchors = (Op.MUL, Op.DIV)

    def match(self, ctx: PassContext, sg: Subgraph, last: Operator) -> WrittenGelu | Skip | None:
        if not is_float32(last.outputs[0] if last.outputs else None) or not _joinable(sg, last):
            return None
        readers = sg.consumers(last.outputs[0])
        if len(readers) == 1 and _joinable(sg, readers[0]):
            return None  # not the end of an elementwise group: its reader's match looks at it
        group = _group(ctx, sg, last)
        if len(group) < _MIN_OPS:
            return None
        y = last.outputs[0]
        for x in _inputs_to_try(sg, group):
            ops = _computed_from(sg, group, x, last)
            if ops is None or len(ops) < _MIN_OPS:
                continue
            got = evaluate(ops, x, PROBE, lambda t: np.float64(scalar_of(sg, t)))
            for approximate in (True, False):
                if not same_function(got, gelu(PROBE, approximate)):
                    continue
                why = ctx.target.lacks(GELU)
                if why:
                    form = "tanh" if approximate else "erf"
                    return Skip(f"GELU ({form} form) written as {len(ops)} ops; {why}", last)
                return WrittenGelu(x, ops, approximate) if list(x.shape) == list(y.shape) else None
        return None

    def apply(self, ctx: PassContext, sg: Subgraph, m: WrittenGelu) -> str:
        y = m.ops[-1].outputs[0]
        opts = fb.GeluOptionsT()
        opts.approximate = m.approximate
        new = Operator(ctx.model.opcode(Op.GELU), [m.x], [y], options=opts,
                       options_type=BuiltinOptions.GeluOptions)
        sg.replace(m.ops, new)
        drop_dead_dequantize(ctx.model, sg, [t for op in m.ops for t in op.inputs])
        return (f"wrote {len(m.ops)} elementwise ops -> {y.name!r} as GELU "
                f"({'tanh approximation' if m.approximate else 'erf'})")
