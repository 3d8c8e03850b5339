"""Every field of the tables we translate has a home in the graph.

The graph mirrors ``Model``, ``SubGraph``, ``Tensor``, ``Operator``,
``OperatorCode``, ``Buffer``, ``SignatureDef``, ``TensorMap`` and ``Metadata``
field by field (everything nested deeper is kept as the schema's own objects).
If a new schema version adds a field to one of these tables, this test fails
until reader and writer carry it: otherwise a round trip would silently drop it.
"""

import pytest

from tflite_fuser.schema import fb

HANDLED = {
    "ModelT": {"version", "operatorCodes", "subgraphs", "description", "buffers", "metadataBuffer",
               "metadata", "signatureDefs", "externalBufferGroups", "externalBuffers"},
    "SubGraphT": {"tensors", "inputs", "outputs", "operators", "name", "debugMetadataIndex"},
    "TensorT": {"shape", "type", "buffer", "name", "quantization", "isVariable", "sparsity",
                "shapeSignature", "hasRank", "variantTensors", "externalBuffer"},
    "OperatorT": {"opcodeIndex", "inputs", "outputs", "builtinOptionsType", "builtinOptions",
                  "customOptions", "customOptionsFormat", "mutatingVariableInputs", "intermediates",
                  "largeCustomOptionsOffset", "largeCustomOptionsSize", "builtinOptions2Type",
                  "builtinOptions2", "debugMetadataIndex"},
    "OperatorCodeT": {"deprecatedBuiltinCode", "customCode", "version", "builtinCode"},
    "BufferT": {"data", "offset", "size"},
    "SignatureDefT": {"inputs", "outputs", "signatureKey", "subgraphIndex"},
    "TensorMapT": {"name", "tensorIndex"},
    "MetadataT": {"name", "buffer"},
}


@pytest.mark.parametrize("table", sorted(HANDLED))
def test_schema_table_has_no_field_the_graph_does_not_carry(table):
    fields = set(vars(getattr(fb, table)()))
    assert fields == HANDLED[table], f"new or removed fields: {fields ^ HANDLED[table]}"


def test_operator_copy_carries_every_field():
    """``Operator.copy`` names its fields one by one (a loop over them cost a
    fold in a big model several microseconds): a field added to the class
    must be added there too."""
    from tflite_fuser.graph import OpCode, Operator

    op = Operator(OpCode.builtin(3), [], [])
    fields = [s for s in Operator.__slots__ if s != "__weakref__"]
    for i, name in enumerate(fields):
        setattr(op, name, f"value {i}")
    new = op.copy()
    assert {f: getattr(new, f) for f in fields} == {f: getattr(op, f) for f in fields}
