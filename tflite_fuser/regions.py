"""Regions: each rewrite, cut out of the model before and after, to be proved
on its own.

A rewrite took some ops out and put others in, reading and writing the same
tensors at its edges. Rewrites that touch (one took out an op another put
in) form one region. For each region this cuts two small graphs from the
models themselves: the original ops of the region (*before*) and the ops that
replaced them (*after*), each with the region's boundary tensors as inputs and
outputs and its constants as constants. Regions go into one pair of models
(a few pairs when their tensors are large, see :data:`BATCH_BYTES`), each
region with its own copies of its boundary tensors so that the regions stay
independent: the verifier's child runs a pair once per input set, in one
interpreter each, and compares region by region
(:mod:`region_proof`). Each region's ops sit in one contiguous span of the
pair's operator lists, so that a region the batch cannot run can be cut out
alone again.

The inputs of a region are the original model's own values there when the
interpreter can run it (read from its run by their index in the source file),
else seeded random values. A DEQUANTIZE of a constant that feeds a region from
outside is copied into the cut: it is part of the weights, not an input.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from .graph import Buffer, Model, OpCode, Operator, Subgraph, Tensor
from .schema import BuiltinOperator as Op
from .schema import TensorType
from .writer import write_model

#: A region's own tolerance, far tighter than the whole model's: one rewrite
#: re-associates one multiply-add per output, so a right one differs by float
#: rounding of its own terms only. atol is in units of each boundary output's
#: largest magnitude (see verifier.py, ``range_atol``). Measured over the
#: fixtures: the closest float32 region used 6% of it, float16 9% of its own.
REGION_TOL = 1e-5
#: ... when the region rounded folded weights back to float16, or computes in
#: float16: one rounding of each weight to the float16 grid (2^-11 relative),
#: summed over a filter, against the output's range.
REGION_FP16_TOL = 1e-2


@dataclass
class Region:
    index: int
    subgraph: int
    #: the rewrites it is made of, in the order they were made
    rewrites: list = field(default_factory=list)
    before: list[Operator] = field(default_factory=list)
    after: list[Operator] = field(default_factory=list)
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)
    #: why it cannot be proved alone (None: it can)
    problem: str | None = None

    def tolerance(self) -> dict:
        fp16 = any(r.fp16_rerounded for r in self.rewrites) or any(
            t.dtype == TensorType.FLOAT16 for t in self.outputs)
        tol = REGION_FP16_TOL if fp16 else REGION_TOL
        return {"atol": tol, "rtol": tol, "range_atol": True}


@dataclass
class RegionJob:
    """What the verifier's child needs to prove the regions: the two cut
    models (bytes), and per region its input and output names in them, where
    to read each input's value in the original run, its op spans and its
    tolerance."""

    before: bytes
    after: bytes
    regions: list[dict]


def find(model: Model, original_ops: dict[Subgraph, list[Operator]], rewrites: list) -> list[Region]:
    """The regions of ``rewrites`` (``PassContext.rewrites``), with their boundaries.

    ``original_ops`` is each subgraph's operator list before any pass ran
    (passes never change an operator or a tensor in place, so it *is* the
    original graph).
    """
    regions = []
    graphs: dict[int, _Graphs] = {}
    for n, members in enumerate(_group(rewrites)):
        sgi = members[0].subgraph
        if sgi not in graphs:  # once per subgraph: every region of it looks things up here
            graphs[sgi] = _Graphs(model, model.subgraphs[sgi], original_ops.get(model.subgraphs[sgi], []))
        g = graphs[sgi]
        removed = {op for r in members for op in r.removed}
        added = {op for r in members for op in r.added}
        before = sorted((op for op in removed - added if op in g.original_order), key=g.original_order.__getitem__)
        after = sorted((op for op in added - removed if op in g.final_order), key=g.final_order.__getitem__)
        region = Region(n, sgi, members)
        _boundaries(region, g, before, after)
        regions.append(region)
    return regions


class _Graphs:
    """One subgraph before any pass ran and after the last: op order,
    producers and readers on each side."""

    def __init__(self, model: Model, sg: Subgraph, original: list[Operator]):
        self.sg = sg
        self.original = original
        self.original_order = {op: i for i, op in enumerate(original)}
        self.final_order = {op: i for i, op in enumerate(sg.operators)}
        self.original_producer = producers(original)
        self.original_readers: dict[Tensor, list[Operator]] = {}
        for op in original:
            for t in op.inputs:
                if t is not None:
                    self.original_readers.setdefault(t, []).append(op)
        self.observed = set(sg.outputs) | model.signature_outputs(sg)


def producers(ops: list[Operator]) -> dict[Tensor, Operator]:
    return {t: op for op in ops for t in op.outputs if t is not None}


def steps(region: Region, original_producer: dict[Tensor, Operator], first_index: int) -> list[Region]:
    """A region of several rewrites as one region per rewrite: the region's
    state just before that rewrite against its state just after, at the
    region's own edges. The first step whose proof fails names the rewrite
    at fault, so that only it is reverted. [] when a state does not keep the
    region's edges (then the region is reverted whole). ``original_producer``
    is :func:`producers` of the subgraph's original operators."""
    producer = dict(original_producer)
    for r in region.rewrites:
        producer.update(producers(list(r.added)))
    states = [set(region.before)]
    for r in region.rewrites:
        states.append((states[-1] - set(r.removed)) | set(r.added))
    cut = []
    for state in states:
        ops = _with_weights(state, producer)
        produced = {t for op in ops for t in op.outputs if t is not None}
        reads = {t for op in ops for t in op.inputs if t is not None and not t.is_constant and t not in produced}
        if not reads <= set(region.inputs) or not set(region.outputs) <= produced:
            return []
        cut.append(_in_order(ops))
    return [Region(first_index + j, region.subgraph, [r], cut[j], cut[j + 1], region.inputs, region.outputs)
            for j, r in enumerate(region.rewrites)]


