"""drop-layout-island: an NCHW island between a TRANSPOSE in and its inverse out
runs in NHWC, and both transposes go.

Pattern (onnx2tf's squeeze-excite blocks, which keep PyTorch's NCHW between
two convs)::

    t = TRANSPOSE(x, (0, 3, 1, 2))         NHWC -> NCHW
    h = HARD_SWISH(t)                      island ops, all in NCHW
    m = MEAN(h, axes (2, 3), keep_dims)
    r = RESHAPE(m, [1, 1, 1, C])           a size-1 move: NCHW -> NHWC, out
    ... g = RESHAPE(conv(r), [1, C, 1, 1]) a size-1 move: NHWC -> NCHW, in
    y = MUL(h, g * 1/6 + 0.5 ...)
    z = TRANSPOSE(y, (0, 2, 3, 1))         NCHW -> NHWC, out

Every op of the island works the same in either layout once its constants
and axes follow the permutation: elementwise and activation ops (constant
operands broadcast: permuted along), MEAN (axes remapped). So the island is
rewritten in NHWC: the way in (the TRANSPOSE, or a RESHAPE that only moves
size-1 axes, which is a transpose of them) and the ways out disappear, and
each island tensor takes the NHWC shape. Data movement only changes: exact.

Two more ways out need no TRANSPOSE back, since what they compute does not
depend on the layout (onnx2tf's classifier heads: ``conv -> TRANSPOSE ->
activation -> MEAN(keep_dims) [1, C, 1, 1] -> FULLY_CONNECTED``):

- an op that reads the island tensor as flat memory (a FULLY_CONNECTED
  without ``keep_num_dims``, a RESHAPE to any shape) where the tensor's
  non-1 axes keep their order under the permutation, so both layouts hold
  the same bytes in the same order: it reads the NHWC tensor instead;
- a MEAN without ``keep_dims`` whose remaining axes keep their order: it
  reduces the NHWC tensor over the remapped axes, to the very same output.

Preconditions: every tensor reached from the entry TRANSPOSE is rank 4 and
read only by island ops or ways out; the island ops are unary elementwise or
activations, binary elementwise with island or constant operands (or operands
that enter through a size-1 RESHAPE), or MEAN with constant axes and
keep_dims; no island tensor is a model output; every way out gives back the
NHWC tensor (the inverse TRANSPOSE, or the RESHAPE to the NHWC shape), or
computes what it computes from it in NHWC as above.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Operator, Subgraph, Tensor
from ..ops import traits
from ..schema import BuiltinOperator as Op
from ..schema import TensorType
from .base import FusionPass, Match, PassContext, Skip
from .rebuild import clone_op

@dataclass
class Island(Match):
    entry: Operator
    perm: list[int]
    ops: list[Operator]  # island ops, in list order
    entries: list[Operator]  # ways in: the TRANSPOSE and size-1 RESHAPEs
    exits: list[Operator]  # ways out


def _perm(op: Operator) -> list[int] | None:
    p = op.inputs[1].value() if len(op.inputs) > 1 and op.inputs[1] is not None else None
    return None if p is None or p.size != 4 else [int(v) % 4 for v in p.reshape(-1)]


def _same_memory(shape: list[int], perm: list[int]) -> bool:
    """An NCHW tensor of ``shape`` and its NHWC twin (``perm``: NHWC -> NCHW)
    hold the same elements in the same order: their non-1 axes keep their
    order (NCHW axis ``a`` is NHWC's ``perm[a]``)."""
    moved = [perm[a] for a, d in enumerate(shape) if d != 1]
    return moved == sorted(moved)


def _reads_layout_free(u: Operator, t: Tensor, perm: list[int]) -> bool:
    """Whether ``u`` computes the same from the NHWC twin of its island
    input ``t`` (with its axes remapped where it has any): a flat reader of
    a tensor whose layouts share their memory, or a MEAN without keep_dims
    whose remaining axes keep their order."""
    if u.inputs[:1] != [t] or u.inputs.count(t) != 1 or len(u.outputs) != 1:
        return False
    if u.code == Op.FULLY_CONNECTED:
        return u.options is not None and not u.options.keepNumDims and _same_memory(list(t.shape), perm)
    if u.code == Op.RESHAPE:
        return _same_memory(list(t.shape), perm)
    if u.code == Op.MEAN and u.options is not None and not u.options.keepDims:
        axes = u.inputs[1].value() if len(u.inputs) > 1 and u.inputs[1] is not None else None
        if axes is None:
            return False
        kept = [perm[a] for a in range(4) if a not in {int(v) % 4 for v in axes.reshape(-1)}]
        return kept == sorted(kept)
    return False


def _nhwc_axes(model, sg: Subgraph, op: Operator, perm: list[int]) -> Tensor:
    """A MEAN's constant axes, NCHW, as the NHWC axes (NCHW axis a is NHWC's perm[a])."""
    axes = sorted(perm[int(a) % 4] for a in op.inputs[1].value().reshape(-1))
    return model.new_constant(sg, f"{op.outputs[0].name}/axes", np.array(axes, np.int32), TensorType.INT32)


def _moves_size_1_axes(src: list[int], dst: list[int], perm: list[int]) -> bool:
    """``dst`` is ``src`` transposed by ``perm`` (a RESHAPE between them moves
    only size-1 axes, so it is that transpose)."""
    return len(src) == len(dst) == 4 and [src[p] for p in perm] == list(dst) and \
        sum(d != 1 for d in src) <= 1


class DropLayoutIsland(FusionPass):
    name = "drop-layout-island"
    summary = "NCHW island between a TRANSPOSE and its inverse => run in NHWC, both transposes gone"
    anchors = (Op.TRANSPOSE,)

    def match(self, ctx: PassContext, sg: Subgraph, op: Operator) -> Island | Skip | None:
        perm = _perm(op)
        x = op.inputs[0]
        if perm is None or perm == [0, 1, 2, 3] or x is None or len(x.shape) != 4 or \
                ctx.model.is_observed(sg, op.outputs[0]):
            return None
        inv = list(np.argsort(perm))
        found = _walk(ctx, sg, op, perm, inv)
        if isinstance(found, str):
            return None if found == "" else Skip(f"a TRANSPOSE into an NCHW island, but {found}", op)
        ops, entries, exits = found
        if not exits or not (ops or any(_stays(e, inv) for e in exits)):
            return None
        return Island(op, perm, ops, entries, exits)

    def apply(self, ctx: PassContext, sg: Subgraph, m: Island) -> str:
        model = ctx.model
        inv = [int(v) for v in np.argsort(m.perm)]
        new: dict[int, Tensor] = {}  # id(island tensor) -> its NHWC tensor
        for e in m.entries:
            new[id(e.outputs[0])] = e.inputs[0]

        def nhwc(t: Tensor) -> Tensor:  # NCHW = NHWC transposed by perm, so NHWC = NCHW transposed by inv
            if id(t) not in new:
                sig = [t.shape_signature[i] for i in inv] if t.shape_signature else None
                new[id(t)] = sg.add_tensor(t.like(f"{t.name}/nhwc", [t.shape[i] for i in inv], sig))
            return new[id(t)]

        for e in m.entries:
            sg.remove_operator(e)
        for op in m.ops:
            ins = []
            for t in op.inputs:
                if t is None or id(t) in new:
                    ins.append(new.get(id(t)) if t is not None else None)
                elif t.is_constant and op.code != Op.MEAN:
                    ins.append(_permuted_constant(model, sg, t, inv))
                else:
                    ins.append(t)
            if op.code == Op.MEAN:
                ins[1] = _nhwc_axes(model, sg, op, m.perm)
            sg.replace([op], clone_op(op, inputs=ins, outputs=[nhwc(t) for t in op.outputs]))
        for e in m.exits:
            out, src = e.outputs[0], new[id(e.inputs[0])]
            if _stays(e, inv):  # computes the same from the NHWC tensor
                ins = [src, *e.inputs[1:]]
                if e.code == Op.MEAN:
                    ins[1] = _nhwc_axes(model, sg, e, m.perm)
                sg.replace([e], clone_op(e, inputs=ins))
                continue
            for user in sg.consumers(out):
                sg.replace([user], clone_op(user, inputs=[src if t is out else t for t in user.inputs]))
            sg.remove_operator(e)
        return (f"ran the NCHW island after TRANSPOSE -> {m.entry.outputs[0].name!r} ({len(m.ops)} ops) in NHWC: "
                f"{len(m.entries)} way(s) in and {len(m.exits)} way(s) out dropped")


def _permuted_constant(model, sg: Subgraph, t: Tensor, inv: list[int]) -> Tensor:
    """A constant operand broadcast against an NCHW tensor, for the NHWC one."""
    v = t.value()
    if v is None or v.ndim == 0 or v.size == 1:
        return t
    v4 = v.reshape((1,) * (4 - v.ndim) + v.shape)
    return model.new_constant(sg, f"{t.name}/nhwc", np.ascontiguousarray(v4.transpose(inv)), t.dtype, t.quantization)


def _walk(ctx: PassContext, sg: Subgraph, entry: Operator, perm: list[int], inv: list[int]):
    """(island ops in list order, ways in, ways out) from ``entry``, or why
    not ("" when it is no island at all). The island grows forward (every
    reader of an island tensor is an island op or a way out) and backward
    (every operand of an island op is an island tensor, a constant, or comes
    through island ops from a size-1 RESHAPE out of NHWC)."""
    model = ctx.model
    island: set[int] = {id(entry.outputs[0])}
    ops: dict[int, Operator] = {}
    entries = {id(entry): entry}
    exits: dict[int, Operator] = {}
    todo = [entry.outputs[0]]

    def take(u: Operator) -> str | None:
        """Make ``u`` an island op (its operands taken in too)."""
        why = _runs_in_nhwc(u)
        if why:
            return why
        ops[id(u)] = u
        for o in u.outputs:
            if id(o) not in island:
                island.add(id(o))
                todo.append(o)
        for t in u.inputs[1:] if u.code == Op.MEAN else u.inputs:
            why = operand(u, t)
            if why:
                return why
        return None

    def operand(u: Operator, t: Tensor | None) -> str | None:
        if t is None or id(t) in island:
            return None
        if t.is_constant:
            v = t.value()
            return None if v is not None and v.ndim <= 4 else f"{u.type_name}'s constant does not broadcast in rank 4"
        p = sg.producer(t)
        if p is not None and p.code == Op.RESHAPE and p.inputs[0] is not None and \
                _moves_size_1_axes(list(p.inputs[0].shape), list(t.shape), perm):
            entries[id(p)] = p
            island.add(id(t))
            todo.append(t)
            return None
        if p is not None and traits(p.code).per_element:
            return take(p)
        return f"{u.type_name} reads {t.name!r} from outside the island"

    while todo:
        t = todo.pop()
        if len(t.shape) != 4:
            return "an island tensor is not rank 4"
        if model.is_observed(sg, t):
            return f"island tensor {t.name!r} is a model output"
        for u in sg.consumers(t):
            if id(u) in ops or id(u) in exits or id(u) in entries:
                continue
            if u.code == Op.TRANSPOSE and _perm(u) == inv:
                exits[id(u)] = u
                continue
            if u.code == Op.RESHAPE and _moves_size_1_axes(list(t.shape), list(u.outputs[0].shape), inv):
                exits[id(u)] = u
                continue
            if _reads_layout_free(u, t, perm):
                exits[id(u)] = u
                continue
            why = take(u)
            if why is not None:
                return why if ops or exits else ""
    if any(model.is_observed(sg, e.outputs[0]) for e in exits.values() if not _stays(e, inv)):
        return "a way out is a model output"
    order = {id(o): i for i, o in enumerate(sg.operators)}
    return (sorted(ops.values(), key=lambda o: order[id(o)]), list(entries.values()), list(exits.values()))


def _stays(e: Operator, inv: list[int]) -> bool:
    """A way out that stays, reading the NHWC tensor (not a TRANSPOSE back,
    nor a RESHAPE to the NHWC shape, which go)."""
    if e.code == Op.TRANSPOSE:
        return False
    if e.code == Op.RESHAPE:
        return not _moves_size_1_axes(list(e.inputs[0].shape), list(e.outputs[0].shape), inv)
    return True


def _runs_in_nhwc(u: Operator) -> str | None:
    """Why ``u`` does not compute the same in NHWC (None: it does, with its
    constants permuted and its axes remapped)."""
    if len(u.outputs) != 1 or u.outputs[0] is None:
        return f"{u.type_name} has several outputs"
    if traits(u.code).per_element:
        return None
    if u.code == Op.MEAN:
        axes = u.inputs[1].value() if len(u.inputs) > 1 and u.inputs[1] is not None else None
        if axes is None or u.options is None or not u.options.keepDims:
            return "a MEAN without constant axes and keep_dims"
        return None
    return f"{u.type_name} is not an op that runs the same in NHWC"
