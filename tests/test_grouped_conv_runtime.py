"""Pin what the split-conv passes rely on: the pinned interpreter runs a
grouped CONV_2D (filter ``[Cout,kh,kw,Cin/G]``, op version 6) correctly, with
the builtin kernels and with XNNPACK, and the TF converter writes grouped
convs in exactly that form. If an interpreter upgrade breaks either, the
passes must stop emitting grouped convs: these tests say so first.

Also pinned: *why* the passes refuse int8 grouped rewrites. The optimized
builtin int8 grouped kernel rounds some outputs one step apart from the same
groups run as separate CONV_2D ops (XNNPACK and the reference kernels agree
to the byte), whereas int8 DEPTHWISE_CONV_2D matches per-channel CONV_2D
exactly. If an upgrade makes the grouped kernel exact, the last test fails
and int8 grouped fusion can be switched on.
"""

from __future__ import annotations

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder, conv_output_size
from tflite_fuser.pipeline import load, run_passes
from tflite_fuser.writer import serialize
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import TensorType, fb

from tflite_fuser.ops import TRAITS
from tflite_fuser.options import PassOptions

from helpers import RESOLVERS, quantization, run_tflite

GROUPED_CONV_VERSION = TRAITS[Op.CONV_2D].versions["groups"]

def reference_conv(x, w, b, groups, stride=1, dilation=1, padding="SAME"):
    """Grouped conv in float64 numpy: x NHWC, w OHWI [Cout,kh,kw,Cin/G], TF padding."""
    n, h, wd, cin = x.shape
    cout, kh, kw, gw = w.shape
    assert cin == gw * groups
    oh = conv_output_size(h, kh, stride, dilation, padding)
    ow = conv_output_size(wd, kw, stride, dilation, padding)
    eh, ew = (kh - 1) * dilation + 1, (kw - 1) * dilation + 1
    ph = max((oh - 1) * stride + eh - h, 0) // 2 if padding == "SAME" else 0
    pw = max((ow - 1) * stride + ew - wd, 0) // 2 if padding == "SAME" else 0
    xp = np.zeros((n, h + eh + stride * oh, wd + ew + stride * ow, cin))
    xp[:, ph:ph + h, pw:pw + wd] = x
    out = np.zeros((n, oh, ow, cout))
    opg = cout // groups
    for o in range(cout):
        g = o // opg
        xs = xp[..., g * gw:(g + 1) * gw]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, i * dilation:i * dilation + stride * oh:stride,
                           j * dilation:j * dilation + stride * ow:stride, :]
                out[..., o] += patch @ w[o, i, j].astype(np.float64)
    return out + b


