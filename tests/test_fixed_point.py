"""The passes run to a fixed point, and no pass looks twice at a graph it has seen unchanged."""

from __future__ import annotations

import numpy as np

import models
from split_conv_models import depthwise_filter, lowered_depthwise
from tflite_fuser import load, run_passes
from tflite_fuser.builder import ModelBuilder
from tflite_fuser.pipeline import select


def _runs(model_bytes: bytes) -> tuple[dict, list[tuple[int, str]]]:
    """Rewrites per pass, and (round, pass) for every pass run."""
    said: list[str] = []
    counts, _ = run_passes(load(model_bytes), progress=said.append)
    runs = []
    for msg in said:
        name, _, rnd = msg.removeprefix("running passes: ").partition(" (round ")
        runs.append((int(rnd.rstrip(")")) if rnd else 1, name))
    return counts, runs


def test_the_last_round_stops_at_the_last_pass_that_rewrote():
    """conv -> MUL -> ADD -> RELU: fold-affine and fuse-activation rewrite
    in round 1; round 2 runs the passes up to fuse-activation (the graph
    changed after they ran) and none after it (they saw the final graph)."""
    counts, runs = _runs(models.conv_bn_relu().to_bytes())
    assert {k: v for k, v in counts.items() if v} == {"fold-affine": 1, "fuse-activation": 1}
    names = [p.name for p in select(None, [], [])]
    assert [n for r, n in runs if r == 1] == names
    assert [n for r, n in runs if r == 2] == names[:names.index("fuse-activation") + 1]
    assert max(r for r, _ in runs) == 2


def test_a_rewrite_by_a_later_pass_gives_an_earlier_one_its_second_look(rng):
    """SPLIT -> 4 convs -> CONCATENATION -> MUL: the MUL folds only once
    fuse-split-conv (after fold-affine in the order) has made the convs one;
    fold-affine runs again in round 2 and folds it."""
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 4])
    cat = lowered_depthwise(b, x, depthwise_filter(rng, 4, 1), rng.standard_normal(4).astype(np.float32))
    b.output(b.mul(cat, rng.random(4).astype(np.float32) + 0.5))
    counts, runs = _runs(b.to_bytes())
    assert counts["fuse-split-conv"] == 1 and counts["fold-affine"] == 1
    assert (2, "fold-affine") in runs
