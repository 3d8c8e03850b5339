"""merge-sibling-fcs (off by default): FULLY_CONNECTEDs reading one tensor
become one plus SPLIT_V, computing the same; it runs only when enabled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.cli import main
from tflite_fuser.passes import pass_names, select

from conftest import fuse_and_check, op_counts
from helpers import reasons

PASS = "merge-sibling-fcs"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
R = np.random.default_rng(9)


def _qkv(keep=(True, True, True), bias=(True, False, True)):
    b = ModelBuilder()
    x = b.input("x", [1, 6, 16])
    outs = [b.fully_connected(x, R.standard_normal((u, 16)).astype(np.float32),
                              R.standard_normal(u).astype(np.float32) if has_b else None, keep_num_dims=k)
            for u, k, has_b in zip((8, 8, 4), keep, bias)]
    b.output(*outs)
    return b.to_bytes()


def test_the_pass_is_off_unless_enabled():
    assert PASS in pass_names() and PASS not in [p.name for p in select("all")]
    assert PASS in [p.name for p in select("all", enable=[PASS])]
    r = fuse_and_check(_qkv())
    assert r.report["nothing_to_fuse"]


def test_enabled_siblings_become_one_fully_connected_and_a_split(rng):
    data = _qkv()
    r = fuse_and_check(data, enable=[PASS])
    assert op_counts(r) == {"FULLY_CONNECTED": 1, "SPLIT_V": 1}
    x = rng.standard_normal((1, 6, 16)).astype(np.float32)
    from ai_edge_litert.interpreter import Interpreter

    def outs(model):
        it = Interpreter(model_content=model)
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        return [it.get_tensor(d["index"]) for d in it.get_output_details()]

    for a, b in zip(outs(r.model_bytes), outs(data)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_siblings_that_shape_their_outputs_differently_stay_with_the_reason():
    r = fuse_and_check(_qkv(keep=(True, False, True)), enable=[PASS], passes=[PASS])
    assert r.report["nothing_to_fuse"]
    assert any("differ in keep_num_dims" in s for s in reasons(r, PASS))


@pytest.mark.parametrize("name", ["litert_torch/attention", "onnx2tf/attention"])
def test_the_attention_fixtures_q_k_v_projections_merge_when_enabled(name, tmp_path):
    assert main([str(FIXTURES / f"{name}.tflite"), str(tmp_path / "o.tflite"), "--enable", PASS, "-q"]) == 0
    r = fuse_and_check((FIXTURES / f"{name}.tflite").read_bytes(), enable=[PASS], runs=1)
    assert op_counts(r)["SPLIT_V"] == 1