@pytest.mark.parametrize("kernels", ["builtin", "xnnpack"])
@pytest.mark.parametrize("cin,cout,groups,k,stride,dilation", [
    (8, 16, 2, 3, 1, 1),
    (32, 64, 8, 3, 2, 1),
    (16, 16, 4, 3, 1, 2),
    (128, 128, 32, 3, 1, 1),  # ResNeXt's 32 groups of 4
    (12, 6, 3, 1, 1, 1),
])
def test_interpreter_runs_float_grouped_conv2d_like_the_reference(kernels, cin, cout, groups, k, stride,
                                                                  dilation, rng):
    w = rng.standard_normal((cout, k, k, cin // groups)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    b = ModelBuilder()
    x = b.input("x", [1, 11, 11, cin])
    b.output(b.conv2d(x, w, bias, stride=stride, dilation=dilation, version=GROUPED_CONV_VERSION))
    xv = rng.uniform(-1, 1, (1, 11, 11, cin)).astype(np.float32)
    got = run_tflite(b.to_bytes(), xv, kernels)
    want = reference_conv(xv, w, bias, groups, stride, dilation)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernels", ["builtin", "xnnpack"])
def test_interpreter_runs_int8_grouped_conv2d_like_the_reference(kernels, rng):
    """int8, per-channel filter scales: within one step of the float maths on
    the dequantized values (the requantisation rounds once)."""
    cin, cout, groups = 16, 32, 4
    in_s, in_z, out_s, out_z = 0.02, -3, 0.05, 2
    wq = rng.integers(-127, 128, (cout, 3, 3, cin // groups)).astype(np.int8)
    ws = rng.uniform(0.002, 0.01, cout)
    bq = rng.integers(-500, 500, cout).astype(np.int32)
    b = ModelBuilder()
    x = b.input("x", [1, 9, 9, cin], TensorType.INT8, quantization(in_s, in_z))
    wt = b.const(wq, "w", TensorType.INT8, quantization(ws, np.zeros(cout), 0))
    bt = b.const(bq, "b", TensorType.INT32, quantization(in_s * ws, np.zeros(cout), 0))
    y = b.op(Op.CONV_2D, [x, wt, bt], [[1, 9, 9, cout]],
             fb.Conv2DOptionsT(padding=0, strideW=1, strideH=1), 1, version=GROUPED_CONV_VERSION,
             dtype=TensorType.INT8, quantization=quantization(out_s, out_z))[0]
    b.output(y)
    xq = rng.integers(-128, 128, (1, 9, 9, cin)).astype(np.int8)
    got = run_tflite(b.to_bytes(), xq, kernels).astype(np.int64)
    real = reference_conv((xq.astype(np.float64) - in_z) * in_s, wq * ws[:, None, None, None],
                          bq * in_s * ws, groups)
    want = np.clip(np.round(real / out_s) + out_z, -128, 127)
    assert np.abs(got - want).max() <= 1


def test_tf_converter_writes_grouped_conv2d_as_version_6_with_narrow_filter():
    tf = pytest.importorskip("tensorflow")
    inp = tf.keras.Input((8, 8, 32), batch_size=1)
    y = tf.keras.layers.Conv2D(64, 3, padding="same", groups=8)(inp)
    model = load(tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inp, y)).convert())
    (conv,) = [op for op in model.main.operators if op.code == Op.CONV_2D]
    assert conv.opcode.version == GROUPED_CONV_VERSION
    assert conv.inputs[1].shape == [64, 3, 3, 4]


def int8_split_conv(rng, c, width, outs, hw=33) -> bytes:
    """int8 SPLIT into pieces of ``width`` channels -> CONV_2D each (``outs``
    outputs, per-channel filter scales) -> CONCATENATION."""
    in_q, out_q = (0.031, -128), (0.087, -3)
    b = ModelBuilder()
    x = b.input("x", [1, hw, hw, c], TensorType.INT8, quantization(*in_q))
    ys = []
    for p in b.split(x, c // width, quantization=quantization(*in_q)):
        ws = rng.uniform(0.001, 0.003, outs)
        w = b.const(rng.integers(-127, 128, (outs, 3, 3, width)).astype(np.int8), "w", TensorType.INT8,
                    quantization(ws, np.zeros(outs), 0))
        bias = b.const(rng.integers(-3000, 3000, outs).astype(np.int32), "b", TensorType.INT32,
                       quantization(in_q[0] * ws, np.zeros(outs)))
        ys.append(b.conv2d(p, w, bias, version=3, quantization=quantization(*out_q)))
    b.output(b.concat(ys, quantization=quantization(*out_q)))
    return b.to_bytes()


@pytest.mark.parametrize("width", [1, 4])
def test_the_target_table_says_exactly_which_int8_merges_each_runtime_computes_bit_exactly(width, rng, monkeypatch):
    """targets.py claims, per runtime, which int8 merges give the per-group
    convs' very bytes. Measure every runtime against its claim: depthwise
    (width 1) is exact everywhere; grouped (width 4) on XNNPACK, LiteRT's
    reference kernels and TFLite Micro, while the optimized built-in kernel
    rounds some values one step differently."""
    from tflite_fuser import targets
    from tflite_fuser.micro import runnables

    src = int8_split_conv(rng, 8 * width, width, 2)
    model = load(src)
    # Merge even what a target refuses, to measure it.
    monkeypatch.setattr(targets.Target, "quantized_merge_refused", lambda self, *a: None)
    assert run_passes(model, ["fuse-split-conv"])[0] == {"fuse-split-conv": 1}
    merged = serialize(model).tobytes()
    x = rng.integers(-128, 128, (1, 33, 33, 8 * width)).astype(np.int8)
    kind = "depthwise" if width == 1 else "grouped"
    measured = {}
    for kernels in RESOLVERS:
        diff = np.abs(run_tflite(src, x, kernels).astype(int) - run_tflite(merged, x, kernels).astype(int)).max()
        assert diff <= 1
        measured[kernels] = diff == 0
    (split_tflm,), (merged_tflm,) = runnables(src), runnables(merged)  # 8 groups: TFLM loads both forms
    feed = {split_tflm.specs[0][0]: x}
    measured["micro"] = all((a == b).all() for a, b in zip(split_tflm.run(feed).values(),
                                                           merged_tflm.run(feed).values()))
    assert measured["reference"]
    for t in targets.TARGETS.values():
        if t.verify_on not in measured:  # the GPU accelerator: int8 merges are not claimed there
            assert (TensorType.INT8, kind) not in t.exact_quantized
            continue
        assert measured[t.verify_on] == ((TensorType.INT8, kind) in t.exact_quantized), (t.name, measured)


def test_the_split_pass_makes_the_int8_merges_the_target_computes_exactly(rng):
    for target, widths in (("builtin", {1: 1, 4: 0}), ("xnnpack", {1: 1, 4: 1}), ("micro", {1: 1, 4: 1})):
        for width, want in widths.items():
            counts, _ = run_passes(load(int8_split_conv(rng, 16, width, 2, hw=8)), ["fuse-split-conv"],
                                   options=PassOptions(target=target))
            assert counts == {"fuse-split-conv": want}, (target, width)
