"""What the passes did not touch is identical after a rewrite, field by field.

For every fixture the fuser runs with all passes; then, through the schema's
object API (independent of our graph):

- model-level fields (version, description, every metadata entry and its
  bytes, the deprecated metadata_buffer list) are equal;
- the operator-code table of the source is a prefix of the output's (codes,
  versions, custom codes, builtin vs deprecated field all kept);
- every subgraph keeps its name and its inputs/outputs (by name, with every
  tensor field), and every signature def keeps its keys, names and tensors;
- every operator that no pass rewrote - same type, same inputs and outputs by
  name - is identical in every field (options, custom options, intermediates,
  version), and so is every tensor it touches (shape, type, quantization,
  shape signature, sparsity, variability, constant bytes).

Tensor indices differ after a rewrite; everything is compared by name.
"""

from __future__ import annotations

import pytest

from conftest import FIXTURES, runs_in_litert
from schema_walk import diff, unpack
from tflite_fuser import fuse

FILES = sorted(FIXTURES.rglob("*.tflite"))


def _name(t) -> str:
    return t.name.decode("utf-8", "surrogateescape") if isinstance(t.name, bytes) else t.name


def _tensor_fields(model, sg, index: int) -> dict:
    t = sg.tensors[index]
    data = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
    fields = {k: v for k, v in vars(t).items() if k != "buffer"}
    fields["buffer_bytes"] = None if data is None else bytes(memoryview(data))
    return fields


def _op_key(sg, op, codes) -> tuple:
    names = lambda idx: tuple(None if i < 0 else _name(sg.tensors[i]) for i in (idx if idx is not None else []))
    oc = codes[op.opcodeIndex]
    return (max(oc.builtinCode, oc.deprecatedBuiltinCode), oc.customCode, names(op.inputs), names(op.outputs))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_everything_the_passes_did_not_touch_survives(path):
    data = path.read_bytes()
    result = fuse(data, runs=1, isolate=False, verify_output=runs_in_litert(path))
    assert result.ok, result.verification.message
    a, b = unpack(data), unpack(result.model_bytes)

    for field in ("version", "description"):
        assert getattr(a, field) == getattr(b, field)
    assert [(_name(m), bytes(memoryview(a.buffers[m.buffer].data))) for m in a.metadata or []] == \
           [(_name(m), bytes(memoryview(b.buffers[m.buffer].data))) for m in b.metadata or []]
    assert [bytes(memoryview(a.buffers[i].data if a.buffers[i].data is not None else b"")) for i in
            (a.metadataBuffer if a.metadataBuffer is not None else [])] == \
           [bytes(memoryview(b.buffers[i].data if b.buffers[i].data is not None else b"")) for i in
            (b.metadataBuffer if b.metadataBuffer is not None else [])]

    codes_a, codes_b = a.operatorCodes or [], b.operatorCodes or []
    assert list(diff(codes_a, codes_b[: len(codes_a)], "operator_codes")) == []

    assert len(a.subgraphs) == len(b.subgraphs)
    untouched = 0
    for sa, sb in zip(a.subgraphs, b.subgraphs):
        assert sa.name == sb.name
        for kind in ("inputs", "outputs"):
            ia, ib = getattr(sa, kind), getattr(sb, kind)
            assert len(ia) == len(ib)
            for x, y in zip(ia, ib):
                assert list(diff(_tensor_fields(a, sa, x), _tensor_fields(b, sb, y), f"{kind}")) == []
        ops_b = {_op_key(sb, op, codes_b): op for op in sb.operators or []}
        for op in sa.operators or []:
            twin = ops_b.get(_op_key(sa, op, codes_a))
            if twin is None:
                continue  # rewritten: the verifier vouches for its numbers
            untouched += 1
            fa = {k: v for k, v in vars(op).items() if k not in ("opcodeIndex", "inputs", "outputs", "intermediates")}
            fb_ = {k: v for k, v in vars(twin).items() if k not in ("opcodeIndex", "inputs", "outputs", "intermediates")}
            assert list(diff(fa, fb_, "operator")) == []
            assert codes_a[op.opcodeIndex].version == codes_b[twin.opcodeIndex].version
            for ia, ib in zip(list(op.inputs) + list(op.outputs), list(twin.inputs) + list(twin.outputs)):
                if ia >= 0:
                    assert list(diff(_tensor_fields(a, sa, ia), _tensor_fields(b, sb, ib), "tensor")) == []

    sigs_a = [(s.signatureKey, s.subgraphIndex) for s in a.signatureDefs or []]
    assert sigs_a == [(s.signatureKey, s.subgraphIndex) for s in b.signatureDefs or []]
    for sa_def, sb_def in zip(a.signatureDefs or [], b.signatureDefs or []):
        ga, gb = a.subgraphs[sa_def.subgraphIndex], b.subgraphs[sb_def.subgraphIndex]
        for ma, mb in zip(sa_def.inputs + sa_def.outputs, sb_def.inputs + sb_def.outputs):
            assert ma.name == mb.name
            assert list(diff(_tensor_fields(a, ga, ma.tensorIndex), _tensor_fields(b, gb, mb.tensorIndex),
                             f"signature {sa_def.signatureKey}")) == []
    n_ops = sum(len(s.operators or []) for s in a.subgraphs)
    assert untouched <= n_ops