def _with_weights(state: set[Operator], producer: dict) -> set[Operator]:
    ops = set(state)
    for op in state:
        for t in op.inputs:
            p = producer.get(t) if t is not None else None
            if p is not None and _is_weight(p):
                ops.add(p)
    return ops


def _in_order(ops: set[Operator]) -> list[Operator]:
    """``ops`` with every producer before its readers (Kahn's algorithm)."""
    made = {t: op for op in ops for t in op.outputs if t is not None}
    needs = {op: {made[t] for t in op.inputs if t is not None and t in made and made[t] is not op} for op in ops}
    order, ready = [], [op for op in ops if not needs[op]]
    readers: dict[Operator, list[Operator]] = {}
    for op, deps in needs.items():
        for d in deps:
            readers.setdefault(d, []).append(op)
    while ready:
        op = ready.pop()
        order.append(op)
        for r in readers.get(op, ()):
            needs[r].discard(op)
            if not needs[r]:
                ready.append(r)
    return order


def _group(rewrites: list) -> list[list]:
    """Rewrites that touch (one took out an op another put in), together."""
    parent = list(range(len(rewrites)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    made_by: dict[Operator, int] = {}
    for i, r in enumerate(rewrites):
        for op in r.removed:
            if op in made_by:
                parent[root(i)] = root(made_by[op])
        for op in r.added:
            made_by[op] = i
    groups: dict[int, list] = {}
    for i, r in enumerate(rewrites):
        groups.setdefault(root(i), []).append(r)
    return list(groups.values())  # dicts keep insertion order: by each group's first rewrite


def _boundaries(region: Region, g: _Graphs, before: list[Operator], after: list[Operator]) -> None:
    b_ops, b_in, b_out = _side(before, g.original_producer.get, lambda t: g.original_readers.get(t, ()), g.observed)
    a_ops, a_in, a_out = _side(after, g.sg.producer, g.sg.consumers, g.observed)
    region.before, region.after = b_ops, a_ops
    region.inputs = sorted(b_in, key=lambda t: t.source_index)
    region.outputs = sorted(b_out, key=lambda t: t.source_index)
    if not before and not after:
        region.problem = "the rewrite neither took out nor put in an op"
    elif b_in != a_in or b_out != a_out:
        region.problem = "its edges differ before and after (it reads or writes other tensors)"
    elif any(t.source_index < 0 for t in itertools.chain(b_in, b_out)):
        region.problem = "an edge of the region was made by a rewrite"
    elif not b_out:
        region.problem = "the region writes nothing anyone reads"


def _side(ops: list[Operator], producer, readers, observed: set) -> tuple[list[Operator], set, set]:
    """(the ops with the DEQUANTIZEs of constants they read, their inputs, their outputs)."""
    inside = set(ops)
    pulled = []
    for op in ops:
        for t in op.inputs:
            p = producer(t) if t is not None and not t.is_constant else None
            if p is not None and p not in inside and _is_weight(p):
                inside.add(p)
                pulled.append(p)
    ops = pulled + list(ops)
    produced = {t for op in ops for t in op.outputs if t is not None}
    weights = {op.outputs[0] for op in ops if _is_weight(op)}
    inputs = {t for op in ops for t in op.inputs if t is not None and not t.is_constant and t not in produced}
    outputs = {t for t in produced - weights if t in observed or any(r not in inside for r in readers(t))}
    return ops, inputs, outputs


def _is_weight(op: Operator) -> bool:
    """A DEQUANTIZE of a constant: part of the weights, on both sides (a
    weight is never a region's input or output; other readers of a shared
    one have their own copy of it in their own region)."""
    return op.code == Op.DEQUANTIZE and bool(op.inputs) and op.inputs[0] is not None and op.inputs[0].is_constant \
        and len(op.outputs) == 1 and op.outputs[0] is not None


#: the tensors one batch of regions may hold (their values, each side): a
#: batch is one interpreter pair, and thousands of small regions fit in one,
#: while a few large ones get a pair each rather than all the memory at once
BATCH_BYTES = 256 << 20


def jobs(regions: list[Region]) -> list[RegionJob]:
    """The cut models of every region that can be proved alone, in batches
    of at most :data:`BATCH_BYTES` of tensors (a larger region alone)."""
    batches: list[list[Region]] = []
    size = 0
    for r in (r for r in regions if r.problem is None):
        n = sum(t.value_bytes for t in {t for op in r.before for t in itertools.chain(op.inputs, op.outputs)
                                         if t is not None and not t.is_constant})
        if not batches or size + n > BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(r)
        size += n
    return [_job(batch) for batch in batches]


def _job(provable: list[Region]) -> RegionJob:
    before, after = _Cut(), _Cut()
    meta = []
    for r in provable:
        tag = f"region{r.index}"
        copies = {t: Tensor(name=f"{tag}:{t.name}", shape=list(t.shape), dtype=t.dtype, quantization=t.quantization)
                  for t in itertools.chain(r.inputs, r.outputs)}
        inputs = [copies[t] for t in r.inputs]
        outputs = [copies[t] for t in r.outputs]
        meta.append({"index": r.index, "subgraph": r.subgraph,
                     "inputs": [(copies[t].name, t.source_index) for t in r.inputs],
                     "outputs": [copies[t].name for t in r.outputs],
                     "before_ops": before.add(r.before, copies, inputs, outputs),
                     "after_ops": after.add(r.after, copies, inputs, outputs), **r.tolerance()})
    return RegionJob(before.to_bytes(), after.to_bytes(), meta)


class _Cut:
    """One side of the region pair, built region by region."""

    def __init__(self):
        self.sg = Subgraph(name="regions")
        self.model = Model(description="tflite-fuse region proofs", subgraphs=[self.sg])
        self.opcodes: dict[OpCode, None] = {}
        self.buffers: dict[Buffer, None] = {}
        self.tensors: dict[Tensor, None] = {}

    def add(self, ops: list[Operator], copies: dict, inputs: list[Tensor], outputs: list[Tensor]) -> list[int]:
        """Append one region's ops; return their span ``[start, end)``."""
        start = len(self.sg.operators)
        for op in ops:
            new = op.copy(inputs=[copies.get(t, t) for t in op.inputs], outputs=[copies.get(t, t) for t in op.outputs],
                          debug_metadata_index=-1)
            self.sg.operators.append(new)
            self.opcodes[op.opcode] = None
            for t in itertools.chain(new.inputs, new.outputs, new.intermediates or ()):
                if t is not None:
                    self.tensors[t] = None
                    if t.buffer is not None:
                        self.buffers[t.buffer] = None
        for t in itertools.chain(inputs, outputs):
            self.tensors[t] = None
        self.sg.inputs += inputs
        self.sg.outputs += outputs
        return [start, len(self.sg.operators)]

    def to_bytes(self) -> bytes:
        m = self.model
        m.opcodes = list(self.opcodes)
        m.buffers = [m.buffers[0]] + list(self.buffers)
        self.sg.tensors = list(self.tensors)
        return write_model(m)


def single(batch: bytes, meta: dict, side: str) -> bytes:
    """One region's side alone, cut from the batch model ``batch``: the ops of
    its span (``meta[side]``), its inputs and outputs by name."""
    from .reader import parse

    model = parse(memoryview(batch), "<region batch>")
    sg = model.main
    start, end = meta[side]
    by_name = {t.name: t for t in sg.tensors}
    sg.operators = sg.operators[start:end]
    sg.inputs = [by_name[name] for name, _ in meta["inputs"]]
    sg.outputs = [by_name[name] for name in meta["outputs"]]
    return write_model(model)
