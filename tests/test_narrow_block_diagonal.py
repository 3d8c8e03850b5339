"""narrow-block-diagonal: a dense CONV_2D whose filter is exactly zero outside
diagonal blocks becomes the depthwise or grouped conv it is; the layout maths
in :mod:`tflite_fuser.conv_layout` is pinned on its own."""

from __future__ import annotations

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.conv_layout import (block_diagonal_groups, block_nonzero, depthwise_to_ohwi, narrow_filter,
                                      ohwi_to_depthwise, plan_groups, stack_ohwi)
from tflite_fuser.pipeline import load, run_passes
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import TensorType

from conftest import fuse_and_check, op_counts
from helpers import quantization, rewrites_per_pass

PASS = "narrow-block-diagonal"


def block_diagonal(rng, cout, cin, groups, k=3, dtype=np.float32):
    """A dense [Cout,k,k,Cin] filter, zero outside G diagonal blocks, and its
    grouped form [Cout,k,k,Cin/G]."""
    opg, ipg = cout // groups, cin // groups
    narrow = rng.standard_normal((cout, k, k, ipg)).astype(dtype)
    dense = np.zeros((cout, k, k, cin), dtype)
    for o in range(cout):
        g = o // opg
        dense[o, ..., g * ipg:(g + 1) * ipg] = narrow[o]
    return dense, narrow


def conv_model(w, bias=None, hw=9, **kw) -> bytes:
    b = ModelBuilder()
    x = b.input("x", [1, hw, hw, w.shape[3]])
    b.output(b.conv2d(x, w, bias if bias is not None else np.zeros(w.shape[0], np.float32), **kw))
    return b.to_bytes()


def only_op(result):
    (op,) = result.model.main.operators
    return op


# ------------------------------------------------------------------ rewrites


@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("stride,dilation,act", [(1, 1, None), (2, 1, "RELU6"), (1, 2, "RELU")])
def test_diagonal_conv_becomes_depthwise(m, stride, dilation, act, rng):
    c = 8
    dense, narrow = block_diagonal(rng, c * m, c, c)
    r = fuse_and_check(conv_model(dense, rng.standard_normal(c * m).astype(np.float32), stride=stride,
                                  dilation=dilation, activation=act), passes=[PASS])
    assert op_counts(r) == {"DEPTHWISE_CONV_2D": 1}
    op = only_op(r)
    assert op.options.depthMultiplier == m
    assert (op.options.strideH, op.options.dilationWFactor) == (stride, dilation)
    np.testing.assert_array_equal(op.inputs[1].value(), ohwi_to_depthwise(narrow))


@pytest.mark.parametrize("cout,cin,groups", [(16, 16, 4), (32, 16, 2), (6, 12, 3)])
def test_block_diagonal_conv_becomes_grouped_conv(cout, cin, groups, rng):
    dense, narrow = block_diagonal(rng, cout, cin, groups)
    r = fuse_and_check(conv_model(dense), passes=[PASS])
    assert op_counts(r) == {"CONV_2D": 1}
    op = only_op(r)
    assert op.opcode.version == 6
    np.testing.assert_array_equal(op.inputs[1].value(), narrow)


def test_the_finest_block_structure_is_used(rng):
    """Diagonal is also block diagonal with 2 and 4 groups: depthwise wins."""
    dense, _ = block_diagonal(rng, 8, 8, 8)
    r = fuse_and_check(conv_model(dense), passes=[PASS])
    assert op_counts(r) == {"DEPTHWISE_CONV_2D": 1}


def test_int8_per_channel_diagonal_conv_becomes_int8_depthwise_exactly(rng):
    c = 8
    data, scales = int8_block_diagonal_model(rng, c, c)
    r = fuse_and_check(data, passes=[PASS])
    op = only_op(r)
    assert op.code == Op.DEPTHWISE_CONV_2D and op.opcode.version == 3
    s, _, dim = op.inputs[1].quant_params()
    np.testing.assert_array_equal(s, scales.astype(np.float32))  # the file stores float32
    assert dim == 3
    assert r.verification.max_abs_error == 0


