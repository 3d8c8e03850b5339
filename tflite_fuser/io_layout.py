"""``--nhwc-io``: a model's NCHW interface, which PyTorch converters keep by
putting TRANSPOSEs at its inputs and outputs, becomes NHWC.

litert-torch exports every vision model with PyTorch's NCHW input: the
first op is ``TRANSPOSE(x, [0, 2, 3, 1])`` into the NHWC layout TFLite's
kernels use, and a rank-4 output gets ``TRANSPOSE(y, [0, 3, 1, 2])`` back.
An application that has NHWC data (a camera frame is ``H x W x C``) pays for
a transpose it would not need. This is not a rewrite inside the model: it
changes what the caller feeds and reads, so it is opt-in, every change is
listed in the report, and the proof feeds the model before and after the
change transposed inputs and compares transposed outputs.

An input qualifies when its one reader is such a TRANSPOSE (and it is no
output); an output when it is written by one and read by nothing else. The
transpose's other tensor takes the interface's place and name, in the
subgraph and in every signature, so the interface keeps its names.
"""

from __future__ import annotations

from dataclasses import dataclass

from .graph import Model, Subgraph, Tensor
from .ops import layout_constant
from .schema import BuiltinOperator as Op

TO_NHWC, TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]


@dataclass
class InterfaceChange:
    """One input or output of a subgraph, now NHWC: its value is the old
    one transposed by ``perm`` (``new = old.transpose(perm)``)."""

    subgraph: int
    side: str  # "input" or "output"
    name: str  # the interface's name (the signature's, else the tensor's)
    tensor: str
    perm: list[int]
    shape_before: list[int]
    shape_after: list[int]

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _interface_name(model: Model, sg: Subgraph, t: Tensor, side: str) -> str:
    for sd in model.signature_defs:
        if sd.subgraph is sg:
            for name, x in (sd.inputs if side == "input" else sd.outputs):
                if x is t:
                    return name
    return t.name


def _take_place(model: Model, sg: Subgraph, old: Tensor, new: Tensor, side: str) -> None:
    """``new`` becomes the interface tensor ``old`` was, under ``old``'s name."""
    ends = sg.inputs if side == "input" else sg.outputs
    ends[ends.index(old)] = new
    for sd in model.signature_defs:
        if sd.subgraph is sg:
            pairs = sd.inputs if side == "input" else sd.outputs
            pairs[:] = [(name, new if x is old else x) for name, x in pairs]
    new.name, old.name = old.name, f"{old.name}/nchw"


def to_nhwc_io(model: Model) -> list[InterfaceChange]:
    """Make every NCHW input and output of the entry subgraphs (the first, and
    those a signature names) NHWC; return what changed."""
    entry = {0} | {model.subgraphs.index(sd.subgraph) for sd in model.signature_defs}
    changes: list[InterfaceChange] = []
    for i in sorted(entry):
        sg = model.subgraphs[i]
        for x in list(sg.inputs):
            users = sg.consumers(x)
            if len(x.shape) != 4 or len(users) != 1 or x in sg.outputs:
                continue
            t = users[0]
            if t.code != Op.TRANSPOSE or t.inputs[0] is not x or layout_constant(t) != TO_NHWC:
                continue
            y = t.outputs[0]
            if y in sg.outputs:
                continue
            name = _interface_name(model, sg, x, "input")
            changes.append(InterfaceChange(i, "input", name, x.name, TO_NHWC, list(x.shape), list(y.shape)))
            sg.remove_operator(t)
            _take_place(model, sg, x, y, "input")
        for y in list(sg.outputs):
            t = sg.producer(y)
            if t is None or t.code != Op.TRANSPOSE or len(y.shape) != 4 or layout_constant(t) != TO_NCHW:
                continue
            z = t.inputs[0]
            if sg.consumers(y) or z in sg.inputs or z in sg.outputs or sg.outputs.count(y) != 1:
                continue
            name = _interface_name(model, sg, y, "output")
            changes.append(InterfaceChange(i, "output", name, y.name, TO_NHWC, list(y.shape), list(z.shape)))
            sg.remove_operator(t)
            _take_place(model, sg, y, z, "output")
    return changes
