"""fuse-split-conv on the real TF 2.21 converter's output: ``tf.split`` ->
per-piece ``tf.nn.conv2d`` -> ``tf.concat`` graphs fuse to the op counts the
converter gives the network written fused (Keras ``DepthwiseConv2D`` /
``Conv2D(groups=G)``), including MobileNetV2-style networks with per-branch
batch norms."""

from __future__ import annotations

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.pipeline import load
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import fb

from conftest import fuse_and_check, op_counts
from helpers import run_tflite
from split_conv_models import assert_left_alone, convert_fn, convert_keras, depthwise_filter, fused_op


# ---------------------------------------------------------------- real converter


@pytest.mark.parametrize("m,stride,dilation,slicing", [(1, 1, 1, "split"), (2, 2, 1, "split"),
                                                       (1, 1, 2, "strided_slice")])
def test_tf_converted_split_depthwise_fuses_to_what_the_converter_gives_keras(tf, m, stride, dilation,
                                                                              slicing, rng):
    c, hw = 16, 12
    kernel = rng.standard_normal((3, 3, c, m)).astype(np.float32)
    bias = rng.standard_normal(c * m).astype(np.float32)

    def split_form(x):
        pieces = tf.split(x, c, axis=3) if slicing == "split" else [x[:, :, :, i:i + 1] for i in range(c)]
        ys = [tf.nn.relu6(tf.nn.conv2d(p, kernel[:, :, i:i + 1, :], stride, "SAME", dilations=dilation)
                          + bias[i * m:(i + 1) * m]) for i, p in enumerate(pieces)]
        return tf.concat(ys, 3)

    src = convert_fn(tf, split_form, [1, hw, hw, c])
    assert load(src).op_counts()["CONV_2D"] == c
    inp = tf.keras.Input((hw, hw, c), batch_size=1)
    layer = tf.keras.layers.DepthwiseConv2D(3, stride, "same", depth_multiplier=m, dilation_rate=dilation,
                                            activation="relu6")
    out = layer(inp)
    layer.set_weights([kernel, bias])
    keras = convert_keras(tf, inp, out)

    r = fuse_and_check(src)
    assert op_counts(r) == load(keras).op_counts() == {"DEPTHWISE_CONV_2D": 1}
    xv = rng.uniform(-1, 1, (1, hw, hw, c)).astype(np.float32)
    np.testing.assert_allclose(run_tflite(r.model_bytes, xv), run_tflite(keras, xv), rtol=1e-5, atol=1e-5)


