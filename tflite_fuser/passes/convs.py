"""Convolutions as the merging passes see them: what two convs must share to
be one (:class:`ConvGeometry`), and how the one merged depthwise or grouped
conv is built (:func:`grouped_conv`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from ..graph import Model, Operator, Tensor
from ..ops import version_for
from ..schema import BuiltinOperator as Op
from ..schema import BuiltinOptions, TensorType, fb


@dataclass(frozen=True)
class ConvGeometry:
    """What two convs must share to be one conv: padding, strides, dilations
    and fused activation."""

    padding: int
    stride_h: int
    stride_w: int
    dilation_h: int
    dilation_w: int
    activation: int

    #: the words a difference is reported in
    WORDS: ClassVar[dict[str, str]] = {"padding": "padding", "stride_h": "stride", "stride_w": "stride", "dilation_h": "dilation",
             "dilation_w": "dilation", "activation": "activation"}

    @staticmethod
    def of(op: Operator) -> "ConvGeometry | None":
        o = op.options
        if o is None:
            return None
        return ConvGeometry(o.padding, o.strideH, o.strideW, o.dilationHFactor, o.dilationWFactor,
                            o.fusedActivationFunction)

    def difference(self, other: "ConvGeometry") -> str | None:
        """The first attribute the two differ in, in words (None: none)."""
        for f in dataclasses.fields(self):
            if getattr(self, f.name) != getattr(other, f.name):
                return self.WORDS[f.name]
        return None

    @property
    def dilated(self) -> bool:
        return max(self.dilation_h, self.dilation_w) > 1

    def set_on(self, opts, activation: int) -> None:
        """Write this geometry, with ``activation``, into a conv options table."""
        opts.padding, opts.strideH, opts.strideW = self.padding, self.stride_h, self.stride_w
        opts.dilationHFactor, opts.dilationWFactor = self.dilation_h, self.dilation_w
        opts.fusedActivationFunction = activation


def grouped_conv(model: Model, x: Tensor, filt: Tensor, bias: Tensor, out: Tensor, *, depthwise: bool,
                 depth_multiplier: int, geometry: ConvGeometry, activation: int, like: Operator) -> Operator:
    """The one DEPTHWISE_CONV_2D (``depthwise``) or grouped CONV_2D that
    replaces convs like ``like``, at the op version TF's converter writes for
    it (never below ``like``'s own, for a kernel of the same op)."""
    if depthwise:
        code = Op.DEPTHWISE_CONV_2D
        floor = like.opcode.version if like.code == code else 1
        version = version_for(code, floor, int8=x.dtype == TensorType.INT8, dilation=geometry.dilated)
        opts = fb.DepthwiseConv2DOptionsT()
        opts.depthMultiplier = depth_multiplier
        opts_type = BuiltinOptions.DepthwiseConv2DOptions
    else:
        code = Op.CONV_2D
        version = version_for(code, like.opcode.version, groups=True)
        opts = fb.Conv2DOptionsT()
        if like.code == code:
            opts.quantizedBiasType = like.options.quantizedBiasType
        opts_type = BuiltinOptions.Conv2DOptions
    geometry.set_on(opts, activation)
    return Operator(model.opcode(code, version), [x, filt, bias], [out], options=opts, options_type=opts_type)
