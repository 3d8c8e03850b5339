"""strided-slice-to-slice: unit-stride STRIDED_SLICE as SLICE, exact for
every type; the resolution of masks and negative indices pinned against
numpy's slicing, and TF's converter output fused."""

from __future__ import annotations

import numpy as np
import pytest

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.graph import quantization
from tflite_fuser.passes.strided_slice_to_slice import resolve
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import BuiltinOptions, TensorType, fb

from conftest import fuse_and_check, op_counts
from helpers import ops_of, reasons, run_tflite

PASS = "strided-slice-to-slice"


def _strided(x_shape, begin, end, strides=None, begin_mask=0, end_mask=0, shrink=0, dtype=TensorType.FLOAT32,
             q=None, signature=None) -> bytes:
    b = ModelBuilder()
    x = b.input("x", list(x_shape), dtype, q)
    if signature:
        x.shape_signature = signature
    strides = strides or [1] * len(x_shape)
    ref = np.zeros(x_shape)[tuple(slice(None if begin_mask >> i & 1 else begin[i],
                                        None if end_mask >> i & 1 else end[i], strides[i])
                                  for i in range(len(x_shape)))]
    opts = fb.StridedSliceOptionsT()
    opts.beginMask, opts.endMask, opts.shrinkAxisMask = begin_mask, end_mask, shrink
    out_shape = [d for i, d in enumerate(ref.shape) if not shrink >> i & 1]
    (y,) = b.op(Op.STRIDED_SLICE, [x, np.array(begin, np.int32), np.array(end, np.int32),
                                   np.array(strides, np.int32)], [out_shape], opts,
                BuiltinOptions.StridedSliceOptions, quantization=q)
    b.output(y)
    return b.to_bytes()


@pytest.mark.parametrize("begin,end,bm,em", [([0, 0, 0, 0], [0, 0, 0, 16], 0b0111, 0b0111),
                                             ([0, 2, -5, 3], [1, -1, 8, 30], 0, 0),
                                             ([0, -100, 1, 0], [1, 100, -1, 0], 0b0001, 0b1001)])
def test_resolving_the_masks_and_negative_indices_cuts_what_numpy_cuts(begin, end, bm, em):
    shape = [1, 6, 8, 32]
    b, size = resolve(shape, begin, end, bm, em)
    x = np.arange(np.prod(shape)).reshape(shape)
    want = x[tuple(slice(None if bm >> i & 1 else begin[i], None if em >> i & 1 else end[i]) for i in range(4))]
    got = x[tuple(slice(b[i], b[i] + size[i]) for i in range(4))]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype,q", [(TensorType.FLOAT32, None), (TensorType.INT8, quantization(0.1, 3))])
def test_a_unit_stride_strided_slice_becomes_a_slice_with_the_same_bytes(dtype, q, rng):
    data = _strided([1, 6, 8, 32], [0, 1, 0, 8], [0, 5, 0, 24], begin_mask=0b0101, end_mask=0b0101,
                    dtype=dtype, q=q)
    r = fuse_and_check(data)
    assert op_counts(r) == {"SLICE": 1}
    x = (rng.integers(-128, 128, (1, 6, 8, 32)).astype(np.int8) if dtype == TensorType.INT8
         else rng.standard_normal((1, 6, 8, 32)).astype(np.float32))
    np.testing.assert_array_equal(run_tflite(r.model_bytes, x, "builtin"), run_tflite(data, x, "builtin"))


def test_a_dynamic_batch_taken_whole_keeps_its_dynamic_size():
    r = fuse_and_check(_strided([1, 6, 8, 32], [0, 0, 0, 0], [0, 0, 0, 16], begin_mask=0b0111, end_mask=0b0111,
                                signature=[-1, 6, 8, 32]))
    (sl,) = ops_of(r, Op.SLICE)
    assert sl.inputs[2].value().tolist() == [-1, 6, 8, 16]


def test_a_real_stride_stays_and_is_no_candidate():
    r = fuse_and_check(_strided([1, 6, 8, 32], [0, 0, 0, 0], [1, 6, 8, 32], strides=[1, 2, 2, 1]))
    assert r.report["nothing_to_fuse"] and not reasons(r, PASS)


def test_a_shrink_axis_mask_is_left_with_the_reason():
    r = fuse_and_check(_strided([1, 6, 8, 32], [0, 0, 0, 0], [1, 6, 8, 32], shrink=0b0001))
    assert r.report["nothing_to_fuse"]
    assert any("changes the rank" in s for s in reasons(r, PASS))


def test_tf_converters_channel_slices_become_slices(tf):
    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 32], tf.float32)])
    def channel_split(x):
        return tf.concat([tf.nn.relu(x[:, :, :, :16]), x[:, :, :, 16:] * 2.0], axis=3)

    conv = tf.lite.TFLiteConverter.from_concrete_functions([channel_split.get_concrete_function()], tf.Module())
    data = conv.convert()
    r = fuse_and_check(data)
    assert op_counts(r)["SLICE"] == 2 and "STRIDED_SLICE" not in op_counts(r)
    assert r.verification.max_abs_error == 0
