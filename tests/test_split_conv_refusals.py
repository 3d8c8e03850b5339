"""fuse-split-conv refuses every unsafe variant, leaving the model byte for
byte as it was, with the reason in the report."""

from __future__ import annotations

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import BuiltinOptions, TensorType, fb

from conftest import fuse_and_check, op_counts
from helpers import quantization
from split_conv_models import PASS, assert_left_alone, cut, quantized_lowered_depthwise


# ----------------------------------------------------------- negative cases


def _two_branch_model(rng, *, a=None, b_=None, sizes=(1, 1), c=2, split_axis=3, order=(0, 1), form=None,
                      other=None, hw=(8, 8)):
    """SPLIT x[1,H,W,c] into two pieces, conv each with options ``a``/``b_``,
    concatenate in ``order``. ``other`` names an extra reader to add."""
    a, b_ = dict(a or {}), dict(b_ or {})
    b = ModelBuilder()
    x = b.input("x", [1, *hw, c])
    if split_axis != 3:
        pieces = b.split(x, 2, axis=split_axis)
    elif form or sizes[0] != sizes[1]:
        pieces = cut(b, x, list(sizes), form or "split_v")
    else:
        pieces = b.split(x, 2)
    ys = []
    for p, opts in zip(pieces, (a, b_)):
        k = opts.pop("k", 3)
        if opts.pop("op", "conv") == "pool":
            ys.append(b.op(Op.AVERAGE_POOL_2D, [p], [list(p.shape)],
                           fb.Pool2DOptionsT(padding=0, strideW=1, strideH=1, filterWidth=1, filterHeight=1),
                           BuiltinOptions.Pool2DOptions)[0])
            continue
        ys.append(b.conv2d(p, rng.standard_normal((2, k, k, p.shape[3])).astype(np.float32),
                           rng.standard_normal(2).astype(np.float32), **opts))
    y = b.concat([ys[i] for i in order])
    b.output(y)
    if other == "piece":
        b.output(b.relu(pieces[0]))
    elif other == "branch":
        b.output(b.relu(ys[1]))
    elif other == "branch-output":
        b.output(ys[0])
    return b.to_bytes()


def test_a_piece_another_op_reads_keeps_its_split_and_the_convs_still_merge(rng):
    """The split stays for its other reader (MobileOne's k branches read one
    split); the branch convs and the concatenation become one conv."""
    r = fuse_and_check(_two_branch_model(rng, other="piece"))
    assert op_counts(r) == {"SPLIT": 1, "DEPTHWISE_CONV_2D": 1, "RELU": 1}


def test_branch_output_read_by_another_op_is_left_alone(rng):
    assert_left_alone(_two_branch_model(rng, other="branch"), "has 2 consumers")


def test_branch_output_that_is_a_model_output_is_left_alone(rng):
    assert_left_alone(_two_branch_model(rng, other="branch-output"), "is a model output")


@pytest.mark.parametrize("a,b_,reason", [
    # Each pair still yields equal output shapes, so the original model runs.
    ({"stride": (1, 1)}, {"stride": (2, 1)}, "branches differ in stride"),  # along H == 1
    ({"padding": "SAME", "k": 1}, {"padding": "VALID", "k": 1}, "branches differ in padding"),
    ({"dilation": 1}, {"dilation": 2}, "branches differ in dilation"),
    ({"activation": None}, {"activation": "RELU"}, "branches differ in activation"),
    ({"k": 3}, {"k": 5}, "branches differ in kernel size"),
])
def test_branches_that_differ_in_an_attribute_are_left_alone(a, b_, reason, rng):
    assert_left_alone(_two_branch_model(rng, a=a, b_=b_, hw=(1, 8)), reason)


def test_branches_that_differ_in_op_type_are_left_alone(rng):
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 2])
    p0, p1 = b.split(x, 2)
    b.output(b.concat([b.conv2d(p0, np.ones((1, 3, 3, 1), np.float32)),
                       b.depthwise_conv2d(p1, np.ones((1, 3, 3, 1), np.float32))]))
    assert_left_alone(b.to_bytes(), "branches mix CONV_2D and DEPTHWISE_CONV_2D")


def test_concatenation_in_another_order_than_the_split_is_left_alone(rng):
    assert_left_alone(_two_branch_model(rng, order=(1, 0)), "concatenation order does not match the split order")


def test_slices_concatenated_in_another_order_are_left_alone(rng):
    assert_left_alone(_two_branch_model(rng, order=(1, 0), form="slice"),
                      "concatenation order does not match the split order")


