"""Building the ops a rewrite puts in: copies of old ops with changes, inputs
extended, opcodes at the version a feature needs, dead DEQUANTIZEs removed."""

from __future__ import annotations

from ..graph import Model, Operator, Subgraph, Tensor
from ..ops import traits, version_for
from ..schema import BuiltinOperator as Op


def clone_op(op: Operator, *, inputs=None, outputs=None, opcode=None, **option_changes) -> Operator:
    """A new operator like ``op`` (same options, copied so ``op`` is untouched)
    with the given inputs/outputs/opcode and option fields changed."""
    opts = copy_options(op.options)
    for k, v in option_changes.items():
        setattr(opts, k, v)
    ins = list(op.inputs if inputs is None else inputs)
    mvi = op.mutating_variable_inputs
    if mvi is not None and len(mvi) != len(ins):
        mvi = (list(mvi) + [False] * len(ins))[:len(ins)]
    return op.copy(opcode=opcode or op.opcode, inputs=ins,
                   outputs=list(op.outputs if outputs is None else outputs),
                   options=opts, mutating_variable_inputs=mvi,
                   intermediates=list(op.intermediates) if op.intermediates else op.intermediates)


def copy_options(opts):
    """A shallow copy of an object-API options table (nested lists and
    tables stay shared: passes only ever set scalar fields)."""
    if opts is None:
        return None
    new = opts.__class__.__new__(opts.__class__)
    new.__dict__.update(opts.__dict__)
    return new


def opcode_for(model: Model, op: Operator, **features: bool):
    """``op``'s opcode entry, or one of the version its new ``features`` need
    (``ops.TRAITS``: a TRANSPOSE_CONV that gains a bias or an activation needs
    a newer kernel); custom ops keep theirs."""
    opcode = op.opcode
    if opcode.custom_code is not None or not traits(opcode.code).versions:
        return opcode
    version = version_for(opcode.code, opcode.version, **features)
    return opcode if version == opcode.version else model.opcode(opcode.code, version)


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
        if (p is not None and p.code == Op.DEQUANTIZE and not sg.consumers(t) and not model.is_observed(sg, t)
                and p.inputs and p.inputs[0] is not None and p.inputs[0].is_constant):
            sg.remove_operator(p)


def bypass(model: Model, sg: Subgraph, op: Operator, x: Tensor) -> None:
    """Remove ``op``, whose one output equals ``x``: each reader of that
    output is swapped, in its own slot, for a copy reading ``x`` (so the list
    stays sorted: ``x`` comes before ``op``, which comes before them all)."""
    y = op.outputs[0]
    for reader in sg.consumers(y):
        sg.replace([reader], clone_op(reader, inputs=[x if t is y else t for t in reader.inputs]))
    sg.remove_operator(op)
    drop_dead_dequantize(model, sg, op.inputs)
