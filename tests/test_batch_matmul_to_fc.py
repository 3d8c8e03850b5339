"""batch-matmul-to-fc: a BATCH_MATMUL by a constant matrix becomes a
FULLY_CONNECTED with keep_num_dims, whose bias ADD then folds; activations
multiplied together stay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import BuiltinOptions, fb

from conftest import fuse_and_check, op_counts
from helpers import ops_of, reasons, run_tflite

PASS = "batch-matmul-to-fc"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
R = np.random.default_rng(8)


def _bmm(b, x, y, out, adj_y=False):
    opts = fb.BatchMatMulOptionsT()
    opts.adjY = adj_y
    return b.op(Op.BATCH_MATMUL, [x, y], [out], opts, BuiltinOptions.BatchMatMulOptions)[0]


def _linear(adj_y=False, bias=True, shape=(2, 5, 16), units=8):
    b = ModelBuilder()
    x = b.input("x", list(shape))
    w = R.standard_normal((units, shape[-1]) if adj_y else (shape[-1], units)).astype(np.float32)
    y = _bmm(b, x, w, list(shape[:-1]) + [units], adj_y)
    if bias:
        y = b.add(R.standard_normal(units).astype(np.float32), y)
    b.output(y)
    return b.to_bytes()


@pytest.mark.parametrize("adj_y", [False, True])
def test_a_matmul_by_a_constant_and_its_bias_become_one_fully_connected(adj_y, rng):
    data = _linear(adj_y)
    r = fuse_and_check(data)
    assert op_counts(r) == {"FULLY_CONNECTED": 1}
    (fc,) = ops_of(r, Op.FULLY_CONNECTED)
    assert fc.options.keepNumDims and fc.opcode.version >= 5 and fc.inputs[2] is not None
    x = rng.standard_normal((2, 5, 16)).astype(np.float32)
    np.testing.assert_allclose(run_tflite(r.model_bytes, x, "builtin"), run_tflite(data, x, "builtin"),
                               rtol=1e-5, atol=1e-5)


def test_two_activations_multiplied_are_no_candidate():
    b = ModelBuilder()
    q = b.input("q", [1, 4, 8])
    k = b.input("k", [1, 8, 4])
    b.output(_bmm(b, q, k, [1, 4, 4]))
    r = fuse_and_check(b.to_bytes())
    assert r.report["nothing_to_fuse"] and not reasons(r, PASS)


def test_for_the_gpu_only_a_rank_2_input_is_rewritten():
    kept = fuse_and_check(_linear(bias=False), target="gpu", passes=[PASS])
    assert kept.report["nothing_to_fuse"]
    assert any("kept for target gpu" in s for s in reasons(kept, PASS))
    assert op_counts(fuse_and_check(_linear(bias=False, shape=(5, 16)), target="gpu", passes=[PASS])) == {
        "FULLY_CONNECTED": 1}


def test_onnx2tfs_linear_layers_come_back_as_fully_connected_proved_on_real_values():
    """onnx2tf declares [1, 1, 1] for tensors behind its computed RESHAPE; the
    region proofs allocate the cut regions for the shapes really computed."""
    r = fuse_and_check((FIXTURES / "onnx2tf/mlp_gelu.tflite").read_bytes(), runs=1)
    assert "BATCH_MATMUL" not in op_counts(r) and op_counts(r)["FULLY_CONNECTED"] == 7
    checks = r.verification.regions
    assert checks and all(c["ok"] and c["proved"] for c in checks)
    assert not r.report["reverted"]
