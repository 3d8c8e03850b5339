"""fuse-gelu: GELU written out of elementwise ops, in any order, becomes one
GELU of the variant whose formula it computes; look-alikes stay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.elementwise_eval import PROBE, gelu, same_function
from tflite_fuser.schema import BuiltinOperator as Op

from conftest import fuse_and_check, op_counts
from helpers import ops_of, reasons, run_tflite

PASS = "fuse-gelu"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def k(v):
    return np.array(v, np.float32)


def tanh_gelu_onnx2tf(b, x):
    """onnx2tf's order: x*x, *x, *0.044715, +x, *sqrt(2/pi), tanh, +1, *x, *0.5."""
    cube = b.mul(x, b.mul(x, x))
    inner = b.mul(k(0.7978846), b.add(x, b.mul(k(0.044715), cube)))
    return b.mul(k(0.5), b.mul(x, b.add(k(1.0), b.op(Op.TANH, [inner], [list(x.shape)])[0])))


def tanh_gelu_pow(b, x):
    """Another order: 0.5*x first, x**3 as POW, the product last."""
    half = b.mul(x, k(0.5))
    cube = b.op(Op.POW, [x, k(3.0)], [list(x.shape)])[0]
    t = b.op(Op.TANH, [b.mul(b.add(b.mul(cube, k(0.044715)), x), k(0.7978846))], [list(x.shape)])[0]
    return b.mul(half, b.add(t, k(1.0)))


def erf_gelu_polynomial(b, x):
    """x * Phi(x) = 0.5 * (x + |x| * erf(|x| / sqrt 2)), erf by Abramowitz-Stegun 7.1.26 (error 1.5e-7)."""
    shape = [list(x.shape)]
    ax = b.op(Op.ABS, [x], shape)[0]
    z = b.mul(ax, k(1 / np.sqrt(2)))
    t = b.div(k(1.0), b.add(k(1.0), b.mul(k(0.3275911), z)))
    poly = k(1.061405429)
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly = b.add(b.mul(t, poly) if not isinstance(poly, np.ndarray) else b.mul(t, poly), k(c))
    poly = b.mul(poly, t)
    e = b.op(Op.EXP, [b.mul(b.mul(z, z), k(-1.0))], shape)[0]
    erf = b.sub(k(1.0), b.mul(poly, e))
    return b.mul(k(0.5), b.add(x, b.mul(ax, erf)))


def sigmoid_approximation(b, x):
    """x * sigmoid(1.702 x): another GELU approximation, 2e-2 off TFLite's: not GELU."""
    return b.mul(x, b.op(Op.LOGISTIC, [b.mul(x, k(1.702))], [list(x.shape)])[0])


def _model(activation, shape=(1, 6, 16)):
    r = np.random.default_rng(2)
    b = ModelBuilder()
    inp = b.input("x", list(shape))
    x = b.add(inp, r.standard_normal(shape[-1]).astype(np.float32) * 3)  # a bias add, as after a matmul
    b.output(activation(b, x))
    return b.to_bytes()


@pytest.mark.parametrize("form,approximate", [(tanh_gelu_onnx2tf, True), (tanh_gelu_pow, True),
                                              (erf_gelu_polynomial, False)])
def test_a_written_out_gelu_becomes_the_gelu_it_computes(form, approximate, rng):
    data = _model(form)
    r = fuse_and_check(data)
    assert op_counts(r) == {"ADD": 1, "GELU": 1}
    (g,) = ops_of(r, Op.GELU)
    assert bool(g.options.approximate) is approximate
    x = (rng.standard_normal((1, 6, 16)) * 3).astype(np.float32)
    np.testing.assert_allclose(run_tflite(r.model_bytes, x, "builtin"), run_tflite(data, x, "builtin"),
                               rtol=1e-5, atol=2e-5)


def test_the_sigmoid_approximation_is_not_gelu_and_stays():
    r = fuse_and_check(_model(sigmoid_approximation), passes=[PASS])
    assert r.report["nothing_to_fuse"]


def test_tflite_micro_has_no_gelu_so_the_written_form_stays_with_the_reason():
    r = fuse_and_check(_model(tanh_gelu_onnx2tf), target="micro", passes=[PASS])
    assert r.report["nothing_to_fuse"]
    assert any("kept for target micro" in s for s in reasons(r, PASS))


def test_the_two_gelu_variants_are_told_apart_by_the_comparison():
    assert same_function(gelu(PROBE, True), gelu(PROBE, True))
    assert not same_function(gelu(PROBE, True), gelu(PROBE, False))


def test_onnx2tfs_mlp_blocks_lose_their_written_out_gelus():
    r = fuse_and_check((FIXTURES / "onnx2tf/mlp_gelu.tflite").read_bytes(), runs=1)
    assert r.report["input"]["op_counts"]["TANH"] == 3
    assert op_counts(r)["GELU"] == 3 and "TANH" not in op_counts(r)


def test_a_wrong_rewrite_of_a_flex_erf_gelu_fails_its_numpy_reference_proof_and_is_reverted(monkeypatch):
    """The original ops cannot run in the interpreter (FlexErf), so their
    region proof computes them in numpy: a rewrite with a wrong factor
    (2.5 GELU(x) for 2 GELU(x)) must fail there and be reverted."""
    from tflite_fuser.passes import fuse_gelu

    monkeypatch.setattr(fuse_gelu, "_multiple", lambda got, want: 2.5 if np.isfinite(got).all() else None)
    r = fuse_and_check((FIXTURES / "onnx2tf" / "mlp_gelu_erf_tfc.tflite").read_bytes(), runs=1)
    assert "GELU" not in op_counts(r) and op_counts(r)["CUSTOM(FlexErf)"] == 2
    assert r.report["reverted"] and all("region proof failed" in x["error"] and "max |a-b|" in x["error"]
                                        for x in r.report["reverted"])
