"""Hostile files: the reader and validator either accept a model or raise
BadModelError with one line - never another exception, never a hang.

Byte-level and semantic mutations of real models (see benchmarks/mutate.py);
hypothesis picks the mutation, the source model and the random choices. The
full CLI on mutated files (interpreter included, in its sandbox) is covered by
the slower ``benchmarks/fuzz.py`` harness and a handful of cases here.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import models
from benchmarks import mutate
from conftest import FIXTURES
from tflite_fuser import BadModelError, load
from tflite_fuser.cli import main
from tflite_fuser.writer import write_model

SOURCES = [models.conv_relu().to_bytes(), models.rich_metadata(), models.quantized_per_channel(),
           models.endless_while()]
SOURCES += [p.read_bytes() for p in sorted(FIXTURES.rglob("*.tflite")) if p.stat().st_size < 200_000][:12]


def _load_or_reject(data: bytes) -> str:
    try:
        model = load(data)
    except BadModelError as e:
        msg = str(e)
        assert "\n" not in msg and msg
        return "rejected"
    write_model(model)  # whatever we accept, we can write
    return "accepted"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(src=st.sampled_from(range(len(SOURCES))), kind=st.sampled_from(mutate.ALL_MUTATIONS),
       seed=st.integers(0, 2**32 - 1))
def test_mutated_model_is_read_or_rejected_in_one_line(src, kind, seed):
    _load_or_reject(kind(SOURCES[src], random.Random(seed)))


@pytest.mark.parametrize("kind", mutate.SEMANTIC_MUTATIONS, ids=lambda k: k.__name__)
def test_semantic_corruption_is_caught_before_the_interpreter(kind):
    """Each semantic mutation of a model that has the structure it targets is
    rejected by the reader/validator itself (except where the result is still
    a well-formed model, e.g. an op reading its own output)."""
    benign = {"op_reads_its_own_output", "buffer_overlapping_tables"}
    outcomes = {_load_or_reject(kind(src, random.Random(i))) for src in SOURCES[:4] for i in range(3)}
    if kind.__name__ not in benign:
        assert "rejected" in outcomes


@pytest.mark.parametrize("kind", [mutate.self_calling_subgraph, mutate.op_reads_its_own_output,
                                  mutate.buffer_overlapping_tables, mutate.bit_flips],
                         ids=lambda k: k.__name__)
def test_cli_on_mutated_model_exits_cleanly(kind, tmp_path, capsys):
    src = tmp_path / "in.tflite"
    src.write_bytes(kind(models.endless_while() if kind is mutate.self_calling_subgraph
                         else models.rich_metadata(), random.Random(7)))
    out = tmp_path / "out.tflite"
    rc = main([str(src), str(out), "--verify-timeout", "20", "-q"])
    err = capsys.readouterr().err
    assert rc in (0, 1, 2), err
    if rc == 2:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert out.exists() == (rc == 0)
    if rc == 0:
        load(out)


def test_corrupt_options_table_is_rejected_by_the_reader():
    """A RESHAPE's options (a table with a vector, read through the object
    API) whose vtable offset points outside the file: rejected at load, in one
    line. (Options used to be decoded on first use, so such a file loaded and
    then raised a TypeError in the writer; hypothesis's bit flips found it.)"""
    import struct

    from tflite_fuser.schema import fb

    data = bytearray(models.channel_shuffle(layout="nhwc"))
    sg = fb.Model.GetRootAs(data, 0).Subgraphs(0)
    table = next(op.BuiltinOptions() for op in (sg.Operators(i) for i in range(sg.OperatorsLength()))
                 if op.BuiltinOptionsType() == fb.BuiltinOptions.ReshapeOptions and op.BuiltinOptions())
    struct.pack_into("<i", data, table.Pos, table.Pos + 1000)  # the vtable would start before the file
    with pytest.raises(BadModelError) as e:
        load(bytes(data))
    assert "\n" not in str(e.value)
