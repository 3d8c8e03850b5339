"""--explorer: Model Explorer node-data files for the input and the fused
model, parsed with Model Explorer's own classes, their node ids the ones its
built-in TFLite adapter gives the ops each pass removed and made."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from tflite_fuser import fuse, save
from tflite_fuser.cli import main
from tflite_fuser.explorer import graph_id
from tflite_fuser.passes import pass_names
from tflite_fuser.reader import read_model

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SCHEMA = FIXTURES.parent / "schemas/report.schema.json"
adapter = pytest.importorskip("model_explorer.builtin_tflite_flatbuffer_adapter")
ndb = pytest.importorskip("model_explorer.node_data_builder")


def _adapter_ops(path: Path) -> dict[str, dict[str, str]]:
    """graph id -> node id -> op label, as Model Explorer's TFLite adapter reads the file."""
    graphs = adapter.BuiltinTfliteFlatbufferAdapter().convert(str(path), {})
    return {g["id"]: {n["id"]: n["label"] for n in g["nodes"]}
            for c in graphs["graphCollections"] for g in c.graphs}


def _parsed(path: Path) -> "ndb.ModelNodeData":
    data = json.loads(path.read_text())
    return ndb.ModelNodeData(graphsData={
        gid: ndb.GraphNodeData(results={k: ndb.NodeDataResult(**v) for k, v in g["results"].items()})
        for gid, g in data.items()})


def test_an_unnamed_subgraph_is_keyed_as_the_adapter_keys_it(tmp_path):
    """Unnamed: its signature's key, else main for the first, subgraph_<i> after."""
    model = read_model(FIXTURES / "special/while_loop.tflite")
    for sg in model.subgraphs:
        sg.name = None
    path = tmp_path / "unnamed.tflite"
    save(model, path)
    model = read_model(path)
    assert [graph_id(model, i, sg) for i, sg in enumerate(model.subgraphs)] == list(_adapter_ops(path))


@pytest.mark.parametrize("name", ["naive/net2", "nobuco/mobilenetv3", "special/while_loop"])
def test_node_data_names_the_ops_each_pass_removed_and_made_by_the_adapters_ids(name, tmp_path):
    src = FIXTURES / f"{name}.tflite"
    out = tmp_path / "out.tflite"
    r = fuse(src, out, explorer=str(tmp_path / "ex"), runs=1)
    files = r.report["explorer"]
    before, after = _parsed(Path(files["original"])), _parsed(Path(files["fused"]))
    ids_before, ids_after = _adapter_ops(src), _adapter_ops(out)
    order = pass_names()
    assert set(before.graphsData) == set(ids_before) and set(after.graphsData) == set(ids_after)
    original, fused = read_model(src), read_model(out)
    for model, data, ids in ((original, before, ids_before), (fused, after, ids_after)):
        for i, sg in enumerate(model.subgraphs):
            gid = graph_id(model, i, sg)
            for node, res in data.graphsData[gid].results.items():
                op = sg.operators[int(node)]
                assert ids[gid][node] == op.type_name.lower()  # the adapter's label for that very op
                assert 1 <= res.value <= len(order) and res.bgColor.startswith("#")
    removed = sum(len(g.results) for g in before.graphsData.values())
    made = sum(len(g.results) for g in after.graphsData.values())
    n_in, n_out = r.report["input"]["operators"], r.report["output"]["operators"]
    # every op that went was removed by some pass; every op that came was made by one
    assert removed - made == n_in - n_out and removed > 0
    assert set(files["legend"]) == {x["pass"] for x in r.report["rewrites"]}


def test_the_cli_writes_the_files_says_where_and_reports_them_by_the_schema(tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main([str(FIXTURES / "naive/net2.tflite"), str(tmp_path / "o.tflite"), "--explorer",
                 str(tmp_path / "ex"), "--report", str(report)]) == 0
    assert (tmp_path / "ex/net2.original.json").exists() and (tmp_path / "ex/net2.fused.json").exists()
    assert "Model Explorer node data" in capsys.readouterr().out
    data = json.loads(report.read_text())
    jsonschema.validate(data, json.loads(SCHEMA.read_text()))
    assert data["explorer"]["legend"]["fold-affine"]["value"] == pass_names().index("fold-affine") + 1


def test_a_directory_that_cannot_be_made_is_one_error_line_and_nothing_is_written(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main([str(FIXTURES / "naive/net2.tflite"), str(tmp_path / "o.tflite"), "--explorer",
                 str(blocker / "ex")]) == 2
    assert not (tmp_path / "o.tflite").exists()
    assert "--explorer" in capsys.readouterr().err
