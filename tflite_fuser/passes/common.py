"""Matching helpers shared by the passes: the safety questions every fusion
asks before it may remove a tensor, and the shapes of "per-channel" constants.
"""

from __future__ import annotations

import numpy as np

from ..graph import Model, Operator, Subgraph, Tensor
from ..schema import ActivationFunctionType as Act
from ..schema import BuiltinOperator as Op

#: Ops whose output feeds a fused activation through ``fusedActivationFunction``.
CONV_OPS = (Op.CONV_2D, Op.DEPTHWISE_CONV_2D, Op.FULLY_CONNECTED, Op.TRANSPOSE_CONV)


def signature_outputs(model: Model, sg: Subgraph) -> set[Tensor]:
    return {t for sd in model.signature_defs if sd.subgraph is sg for _, t in sd.outputs}


def why_not_removable(model: Model, sg: Subgraph, t: Tensor, reader: Operator) -> str | None:
    """Why the intermediate tensor ``t`` cannot disappear into a fusion whose
    next op is ``reader``; ``None`` when it can.

    A fused pattern deletes its intermediate tensors, so each must be read by
    the pattern alone: not by another op, not as a subgraph or signature output
    (someone outside can observe it), and not be a variable (state).
    """
    if t in sg.outputs or t in signature_outputs(model, sg):
        return f"intermediate {t.name!r} is a model output"
    if t.is_variable:
        return f"intermediate {t.name!r} is a variable"
    users = sg.consumers(t)
    if len(users) != 1 or users[0] is not reader:
        return f"intermediate {t.name!r} has {len(users)} consumers"
    if reader.inputs.count(t) != 1:
        return f"intermediate {t.name!r} is read twice by {reader.type_name}"
    return None


def other_input(op: Operator, t: Tensor) -> Tensor | None:
    """For a binary op reading ``t``, the other operand."""
    if len(op.inputs) != 2:
        return None
    a, b = op.inputs
    if a is t:
        return b
    if b is t:
        return a
    return None


def per_channel_vector(t: Tensor | None, channels: int, rank: int) -> np.ndarray | None:
    """The constant ``t`` as a float64 vector of ``channels`` values when, next
    to a tensor of rank ``rank`` with ``channels`` in its last axis, it
    broadcasts along that axis only (shapes ``[]``, ``[1]``, ``[C]``,
    ``[1,...,1,C]`` of rank <= ``rank``); ``None`` otherwise: spatial or
    batch-varying constants cannot be folded into weights, and a constant of
    higher rank would change the output's shape."""
    if t is None:
        return None
    v = t.value()
    if v is None or v.dtype.kind != "f":
        return None
    shape = v.shape
    if len(shape) > rank or any(d != 1 for d in shape[:-1]):
        return None
    if len(shape) == 0 or shape[-1] == 1:
        return np.full(channels, float(v.reshape(-1)[0]) if v.size else 0.0)
    if shape[-1] != channels:
        return None
    return v.reshape(-1).astype(np.float64)


def fused_activation(op: Operator) -> int | None:
    """The op's ``fusedActivationFunction``, or None if it has no such field."""
    opts = op.options
    return getattr(opts, "fusedActivationFunction", None) if opts is not None else None


def has_no_activation(op: Operator) -> bool:
    return fused_activation(op) in (None, Act.NONE)
