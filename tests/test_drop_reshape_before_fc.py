"""drop-reshape-before-fc: the flattening RESHAPE before a FULLY_CONNECTED
goes, since the FULLY_CONNECTED reads its input as rows of its input size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.graph import quantization
from tflite_fuser.schema import TensorType

from conftest import fuse_and_check, op_counts
from helpers import reasons

PASS = "drop-reshape-before-fc"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MANIFEST = {e["name"]: e for e in json.loads((FIXTURES / "manifest.json").read_text())["fixtures"]}
R = np.random.default_rng(5)


def _head(shape=(1, 1, 1, 16), target=(1, 16), keep=False, dtype=TensorType.FLOAT32, q=None, observed=False):
    b = ModelBuilder()
    x = b.input("x", list(shape), dtype, q)
    t = b.reshape(x, list(target), quantization=q)
    k = target[-1]
    if dtype == TensorType.INT8:
        w = b.const(R.integers(-127, 128, (4, k)).astype(np.int8), "w", quantization=quantization(0.02, 0))
        bias = b.const(np.zeros(4, np.int32), "b", quantization=quantization(0.02 * 0.05, 0))
    else:
        w, bias = R.standard_normal((4, k)).astype(np.float32), R.standard_normal(4).astype(np.float32)
    y = b.fully_connected(t, w, bias, keep_num_dims=keep, dtype=dtype,
                          quantization=quantization(0.1, 0) if q is not None else None)
    b.output(y)
    if observed:
        b.output(t)
    return b.to_bytes()


@pytest.mark.parametrize("dtype,q", [(TensorType.FLOAT32, None), (TensorType.INT8, quantization(0.05, 2))])
def test_the_flattening_reshape_before_a_fully_connected_goes_and_the_output_is_the_same(dtype, q):
    r = fuse_and_check(_head(dtype=dtype, q=q))
    assert op_counts(r) == {"FULLY_CONNECTED": 1}
    assert r.verification.max_abs_error == 0


def test_a_batch_of_rows_is_what_the_fully_connected_reads_too():
    r = fuse_and_check(_head(shape=(2, 3, 16), target=(6, 16)))
    assert op_counts(r) == {"FULLY_CONNECTED": 1}


@pytest.mark.parametrize("kw,why", [({"keep": True}, "keeps its input's dimensions"),
                                    ({"observed": True}, "model output")])
def test_a_reshape_that_matters_stays_with_the_reason(kw, why):
    r = fuse_and_check(_head(**kw))
    assert "RESHAPE" in op_counts(r)
    assert any(why in s for s in reasons(r, PASS))


@pytest.mark.parametrize("name", ["naive/resnet18", "naive/mobilenetv2", "naive/fc_head"])
def test_the_naive_converters_heads_reach_the_ideals_op_count(name):
    r = fuse_and_check((FIXTURES / f"{name}.tflite").read_bytes(), runs=1)
    ideal = fuse_and_check((FIXTURES / f"ideal/{name.split('/')[1]}.tflite").read_bytes(), runs=1)
    assert "RESHAPE" not in op_counts(r)
    assert r.model.num_operators() <= ideal.model.num_operators()


def test_for_the_gpu_only_a_reshape_with_nothing_to_flatten_goes():
    """LiteRT's GPU delegate flattens a [1, 8, 8, 16] FULLY_CONNECTED input
    wrongly (measured), so the gpu target keeps that RESHAPE; [1, 1, 1, C]
    has nothing to flatten and goes."""
    kept = fuse_and_check(_head(shape=(1, 4, 4, 16), target=(1, 256)), target="gpu")
    assert "RESHAPE" in op_counts(kept)
    assert any("kept for target gpu" in s for s in reasons(kept, PASS))
    assert op_counts(fuse_and_check(_head(), target="gpu")) == {"FULLY_CONNECTED": 1}


def test_onnx2tfs_timm_efficientnet_has_nothing_left_but_its_flatten_and_its_heads_transpose():
    """timm's EfficientNet-B0 through onnx2tf 2.6: batch norms folded, squeeze-
    excite in NHWC, no layout islands. What stays is SiLU as LOGISTIC + MUL
    (41 of each: TFLite has no SiLU op to write) and PyTorch's stride-2
    padding as PAD + VALID conv; the RESHAPE before the classifier goes, and
    the TRANSPOSE to NCHW before its pooling (drop-layout-island)."""
    src = FIXTURES / "onnx2tf" / "timm_efficientnet.tflite"
    r = fuse_and_check(src.read_bytes(), runs=1)
    before = MANIFEST["onnx2tf/timm_efficientnet"]["op_counts"]
    after = dict(op_counts(r))
    assert before.pop("RESHAPE") == 1 and before.pop("TRANSPOSE") == 1 and after == before
    assert after["LOGISTIC"] == after["MUL"] == 41
