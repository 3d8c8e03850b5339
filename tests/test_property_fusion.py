"""Property: for any graph, the fused model verifies against the original in
the interpreter, and the op count never grows.

Random graphs come from ``tests/random_graphs.py``. A few hundred examples run
in the normal test run; ``pytest -m slow`` runs thousands.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, event, given, note, settings

from random_graphs import random_model
from tflite_fuser import fuse

COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _check(case):
    data, steps = case
    note(f"steps: {steps}")
    # Magnitudes up to 1e30 and sums that cancel: atol in units of each
    # output's range (see verifier.py), NaN/inf agreement still exact.
    result = fuse(data, runs=1, isolate=False, seed=1, range_atol=True)
    note(f"report: {result.report['passes']} skipped={[(s['op'], s['reason']) for s in result.report['skipped']]}")
    for p in result.report["passes"]:
        if p["rewrites"]:
            event(f"{p['name']} rewrote")
    for s in result.report["skipped"]:
        event(f"skip: {s['pass']}: {s['reason'].split(' (')[0][:60]}")
    if result.report["nothing_to_fuse"]:
        event("nothing to fuse")
        assert result.model_bytes == data  # nothing rewritten: the input, byte for byte
        return
    v = result.verification
    # Where the original itself overflows to inf/NaN on these inputs, folding
    # may move the overflow (inf vs NaN): the example says nothing about fusion.
    overflowed = any(o.nonfinite_reference for o in v.outputs)
    if overflowed:
        event("original overflowed")
    assume(v.ok or not overflowed)
    assert v.ok, f"{v.message}; steps {steps}"
    assert result.report["output"]["operators"] <= result.report["input"]["operators"]


@settings(max_examples=300, **COMMON)
@given(random_model())
def test_fused_random_graph_verifies_and_never_grows(case):
    _check(case)


@pytest.mark.slow
@settings(max_examples=3000, **COMMON)
@given(random_model())
def test_fused_random_graph_verifies_and_never_grows_long(case):
    _check(case)
