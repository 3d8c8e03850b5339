"""Fusion in int8/uint8 models.

A fused RELU on a quantized op is a clamp of its output in the output's
quantization, so activation fusion is exact when RELU keeps its input's
quantization, and within one quantization step when the producer takes the
RELU's (different) output quantization under the bounds fuse-activation
checks. Folding MUL/ADD into int8 weights is refused with a reason: each
quantized op of the chain rounds and clamps its own output, and removing those
moves results by more than the one step a verified rewrite may (measured on
the QAT fixture: 2-5 steps). The verifier allows one step on integer outputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import FIXTURES, fuse_and_check, op_counts
from tflite_fuser.builder import ModelBuilder
from tflite_fuser.schema import ActivationFunctionType as Act
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import TensorType

from helpers import ops_of, quantization, reasons

R = np.random.default_rng(0)
QX = quantization(1 / 128, 0)  # input in [-1, 1)


def int8_conv(b: ModelBuilder, x, cout: int, out_q, dtype=TensorType.INT8, per_channel=True, **kw):
    """A quantized 3x3 CONV_2D: int8 weights per output channel (or uint8 per
    tensor), int32 bias at scale s_in * s_w, as TFLite's quantizer lays it out."""
    cin = x.shape[-1]
    s_in = x.quant_params()[0][0]
    if per_channel:
        sw = np.linspace(0.004, 0.008, cout)
        w = b.const(R.integers(-127, 128, (cout, 3, 3, cin)).astype(np.int8), "w",
                    quantization=quantization(sw, 0, 0))
    else:
        sw = np.full(cout, 0.006)
        w = b.const(R.integers(0, 256, (cout, 3, 3, cin)).astype(np.uint8), "w",
                    quantization=quantization(0.006, 128))
    bias = b.const(R.integers(-2000, 2000, cout).astype(np.int32), "b",
                   quantization=quantization(s_in * sw, 0, 0))
    return b.conv2d(x, w, bias, padding="SAME", dtype=dtype, quantization=out_q, version=3, **kw)


def int8_input(b, dtype=TensorType.INT8, q=QX):
    return b.input("x", [1, 8, 8, 3], dtype, q)


# -------------------------------------------------------------- activation fusion


@pytest.mark.parametrize("act,code", [("relu", Act.RELU), ("relu6", Act.RELU6), ("relu_n1_to_1", Act.RELU_N1_TO_1)])
def test_relu_in_the_same_quantization_fuses_exactly(act, code):
    b = ModelBuilder()
    q = quantization(0.04, -10)
    y = int8_conv(b, int8_input(b), 8, q)
    b.output(getattr(b, act)(y, quantization=q))
    result = fuse_and_check(b.to_bytes())
    assert op_counts(result) == {"CONV_2D": 1}
    assert ops_of(result, Op.CONV_2D)[0].options.fusedActivationFunction == code
    assert result.verification.max_abs_error == 0


def test_uint8_per_tensor_conv_takes_its_relu():
    b = ModelBuilder()
    q = quantization(0.04, 120)
    x = int8_input(b, TensorType.UINT8, quantization(1 / 128, 128))
    b.output(b.relu(int8_conv(b, x, 8, q, dtype=TensorType.UINT8, per_channel=False), quantization=q))
    result = fuse_and_check(b.to_bytes())
    assert op_counts(result) == {"CONV_2D": 1}
    assert result.verification.max_abs_error == 0


def test_relu_with_its_own_finer_quantization_fuses_within_one_step():
    # conv out [-4.72, 5.48] at 0.04; RELU out [0, 5.46] at 0.0214 (ratio 1.87 <= 2)
    b = ModelBuilder()
    q1, q2 = quantization(0.04, -10), quantization(0.0214, -128)
    b.output(b.relu(int8_conv(b, int8_input(b), 8, q1), quantization=q2))
    result = fuse_and_check(b.to_bytes())
    assert op_counts(result) == {"CONV_2D": 1}
    (conv,) = ops_of(result, Op.CONV_2D)
    assert conv.outputs[0].quant_params()[0][0] == pytest.approx(0.0214)  # took the RELU's quantization
    assert result.verification.max_abs_error <= 1


