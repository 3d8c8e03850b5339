"""Patterns inside control-flow bodies and behind every signature are fused
too, and the model keeps its subgraphs, signatures and their interface."""

from __future__ import annotations

import pytest

from conftest import FIXTURES
from tflite_fuser import fuse, load


def _per_subgraph(model) -> list[tuple[str, int]]:
    return [(sg.name, len(sg.operators)) for sg in model.subgraphs]


@pytest.mark.parametrize("name,shrinks", [
    ("while_loop", ["while_body"]),
    ("if_cond", [1, 2]),
    ("two_signatures", ["dw_block", "sep_conv"]),
])
def test_patterns_in_every_subgraph_are_fused(name, shrinks):
    path = FIXTURES / "special" / f"{name}.tflite"
    before = load(path)
    result = fuse(path, runs=2)
    assert result.ok, result.verification.message
    after = load(result.model_bytes)
    a, b = _per_subgraph(before), _per_subgraph(after)
    assert [n for n, _ in a] == [n for n, _ in b]
    for key in shrinks:
        i = key if isinstance(key, int) else [n for n, _ in a].index(key)
        assert b[i][1] < a[i][1], f"subgraph {a[i][0]} not fused: {a[i][1]} -> {b[i][1]} ops"
    assert [(s.key, [n for n, _ in s.inputs], [n for n, _ in s.outputs]) for s in before.signature_defs] == \
           [(s.key, [n for n, _ in s.inputs], [n for n, _ in s.outputs]) for s in after.signature_defs]
    assert {o.signature for o in result.verification.outputs} == {s.key for s in before.signature_defs}
