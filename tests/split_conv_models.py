"""Builders and assertions shared by the ``test_split_conv_*`` files: a
depthwise or grouped convolution lowered to SPLIT -> N x conv -> CONCATENATION
the way a naive converter writes it, in every way of cutting the channels."""

from __future__ import annotations

import numpy as np

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.graph import quantization
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import TensorType
from tflite_fuser.validate import unsorted_subgraphs

from conftest import fuse_and_check, op_counts
from helpers import rewrites_per_pass

PASS = "fuse-split-conv"


def cut(b: ModelBuilder, x, sizes, form="split", quantization=None):
    """Cut ``x``'s channels into pieces of ``sizes`` the way ``form`` does."""
    kw = {"quantization": quantization} if quantization is not None else {}
    if form == "split":
        return b.split(x, len(sizes), **kw)
    if form == "split_v":
        return b.split_v(x, sizes, **kw)
    pieces, start = [], 0
    n, h, w, _ = x.shape
    for s in sizes:
        if form == "slice":
            pieces.append(b.slice(x, [0, 0, 0, start], [-1, -1, -1, s], **kw))
        else:
            pieces.append(b.strided_slice(x, [0, 0, 0, start], [n, h, w, start + s], **kw))
        start += s
    return pieces


def depthwise_filter(rng, c, m, k=3):
    """TFLite depthwise layout ``[1,k,k,C*M]``."""
    return rng.standard_normal((1, k, k, c * m)).astype(np.float32) * 0.5


def lowered_depthwise(b, x, w_dw, bias, *, stride=1, dilation=1, padding="SAME", activation=None,
                      form="split", branch="conv"):
    """A depthwise conv as a naive converter writes it: one CONV_2D
    ``[M,kh,kw,1]`` (or a DEPTHWISE_CONV_2D) per input channel, concatenated."""
    c = x.shape[3]
    m = w_dw.shape[3] // c
    ys = []
    for i, p in enumerate(cut(b, x, [1] * c, form)):
        w_i, b_i = w_dw[..., i * m:(i + 1) * m], bias[i * m:(i + 1) * m]
        if branch == "conv":
            ys.append(b.conv2d(p, w_i.transpose(3, 1, 2, 0), b_i, stride=stride, dilation=dilation,
                               padding=padding, activation=activation))
        else:
            ys.append(b.depthwise_conv2d(p, w_i, b_i, stride=stride, dilation=dilation, padding=padding,
                                         depth_multiplier=m, activation=activation))
    return b.concat(ys)


def lowered_grouped(b, x, w, bias, groups, *, stride=1, activation=None, form="split"):
    """A grouped conv (OHWI ``[Cout,kh,kw,Cin/G]``) as G CONV_2D on G pieces."""
    opg = w.shape[0] // groups
    pieces = cut(b, x, [x.shape[3] // groups] * groups, form)
    return b.concat([b.conv2d(p, w[g * opg:(g + 1) * opg], bias[g * opg:(g + 1) * opg], stride=stride,
                              activation=activation) for g, p in enumerate(pieces)])


def depthwise_then_pointwise(rng, c=3, m=1, cout=16, hw=16, **kw) -> bytes:
    b = ModelBuilder()
    x = b.input("x", [1, hw, hw, c])
    y = lowered_depthwise(b, x, depthwise_filter(rng, c, m), rng.standard_normal(c * m).astype(np.float32), **kw)
    y = b.conv2d(y, rng.standard_normal((cout, 1, 1, c * m)).astype(np.float32) * 0.3,
                 rng.standard_normal(cout).astype(np.float32))
    b.output(y)
    return b.to_bytes()


def fused_op(result, code=Op.DEPTHWISE_CONV_2D):
    ops = [op for op in result.model.main.operators if op.code == code]
    assert ops, op_counts(result)
    return ops[0]


def assert_sorted(result):
    assert unsorted_subgraphs(result.model) == []


def assert_left_alone(model_bytes: bytes, reason: str, same_bytes: bool = True, **kw):
    """Unchanged (to the byte for files our writer made), verified, and the
    report says why. ``kw`` goes to ``fuse`` (a target, say)."""
    r = fuse_and_check(model_bytes, passes=[PASS], **kw)
    assert rewrites_per_pass(r) == {PASS: 0}
    assert op_counts(r) == r.report["input"]["op_counts"]
    if same_bytes:
        assert r.model_bytes == model_bytes
    reasons = [s["reason"] for s in r.report["skipped"] if s["pass"] == PASS]
    assert any(reason in s for s in reasons), reasons
    return r


def quantized_lowered_depthwise(rng, c=8, m=2, filter_scales=None, out_scales=None, post_relu=False,
                                dtype=TensorType.INT8) -> bytes:
    """int8 (or uint8) SPLIT -> per-channel CONV_2D -> CONCATENATION.
    ``filter_scales`` (one per branch) defaults to identical, ``out_scales`` likewise."""
    u8 = dtype == TensorType.UINT8
    in_q, out_s, out_z, w_z = (0.03, 123 if u8 else -5), 0.04, (130 if u8 else 3), (127 if u8 else 0)
    filter_scales = filter_scales or [0.01] * c
    out_scales = out_scales or [out_s] * c
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, c], dtype, quantization(*in_q))
    ys = []
    for i, p in enumerate(b.split(x, c, quantization=quantization(*in_q))):
        wq = (rng.integers(0, 256, (m, 3, 3, 1)).astype(np.uint8) if u8
              else rng.integers(-127, 128, (m, 3, 3, 1)).astype(np.int8))
        w = b.const(wq, "w", dtype, quantization(filter_scales[i], w_z))
        bias = b.const(rng.integers(-300, 300, m).astype(np.int32), "b", TensorType.INT32,
                       quantization(in_q[0] * filter_scales[i], 0))
        ys.append(b.conv2d(p, w, bias, version=1 if u8 else 3, quantization=quantization(out_scales[i], out_z)))
    y = b.concat(ys, quantization=quantization(out_s, out_z))
    if post_relu:
        y = b.relu(y, quantization=quantization(out_s, out_z))
    b.output(y)
    return b.to_bytes()


# ------------------------------------------------------------ TF's converter


def convert_fn(tf, fn, shape) -> bytes:
    cf = tf.function(fn).get_concrete_function(tf.TensorSpec(shape, tf.float32))
    return tf.lite.TFLiteConverter.from_concrete_functions([cf]).convert()


def convert_keras(tf, inputs, outputs) -> bytes:
    return tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inputs, outputs)).convert()