def int8_block_diagonal_model(rng, c, groups) -> tuple[bytes, np.ndarray]:
    """An int8 conv with a per-channel-quantized block-diagonal filter, and its scales."""
    dense, _ = block_diagonal(rng, c, c, groups)
    wq = np.clip(np.round(dense * 40), -127, 127).astype(np.int8)
    scales = rng.uniform(0.005, 0.02, c)

    q = quantization
    b = ModelBuilder()
    x = b.input("x", [1, 9, 9, c], TensorType.INT8, q(0.02, -1))
    w = b.const(wq, "w", TensorType.INT8, q(scales, np.zeros(c, int)))
    bias = b.const(rng.integers(-200, 200, c).astype(np.int32), "b", TensorType.INT32,
                   q(0.02 * scales, np.zeros(c, int)))
    b.output(b.conv2d(x, w, bias, version=3, quantization=q(0.05, 4)))
    return b.to_bytes(), scales


def test_int8_block_diagonal_conv_is_made_grouped_only_where_that_is_exact_and_faster(rng):
    """XNNPACK gives the narrowed int8 grouped conv the dense conv's very
    bytes: narrowed for target xnnpack. The built-in kernels run grouped convs
    slower (and their optimized int8 one rounds one step apart): kept there."""
    src, _ = int8_block_diagonal_model(rng, 16, 4)
    r = fuse_and_check(src, passes=[PASS], target="builtin")
    assert r.model_bytes == src
    assert any("kept for target builtin" in s["reason"] for s in r.report["skipped"])
    r = fuse_and_check(src, passes=[PASS], target="xnnpack")
    (op,) = r.model.main.operators
    assert op.inputs[1].shape[3] == 4 and r.verification.max_abs_error == 0


def test_float16_filter_behind_dequantize_is_narrowed_in_float16(rng):
    dense, narrow = block_diagonal(rng, 8, 8, 8, dtype=np.float16)
    b = ModelBuilder()
    x = b.input("x", [1, 9, 9, 8])
    b.output(b.conv2d(x, b.dequantize(b.const(dense), version=3), np.zeros(8, np.float32)))
    r = fuse_and_check(b.to_bytes(), passes=[PASS])
    assert op_counts(r) == {"DEQUANTIZE": 1, "DEPTHWISE_CONV_2D": 1}
    deq = next(op for op in r.model.main.operators if op.code == Op.DEQUANTIZE)
    assert deq.inputs[0].dtype == TensorType.FLOAT16
    np.testing.assert_array_equal(deq.inputs[0].value(), ohwi_to_depthwise(narrow))


def test_split_form_and_block_diagonal_form_end_as_the_same_op(rng):
    """Both halves of the product, together: the whole pipeline narrows a
    diagonal conv that follows a fused split depthwise."""
    c = 4
    dense, _ = block_diagonal(rng, c, c, c, k=1)
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, c])
    ys = [b.conv2d(p, rng.standard_normal((1, 3, 3, 1)).astype(np.float32)) for p in b.split(x, c)]
    b.output(b.conv2d(b.concat(ys), dense, np.zeros(c, np.float32)))
    r = fuse_and_check(b.to_bytes())
    assert op_counts(r) == {"DEPTHWISE_CONV_2D": 2}


# ----------------------------------------------------------- left alone


def test_a_tiny_off_diagonal_weight_keeps_the_conv_dense(rng):
    """Exact zeros only: 1e-30 is a weight."""
    dense, _ = block_diagonal(rng, 8, 8, 8)
    dense[0, 1, 1, 5] = 1e-30
    src = conv_model(dense)
    r = fuse_and_check(src, passes=[PASS])
    assert r.model_bytes == src and rewrites_per_pass(r) == {PASS: 0}


def test_dense_convs_and_single_channel_inputs_are_not_candidates(rng):
    for w in (rng.standard_normal((8, 3, 3, 8)).astype(np.float32),
              rng.standard_normal((8, 3, 3, 1)).astype(np.float32)):
        src = conv_model(w)
        r = fuse_and_check(src, passes=[PASS])
        assert r.model_bytes == src and r.report["skipped"] == []


