"""Groups of per-element ops that compute one function of one tensor.

The activation passes that recognise a written-out activation by what it
computes (:mod:`~tflite_fuser.elementwise_eval`: GELU, PReLU) share how they
find the ops: grown from the group's last op up, an op joining while the
tensor it writes is read inside the group alone, then the ops that compute
the last one's output from one varying tensor ``x``. Which constants an op
may read is the caller's (``constant``: a scalar for GELU, a per-channel
vector for PReLU); everything else here is the same for every activation.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from ..elementwise_eval import COMPARISONS, PROBE, evaluable, evaluate
from ..graph import Operator, Subgraph, Tensor
from ..ops import ACTIVATION_RANGE, fused_activation
from ..schema import TensorType
from .base import PassContext
from .predicates import is_float32
from .weights import scalar_of

#: ``constant(sg, t)``: ``t`` is a constant the group's evaluation can read
ConstantTest = Callable[[Subgraph, Tensor], bool]

#: the most ops a group is grown to (a polynomial erf takes ~20; the cap keeps
#: long elementwise chains linear)
MAX_OPS = 64


def _value(t: Tensor | None) -> bool:
    """A tensor the group computes with: float32, or the BOOL of a comparison."""
    return is_float32(t) or (t is not None and t.dtype == TensorType.BOOL)


def joinable(sg: Subgraph, op: Operator | None, constant: ConstantTest) -> bool:
    """An op the evaluator computes: per-element, float32 (a comparison: BOOL),
    its constants ``constant``."""
    if op is None or not evaluable(op) or len(op.outputs) != 1:
        return False
    out = op.outputs[0]
    typed = (out is not None and out.dtype == TensorType.BOOL) if op.code in COMPARISONS else is_float32(out)
    return (typed and fused_activation(op) in (None, *ACTIVATION_RANGE)
            and all(t is not None and (constant(sg, t) or (not t.is_constant and _value(t))) for t in op.inputs))


def variables(sg: Subgraph, op: Operator, constant: ConstantTest) -> list[Tensor]:
    return [t for t in op.inputs if not constant(sg, t)]


def ends_group(sg: Subgraph, last: Operator, constant: ConstantTest) -> bool:
    """``last`` is joinable and no joinable op alone reads it (then that op's
    match looks at the group)."""
    if not joinable(sg, last, constant):
        return False
    return not joinable(sg, sg.sole_consumer(last.outputs[0]), constant)


def group(ctx: PassContext, sg: Subgraph, last: Operator, constant: ConstantTest) -> set[Operator]:
    """The largest set of joinable ops ending at ``last`` in which every
    tensor an op writes (but ``last``'s) is read inside the set alone."""
    members = {last}
    changed = True
    while changed and len(members) < MAX_OPS:
        changed = False
        for op in list(members):
            for t in variables(sg, op, constant):
                p = sg.producer(t)
                if (p is not None and p not in members and joinable(sg, p, constant)
                        and not ctx.model.is_observed(sg, t) and all(c in members for c in sg.consumers(t))):
                    members.add(p)
                    changed = True
    return members


def inputs_to_try(sg: Subgraph, members: set[Operator], constant: ConstantTest) -> list[Tensor]:
    """Tensors the activation may be a function of: what the group reads
    from outside, and what it reads more than once inside (the activation's
    own input is read at least twice), earliest first (the largest group)."""
    reads: dict[Tensor, int] = {}
    for op in members:
        for t in variables(sg, op, constant):
            reads[t] = reads.get(t, 0) + 1
    position = sg.uses.position
    made = {op.outputs[0] for op in members}
    found = [t for t, n in reads.items() if t not in made or n > 1]
    return sorted(found, key=lambda t: -1 if sg.producer(t) is None else position[sg.producer(t)])


def computed_from(sg: Subgraph, members: set[Operator], x: Tensor, last: Operator,
                  constant: ConstantTest) -> list[Operator] | None:
    """The ops of ``members`` that compute ``last``'s output from ``x`` alone,
    in graph order; None when some op there reads another varying tensor,
    or writes one that an op outside them reads."""
    position = sg.uses.position
    known, ops = {x}, []
    for op in sorted(members, key=lambda o: position[o]):
        if any(t in known for t in variables(sg, op, constant)):
            ops.append(op)
            known.add(op.outputs[0])
    if not ops or ops[-1] is not last:
        return None
    chosen = set(ops)
    for op in ops:
        if any(t not in known for t in variables(sg, op, constant)):
            return None
        if op is not last and any(c not in chosen for c in sg.consumers(op.outputs[0])):
            return None
    return ops


def functions_of_one_tensor(ctx: PassContext, sg: Subgraph, last: Operator, constant: ConstantTest,
                            min_ops: int):
    """Each ``(x, ops)``: ``ops`` (at least ``min_ops``, ending at ``last``)
    compute ``last``'s output from ``x`` alone, the largest group first."""
    if not ends_group(sg, last, constant):
        return
    members = group(ctx, sg, last, constant)
    if len(members) < min_ops:
        return
    for x in inputs_to_try(sg, members, constant):
        ops = computed_from(sg, members, x, last, constant)
        if ops is not None and len(ops) >= min_ops:
            yield x, ops


def is_scalar_constant(sg: Subgraph, t: Tensor) -> bool:
    return scalar_of(sg, t) is not None


def scalar_functions(ctx: PassContext, sg: Subgraph, last: Operator,
                     min_ops: int) -> Iterator[tuple[Tensor, list[Operator], np.ndarray]]:
    """Each ``(x, ops, values)`` of :func:`functions_of_one_tensor` whose
    constants are all scalars (GELU, ELU), with what ``ops`` compute on
    ``elementwise_eval.PROBE`` values of ``x``."""
    for x, ops in functions_of_one_tensor(ctx, sg, last, is_scalar_constant, min_ops):
        yield x, ops, evaluate(ops, x, PROBE, lambda t: np.float64(scalar_of(sg, t)))
