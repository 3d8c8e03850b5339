"""stride-before-pointwise: a quantized strided 1x1 CONV_2D as STRIDED_SLICE +
a stride-1 conv, for the GPU target (whose delegate ignores that stride),
bit-exact on the CPU; everything else left alone."""

from __future__ import annotations

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.graph import quantization
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import TensorType

from conftest import op_counts, fuse_and_check
from helpers import ops_of

R = np.random.default_rng(3)


def pointwise(hw: int, stride: int, padding: str, dtype=TensorType.INT8, signature=None) -> bytes:
    """An int8 (or float) 1x1 conv at ``stride`` on an hw x hw input, then a ReLU'd 3x3 conv."""
    b = ModelBuilder()
    quant = dtype != TensorType.FLOAT32
    qx, qy = (quantization(1 / 128, 0), quantization(0.05, -3)) if quant else (None, None)
    x = b.input("x", [1, hw, hw, 8], dtype, qx)
    if signature:
        x.shape_signature = signature
    if quant:
        sw = np.linspace(0.004, 0.008, 16)
        w = b.const(R.integers(-127, 128, (16, 1, 1, 8)).astype(np.int8), "w", quantization=quantization(sw, 0, 0))
        bias = b.const(R.integers(-2000, 2000, 16).astype(np.int32), "b", quantization=quantization(sw / 128, 0, 0))
        y = b.conv2d(x, w, bias, stride=stride, padding=padding, dtype=dtype, quantization=qy, version=3)
    else:
        y = b.conv2d(x, R.standard_normal((16, 1, 1, 8)).astype(np.float32), stride=stride, padding=padding)
    b.output(y)
    return b.to_bytes()


@pytest.mark.parametrize("hw,stride,padding", [(8, 2, "SAME"), (7, 2, "SAME"), (7, 2, "VALID"), (9, 3, "SAME")])
def test_the_gpu_target_takes_the_stride_out_of_an_int8_pointwise_conv_bit_exactly(hw, stride, padding):
    r = fuse_and_check(pointwise(hw, stride, padding), target="gpu")
    assert op_counts(r) == {"STRIDED_SLICE": 1, "CONV_2D": 1}
    (conv,) = ops_of(r, Op.CONV_2D)
    assert (conv.options.strideH, conv.options.strideW) == (1, 1)
    (sl,) = ops_of(r, Op.STRIDED_SLICE)
    assert sl.outputs[0].quant_params()[0][0] == pytest.approx(1 / 128)
    assert r.verification.max_abs_error == 0


def test_a_dynamic_batch_keeps_its_signature_through_the_slice():
    r = fuse_and_check(pointwise(8, 2, "SAME", signature=[-1, 8, 8, 8]), target="gpu")
    (sl,) = ops_of(r, Op.STRIDED_SLICE)
    assert sl.outputs[0].shape_signature == [-1, 4, 4, 8]


@pytest.mark.parametrize("target", ["xnnpack", "builtin", "micro", "portable"])
def test_other_targets_keep_the_one_strided_conv(target):
    assert fuse_and_check(pointwise(8, 2, "SAME"), target=target).report["nothing_to_fuse"]


def test_a_float_strided_pointwise_conv_is_left_alone_on_the_gpu_which_computes_it_right():
    assert fuse_and_check(pointwise(8, 2, "SAME", TensorType.FLOAT32), target="gpu").report["nothing_to_fuse"]
