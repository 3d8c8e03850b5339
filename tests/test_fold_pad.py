"""fold-pad: zero PAD + VALID conv -> SAME conv exactly when SAME pads the
same amounts; verified by the interpreter. TF's converter folds a PAD that
equals SAME itself, so the models it leaves a PAD in (PyTorch's padding=1 at
stride 2 on an even size) are the negative case here, in float and int8."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import fuse_and_check, op_counts
from tflite_fuser.builder import ModelBuilder
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import Padding

from helpers import reasons

PASS = "fold-pad"

R = np.random.default_rng(0)


def the_conv(result):
    return next(op for op in result.model.main.operators if op.code in (Op.CONV_2D, Op.DEPTHWISE_CONV_2D))


def pad_conv(size, pads, k=3, stride=1, dilation=1, depthwise=False, conv_padding="VALID", pad_op="pad",
             pad_value=0.0, extra_consumer=False):
    b = ModelBuilder()
    x = b.input("x", [1, size, size, 4])
    if pad_op == "pad":
        p = b.pad(x, pads)
    else:  # PADV2 with a constant value
        out = [d + a + c for d, (a, c) in zip(x.shape, pads)]
        from tflite_fuser.schema import BuiltinOptions, fb

        (p,) = b.op(Op.PADV2, [x, np.asarray(pads, np.int32), np.asarray(pad_value, np.float32)], [out],
                    fb.PadV2OptionsT(), BuiltinOptions.PadV2Options)
    if depthwise:
        y = b.depthwise_conv2d(p, R.normal(size=(1, k, k, 4)).astype(np.float32), stride=stride,
                               dilation=dilation, padding=conv_padding)
    else:
        y = b.conv2d(p, R.normal(size=(6, k, k, 4)).astype(np.float32), stride=stride, dilation=dilation,
                     padding=conv_padding)
    b.output(y)
    if extra_consumer:
        b.output(b.relu(p))
    return b.to_bytes()


HW = lambda t, b_, l, r: [[0, 0], [t, b_], [l, r], [0, 0]]  # noqa: E731


@pytest.mark.parametrize("size,pads,k,stride,dilation,depthwise", [
    (8, HW(1, 1, 1, 1), 3, 1, 1, False),  # PyTorch padding=1, stride 1
    (9, HW(1, 1, 1, 1), 3, 2, 1, False),  # stride 2, odd size: SAME is symmetric
    (8, HW(0, 1, 0, 1), 3, 2, 1, False),  # stride 2, even size: SAME pads after (Keras correct_pad)
    (8, HW(2, 2, 2, 2), 3, 1, 2, False),  # dilation 2
    (8, HW(2, 2, 2, 2), 5, 1, 1, False),  # 5x5 kernel
    (8, HW(1, 1, 1, 1), 3, 1, 1, True),  # depthwise
    (9, HW(1, 1, 1, 1), 3, 2, 1, True),
])
def test_pad_matching_same_becomes_a_same_conv(size, pads, k, stride, dilation, depthwise):
    result = fuse_and_check(pad_conv(size, pads, k, stride, dilation, depthwise))
    assert "PAD" not in op_counts(result) and sum(op_counts(result).values()) == 1
    assert the_conv(result).options.padding == Padding.SAME


def test_padv2_with_zero_folds():
    result = fuse_and_check(pad_conv(8, HW(1, 1, 1, 1), pad_op="padv2"))
    assert op_counts(result) == {"CONV_2D": 1}


@pytest.mark.parametrize("kw,why", [
    (dict(size=8, pads=HW(1, 1, 1, 1), stride=2), "SAME would pad (0, 1)"),  # PyTorch's padding=1, stride 2
    (dict(size=8, pads=HW(1, 1, 0, 0)), "PAD on W is (0, 0), SAME would pad (1, 1)"),
    (dict(size=8, pads=[[1, 0], [1, 1], [1, 1], [0, 0]]), "batch or channel axis"),
    (dict(size=8, pads=HW(1, 1, 1, 1), pad_op="padv2", pad_value=1.0), "pads with 1, not 0"),
    (dict(size=8, pads=HW(1, 1, 1, 1), conv_padding="SAME"), "already pads"),
    (dict(size=8, pads=HW(1, 1, 1, 1), extra_consumer=True), "has 2 consumers"),
])
def test_pad_that_is_not_same_is_left_alone_and_says_why(kw, why):
    result = fuse_and_check(pad_conv(**kw))
    assert op_counts(result)[("PADV2" if kw.get("pad_op") == "padv2" else "PAD")] == 1
    assert any(why in r for r in reasons(result, PASS)), reasons(result, PASS)


# ------------------------------------------------------------- TF's converter


def tf_pad_conv(size: int, int8: bool = False) -> bytes:
    """PyTorch's Conv2d(3, 8, 3, stride=2, padding=1) written for TF: an
    explicit tf.pad and a VALID conv."""
    tf = pytest.importorskip("tensorflow")
    r = np.random.default_rng(1)
    w = r.normal(size=(3, 3, 3, 8)).astype(np.float32)
    b = r.normal(size=8).astype(np.float32)
    fn = tf.function(lambda x: tf.nn.relu(tf.nn.conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), w, 2, "VALID")
                                          + b),
                     input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32)])
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    if int8:
        def representative():
            for _ in range(16):
                yield [r.uniform(-1, 1, (1, size, size, 3)).astype(np.float32)]
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = tf.int8
    return conv.convert()


@pytest.mark.parametrize("int8", [False, True])
def test_tf_converted_stride2_pad_that_is_not_same_is_left_alone(int8):
    """On an even size, SAME at stride 2 pads (0, 1), not PyTorch's (1, 1):
    TF keeps the PAD, and so must we. (On an odd size TF folds it itself.)"""
    result = fuse_and_check(tf_pad_conv(8, int8))
    assert op_counts(result) == {"CONV_2D": 1, "PAD": 1}
    assert any("SAME would pad (0, 1)" in r for r in reasons(result, PASS))


# ------------------------------------------------------------------------ int8


def test_int8_pad_folds_exactly():
    """PAD fills with the zero point (real 0) and a SAME int8 conv pads with
    the input offset (real 0 too): the fold is exact, not one step off."""
    from tflite_fuser.graph import quantization
    from tflite_fuser.schema import TensorType

    b = ModelBuilder()
    qx = quantization(0.02, -3)
    x = b.input("x", [1, 8, 8, 4], TensorType.INT8, qx)
    p = b.pad(x, HW(1, 1, 1, 1), quantization=qx)
    sw = np.linspace(0.01, 0.02, 6)
    w = b.const(R.integers(-127, 128, (6, 3, 3, 4)).astype(np.int8), "w", quantization=quantization(sw, 0, 0))
    bias = b.const(R.integers(-500, 500, 6).astype(np.int32), "b", quantization=quantization(0.02 * sw, 0, 0))
    y = b.conv2d(p, w, bias, padding="VALID", dtype=TensorType.INT8, quantization=quantization(0.05, 2), version=3)
    b.output(y)
    result = fuse_and_check(b.to_bytes())
    assert op_counts(result) == {"CONV_2D": 1}
    assert result.verification.max_abs_error == 0