@pytest.mark.parametrize("s2,why", [(0.015, "more than twice"), (0.03, "reaches past the intermediate range")])
def test_relu_requantization_that_could_move_more_than_a_step_is_refused(s2, why):
    b = ModelBuilder()
    b.output(b.relu(int8_conv(b, int8_input(b), 8, quantization(0.04, -10)), quantization=quantization(s2, -128)))
    result = fuse_and_check(b.to_bytes())
    assert op_counts(result) == {"CONV_2D": 1, "RELU": 1}
    assert any(why in r for r in reasons(result, "fuse-activation"))


def test_int8_residual_add_takes_the_relu():
    b = ModelBuilder()
    q = quantization(0.05, 0)
    y1 = int8_conv(b, int8_input(b), 8, q)
    y2 = b.input("skip", [1, 8, 8, 8], TensorType.INT8, q)
    b.output(b.relu(b.add(y1, y2, quantization=q), quantization=q))
    result = fuse_and_check(b.to_bytes())
    assert op_counts(result) == {"ADD": 1, "CONV_2D": 1}
    assert ops_of(result, Op.ADD)[0].options.fusedActivationFunction == Act.RELU
    assert result.verification.max_abs_error == 0


def test_quantized_maximum_is_not_taken_for_a_relu():
    b = ModelBuilder()
    q = quantization(0.04, -10)
    y = int8_conv(b, int8_input(b), 8, q)
    b.output(b.maximum(y, b.const(np.array(-10, np.int8), "zero", quantization=q), quantization=q))
    result = fuse_and_check(b.to_bytes())
    assert op_counts(result) == {"CONV_2D": 1, "MAXIMUM": 1}
    assert any("quantized" in r for r in reasons(result, "fuse-activation"))


# ------------------------------------------------------------ folding refused


def test_int8_batch_norm_is_refused_with_a_reason_but_its_relu_fuses():
    """CONV_2D -> MUL -> ADD -> RELU, all int8: the MUL/ADD stay (with the
    reason), the RELU (same quantization as the ADD) fuses into the ADD."""
    b = ModelBuilder()
    q1, q2, q3 = quantization(0.04, -10), quantization(0.05, -5), quantization(0.05, 3)
    y = int8_conv(b, int8_input(b), 8, q1)
    y = b.mul(y, b.const(R.integers(40, 127, 8).astype(np.int8), "gamma", quantization=quantization(0.01, 0)),
              quantization=q2)
    y = b.add(y, b.const(R.integers(-50, 50, 8).astype(np.int8), "beta", quantization=quantization(0.02, 0)),
              quantization=q3)
    b.output(b.relu(y, quantization=q3))
    result = fuse_and_check(b.to_bytes())
    assert op_counts(result) == {"ADD": 1, "CONV_2D": 1, "MUL": 1}
    assert ops_of(result, Op.ADD)[0].options.fusedActivationFunction == Act.RELU
    assert any("quantized" in r and "int8 weight-scale folding is not implemented" in r
               for r in reasons(result, "fold-affine"))


@pytest.mark.skipif(not (FIXTURES / "quant" / "net1_qat_int8.tflite").exists(), reason="fixture not generated")
def test_qat_int8_fixture_batch_norm_is_left_alone_with_a_reason():
    data = (FIXTURES / "quant" / "net1_qat_int8.tflite").read_bytes()
    result = fuse_and_check(data)
    assert op_counts(result) == {"ADD": 1, "CONV_2D": 1, "MUL": 1}
    assert any("output is quantized" in r for r in reasons(result, "fold-affine"))
    assert result.report["nothing_to_fuse"] and result.model_bytes == data  # untouched, byte for byte


def test_tf_int8_model_with_a_mul_before_the_conv_is_left_alone():
    tf = pytest.importorskip("tensorflow")
    r = np.random.default_rng(1)
    w = r.normal(size=(3, 3, 3, 8)).astype(np.float32)
    s = np.float32([0.5, 2.0, 1.5])
    fn = tf.function(lambda x: tf.nn.relu(tf.nn.conv2d(x * s, w, 1, "SAME")),
                     input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32)])
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([r.uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32)] for _ in range(16))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    result = fuse_and_check(conv.convert())
    assert op_counts(result) == {"CONV_2D": 1, "MUL": 1}
    assert any("input is quantized" in r for r in reasons(result, "fold-input-affine"))


# -------------------------------------------------- network 1, quantized to int8


