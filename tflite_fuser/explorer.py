"""``--explorer DIR``: what a run changed, where people look at graphs.

Model Explorer (``pip install ai-edge-model-explorer``, Google's graph
viewer for ``.tflite``) overlays per-node data from JSON files
(``model-explorer in.tflite --node_data_paths=...``). This module writes two
such files, in the format of its ``node_data_builder.ModelNodeData``:

- ``<name>.original.json`` for the input model: each op a rewrite removed,
  coloured by the pass that removed it first;
- ``<name>.fused.json`` for the written model: each op a rewrite made (and
  no later one removed), coloured by the pass that made it.

Each node's value is the pass's position in the pipeline (1-based, as
``--help`` lists the passes), so the viewer's legend and value column sort
by pass; ``legend`` in the summary this module returns maps values to names.
Node ids are what Model Explorer's built-in TFLite adapter gives: the op's
index in its subgraph; graphs are keyed by subgraph name (for an unnamed one:
its signature's key, else ``main`` for the first, ``subgraph_<i>`` after).
Nothing here imports Model Explorer: the files are plain JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

from .graph import Model, Subgraph

#: one colour per pass, in pipeline order (distinct on white, cycled if ever outnumbered)
PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
           "#fabed4", "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#808000",
           "#ffd8b1", "#000075", "#a9a9a9", "#ffe119", "#e6beff", "#00a0a0", "#ff7f50", "#7b68ee"]


def graph_id(model: Model, index: int, sg: Subgraph) -> str:
    """The id Model Explorer's TFLite adapter gives subgraph ``index``."""
    if sg.name:
        return sg.name
    key = next((s.key for s in model.signature_defs if s.subgraph is sg), None)
    return key or ("main" if index == 0 else f"subgraph_{index}")


def node_data(model: Model, original_ops: dict, rewrites: list, pass_order: list[str]) -> tuple[dict, dict]:
    """(original's, fused model's) node data, as ``ModelNodeData`` JSON dicts.

    ``original_ops``: each subgraph's operators as read (``PassContext.original_ops``);
    ``rewrites``: ``PassContext.rewrites`` of the run that was written."""
    value = {name: i + 1 for i, name in enumerate(pass_order)}
    removed_by: dict = {}
    made_by: dict = {}
    for r in rewrites:
        for op in r.removed:
            removed_by.setdefault(op, r.pass_name)
        for op in r.added:
            made_by[op] = r.pass_name
    before: dict = {}
    after: dict = {}
    for i, sg in enumerate(model.subgraphs):
        gid = graph_id(model, i, sg)
        old = original_ops.get(sg, [])
        before[gid] = _graph({str(j): removed_by[op] for j, op in enumerate(old) if op in removed_by}, value)
        after[gid] = _graph({str(j): made_by[op] for j, op in enumerate(sg.operators) if op in made_by}, value)
    return before, after


def _graph(by_node: dict[str, str], value: dict[str, int]) -> dict:
    return {"results": {node: {"value": value[p], "bgColor": PALETTE[(value[p] - 1) % len(PALETTE)]}
                        for node, p in by_node.items()}}


def write(directory: str | Path, stem: str, model: Model, original_ops: dict, rewrites: list,
          pass_order: list[str]) -> dict:
    """Write both files into ``directory`` (created); return where, and the legend."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    before, after = node_data(model, original_ops, rewrites, pass_order)
    paths = {"original": out / f"{stem}.original.json", "fused": out / f"{stem}.fused.json"}
    for side, data in (("original", before), ("fused", after)):
        paths[side].write_text(json.dumps(data, indent=1) + "\n")
    used = sorted({r.pass_name for r in rewrites}, key=pass_order.index)
    return {"original": str(paths["original"]), "fused": str(paths["fused"]),
            "legend": {p: {"value": pass_order.index(p) + 1, "color": PALETTE[pass_order.index(p) % len(PALETTE)]}
                       for p in used}}
