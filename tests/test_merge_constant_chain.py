"""merge-constant-chain: constant MUL/ADD/SUB/DIV runs that no weighted op can
take become one MUL and one ADD, composed in float64 and rounded once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.schema import ActivationFunctionType as Act
from tflite_fuser.schema import BuiltinOperator as Op

from conftest import fuse_and_check, op_counts
from helpers import ops_of, run_tflite

PASS = "merge-constant-chain"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
R = np.random.default_rng(11)
C = 8


def _vec(lo=0.5, hi=2.0):
    return R.uniform(lo, hi, C).astype(np.float32)


def _pooled(steps, activation=None, observed=False):
    """x -> MAX_POOL-free stand-in (a RELU, so the chain's input is computed)
    -> the chain ``steps`` (("mul", c), ("sub", c), ("rsub", c) = c - y ...)."""
    b = ModelBuilder()
    x = b.input("x", [1, 4, 4, C])
    y = h = b.relu(x)
    mids = []
    for i, (kind, c) in enumerate(steps):
        act = activation if i == len(steps) - 1 else None
        if kind == "rsub":
            y = b.sub(c, y, activation=act)
        else:
            y = getattr(b, kind)(y, c, activation=act)
        mids.append(y)
    b.output(y)
    if observed:
        b.output(mids[0])
    return b.to_bytes(), h


def _reference(steps, x):
    y = np.maximum(x.astype(np.float64), 0)
    for kind, c in steps:
        c = np.asarray(c, np.float64)
        y = {"mul": y * c, "add": y + c, "sub": y - c, "div": y / c, "rsub": c - y}[kind]
    return y


@pytest.mark.parametrize("steps,form", [
    ([("sub", _vec()), ("div", _vec()), ("mul", _vec()), ("add", _vec())], {"MUL": 1, "ADD": 1}),
    ([("mul", _vec()), ("mul", _vec()), ("mul", np.float32(0.5))], {"MUL": 1}),
    ([("add", _vec()), ("sub", np.float32(3.0))], {"ADD": 1}),
    ([("rsub", _vec()), ("mul", _vec()), ("add", _vec())], {"MUL": 1, "ADD": 1}),
])
def test_a_written_out_normalisation_becomes_one_mul_and_one_add_and_computes_the_same(steps, form):
    model, _ = _pooled(steps)
    r = fuse_and_check(model)
    assert op_counts(r) == {"RELU": 1, **form}
    x = R.standard_normal((1, 4, 4, C)).astype(np.float32)
    np.testing.assert_allclose(run_tflite(r.model_bytes, x), _reference(steps, x), rtol=1e-5, atol=1e-5)


def test_the_last_ops_activation_goes_onto_the_merged_add():
    model, _ = _pooled([("mul", _vec()), ("add", _vec(-1, 1)), ("mul", _vec())], activation="RELU6")
    r = fuse_and_check(model)
    assert op_counts(r) == {"RELU": 1, "MUL": 1, "ADD": 1}
    (add,) = ops_of(r, Op.ADD)
    assert add.options.fusedActivationFunction == Act.RELU6
    assert ops_of(r, Op.MUL)[0].options.fusedActivationFunction == Act.NONE


def test_a_mul_then_an_add_is_as_short_as_it_gets_and_is_no_candidate():
    model, _ = _pooled([("mul", _vec()), ("add", _vec())])
    r = fuse_and_check(model)
    assert op_counts(r) == {"RELU": 1, "MUL": 1, "ADD": 1}
    assert r.report["nothing_to_fuse"]


def test_an_observed_intermediate_ends_the_chain_there():
    model, _ = _pooled([("mul", _vec()), ("add", _vec()), ("mul", _vec()), ("add", _vec())], observed=True)
    r = fuse_and_check(model)
    assert op_counts(r) == {"RELU": 1, "MUL": 2, "ADD": 1}  # the first MUL stays, its output is seen


def test_a_chain_a_convolution_can_take_goes_into_its_weights_instead():
    b = ModelBuilder()
    x = b.input("x", [1, 4, 4, C])
    y = b.conv2d(x, R.standard_normal((C, 1, 1, C)).astype(np.float32), np.zeros(C, np.float32))
    for c in (_vec(), _vec(), _vec()):
        y = b.mul(y, c)
    b.output(y)
    r = fuse_and_check(b.to_bytes())
    assert op_counts(r) == {"CONV_2D": 1}
    assert not any(rw["pass"] == PASS for rw in r.report["rewrites"])


def test_a_constant_that_varies_over_space_is_no_step_and_the_chain_stops_before_it():
    model, _ = _pooled([("mul", _vec()), ("add", _vec()), ("mul", _vec()),
                        ("mul", R.uniform(0.5, 2, (1, 4, 4, 1)).astype(np.float32))])
    r = fuse_and_check(model)
    assert op_counts(r) == {"RELU": 1, "MUL": 2, "ADD": 1}


@pytest.mark.parametrize("route,before,after", [("litert_torch", 10, 8), ("nobuco", 10, 6)])
def test_the_normalisation_before_a_reflection_pad_becomes_one_mul_and_one_add(route, before, after):
    """``((x + 1) / 2 - mean) / std`` ahead of ``ReflectionPad2d``: litert-
    torch computes it in NCHW (constants ``[1, 3, 1, 1]``) as ADD, MUL, SUB,
    MUL; nobuco in NHWC as ADD, MUL, SUB, DIV (and its convs' PADs fold)."""
    r = fuse_and_check((FIXTURES / route / "reflect_stem.tflite").read_bytes(), runs=1)
    assert r.report["input"]["operators"] == before and r.report["output"]["operators"] == after
    rewrites = [rw for rw in r.report["rewrites"] if rw["pass"] == PASS]
    assert len(rewrites) == 1 and "into MUL -> ADD" in rewrites[0]["what"]
    (mul,) = ops_of(r, Op.MUL)
    assert mul.inputs[1].shape == ([1, 3, 1, 1] if route == "litert_torch" else [3])
