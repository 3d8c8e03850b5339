"""With no pass enabled, read -> write must lose nothing.

Checked three independent ways on every committed fixture and on the
schema-corner models of ``tests/models.py``: the interpreter gives
bit-identical outputs, the schema's object API sees the same tree field by
field (names, quantization, metadata, signature defs, subgraphs, opcodes,
options, sparsity, shape signatures ...), and the ``tflite`` package - a
reader generated separately from ours - parses the output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import models
from conftest import FIXTURES, runs_in_litert
from schema_walk import buffer_data_offsets, diff, unpack
from tflite_fuser import fuse
from tflite_fuser.schema import fb
from tflite_fuser.writer import ALIGN

FIXTURE_FILES = sorted(FIXTURES.rglob("*.tflite"))


def _cases():
    for p in FIXTURE_FILES:
        yield pytest.param(p, runs_in_litert(p), id=str(p.relative_to(FIXTURES)))
    for name, (factory, runnable) in models.BUILDER_MODELS.items():
        yield pytest.param(factory, runnable, id=f"builder:{name}")


def _source(src) -> bytes:
    return src.read_bytes() if isinstance(src, Path) else src()


@pytest.mark.parametrize("src,runnable", list(_cases()))
def test_round_trip_keeps_every_schema_field(src, runnable):
    data = _source(src)
    result = fuse(data, passes="none", verify_output=runnable, runs=1)
    out = result.model_bytes
    differences = list(diff(unpack(data), unpack(out)))
    assert differences == []
    if runnable:
        assert result.verification.ok
        assert result.verification.max_abs_error == 0.0, "outputs must be bit-identical"


@pytest.mark.parametrize("src,runnable", list(_cases()))
def test_round_trip_output_is_aligned_and_readable_by_the_tflite_package(src, runnable):
    import tflite  # the independent reader (test extra)

    data = _source(src)
    out = fuse(data, passes="none", verify_output=False).model_bytes
    assert all(off % ALIGN == 0 for off in buffer_data_offsets(out))
    theirs = tflite.Model.GetRootAsModel(out, 0)
    ours = fb.Model.GetRootAs(out, 0)
    assert theirs.SubgraphsLength() == ours.SubgraphsLength()
    for i in range(theirs.SubgraphsLength()):
        a, b = theirs.Subgraphs(i), ours.Subgraphs(i)
        assert a.OperatorsLength() == b.OperatorsLength()
        assert [a.Tensors(j).Name() for j in range(a.TensorsLength())] == \
               [b.Tensors(j).Name() for j in range(b.TensorsLength())]


def test_round_trip_of_a_file_does_not_touch_the_input(tmp_path):
    src = tmp_path / "in.tflite"
    src.write_bytes(models.rich_metadata())
    before = (src.read_bytes(), src.stat().st_mtime_ns)
    result = fuse(src, tmp_path / "out.tflite", passes="none")
    assert result.ok and result.written == tmp_path / "out.tflite"
    assert (src.read_bytes(), src.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tflite", "out.tflite"]


def test_unreferenced_source_tensors_survive_but_orphans_of_a_rewrite_do_not():
    from tflite_fuser import load
    from tflite_fuser.writer import write_model

    model = load(models.unreferenced_tensor_and_buffer())
    n_tensors, n_buffers = model.num_tensors(), len(model.buffers)
    assert [t.name for t in model.main.tensors if t.unreferenced_in_source] == ["orphan"]
    assert len(model.unreferenced_buffers) == 1
    # Remove the only operator: its constant weights become orphans.
    op = model.main.operators[0]
    model.main.remove_operator(op)
    model.main.outputs = []
    out = load(write_model(model))
    names = [t.name for t in out.main.tensors]
    assert "orphan" in names and len(out.buffers) == n_buffers - 2
    assert len(names) < n_tensors


def test_external_buffer_form_is_read_and_kept():
    """Models over 2 GB keep weights after the flatbuffer (Buffer.offset/size).
    The same form on a small model: read, fused, written back external, and
    the interpreter runs it bit-identically."""
    from tflite_fuser import load
    from tflite_fuser.writer import write_model

    inline = models.rich_metadata()
    external = write_model(load(inline), external=True)
    assert any(b.external for b in load(external).buffers)
    result = fuse(external, passes="none", runs=1)
    assert result.verification.ok and result.verification.max_abs_error == 0.0
    out = result.model_bytes
    assert all(b.external for b in load(out).buffers if b.nbytes)
    assert list(diff(unpack(inline), unpack(out))) == []


def test_large_custom_options_after_the_flatbuffer_come_back_inline():
    """Models over 2 GB may keep custom options after the flatbuffer
    (large_custom_options_offset/size); we read them and write them inline,
    a form every runtime reads, with the same bytes."""
    import flatbuffers

    from tflite_fuser import load
    from tflite_fuser.schema import FILE_IDENTIFIER
    from tflite_fuser.writer import write_model

    m = unpack(models.custom_op_and_sparsity())
    op = next(o for o in m.subgraphs[0].operators if o.customOptions is not None)
    payload = bytes(np.asarray(op.customOptions, np.uint8))
    op.customOptions = None
    op.largeCustomOptionsOffset = 1 << 40  # placeholder, fixed below
    op.largeCustomOptionsSize = len(payload)
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=FILE_IDENTIFIER)
    head = bytes(b.Output())
    op.largeCustomOptionsOffset = len(head) + 64
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=FILE_IDENTIFIER)
    head = bytes(b.Output())
    data = head + bytes(len(head) + 64 - len(head)) + payload
    out = unpack(write_model(load(data)))
    back = next(o for o in out.subgraphs[0].operators if o.customOptions is not None)
    assert bytes(np.asarray(back.customOptions, np.uint8)) == payload
    assert back.largeCustomOptionsOffset == 0


def _quantization_kinds(data: bytes) -> dict[str, int]:
    sg = fb.Model.GetRootAs(data, 0).Subgraphs(0)
    kinds: dict[str, int] = {}
    for i in range(sg.TensorsLength()):
        q = sg.Tensors(i).Quantization()
        k = "none" if q is None else "empty" if q.ScaleLength() == 0 and q.ZeroPointLength() == 0 else "full"
        kinds[k] = kinds.get(k, 0) + 1
    return kinds


@pytest.mark.parametrize("name,kind", [("quant/net1_fp16", "empty"), ("quant/net1_int8", "full")])
def test_empty_quantization_tables_stay_empty_tables_and_full_ones_keep_their_fields(name, kind):
    """TF's converter writes an empty quantization table for every float
    tensor; the reader takes those without the object API. Each comes back
    as an empty table (not dropped), and a table with fields keeps them."""
    from tflite_fuser.reader import read_model
    from tflite_fuser.writer import write_model

    src = (FIXTURES / f"{name}.tflite").read_bytes()
    out = write_model(read_model(src))
    assert list(_quantization_kinds(src)) == [kind] and _quantization_kinds(out) == _quantization_kinds(src)
    a, b = unpack(src), unpack(out)
    for ta, tb in zip(a.subgraphs[0].tensors, b.subgraphs[0].tensors):
        assert list(diff(vars(ta.quantization), vars(tb.quantization), "quantization")) == []


def test_the_empty_quantization_table_is_written_once_and_shared_by_every_tensor():
    """A TF-converted model's empty quantization tables all point at one
    written table (each tensor still reads one back); a table with a field
    set, even only ``quantizedDimension``, is its own."""
    from tflite_fuser.reader import read_model
    from tflite_fuser.writer import write_model

    src = (FIXTURES / "quant/net1_fp16.tflite").read_bytes()
    model = read_model(src)
    tensors = model.main.tensors
    odd = fb.QuantizationParametersT()
    odd.quantizedDimension = 1
    tensors[0].quantization = odd
    out = write_model(model)
    sg = fb.Model.GetRootAs(out, 0).Subgraphs(0)
    tables = [sg.Tensors(i).Quantization() for i in range(sg.TensorsLength())]
    assert all(q is not None for q in tables)
    where = {q._tab.Pos for q in tables[1:]}
    assert len(where) == 1 and tables[0]._tab.Pos not in where
    assert tables[0].QuantizedDimension() == 1
    back = read_model(out).main.tensors
    assert vars(back[0].quantization) == vars(odd)
    assert all(vars(t.quantization) == vars(fb.QuantizationParametersT()) for t in back[1:])