def quantized_net1(relu_own_range: bool):
    """PyTorch Conv2d(3,16,3,padding=1) -> BatchNorm2d -> ReLU as an int8
    converter that folds the batch norm but leaves the ReLU apart would write
    it: per-channel symmetric int8 weights, int32 bias at s_in*s_w, output
    ranges calibrated on seeded inputs. The RELU keeps the conv's
    quantization, or (``relu_own_range``) gets its own calibrated [0, max].
    Returns (model bytes, module, input quantization)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()).eval()
    g = torch.Generator().manual_seed(1)
    bn = module[1]
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(16, generator=g) * 0.5)
        bn.running_var.copy_(torch.rand(16, generator=g) * 1.5 + 0.5)
        bn.weight.copy_(torch.rand(16, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(16, generator=g) * 0.5)
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy().astype(np.float64)
    w = module[0].weight.detach().numpy().astype(np.float64) * scale[:, None, None, None]
    bias = (module[0].bias.detach().numpy() - bn.running_mean.numpy()) * scale + bn.bias.detach().numpy()

    s_in = 1 / 128
    calib = np.random.default_rng(5).uniform(-1, 1, (8, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        pre = module[:2](torch.from_numpy(calib)).numpy()
    lo, hi = min(0.0, float(pre.min())), max(0.0, float(pre.max()))
    s1 = (hi - lo) / 255
    q1 = quantization(s1, int(round(-128 - lo / s1)))
    sw = np.abs(w).max(axis=(1, 2, 3)) / 127

    b = ModelBuilder()
    x = b.input("x", [1, 32, 32, 3], TensorType.INT8, quantization(s_in, 0))
    wq = np.round(w / sw[:, None, None, None]).astype(np.int8).transpose(0, 2, 3, 1).copy()
    wt = b.const(wq, "w", quantization=quantization(sw, 0, 0))
    bt = b.const(np.round(bias / (s_in * sw)).astype(np.int32), "b", quantization=quantization(s_in * sw, 0, 0))
    y = b.conv2d(x, wt, bt, padding="SAME", dtype=TensorType.INT8, quantization=q1, version=3)
    q2 = quantization(hi / 255, -128) if relu_own_range else q1
    b.output(b.relu(y, quantization=q2))
    return b.to_bytes(), module, (s_in, s1, hi / 255 if relu_own_range else s1)


def test_int8_network_1_with_a_separate_relu_becomes_one_conv_with_relu():
    data, module, (s_in, _, s_out) = quantized_net1(relu_own_range=False)
    result = fuse_and_check(data)
    assert op_counts(result) == {"CONV_2D": 1}
    (conv,) = ops_of(result, Op.CONV_2D)
    assert conv.options.fusedActivationFunction == Act.RELU
    assert result.verification.max_abs_error == 0  # same quantization: the fused clamp is exact

    # and it still computes network 1: within a few output steps of PyTorch
    import torch
    from ai_edge_litert.interpreter import Interpreter

    xf = np.random.default_rng(6).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
    xq = np.clip(np.round(xf / s_in), -128, 127).astype(np.int8)
    it = Interpreter(model_content=result.model_bytes)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], xq)
    it.invoke()
    out = it.get_output_details()[0]
    scale, zp = out["quantization"]
    got = (it.get_tensor(out["index"]).astype(np.float64) - zp) * scale
    with torch.no_grad():
        want = module(torch.from_numpy((xq.astype(np.float32) * s_in).transpose(0, 3, 1, 2))).numpy()
    assert np.abs(got - want.transpose(0, 2, 3, 1)).max() <= 3 * s_out


def test_int8_network_1_relu_with_its_own_calibrated_range_is_refused():
    """Calibrated like a converter would: conv output [min, max], RELU output
    [0, max]. Here min < -max, so the conv's scale is 2.016x the RELU's and
    dropping its rounding can move an output by two steps (forcing the fusion
    measured exactly that: max error 2 steps on 2 of 3 seeds), so the fusion
    is refused with that reason."""
    data, _, (_, s1, s2) = quantized_net1(relu_own_range=True)
    assert 2 * s2 < s1 < 2.1 * s2
    result = fuse_and_check(data)
    assert op_counts(result) == {"CONV_2D": 1, "RELU": 1}
    assert any("more than twice" in r for r in reasons(result, "fuse-activation"))