def test_uint8_block_diagonal_conv_is_left_alone(rng):
    """uint8 kernels round differently from one op to the other: not exact."""
    dense, _ = block_diagonal(rng, 8, 8, 2)
    wq = np.where(dense != 0, np.clip(np.round(dense * 40) + 128, 0, 255), 128).astype(np.uint8)

    q = quantization
    b = ModelBuilder()
    x = b.input("x", [1, 9, 9, 8], TensorType.UINT8, q(0.02, 128))
    w = b.const(wq, "w", TensorType.UINT8, q(0.01, 128))
    bias = b.const(np.zeros(8, np.int32), "b", TensorType.INT32, q(0.0002, 0))
    b.output(b.conv2d(x, w, bias, quantization=q(0.05, 128)))
    src = b.to_bytes()
    r = fuse_and_check(src, passes=[PASS])
    assert r.model_bytes == src
    assert any("uint8 grouped CONV_2D: the" in s["reason"] for s in r.report["skipped"])


def test_hybrid_block_diagonal_conv_is_left_alone_with_a_reason(rng):
    dense, _ = block_diagonal(rng, 4, 4, 4)

    q = quantization
    b = ModelBuilder()
    x = b.input("x", [1, 6, 6, 4])
    w = b.const(np.clip(np.round(dense * 40), -127, 127).astype(np.int8), "w", TensorType.INT8, q(0.02))
    b.output(b.conv2d(x, w, np.zeros(4, np.float32)))
    model = load(b.to_bytes())
    counts, ctx = run_passes(model, [PASS])
    assert counts == {PASS: 0}
    assert any("hybrid" in s.reason for s in ctx.skips)


# ------------------------------------------------------------- layout maths


def test_depthwise_and_ohwi_views_are_inverse_and_in_channel_order(rng):
    w = rng.standard_normal((1, 3, 3, 6))
    o = depthwise_to_ohwi(w)
    assert o.shape == (6, 3, 3, 1)
    np.testing.assert_array_equal(o[4, :, :, 0], w[0, :, :, 4])
    np.testing.assert_array_equal(ohwi_to_depthwise(o), w)


def test_plan_groups_accepts_equal_groups_and_names_what_differs():
    p = plan_groups([1, 1, 1], [2, 2, 2], [1, 1, 1])
    assert (p.is_depthwise, p.depth_multiplier, p.out_channels) == (True, 2, 6)
    p = plan_groups([4, 4], [8, 8], [4, 4])
    assert (p.groups, p.group_width, p.is_depthwise) == (2, 4, False)
    p = plan_groups([1, 3], [2, 6], [1, 1])  # depthwise pieces may differ in size
    assert p.depth_multiplier == 2 and p.in_channels == 4
    assert "unequal size" in plan_groups([1, 3], [2, 2], [1, 3])
    assert "per group" in plan_groups([1, 1], [2, 3], [1, 1])


def test_stack_ohwi_concatenates_branch_filters_along_outputs(rng):
    a, b = rng.standard_normal((2, 3, 3, 4)), rng.standard_normal((2, 3, 3, 4))
    np.testing.assert_array_equal(stack_ohwi([a, b])[2:], b)


def test_block_diagonal_groups_tries_every_divisor():
    """Nonzero where 2-blocks and 3-blocks of a 6x6 overlap: valid for G=2
    and G=3 but not G=6 (entry (0,1)); the largest valid G is 3."""
    nz = np.zeros((6, 6), bool)
    for o in range(6):
        for i in range(6):
            nz[o, i] = (o // 3 == i // 3) and (o // 2 == i // 2)
    assert nz[0, 1]
    assert block_diagonal_groups(nz) == 3
    assert block_diagonal_groups(np.eye(6, dtype=bool)) == 6
    assert block_diagonal_groups(np.ones((6, 6), bool)) == 1
    assert block_diagonal_groups(np.eye(5, 7, dtype=bool)) == 1  # gcd 1


def test_block_nonzero_compares_against_the_zero_point():
    w = np.full((2, 1, 1, 2), 128, np.uint8)
    w[0, 0, 0, 0] = 3
    np.testing.assert_array_equal(block_nonzero(w, 128), [[True, False], [False, False]])
    np.testing.assert_array_equal(block_nonzero(w, np.array([3, 128])), [[False, True], [False, False]])


def test_narrow_filter_keeps_each_rows_own_block(rng):
    dense, narrow = block_diagonal(rng, 6, 9, 3)
    np.testing.assert_array_equal(narrow_filter(dense, 3), narrow)
