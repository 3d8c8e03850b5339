"""fuse-split-conv, depthwise: a depthwise conv lowered to one CONV_2D (or
DEPTHWISE_CONV_2D) per channel comes back as one DEPTHWISE_CONV_2D, from the
problem statement's network up to a 2,643-conv MobileNetV2, verified by the
interpreter."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.pipeline import load, run_passes
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import BuiltinOptions, fb

from conftest import fuse_and_check, op_counts
from helpers import run_tflite
from split_conv_models import PASS, depthwise_filter, depthwise_then_pointwise, fused_op, lowered_depthwise


# ------------------------------------------------ the problem statement's network


def test_torch_depthwise_plus_pointwise_lowered_to_split_becomes_depthwise_and_matches_pytorch():
    """Conv2d(3,3,3,groups=3,padding=1) + Conv2d(3,16,1), depthwise part
    reaching TFLite as SPLIT + 3 CONV_2D + CONCATENATION."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    dw = torch.nn.Conv2d(3, 3, 3, groups=3, padding=1)
    pw = torch.nn.Conv2d(3, 16, 1)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = pw(dw(x)).numpy().transpose(0, 2, 3, 1)
    w_dw = dw.weight.detach().numpy().transpose(0, 2, 3, 1)  # OIHW -> OHWI [3,3,3,1]
    b = ModelBuilder()
    xt = b.input("x", [1, 32, 32, 3])
    ys = [b.conv2d(p, w_dw[c:c + 1], dw.bias.detach().numpy()[c:c + 1]) for c, p in enumerate(b.split(xt, 3))]
    y = b.conv2d(b.concat(ys), pw.weight.detach().numpy().transpose(0, 2, 3, 1), pw.bias.detach().numpy())
    b.output(y)
    src = b.to_bytes()
    assert load(src).op_counts() == {"CONV_2D": 4, "CONCATENATION": 1, "SPLIT": 1}

    r = fuse_and_check(src)
    assert op_counts(r) == {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1}
    assert r.report["passes"][[p["name"] for p in r.report["passes"]].index(PASS)]["rewrites"] == 1
    got = run_tflite(r.model_bytes, x.numpy().transpose(0, 2, 3, 1).copy())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("c", [32, 256])
@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2)])
def test_lowered_depthwise_becomes_one_depthwise_conv(c, m, stride, dilation, rng):
    r = fuse_and_check(depthwise_then_pointwise(rng, c, m, stride=stride, dilation=dilation))
    assert op_counts(r) == {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1}
    op = fused_op(r)
    o = op.options
    assert (o.depthMultiplier, o.strideH, o.strideW, o.dilationHFactor) == (m, stride, stride, dilation)
    assert op.inputs[1].shape == [1, 3, 3, c * m]
    assert op.opcode.version == (2 if dilation > 1 else 1)


def test_depthwise_filter_is_in_tflite_channel_order(rng):
    """Output channel c*M+m of the fused filter is branch c's filter row m."""
    c, m = 4, 3
    w = depthwise_filter(rng, c, m)
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, c])
    b.output(lowered_depthwise(b, x, w, np.arange(c * m, dtype=np.float32)))
    r = fuse_and_check(b.to_bytes())
    op = fused_op(r)
    np.testing.assert_array_equal(op.inputs[1].value(), w)
    np.testing.assert_array_equal(op.inputs[2].value(), np.arange(c * m, dtype=np.float32))


@pytest.mark.parametrize("form", ["split_v", "slice", "strided_slice"])
def test_every_way_of_cutting_the_channels_is_recognised(form, rng):
    r = fuse_and_check(depthwise_then_pointwise(rng, 8, 1, form=form))
    assert op_counts(r) == {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1}


def test_per_branch_fused_activation_is_kept(rng):
    r = fuse_and_check(depthwise_then_pointwise(rng, 16, 2, activation="RELU6"))
    assert op_counts(r) == {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1}
    assert fused_op(r).options.fusedActivationFunction == fb.ActivationFunctionType.RELU6


@pytest.mark.parametrize("branch_act,post,want", [
    (None, "relu", fb.ActivationFunctionType.RELU),
    (None, "relu6", fb.ActivationFunctionType.RELU6),
    ("RELU", "relu6", fb.ActivationFunctionType.RELU6),
    ("RELU6", "relu", fb.ActivationFunctionType.RELU6),
])
def test_activation_after_the_concatenation_is_fused(branch_act, post, want, rng):
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 8])
    y = lowered_depthwise(b, x, depthwise_filter(rng, 8, 1), rng.standard_normal(8).astype(np.float32),
                          activation=branch_act)
    b.output(getattr(b, post)(y))
    r = fuse_and_check(b.to_bytes())
    assert op_counts(r) == {"DEPTHWISE_CONV_2D": 1}
    assert fused_op(r).options.fusedActivationFunction == want


