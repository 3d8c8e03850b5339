"""fuse-activation: RELU/RELU6/RELU_N1_TO_1 and their MAXIMUM/MINIMUM forms
become the producer's fused activation; every rewrite is verified."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import fuse_and_check, op_counts
from tflite_fuser.builder import ModelBuilder
from tflite_fuser.schema import ActivationFunctionType as Act
from tflite_fuser.schema import BuiltinOperator as Op

from helpers import reasons

PASS = "fuse-activation"

R = np.random.default_rng(0)
W = R.normal(size=(6, 3, 3, 4)).astype(np.float32)


def only_op(result):
    (op,) = list(result.model.main.operators)
    return op


def producer(b: ModelBuilder, kind: str, **kw):
    """A model input and one op of ``kind`` reading it."""
    if kind == "fc":
        x = b.input("x", [2, 12])
        return b.fully_connected(x, R.normal(size=(6, 12)).astype(np.float32), np.zeros(6, np.float32), **kw)
    x = b.input("x", [1, 5, 5, 4])
    if kind == "conv":
        return b.conv2d(x, W, **kw)
    if kind == "depthwise":
        return b.depthwise_conv2d(x, R.normal(size=(1, 3, 3, 8)).astype(np.float32), depth_multiplier=2, **kw)
    if kind == "transpose_conv":
        return b.transpose_conv(x, R.normal(size=(6, 3, 3, 4)).astype(np.float32), [1, 10, 10, 6], stride=2,
                                b=np.zeros(6, np.float32), **kw)
    other = b.input("y", [1, 5, 5, 4])
    return getattr(b, kind)(x, other, **kw)


ACT_OPS = {"relu": Act.RELU, "relu6": Act.RELU6, "relu_n1_to_1": Act.RELU_N1_TO_1}


@pytest.mark.parametrize("act", list(ACT_OPS))
@pytest.mark.parametrize("kind", ["conv", "depthwise", "fc", "transpose_conv", "add", "mul", "sub"])
def test_activation_op_fuses_into_its_producer(kind, act):
    b = ModelBuilder()
    b.output(getattr(b, act)(producer(b, kind)))
    result = fuse_and_check(b.to_bytes())
    op = only_op(result)
    assert op.options.fusedActivationFunction == ACT_OPS[act]
    if op.code == Op.TRANSPOSE_CONV:
        assert op.opcode.version >= 4  # TFLite reads its fused activation from version 4


def clamp(b, y, lo=None, hi=None, first="max", const_first=False):
    def mx(t):
        return b.maximum(np.float32(lo), t) if const_first else b.maximum(t, np.float32(lo))

    def mn(t):
        return b.minimum(np.float32(hi), t) if const_first else b.minimum(t, np.float32(hi))

    steps = [s for s in ((mx if lo is not None else None), (mn if hi is not None else None)) if s]
    if first == "min":
        steps.reverse()
    for s in steps:
        y = s(y)
    return y


@pytest.mark.parametrize("lo,hi,first,const_first,act", [
    (0, None, "max", False, Act.RELU),
    (0, None, "max", True, Act.RELU),  # MAXIMUM(0, x)
    (0, 6, "max", False, Act.RELU6),  # MINIMUM(MAXIMUM(x, 0), 6)
    (0, 6, "min", False, Act.RELU6),  # MAXIMUM(MINIMUM(x, 6), 0)
    (-1, 1, "max", False, Act.RELU_N1_TO_1),  # MINIMUM(MAXIMUM(x, -1), 1)
    (-1, 1, "min", True, Act.RELU_N1_TO_1),
])
def test_written_out_clamps_fuse(lo, hi, first, const_first, act):
    b = ModelBuilder()
    b.output(clamp(b, producer(b, "conv"), lo, hi, first, const_first))
    result = fuse_and_check(b.to_bytes())
    assert only_op(result).options.fusedActivationFunction == act


@pytest.mark.parametrize("existing,op,want", [
    ("RELU", "relu6", Act.RELU6), ("RELU6", "relu", Act.RELU6), ("RELU", "relu", Act.RELU),
    ("RELU_N1_TO_1", "relu_n1_to_1", Act.RELU_N1_TO_1),
])
def test_activation_composes_with_the_producers_own(existing, op, want):
    b = ModelBuilder()
    b.output(getattr(b, op)(producer(b, "conv", activation=existing)))
    assert only_op(fuse_and_check(b.to_bytes())).options.fusedActivationFunction == want


def test_relu_then_relu6_ops_become_relu6():
    b = ModelBuilder()
    b.output(b.relu6(b.relu(producer(b, "conv"))))
    result = fuse_and_check(b.to_bytes())
    assert only_op(result).options.fusedActivationFunction == Act.RELU6


# ------------------------------------------------------------------- refusals


def test_clamp_to_an_interval_no_activation_expresses_is_left_alone():
    b = ModelBuilder()
    b.output(b.relu(producer(b, "conv", activation="RELU_N1_TO_1")))  # would be [0, 1]
    result = fuse_and_check(b.to_bytes())
    assert op_counts(result) == {"CONV_2D": 1, "RELU": 1}
    assert any("[0, 1]" in r and "no fused activation expresses" in r for r in reasons(result, PASS))


def test_maximum_with_a_non_zero_constant_is_left_alone():
    b = ModelBuilder()
    b.output(b.maximum(producer(b, "conv"), np.float32(0.5)))
    result = fuse_and_check(b.to_bytes())
    assert op_counts(result) == {"CONV_2D": 1, "MAXIMUM": 1}
    assert any("[0.5, inf)" in r for r in reasons(result, PASS))


def test_maximum_with_a_non_uniform_constant_is_left_alone():
    b = ModelBuilder()
    b.output(b.maximum(producer(b, "conv"), np.array([0, 0, 0, 0, 0, 1], np.float32)))
    result = fuse_and_check(b.to_bytes())
    assert op_counts(result) == {"CONV_2D": 1, "MAXIMUM": 1}
    assert any("not uniform" in r for r in reasons(result, PASS))


def test_producer_output_read_elsewhere_keeps_the_relu():
    b = ModelBuilder()
    y = producer(b, "conv")
    b.output(b.relu(y), b.relu6(y))
    result = fuse_and_check(b.to_bytes())
    assert op_counts(result) == {"CONV_2D": 1, "RELU": 1, "RELU6": 1}
    assert any("has 2 consumers" in r for r in reasons(result, PASS))


def test_producer_output_that_is_a_model_output_keeps_the_relu():
    b = ModelBuilder()
    y = producer(b, "conv")
    b.output(y, b.relu(y))
    result = fuse_and_check(b.to_bytes())
    assert op_counts(result) == {"CONV_2D": 1, "RELU": 1}
    assert any("is a model output" in r for r in reasons(result, PASS))


def test_producer_without_fused_activation_is_named():
    b = ModelBuilder()
    x = b.input("x", [1, 4, 4, 2])
    b.output(b.relu(b.concat([x, x])))
    result = fuse_and_check(b.to_bytes())
    assert op_counts(result) == {"CONCATENATION": 1, "RELU": 1}
    assert any("producer CONCATENATION has no fused activation" in r for r in reasons(result, PASS))


def test_producer_with_tanh_does_not_compose():
    b = ModelBuilder()
    b.output(b.relu(producer(b, "add", activation="TANH")))
    result = fuse_and_check(b.to_bytes())
    assert op_counts(result) == {"ADD": 1, "RELU": 1}
    assert any("does not compose" in r for r in reasons(result, PASS))


# ------------------------------------------------------------- ResNet style


def resnet_style(blocks: int = 8, width: int = 8):
    """The naive form of a ResNet: stem conv-BN-ReLU, then ``blocks`` basic
    blocks conv-BN-ReLU, conv-BN, (+ 1x1 stride-2 conv-BN projection on
    every other block), residual ADD, ReLU; every BN as MUL + ADD, every
    ReLU its own op. Returns (model bytes, number of residual ADDs)."""
    r = np.random.default_rng(42)
    b = ModelBuilder()
    x = b.input("x", [1, 16, 16, 3])

    def conv_bn(t, cout, k=3, stride=1, relu=True):
        cin = t.shape[-1]
        w = (r.normal(size=(cout, k, k, cin)) / np.sqrt(k * k * cin)).astype(np.float32)
        y = b.conv2d(t, w, r.normal(size=cout).astype(np.float32) * 0.1, stride=stride, padding="SAME")
        y = b.add(b.mul(y, r.uniform(0.5, 1.5, cout).astype(np.float32)), r.normal(size=cout).astype(np.float32))
        return b.relu(y) if relu else y

    h = conv_bn(x, width)
    c = width
    for i in range(blocks):
        stride = 2 if i % 4 == 2 else 1
        cout = c * 2 if stride == 2 else c
        skip = h if stride == 1 else conv_bn(h, cout, 1, stride, relu=False)
        y = conv_bn(conv_bn(h, cout, 3, stride), cout, relu=False)
        h = b.relu(b.add(y, skip))
        c = cout
    b.output(h)
    return b.to_bytes(), blocks


def test_resnet_style_model_loses_every_foldable_mul_add_and_relu():
    data, residual_adds = resnet_style(8)
    result = fuse_and_check(data)
    before, after = result.report["input"]["op_counts"], op_counts(result)
    assert before["MUL"] > 0 and before["RELU"] > 0
    assert after == {"CONV_2D": before["CONV_2D"], "ADD": residual_adds}
    ops = list(result.model.main.operators)
    adds = [op for op in ops if op.code == Op.ADD]
    assert all(op.options.fusedActivationFunction == Act.RELU for op in adds)
    assert all(not op.inputs[0].is_constant and not op.inputs[1].is_constant for op in adds)
    relu_convs = [op for op in ops if op.code == Op.CONV_2D and op.options.fusedActivationFunction == Act.RELU]
    assert len(relu_convs) == 1 + residual_adds  # the stem and the first conv of each block
