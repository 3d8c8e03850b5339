"""fuse-dilated-conv: TF's lowered dilated convolutions (SPACE_TO_BATCH_ND ->
conv -> BATCH_TO_SPACE_ND) become one dilated conv, SAME, VALID or with an
explicit PAD; what the crops make inexact stays. On TFLite Micro, which
computes the lowered form wrongly, the fused model is what runs right."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.cli import main
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import BuiltinOptions, fb

from conftest import fuse_and_check, op_counts
from helpers import ops_of, reasons, run_tflite

PASS = "fuse-dilated-conv"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
KERAS = FIXTURES / "special/keras_dilated.tflite"


def _lowered(size=12, d=2, pads=((2, 2), (2, 2)), crops=((0, 0), (0, 0)), depthwise=False, seed=0):
    """x [1, size, size, 4] -> SPACE_TO_BATCH_ND -> 3x3 VALID conv -> BATCH_TO_SPACE_ND."""
    r = np.random.default_rng(seed)
    b = ModelBuilder()
    x = b.input("x", [1, size, size, 4])
    hp, wp = size + sum(pads[0]), size + sum(pads[1])
    (s,) = b.op(Op.SPACE_TO_BATCH_ND, [x, np.array([d, d], np.int32), np.array(pads, np.int32)],
                [[d * d, hp // d, wp // d, 4]], fb.SpaceToBatchNDOptionsT(), BuiltinOptions.SpaceToBatchNDOptions)
    if depthwise:
        c = b.depthwise_conv2d(s, r.standard_normal((1, 3, 3, 4)).astype(np.float32),
                               r.standard_normal(4).astype(np.float32), padding="VALID")
    else:
        c = b.conv2d(s, r.standard_normal((6, 3, 3, 4)).astype(np.float32), r.standard_normal(6).astype(np.float32),
                     padding="VALID")
    ch = c.shape[3]
    out = [1, (hp // d - 2) * d - sum(crops[0]), (wp // d - 2) * d - sum(crops[1]), ch]
    (y,) = b.op(Op.BATCH_TO_SPACE_ND, [c, np.array([d, d], np.int32), np.array(crops, np.int32)], [out],
                fb.BatchToSpaceNDOptionsT(), BuiltinOptions.BatchToSpaceNDOptions)
    b.output(y)
    return b.to_bytes()


@pytest.mark.parametrize("kw,padding", [
    ({}, "SAME"),                                                       # (2, 2): SAME for a 3x3 at rate 2
    ({"size": 11, "pads": ((2, 3), (2, 3)), "crops": ((0, 1), (0, 1))}, "SAME"),  # odd size: TF's extra row
    ({"pads": ((0, 0), (0, 0))}, "VALID"),
    ({"depthwise": True}, "SAME"),
])
def test_the_lowered_form_becomes_one_dilated_conv_computing_the_same(kw, padding, rng):
    data = _lowered(**kw)
    r = fuse_and_check(data)
    (conv,) = [op for op in r.model.main.operators if op.code in (Op.CONV_2D, Op.DEPTHWISE_CONV_2D)]
    assert r.model.num_operators() == 1
    assert (conv.options.dilationHFactor, conv.options.dilationWFactor) == (2, 2)
    assert conv.options.padding == getattr(fb.Padding, padding)
    size = kw.get("size", 12)
    x = rng.standard_normal((1, size, size, 4)).astype(np.float32)
    np.testing.assert_allclose(run_tflite(r.model_bytes, x, "builtin"), run_tflite(data, x, "builtin"),
                               rtol=1e-5, atol=1e-5)


def test_padding_that_is_neither_same_nor_valid_stays_as_an_explicit_pad():
    r = fuse_and_check(_lowered(pads=((2, 4), (0, 2))))
    assert op_counts(r) == {"PAD": 1, "CONV_2D": 1}
    (pad,) = ops_of(r, Op.PAD)
    assert pad.inputs[1].value().tolist() == [[0, 0], [2, 4], [0, 2], [0, 0]]


def test_crops_that_cut_more_than_the_padding_stay_with_the_reason():
    r = fuse_and_check(_lowered(pads=((0, 0), (0, 0)), crops=((2, 0), (0, 0))), passes=[PASS])
    assert r.report["nothing_to_fuse"]
    assert any("cut more than the paddings" in s for s in reasons(r, PASS))


def test_keras_dilated_convs_with_an_open_batch_size_come_back_whole():
    """TF 2.21 lowers each of the three; their ReLUs then fuse: 12 -> 4 ops."""
    r = fuse_and_check(KERAS.read_bytes(), runs=1)
    assert op_counts(r) == {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2}
    assert r.verification.max_abs_error == 0


def test_tflite_micro_computes_the_lowered_form_wrongly_and_the_fused_one_right(tmp_path):
    """Measured: TFLM runs TF's SPACE_TO_BATCH_ND form of this model off by
    more than its output range. That is the runtime's finding, not a failed
    rewrite: the rewrite is proved on LiteRT's reference kernels and the
    fused model matches LiteRT in TFLM."""
    report = tmp_path / "r.json"
    assert main([str(KERAS), str(tmp_path / "o.tflite"), "--target", "micro", "--report", str(report)]) == 0
    r = json.loads(report.read_text())
    m = r["verification"]["micro"]
    assert m["original_loads"] and m["original_max_abs_error_vs_litert"] > 0.1
    assert m["agreement_ok"] and m["agreement_max_abs_error"] == 0
    assert r["output"]["operators"] == 4
