"""The named preconditions passes state their patterns with.

Each is a small question about the graph, answered with ``None`` when the
condition holds and with the reason, in words, when it does not: the reason is
what ``-v`` prints for a candidate left alone. Named after the constraints of
the TFLite MLIR optimizer (``HasOneUse``, ``CanFuseConvOrDepthwiseConv``) and
ONNX Runtime's ``SatisfyCondition``, so a pass file reads as its pattern and
its list of conditions.
"""

from __future__ import annotations

import numpy as np

from .. import folding
from ..folding import FoldError
from ..graph import Model, Operator, Subgraph, Tensor
from ..ops import WEIGHTED, fused_activation, slot, traits
from ..schema import ActivationFunctionType as Act
from ..schema import BuiltinOperator as Op
from ..schema import TensorType, type_name
from .weights import Weight, float_weight_of, is_constant_operand


def why_not_removable(model: Model, sg: Subgraph, t: Tensor, reader: Operator) -> str | None:
    """Why the intermediate tensor ``t`` cannot disappear into a fusion whose
    next op is ``reader`` (None: it can).

    A fused pattern deletes its intermediate tensors, so each must be read by
    the pattern alone (``HasOneUse``): not by another op, not as a subgraph or
    signature output (someone outside can observe it), and not be a variable
    (state).
    """
    if model.is_observed(sg, t):
        return f"intermediate {t.name!r} is a model output"
    if t.is_variable:
        return f"intermediate {t.name!r} is a variable"
    if sg.sole_consumer(t) is not reader:
        return f"intermediate {t.name!r} has {sg.consumer_count(t)} consumers"
    if sg.times_read(reader, t) != 1:
        return f"intermediate {t.name!r} is read twice by {reader.type_name}"
    return None


def same_quantization(a: Tensor, b: Tensor) -> bool:
    qa, qb = a.quant_params(), b.quant_params()
    if qa is None or qb is None:
        return qa is None and qb is None
    return (np.array_equal(qa[0], qb[0]) and np.array_equal(qa[1], qb[1])
            and (len(qa[0]) == 1 or qa[2] == qb[2]))


def is_float32(t: Tensor | None) -> bool:
    return t is not None and t.dtype == TensorType.FLOAT32 and not t.is_quantized


def arithmetic_of(t: Tensor | None) -> str:
    """What a tensor that is not plain float32 holds, in the words a skip
    reason needs: "quantized INT8", "float16", ... (a float16-activation model
    is not an int8 one: the reason must say which)."""
    if t is None:
        return "absent"
    name = type_name(t.dtype)
    return f"quantized {name}" if t.is_quantized else name.lower()


def constant_operand(sg: Subgraph, op: Operator) -> int | None:
    """Index of the one constant operand of a binary op (a constant tensor,
    quantized or not, or a float16 constant behind DEQUANTIZE); None if there
    is not exactly one."""
    if len(op.inputs) != 2:
        return None
    const = [i for i, t in enumerate(op.inputs) if is_constant_operand(sg, t)]
    return const[0] if len(const) == 1 else None


def float_weights(sg: Subgraph, op: Operator, what: str = "") -> tuple[Weight, Weight | None] | str:
    """``op``'s filter and bias as float weights (the bias may be absent), or
    why they are not float constants we can fold into."""
    if op.code == Op.FULLY_CONNECTED and getattr(op.options, "weightsFormat", 0) != 0:
        return "FULLY_CONNECTED weights are in a shuffled format"
    w = float_weight_of(sg, slot(op, "filter"))
    if isinstance(w, str):
        return f"{what}filter {w}" + (" (hybrid/int8 weights are not folded)" if "quantized" in w else "")
    b_t = slot(op, "bias")
    b = None
    if b_t is not None:
        b = float_weight_of(sg, b_t)
        if isinstance(b, str):
            return f"{what}bias {b}"
    return w, b


def output_affine_weights(sg: Subgraph, op: Operator) -> tuple[Weight, Weight | None] | str:
    """The weights a per-channel MUL/ADD after the weighted op ``op`` folds
    into, or why nothing can fold into it (``CanFuseConvOrDepthwiseConv``).

    A fused activation stops it (``relu(y) * c`` is not ``relu(y * c)``); so do
    a quantized output (in int8 each op of the chain requantizes to its own
    scale and clamps to its own range, and removing those roundings and clamps
    moves outputs by more than the one step a verified rewrite may move them)
    and weights that are not float constants.
    """
    name = op.type_name
    if traits(op.code).kind not in WEIGHTED:
        return f"{name} has no weights"
    if op.options is None:
        return f"{name} has no options table"
    if fused_activation(op) not in (None, Act.NONE):
        return f"{name} already has a fused activation; a MUL/ADD after it cannot move before it"
    y = op.outputs[0]
    if y.is_quantized:
        return (f"{name} output is quantized: folding MUL/ADD into int8 weights cannot be made exact "
                "(the intermediate requantization and clamp would be lost); int8 weight-scale folding "
                "is not implemented")
    if y.dtype != TensorType.FLOAT32:
        return f"{name} output is not float32"
    return float_weights(sg, op)


def why_no_output_affine(sg: Subgraph, op: Operator) -> str | None:
    """Why nothing after the weighted op ``op`` can fold into its weights (None: it can)."""
    found = output_affine_weights(sg, op)
    return found if isinstance(found, str) else None


def input_affine_weights(sg: Subgraph, op: Operator) -> tuple[Weight, Weight | None] | str:
    """The weights a per-channel MUL/ADD feeding the weighted op ``op``
    folds into (padding permitting), or why it cannot: the input must be
    float32 (in int8 the MUL requantizes its result, which cannot move into
    the weights exactly) and the filter's input channels must fit it."""
    name = op.type_name
    if op.options is None:
        return f"{name} has no options table"
    x = slot(op, "data")
    if x.is_quantized:
        return (f"{name} input is quantized: the MUL/ADD requantizes its result, which cannot move into "
                "the weights exactly")
    if x.dtype != TensorType.FLOAT32:
        return f"{name} input is not float32"
    found = float_weights(sg, op, f"{name} ")
    if isinstance(found, str):
        return found
    try:
        folding.input_channel_map(traits(op.code).kind, slot(op, "filter").shape, int(x.shape[-1]))
    except FoldError as e:
        return str(e)
    return found


def spatial_zero_pad(pad: Operator) -> np.ndarray | str:
    """A PAD's (or PADV2's) constant ``[4, 2]`` amounts when it pads H and W
    only, with real zeros (what SAME padding and a convolution's window pad
    with); otherwise why not."""
    amounts = pad.inputs[1].value() if len(pad.inputs) > 1 and pad.inputs[1] is not None else None
    if amounts is None or amounts.dtype.kind not in "iu" or amounts.shape != (4, 2):
        return "paddings are not a constant [4, 2] integer tensor"
    amounts = amounts.astype(np.int64)
    if amounts[0].any() or amounts[3].any():
        return f"PAD pads the batch or channel axis ({amounts.tolist()})"
    if (amounts < 0).any():
        return f"PAD has negative paddings ({amounts.tolist()})"
    if pad.code == Op.PADV2 and len(pad.inputs) > 2 and pad.inputs[2] is not None:
        c = pad.inputs[2]
        v = c.value()
        if v is None or v.size != 1:
            return "PADV2 pad value is not a constant scalar"
        q = c.quant_params()
        real = (float(v.reshape(-1)[0]) - float(q[1][0])) * float(q[0][0]) if q is not None else float(v.reshape(-1)[0])
        if real != 0.0:
            return f"PADV2 pads with {real:g}, not 0"
    return amounts