def test_tf_converted_split_grouped_conv_fuses_to_what_the_converter_gives_keras(tf, rng):
    cin, cout, groups, hw = 32, 64, 8, 10
    kernel = rng.standard_normal((3, 3, cin // groups, cout)).astype(np.float32) * 0.3
    bias = rng.standard_normal(cout).astype(np.float32)
    opg = cout // groups

    def split_form(x):
        ys = [tf.nn.conv2d(p, kernel[..., g * opg:(g + 1) * opg], 1, "SAME") + bias[g * opg:(g + 1) * opg]
              for g, p in enumerate(tf.split(x, groups, axis=3))]
        return tf.concat(ys, 3)

    src = convert_fn(tf, split_form, [1, hw, hw, cin])
    inp = tf.keras.Input((hw, hw, cin), batch_size=1)
    layer = tf.keras.layers.Conv2D(cout, 3, padding="same", groups=groups)
    out = layer(inp)
    layer.set_weights([kernel, bias])
    keras = convert_keras(tf, inp, out)

    r = fuse_and_check(src)
    assert op_counts(r) == load(keras).op_counts() == {"CONV_2D": 1}
    assert fused_op(r, Op.CONV_2D).opcode.version == 6
    xv = rng.uniform(-1, 1, (1, hw, hw, cin)).astype(np.float32)
    np.testing.assert_allclose(run_tflite(r.model_bytes, xv), run_tflite(keras, xv), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("quant", ["int8", "float16"])
@pytest.mark.parametrize("kind", ["depthwise", "grouped"])
def test_tf_quantized_split_conv_fuses(tf, quant, kind, rng):
    """The converter's int8 (per-channel filter scales that differ branch to
    branch) and float16 (a DEQUANTIZE per weight) forms of the split pattern;
    int8 grouped is the one refused (not bit-exact on the interpreter)."""
    c, hw = 16, 8
    per_piece, groups, outs = (1, 16, 2) if kind == "depthwise" else (4, 4, 8)
    kernel = rng.standard_normal((3, 3, per_piece, groups * outs)).astype(np.float32)
    bias = rng.standard_normal(groups * outs).astype(np.float32)

    def split_form(x):
        return tf.concat([tf.nn.relu(tf.nn.conv2d(p, kernel[..., g * outs:(g + 1) * outs], 1, "SAME")
                                     + bias[g * outs:(g + 1) * outs])
                          for g, p in enumerate(tf.split(x, groups, axis=3))], 3)

    cf = tf.function(split_form).get_concrete_function(tf.TensorSpec([1, hw, hw, c], tf.float32))
    conv = tf.lite.TFLiteConverter.from_concrete_functions([cf])
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if quant == "int8":
        data = [rng.uniform(-1, 1, (1, hw, hw, c)).astype(np.float32) for _ in range(16)]
        conv.representative_dataset = lambda: ([d] for d in data)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = tf.int8
    else:
        conv.target_spec.supported_types = [tf.float16]
    src = conv.convert()
    assert load(src).op_counts()["CONV_2D"] == groups
    if quant == "int8" and kind == "grouped":  # not bit-exact on the built-in kernels: refused there
        assert_left_alone(src, "int8 grouped CONV_2D", same_bytes=False, target="builtin")
    r = fuse_and_check(src)
    fused = "DEPTHWISE_CONV_2D" if kind == "depthwise" else "CONV_2D"
    assert op_counts(r) == ({fused: 1} if quant == "int8" else {fused: 1, "DEQUANTIZE": 2})
    if quant == "int8":
        assert r.verification.max_abs_error == 0


# ------------------------------------------------------------ MobileNetV2-style


#: (expansion t, output channels c, repeats n, first stride s), as in MobileNetV2
#: but narrow, so that the split form of 13 inverted residual blocks converts fast.
SMALL_MBV2 = [(1, 8, 1, 1), (2, 8, 2, 2), (2, 16, 3, 2), (2, 16, 4, 2), (2, 24, 3, 1)]


def _bn(rng, n):
    gamma, beta = rng.uniform(0.7, 1.3, n), rng.uniform(-0.1, 0.1, n)
    mean, var = rng.uniform(-0.1, 0.1, n), rng.uniform(0.7, 1.3, n)
    return [a.astype(np.float32) for a in (gamma, beta, mean, var)]


def _mbv2_weights(rng, blocks, c0=8):
    """Weights of a small MobileNetV2, shared by the fused and the split form."""
    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    layers = [("stem", he((3, 3, 3, c0), 27), _bn(rng, c0))]
    cin = c0
    for t, c, n, s in blocks:
        for i in range(n):
            e = cin * t
            blk = {"stride": s if i == 0 else 1, "cin": cin, "cout": c}
            if t != 1:
                blk["expand"] = (he((1, 1, cin, e), cin), _bn(rng, e))
            blk["dw"] = (he((3, 3, e, 1), 9), _bn(rng, e))
            blk["project"] = (he((1, 1, e, c), e), _bn(rng, c))
            layers.append(("block", blk))
            cin = c
    layers.append(("head", (rng.standard_normal((cin, 10)) * 0.1).astype(np.float32)))
    return layers


def _mbv2_keras(tf, layers, hw):
    L = tf.keras.layers

    def conv_bn(h, layer, w_bn, act):
        w, bn = w_bn
        h = layer(h)
        layer.set_weights([w])
        norm = L.BatchNormalization(epsilon=1e-3)
        h = norm(h)
        norm.set_weights(bn)
        return L.ReLU(6.0)(h) if act else h

    inp = tf.keras.Input((hw, hw, 3), batch_size=1)
    _, w, bn = layers[0]
    h = conv_bn(inp, L.Conv2D(w.shape[3], 3, 2, "same", use_bias=False), (w, bn), True)
    for kind, blk in layers[1:-1]:
        x = h
        if "expand" in blk:
            h = conv_bn(h, L.Conv2D(blk["expand"][0].shape[3], 1, use_bias=False), blk["expand"], True)
        h = conv_bn(h, L.DepthwiseConv2D(3, blk["stride"], "same", use_bias=False), blk["dw"], True)
        h = conv_bn(h, L.Conv2D(blk["cout"], 1, use_bias=False), blk["project"], False)
        if blk["stride"] == 1 and blk["cin"] == blk["cout"]:
            h = L.Add()([x, h])
    h = L.GlobalAveragePooling2D()(h)
    dense = L.Dense(10, use_bias=False)
    out = dense(h)
    dense.set_weights([layers[-1][1]])
    return convert_keras(tf, inp, out)


def _mbv2_split(tf, layers, hw, bn_after_concat):
    """The same network with every depthwise conv as tf.split -> one conv per
    channel -> tf.concat; its BN either per branch (the converter folds it
    there) or after the concatenation (it cannot: MUL + ADD stay)."""
    def affine(bn):
        gamma, beta, mean, var = (a.astype(np.float64) for a in bn)
        scale = gamma / np.sqrt(var + 1e-3)
        return scale.astype(np.float32), (beta - mean * scale).astype(np.float32)

    def conv_bn(h, w, bn, act, stride=1):
        s, t = affine(bn)
        h = tf.nn.conv2d(h, w, stride, "SAME") * s + t
        return tf.nn.relu6(h) if act else h

    def fn(x):
        _, w, bn = layers[0]
        h = conv_bn(x, w, bn, True, 2)
        for kind, blk in layers[1:-1]:
            inp = h
            if "expand" in blk:
                h = conv_bn(h, *blk["expand"], True)
            w, bn = blk["dw"]
            s, t = affine(bn)
            pieces = tf.split(h, w.shape[2], axis=3)
            if bn_after_concat:
                h = tf.concat([tf.nn.conv2d(p, w[:, :, i:i + 1, :], blk["stride"], "SAME")
                               for i, p in enumerate(pieces)], 3)
                h = tf.nn.relu6(h * s + t)
            else:
                h = tf.concat([tf.nn.relu6(tf.nn.conv2d(p, w[:, :, i:i + 1, :], blk["stride"], "SAME")
                                           * s[i] + t[i]) for i, p in enumerate(pieces)], 3)
            h = conv_bn(h, *blk["project"], False)
            if blk["stride"] == 1 and blk["cin"] == blk["cout"]:
                h = h + inp
        h = tf.reduce_mean(h, axis=[1, 2])
        return tf.matmul(h, layers[-1][1])

    return convert_fn(tf, fn, [1, hw, hw, 3])


def _check_mbv2(tf, rng, bn_after_concat):
    hw = 32
    layers = _mbv2_weights(rng, SMALL_MBV2)
    assert len(layers) - 2 >= 10
    keras = _mbv2_keras(tf, layers, hw)
    src = _mbv2_split(tf, layers, hw, bn_after_concat)
    before = load(src).op_counts()
    assert before["SPLIT"] == before["CONCATENATION"] == len(layers) - 2
    r = fuse_and_check(src)
    want = load(keras).op_counts()
    assert want["DEPTHWISE_CONV_2D"] == len(layers) - 2
    assert op_counts(r) == want
    xv = rng.uniform(-1, 1, (1, hw, hw, 3)).astype(np.float32)
    ref = run_tflite(keras, xv)
    np.testing.assert_allclose(run_tflite(r.model_bytes, xv), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_mobilenetv2_with_split_depthwise_and_per_branch_bn_fuses_to_the_keras_op_counts(tf, rng):
    _check_mbv2(tf, rng, bn_after_concat=False)


def test_mobilenetv2_with_split_depthwise_and_unfolded_bn_fuses_to_the_keras_op_counts(tf, rng):
    _check_mbv2(tf, rng, bn_after_concat=True)


@pytest.mark.parametrize("c,m", [(3, 1), (32, 2), (256, 1)])
def test_per_branch_batchnorm_and_relu_are_folded_then_fused(c, m, rng):
    """Each branch: CONV_2D -> MUL -> ADD -> RELU (a naive converter's BN+ReLU)."""
    w = depthwise_filter(rng, c, m)
    b = ModelBuilder()
    x = b.input("x", [1, 10, 10, c])
    ys = []
    for i, p in enumerate(b.split(x, c)):
        y = b.conv2d(p, w[..., i * m:(i + 1) * m].transpose(3, 1, 2, 0), np.zeros(m, np.float32))
        y = b.add(b.mul(y, rng.uniform(0.5, 1.5, m).astype(np.float32)),
                  rng.uniform(-0.2, 0.2, m).astype(np.float32))
        ys.append(b.relu(y))
    y = b.concat(ys)
    b.output(b.conv2d(y, rng.standard_normal((16, 1, 1, c * m)).astype(np.float32), np.zeros(16, np.float32)))
    r = fuse_and_check(b.to_bytes())
    assert op_counts(r) == {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1}
    assert fused_op(r).options.fusedActivationFunction == fb.ActivationFunctionType.RELU
