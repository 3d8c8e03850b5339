"""fold-input-affine: a constant per-channel MUL (any padding) or ADD (VALID,
or SAME that pads nothing) feeding a conv folds into its filter and bias.

TF's converter really leaves this pattern unfused (it folds what follows a
conv, not what precedes it), so besides builder models, the tests convert TF
graphs: ``conv(x * s)`` and ``conv(x + t)``, in float32 and float16.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import fuse_and_check, op_counts
from tflite_fuser.builder import ModelBuilder
from tflite_fuser.schema import TensorType

from helpers import reasons

PASS = "fold-input-affine"

R = np.random.default_rng(0)


def rewrites(result, name: str) -> int:
    return next(p["rewrites"] for p in result.report["passes"] if p["name"] == name)


def f32(*shape, lo=None, hi=None):
    if lo is not None:
        return R.uniform(lo, hi, shape).astype(np.float32)
    return R.normal(size=shape).astype(np.float32)


def model(pre, conv="conv", padding="SAME", in_shape=(1, 7, 7, 4), **conv_kw):
    """x -> pre ops (list of (op, const, const_first)) -> conv -> output."""
    b = ModelBuilder()
    x = b.input("x", list(in_shape))
    y = x
    for op, c, *first in pre:
        c = np.asarray(c, np.float32)
        y = getattr(b, op)(c, y) if first and first[0] else getattr(b, op)(y, c)
    cin = in_shape[-1]
    if conv == "conv":
        y = b.conv2d(y, f32(6, 3, 3, cin), f32(6), padding=padding, **conv_kw)
    elif conv == "conv1x1":
        y = b.conv2d(y, f32(6, 1, 1, cin), f32(6), padding=padding, **conv_kw)
    elif conv == "grouped":
        y = b.conv2d(y, f32(6, 3, 3, cin // 2), f32(6), padding=padding, version=6, **conv_kw)
    elif conv == "depthwise":
        y = b.depthwise_conv2d(y, f32(1, 3, 3, cin * 2), f32(cin * 2), padding=padding, depth_multiplier=2)
    elif conv == "fc":
        y = b.fully_connected(y, f32(5, cin), f32(5))
    elif conv == "transpose_conv":
        h = 2 * in_shape[1] if padding == "SAME" else 2 * (in_shape[1] - 1) + 3
        y = b.transpose_conv(y, f32(5, 3, 3, cin), [1, h, h, 5], stride=2, b=f32(5), padding=padding)
    b.output(y)
    return b.to_bytes()


@pytest.mark.parametrize("conv", ["conv", "grouped", "depthwise", "transpose_conv"])
def test_mul_before_a_same_padded_conv_folds(conv):
    result = fuse_and_check(model([("mul", f32(4, lo=0.5, hi=2))], conv))
    assert "MUL" not in op_counts(result) and sum(op_counts(result).values()) == 1


@pytest.mark.parametrize("conv", ["conv", "grouped", "depthwise"])
def test_add_before_a_valid_conv_folds(conv):
    result = fuse_and_check(model([("add", f32(4))], conv, padding="VALID"))
    assert sum(op_counts(result).values()) == 1


def test_normalisation_sub_then_div_before_a_valid_conv_folds():
    mean, std = f32(4), f32(4, lo=0.5, hi=2)
    result = fuse_and_check(model([("sub", mean), ("div", std)], "conv", padding="VALID"))
    assert op_counts(result) == {"CONV_2D": 1}


def test_mul_and_add_before_fully_connected_fold():
    result = fuse_and_check(model([("mul", f32(1, 4, lo=0.5, hi=2)), ("add", f32(4))], "fc", in_shape=(3, 4)))
    assert op_counts(result) == {"FULLY_CONNECTED": 1}


def test_add_before_a_1x1_same_conv_folds_since_same_pads_nothing():
    result = fuse_and_check(model([("add", f32(4))], "conv1x1", padding="SAME"))
    assert op_counts(result) == {"CONV_2D": 1}


def test_constant_minus_x_before_a_valid_conv_folds():
    result = fuse_and_check(model([("sub", f32(4), True)], "conv", padding="VALID"))
    assert op_counts(result) == {"CONV_2D": 1}


# ------------------------------------------------------------------- refusals


def test_add_before_a_same_padded_conv_is_left_alone_and_says_why():
    result = fuse_and_check(model([("add", f32(4))], "conv", padding="SAME"))
    assert op_counts(result) == {"ADD": 1, "CONV_2D": 1}
    assert any("SAME-padded CONV_2D" in r for r in reasons(result, PASS))


def test_add_then_mul_before_a_same_conv_folds_only_the_mul():
    # conv((x + t) * s) = conv(x*s + t*s): the scale folds, the shift may not
    result = fuse_and_check(model([("add", f32(4)), ("mul", f32(4, lo=0.5, hi=2))], "conv"))
    assert op_counts(result) == {"ADD": 1, "CONV_2D": 1}
    assert any("SAME-padded" in r for r in reasons(result, PASS))


def test_add_before_transpose_conv_is_refused():
    result = fuse_and_check(model([("add", f32(4))], "transpose_conv", padding="VALID"))
    assert op_counts(result) == {"ADD": 1, "TRANSPOSE_CONV": 1}
    assert any("TRANSPOSE_CONV" in r for r in reasons(result, PASS))


def test_mul_whose_output_is_read_twice_is_left_alone():
    b = ModelBuilder()
    x = b.input("x", [1, 7, 7, 4])
    y = b.mul(x, f32(4))
    b.output(b.conv2d(y, f32(6, 3, 3, 4)), b.relu(y))
    result = fuse_and_check(b.to_bytes())
    assert op_counts(result)["MUL"] == 1
    assert any("has 2 consumers" in r for r in reasons(result, PASS))


def test_spatially_varying_mul_is_left_alone():
    result = fuse_and_check(model([("mul", f32(1, 7, 7, 1))], "conv"))
    assert op_counts(result) == {"CONV_2D": 1, "MUL": 1}
    assert any("more than the channel axis" in r for r in reasons(result, PASS))


def test_fully_connected_over_a_flattened_image_is_left_alone():
    b = ModelBuilder()
    x = b.input("x", [1, 2, 2, 4])
    b.output(b.fully_connected(b.mul(x, f32(4)), f32(5, 16)))
    result = fuse_and_check(b.to_bytes())
    assert op_counts(result) == {"FULLY_CONNECTED": 1, "MUL": 1}
    assert any("has 16 features" in r for r in reasons(result, PASS))


def test_mul_between_two_convs_is_left_to_fold_affine():
    b = ModelBuilder()
    x = b.input("x", [1, 7, 7, 4])
    y = b.mul(b.conv2d(x, f32(4, 3, 3, 4)), f32(4))
    b.output(b.conv2d(y, f32(6, 3, 3, 4)))
    result = fuse_and_check(b.to_bytes())
    assert op_counts(result) == {"CONV_2D": 2}
    assert rewrites(result, "fold-affine") == 1 and rewrites(result, "fold-input-affine") == 0


# ------------------------------------------------------------- TF's converter


def tf_model(kind: str, fp16: bool = False, scale=None) -> bytes:
    tf = pytest.importorskip("tensorflow")
    r = np.random.default_rng(1)
    w = r.normal(size=(3, 3, 3, 8)).astype(np.float32)
    s, t = r.uniform(0.5, 2, 3).astype(np.float32), r.normal(size=3).astype(np.float32)
    if scale is not None:
        s = np.asarray(scale, np.float32)
    graphs = {
        "mul": lambda x: tf.nn.relu(tf.nn.conv2d(x * s, w, 1, "SAME")),
        "add": lambda x: tf.nn.conv2d(x + t, w, 1, "VALID"),
        "norm": lambda x: tf.nn.conv2d((x - t) / s, w, 2, "VALID"),
    }
    fn = tf.function(graphs[kind], input_signature=[tf.TensorSpec([1, 9, 9, 3], tf.float32)])
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    if fp16:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    return conv.convert()


@pytest.mark.parametrize("kind", ["mul", "add", "norm"])
def test_tf_converted_input_affine_folds(kind):
    data = tf_model(kind)
    result = fuse_and_check(data)
    before = result.report["input"]["op_counts"]
    assert before.get("MUL", 0) + before.get("ADD", 0) + before.get("SUB", 0) >= 1  # TF left it unfused
    assert op_counts(result) == {"CONV_2D": 1}


def fp16_constants(result):
    return [t for t in result.model.main.tensors if t.is_constant and t.dtype == TensorType.FLOAT16]


def test_tf_float16_model_folds_into_float16_weights_when_exact():
    result = fuse_and_check(tf_model("mul", fp16=True, scale=[0.5, 2.0, 4.0]), rtol=1e-5, atol=1e-5)
    assert "MUL" not in op_counts(result) and op_counts(result)["CONV_2D"] == 1
    assert any(t.shape == [8, 3, 3, 3] for t in fp16_constants(result))
    assert result.report["output"]["bytes"] <= result.report["input"]["bytes"]


def test_tf_float16_model_folds_into_float32_weights_on_request():
    data = tf_model("mul", fp16=True)
    kept = fuse_and_check(data, fp16_weights="exact")
    assert kept.report["input"]["op_counts"]["MUL"] == op_counts(kept)["MUL"] == 1
    assert any("not representable in float16" in r for r in reasons(kept, PASS))
    widened = fuse_and_check(data, fp16_weights="float32", rtol=1e-5, atol=1e-5)
    assert "MUL" not in op_counts(widened)
    assert not any(t.shape == [8, 3, 3, 3] for t in fp16_constants(widened))