def test_split_on_another_axis_than_channels_is_left_alone(rng):
    assert_left_alone(_two_branch_model(rng, c=3, split_axis=1), "not on the channel axis")


def test_pieces_of_unequal_size_are_left_alone(rng):
    assert_left_alone(_two_branch_model(rng, c=4, sizes=(1, 3)), "pieces are of unequal size")


def test_a_branch_that_is_not_a_conv_is_left_alone(rng):
    assert_left_alone(_two_branch_model(rng, b_={"op": "pool"}), "not a conv")


def test_uint8_branches_whose_outputs_have_different_parameters_are_left_alone(rng):
    """The concatenation requantizes one branch (uint8 only: the int8 kernel
    refuses inputs whose parameters differ from its output's)."""
    src = quantized_lowered_depthwise(rng, c=4, m=1, out_scales=[0.04, 0.04, 0.05, 0.04],
                                      dtype=TensorType.UINT8)
    assert_left_alone(src, "branch output parameters differ")


def test_uint8_lowered_depthwise_is_left_alone(rng):
    """Same maths, but the legacy uint8 CONV_2D and DEPTHWISE_CONV_2D kernels
    round their requantization one step apart: not bit-exact, so not done."""
    assert_left_alone(quantized_lowered_depthwise(rng, c=4, m=2, dtype=TensorType.UINT8),
                      "uint8 DEPTHWISE_CONV_2D: the xnnpack kernels of target xnnpack round it one step")


def test_int8_pieces_with_their_own_parameters_are_left_alone(rng):
    """A piece whose parameters differ from its source: each branch reads its
    bytes on another scale, which one depthwise conv cannot."""
    in_q, out_q = (0.03, -5), (0.04, 3)
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 2], TensorType.INT8, quantization(*in_q))
    pieces = b.split(x, 2, quantization=quantization(*in_q))
    pieces[1].quantization = quantization(0.06, -5)
    ys = []
    for p in pieces:
        s_in = p.quant_params()[0][0]
        w = b.const(rng.integers(-127, 128, (1, 3, 3, 1)).astype(np.int8), "w", TensorType.INT8, quantization(0.01, 0))
        bias = b.const(np.zeros(1, np.int32), "b", TensorType.INT32, quantization(s_in * 0.01, 0))
        ys.append(b.conv2d(p, w, bias, version=3, quantization=quantization(*out_q)))
    b.output(b.concat(ys, quantization=quantization(*out_q)))
    assert_left_alone(b.to_bytes(), "a piece is requantized by the split")


def test_uint8_branches_with_different_filter_scales_are_left_alone(rng):
    in_q, out_q = (0.03, 128), (0.04, 120)
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 2], TensorType.UINT8, quantization(*in_q))
    ys = []
    for i, p in enumerate(b.split(x, 2, quantization=quantization(*in_q))):
        s = [0.01, 0.02][i]
        w = b.const(rng.integers(0, 256, (1, 3, 3, 1)).astype(np.uint8), "w", TensorType.UINT8, quantization(s, 127))
        bias = b.const(np.zeros(1, np.int32), "b", TensorType.INT32, quantization(in_q[0] * s, 0))
        ys.append(b.conv2d(p, w, bias, quantization=quantization(*out_q)))
    b.output(b.concat(ys, quantization=quantization(*out_q)))
    assert_left_alone(b.to_bytes(), "cannot be merged exactly")


def test_plain_concatenation_of_convs_is_not_a_candidate(rng):
    """Inception-style: convs of the whole tensor, concatenated. Silent."""
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 3])
    b.output(b.concat([b.conv2d(x, np.ones((2, 1, 1, 3), np.float32)),
                       b.conv2d(x, np.ones((2, 3, 3, 3), np.float32))]))
    src = b.to_bytes()
    r = fuse_and_check(src, passes=[PASS])
    assert r.model_bytes == src and r.report["skipped"] == []


@pytest.mark.parametrize("width", [2, 24])  # a few inputs are scanned, many counted once (Subgraph.times_read)
def test_a_branch_the_concatenation_reads_twice_is_left_alone(width, rng):
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, width])
    ys = [b.conv2d(p, rng.standard_normal((1, 3, 3, 1)).astype(np.float32), rng.standard_normal(1).astype(np.float32))
          for p in b.split(x, width)]
    b.output(b.concat(ys + ys[:1]))
    assert_left_alone(b.to_bytes(), "is read twice by CONCATENATION")