def test_activation_that_does_not_compose_stays_a_separate_op(rng):
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 4])
    y = lowered_depthwise(b, x, depthwise_filter(rng, 4, 1), np.zeros(4, np.float32), activation="RELU6")
    b.output(b.relu_n1_to_1(y))
    r = fuse_and_check(b.to_bytes())
    assert op_counts(r) == {"DEPTHWISE_CONV_2D": 1, "RELU_N1_TO_1": 1}


def test_depthwise_branches_per_group_become_one_depthwise_conv(rng):
    """Branches that are themselves DEPTHWISE_CONV_2D on pieces of several
    channels, unequal ones included: still one depthwise conv."""
    c, m, sizes = 8, 2, [1, 3, 4]
    w = depthwise_filter(rng, c, m)
    bias = rng.standard_normal(c * m).astype(np.float32)
    b = ModelBuilder()
    x = b.input("x", [1, 10, 10, c])
    ys, start = [], 0
    for p, s in zip(b.split_v(x, sizes), sizes):
        ys.append(b.depthwise_conv2d(p, w[..., start * m:(start + s) * m], bias[start * m:(start + s) * m],
                                     depth_multiplier=m, dilation=2))
        start += s
    b.output(b.concat(ys))
    r = fuse_and_check(b.to_bytes())
    assert op_counts(r) == {"DEPTHWISE_CONV_2D": 1}
    np.testing.assert_array_equal(fused_op(r).inputs[1].value(), w)


def test_lowered_depthwise_branches_are_recognised(rng):
    r = fuse_and_check(depthwise_then_pointwise(rng, 6, 2, branch="depthwise"))
    assert op_counts(r) == {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1}


def test_missing_branch_biases_are_created_as_zeros(rng):
    """The kernels require a bias, so a model without one cannot be verified:
    check the graph the pass writes."""
    b = ModelBuilder()
    x = b.input("x", [1, 6, 6, 4])
    ys = []
    for p in b.split(x, 4):
        y = b.conv2d(p, rng.standard_normal((2, 3, 3, 1)).astype(np.float32))
        b.sg.operators[-1].inputs[2] = None
        ys.append(y)
    b.output(b.concat(ys))
    model = load(b.to_bytes())
    counts, _ = run_passes(model, [PASS])
    assert counts == {PASS: 1}
    (op,) = model.main.operators
    np.testing.assert_array_equal(op.inputs[2].value(), np.zeros(8, np.float32))


# --------------------------------------------------------------------- scale


def make_divisible(v, d=8):
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


MBV2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
        (6, 320, 1, 1)]


def mobilenet_v2_split_builder(rng, alpha=0.35, size=96) -> bytes:
    """MobileNetV2 (BN folded, ReLU6 fused, as a converter would leave them)
    with all 17 depthwise convs in split form: one CONV_2D per channel."""
    def w(*shape):
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    def bias(n):
        return rng.uniform(-0.1, 0.1, n).astype(np.float32)

    b = ModelBuilder()
    x = b.input("image", [1, size, size, 3])
    cin = make_divisible(32 * alpha)
    h = b.conv2d(x, w(cin, 3, 3, 3), bias(cin), stride=2, activation="RELU6")
    for t, c, n, s in MBV2:
        cout = make_divisible(c * alpha)
        for i in range(n):
            inp, e, stride = h, cin * t, (s if i == 0 else 1)
            if t != 1:
                h = b.conv2d(h, w(e, 1, 1, cin), bias(e), activation="RELU6")
            h = lowered_depthwise(b, h, w(1, 3, 3, e) * np.sqrt(9 / 2), bias(e), stride=stride,
                                  activation="RELU6")
            h = b.conv2d(h, w(cout, 1, 1, e), bias(cout))
            if stride == 1 and cin == cout:
                h = b.add(inp, h)
            cin = cout
    h = b.conv2d(h, w(1280, 1, 1, cin), bias(1280), activation="RELU6")
    h = b.op(Op.MEAN, [h, np.asarray([1, 2], np.int32)], [[1, 1280]], fb.ReducerOptionsT(keepDims=False),
             BuiltinOptions.ReducerOptions)[0]
    b.output(b.fully_connected(h, w(10, 1280) * 0.1, bias(10)))
    return b.to_bytes()


def test_mobilenetv2_035_96_with_2643_conv2d_fuses_back_to_17_depthwise(rng):
    src = mobilenet_v2_split_builder(rng)
    before = load(src).op_counts()
    assert before["CONV_2D"] == 2643 and sum(before.values()) == 2689
    t0 = time.perf_counter()
    r = fuse_and_check(src, runs=1)
    print(f"\nMobileNetV2 0.35/96 split form: {sum(before.values())} ops -> {r.report['output']['operators']}; "
          f"passes {r.report['seconds']['passes']:.2f} s, total {time.perf_counter() - t0:.2f} s")
    assert op_counts(r) == {"CONV_2D": 35, "DEPTHWISE_CONV_2D": 17, "ADD": 10, "FULLY_CONNECTED": 1,
                            "MEAN": 1}
    assert r.report["passes"][[p["name"] for p in r.report["passes"]].index(PASS)]["rewrites"] == 17
