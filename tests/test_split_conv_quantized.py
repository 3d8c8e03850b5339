"""fuse-split-conv on quantized and float16 models: only the bit-exact
rewrites (int8 depthwise), float16 weights kept as float16 behind DEQUANTIZE
(or float32 when asked), shared DEQUANTIZEs left to their other readers."""

from __future__ import annotations

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.pipeline import load
from tflite_fuser.schema import TensorType, fb

from conftest import fuse_and_check, op_counts
from helpers import quantization
from split_conv_models import PASS, assert_left_alone, assert_sorted, depthwise_filter, fused_op, quantized_lowered_depthwise


# ------------------------------------------------------------------ quantized


def test_int8_branches_with_identical_parameters_become_one_int8_depthwise_conv(rng):
    r = fuse_and_check(quantized_lowered_depthwise(rng, post_relu=True))
    assert op_counts(r) == {"DEPTHWISE_CONV_2D": 1}
    op = fused_op(r)
    assert op.opcode.version == 3 and op.inputs[1].dtype == TensorType.INT8
    assert len(op.inputs[1].quant_params()[0]) == 1
    assert op.options.fusedActivationFunction == fb.ActivationFunctionType.RELU
    assert r.verification.max_abs_error == 0


def test_int8_branches_with_different_filter_scales_merge_into_per_channel_scales(rng):
    scales = list(rng.uniform(0.004, 0.02, 8))
    r = fuse_and_check(quantized_lowered_depthwise(rng, filter_scales=scales))
    op = fused_op(r)
    s, zp, dim = op.inputs[1].quant_params()
    np.testing.assert_allclose(s, np.repeat(scales, 2))  # channel c*M+m has branch c's scale
    assert dim == 3 and not zp.any()
    assert r.verification.max_abs_error == 0


def int8_lowered_grouped(rng) -> bytes:
    groups, cin, cout = 4, 16, 16
    in_q, out_q = (0.02, 1), (0.05, -2)
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, cin], TensorType.INT8, quantization(*in_q))
    ys = []
    for p in b.split(x, groups, quantization=quantization(*in_q)):
        w = b.const(rng.integers(-127, 128, (cout // groups, 3, 3, cin // groups)).astype(np.int8), "w",
                    TensorType.INT8, quantization(0.01, 0))
        bias = b.const(rng.integers(-300, 300, cout // groups).astype(np.int32), "b", TensorType.INT32,
                       quantization(0.02 * 0.01, 0))
        ys.append(b.conv2d(p, w, bias, version=3, quantization=quantization(*out_q)))
    b.output(b.concat(ys, quantization=quantization(*out_q)))
    return b.to_bytes()


def test_int8_lowered_grouped_conv_stays_split_for_the_builtin_kernels(rng):
    """The optimized built-in int8 grouped CONV_2D rounds one step apart from
    per-group CONV_2D (tests/test_grouped_conv_runtime.py): for target
    builtin the split stays."""
    assert_left_alone(int8_lowered_grouped(rng), "int8 grouped CONV_2D", target="builtin")


@pytest.mark.parametrize("target", ["xnnpack", "micro"])
def test_int8_lowered_grouped_conv_merges_where_the_kernels_are_exact(target, rng):
    """XNNPACK and TFLite Micro give the merged int8 grouped CONV_2D the very
    bytes of the per-group convs: merged, and proved bit-exact on them."""
    r = fuse_and_check(int8_lowered_grouped(rng), passes=[PASS], target=target)
    assert op_counts(r) == {"CONV_2D": 1}
    assert r.verification.kernels == target and r.verification.max_abs_error == 0


def fp16_lowered_depthwise(rng, c=8, m=2):
    """Float16 weights behind one DEQUANTIZE each, as the TF converter's
    float16 quantization stores them."""
    w = depthwise_filter(rng, c, m).astype(np.float16)
    bias = rng.standard_normal(c * m).astype(np.float16)
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, c])
    ys = []
    for i, p in enumerate(b.split(x, c)):
        wf = b.dequantize(b.const(w[..., i * m:(i + 1) * m].transpose(3, 1, 2, 0).copy()), version=3)
        bf = b.dequantize(b.const(bias[i * m:(i + 1) * m].copy()), version=3)
        ys.append(b.conv2d(p, wf, bf))
    b.output(b.concat(ys))
    return b.to_bytes(), w, bias


def test_float16_weights_behind_dequantize_stay_float16(rng):
    src, w, bias = fp16_lowered_depthwise(rng)
    assert load(src).op_counts()["DEQUANTIZE"] == 16
    r = fuse_and_check(src)
    assert op_counts(r) == {"DEQUANTIZE": 2, "DEPTHWISE_CONV_2D": 1}
    op = fused_op(r)
    filt, b_ = (r.model.main.producer(t).inputs[0] for t in op.inputs[1:])
    assert filt.dtype == b_.dtype == TensorType.FLOAT16
    np.testing.assert_array_equal(filt.value(), w)
    np.testing.assert_array_equal(b_.value(), bias)
    assert_sorted(r)


def test_float16_weights_are_stored_as_float32_when_asked(rng):
    src, w, _ = fp16_lowered_depthwise(rng)
    r = fuse_and_check(src, fp16_weights="float32")
    assert op_counts(r) == {"DEPTHWISE_CONV_2D": 1}
    filt = fused_op(r).inputs[1]
    assert filt.dtype == TensorType.FLOAT32
    np.testing.assert_array_equal(filt.value(), w.astype(np.float32))


def test_a_float16_filter_shared_with_another_op_keeps_its_dequantize(rng):
    """One DEQUANTIZE output feeds both branches and a conv outside the
    pattern: it stays for that conv, the fused filter gets its own."""
    w = rng.standard_normal((1, 3, 3, 1)).astype(np.float16)
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 2])
    z = b.input("z", [1, 8, 8, 1])
    wf = b.dequantize(b.const(w), version=3)
    p0, p1 = b.split(x, 2)
    y = b.concat([b.conv2d(p0, wf, np.zeros(1, np.float32)), b.conv2d(p1, wf, np.ones(1, np.float32))])
    b.output(y, b.conv2d(z, wf))
    r = fuse_and_check(b.to_bytes())
    assert op_counts(r) == {"DEQUANTIZE": 2, "CONV_2D": 1, "DEPTHWISE_CONV_2D": 1}
    assert_sorted(r)
