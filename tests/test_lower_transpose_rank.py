"""lower-transpose-rank: ShuffleNet's rank-5 channel shuffle in rank 4, for
targets without rank-5 tensors (the GPU), and the axis maths behind it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.transpose_rank import merged_transpose, padded

from conftest import fuse_and_check, op_counts
from helpers import reasons
from models import channel_shuffle


@pytest.mark.parametrize("shape", [[1, 2, 3, 4, 5], [2, 1, 3, 1, 4], [1, 1, 6, 1, 1], [3, 2, 2, 2, 3, 1]])
def test_the_merged_transpose_moves_every_element_where_the_original_does(shape):
    x = np.arange(np.prod(shape)).reshape(shape)
    for perm in itertools.permutations(range(len(shape))):
        s, p = merged_transpose(shape, perm)
        assert int(np.prod(s)) == x.size
        np.testing.assert_array_equal(x.reshape(s).transpose(p).ravel(), x.transpose(perm).ravel())
        s4, p4 = padded(s, p, max(4, len(s)))
        np.testing.assert_array_equal(x.reshape(s4).transpose(p4).ravel(), x.transpose(perm).ravel())


def test_the_channel_shuffle_merges_to_rank_3():
    assert merged_transpose([1, 2, 24, 8, 8], [0, 2, 1, 3, 4]) == ([2, 24, 64], [1, 0, 2])
    assert merged_transpose([1, 8, 8, 2, 24], [0, 1, 2, 4, 3]) == ([64, 2, 24], [0, 2, 1])


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_target_gpu_writes_the_rank_5_shuffle_in_rank_4_and_the_model_computes_the_same(layout):
    r = fuse_and_check(channel_shuffle(layout=layout), target="gpu")
    assert {p["name"]: p["rewrites"] for p in r.report["passes"]}["lower-transpose-rank"] == 1
    assert all(len(t.shape) <= 4 for sg in r.model.subgraphs for t in sg.tensors)
    assert r.verification.max_abs_error == 0  # data movement only
    assert op_counts(r)["TRANSPOSE"] == (3 if layout == "nchw" else 1)


@pytest.mark.parametrize("target", ["xnnpack", "builtin", "micro"])
def test_targets_that_run_rank_5_keep_the_shuffle_as_it_is(target):
    r = fuse_and_check(channel_shuffle(), target=target)
    assert r.report["nothing_to_fuse"]


def _shuffle_read_by(reader: str) -> bytes:
    b = ModelBuilder()
    x = b.input("x", [1, 4, 4, 8])
    y = b.reshape(x, [1, 4, 4, 2, 4])
    y = b.transpose(y, [0, 1, 2, 4, 3], version=4)
    if reader == "add":
        b.output(b.add(y, np.ones([4, 2], np.float32)))
    elif reader == "output":
        b.output(y)
    return b.to_bytes()


@pytest.mark.parametrize("reader,why", [("add", "not read by RESHAPEs"), ("output", "is a model output")])
def test_a_rank_5_transpose_whose_output_is_not_reshaped_back_is_left_with_the_reason(reader, why):
    r = fuse_and_check(_shuffle_read_by(reader), target="gpu")
    assert r.report["nothing_to_fuse"]
    assert any(why in s for s in reasons(r, "lower-transpose-rank"))


def test_a_transpose_that_needs_rank_5_even_merged_is_left_with_the_reason():
    b = ModelBuilder()
    x = b.input("x", [2, 3, 4, 5, 6])
    y = b.transpose(b.reshape(x, [2, 3, 4, 5, 6]), [4, 3, 2, 1, 0], version=4)
    b.output(b.reshape(y, [6, 5, 4, 6]))
    # (the identity RESHAPE in front would be drop-identities' business)
    r = fuse_and_check(b.to_bytes(), target="gpu", passes=["lower-transpose-rank"])
    assert r.report["nothing_to_fuse"]
    assert any("even with adjacent axes merged the transpose has rank 5" in s
               for s in reasons(r, "lower-transpose-rank"))
