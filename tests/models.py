"""Small models that exercise corners of the schema, built in milliseconds.

Real converted models live in ``fixtures/``; these add what converters rarely
emit on demand: opcodes above 127, custom ops with options, sparse tensors,
shape signatures, per-channel quantization, extra metadata.
"""

from __future__ import annotations

import numpy as np

from tflite_fuser.builder import ModelBuilder
from tflite_fuser.graph import Buffer, Metadata, OpCode, Operator, SignatureDef, Tensor, quantization
from tflite_fuser.schema import BuiltinOperator as Op
from tflite_fuser.schema import BuiltinOptions, TensorType, fb


def _rng(seed=0):
    return np.random.default_rng(seed)


def conv_relu(seed=0) -> ModelBuilder:
    r = _rng(seed)
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 3])
    y = b.conv2d(x, r.standard_normal((8, 3, 3, 3)).astype(np.float32),
                 r.standard_normal(8).astype(np.float32), activation="RELU")
    b.output(y)
    return b


def conv_bn_relu(seed=0) -> ModelBuilder:
    """CONV_2D -> MUL -> ADD -> RELU: a batch norm and an activation left
    apart, which the passes fold into one CONV_2D (something to fuse)."""
    r = _rng(seed)
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 3])
    y = b.conv2d(x, r.standard_normal((8, 3, 3, 3)).astype(np.float32), r.standard_normal(8).astype(np.float32))
    y = b.add(b.mul(y, r.uniform(0.5, 2.0, 8).astype(np.float32)), r.standard_normal(8).astype(np.float32))
    b.output(b.relu(y))
    return b


def rich_metadata() -> bytes:
    """Description, several metadata entries, a deprecated metadata_buffer list,
    a shape signature, a GELU (opcode 150, above the 127 of the deprecated
    field) and a signature def whose names differ from the tensors'."""
    b = conv_relu()
    m, sg = b.model, b.sg
    y = sg.outputs[0]
    g = b.op(Op.GELU, [y], [list(y.shape)], fb.GeluOptionsT(approximate=False), BuiltinOptions.GeluOptions)[0]
    sg.outputs = [g]
    sg.inputs[0].shape_signature = [-1, 8, 8, 3]
    m.description = "rich metadata test model \u2713"
    for name, payload in [("min_runtime_version", b"1.14.0\0\0\0\0\0\0\0\0\0\0"),
                          ("TFLITE_METADATA", bytes(range(200))), ("custom_vendor_blob", b"\x00\xffhello")]:
        buf = Buffer(np.frombuffer(payload, np.uint8))
        m.buffers.append(buf)
        m.metadata.append(Metadata(name, buf))
    m.metadata_buffer = [m.metadata[1].buffer]
    m.signature_defs.append(SignatureDef("serving_default", sg, [("image", sg.inputs[0])], [("probs", g)]))
    return b.to_bytes()


def custom_op_and_sparsity(base=None) -> bytes:
    """A custom op with flexbuffer-ish options and a sparse constant. The
    interpreter cannot run the custom op: tests use it without verification.
    ``base`` (default :func:`conv_relu`) builds what comes before it."""
    b = (base or conv_relu)()
    m, sg = b.model, b.sg
    y = sg.outputs[0]
    out = b.tensor(y.shape, "custom_out")
    oc = OpCode(builtin_code=Op.CUSTOM, deprecated_builtin_code=Op.CUSTOM, custom_code="MyVendorOp", version=1)
    m.opcodes.append(oc)
    sparse = fb.SparsityParametersT()
    sparse.traversalOrder = np.array([0, 1], np.int32)
    dm = fb.DimensionMetadataT()
    dm.format = fb.DimensionType.DENSE
    dm.denseSize = 4
    sparse.dimMetadata = [dm]
    c = b.const(np.arange(16, dtype=np.float32).reshape(4, 4), "sparse_const")
    c.sparsity = sparse
    sg.operators.append(Operator(oc, [y, c], [out], custom_options=np.frombuffer(b"\x01\x02opts\x03", np.uint8),
                                 custom_options_format=fb.CustomOptionsFormat.FLEXBUFFERS))
    sg.outputs = [out]
    return b.to_bytes()


def quantized_per_channel() -> bytes:
    """An int8 conv with per-channel filter scales, runnable by the interpreter."""
    r = _rng(3)
    b = ModelBuilder()

    q = quantization
    x = b.input("x", [1, 8, 8, 3], TensorType.INT8, q([0.02], [-3]))
    w_scale = r.uniform(0.005, 0.02, 8)
    w = b.const(r.integers(-127, 128, (8, 3, 3, 3)).astype(np.int8), "w", TensorType.INT8,
                q(w_scale, np.zeros(8)))
    bias = b.const(r.integers(-500, 500, 8).astype(np.int32), "b", TensorType.INT32,
                   q(0.02 * w_scale, np.zeros(8)))
    y = b.conv2d(x, w, bias, quantization=q([0.05], [2]), version=3)
    b.output(y)
    return b.to_bytes()


def unreferenced_tensor_and_buffer() -> bytes:
    """The source keeps a tensor and a buffer nobody uses; a no-op round trip
    must keep both (dropping them is not ours to decide)."""
    b = conv_relu()
    b.sg.add_tensor(Tensor(name="orphan", shape=[2], dtype=TensorType.FLOAT32, buffer=b.model.buffers[0],
                           unreferenced_in_source=True))
    spare = Buffer(np.arange(8, dtype=np.uint8))
    b.model.buffers.append(spare)
    b.model.unreferenced_buffers.add(spare)
    return b.to_bytes()


BUILDER_MODELS = {
    "rich_metadata": (rich_metadata, True),
    "custom_op_and_sparsity": (custom_op_and_sparsity, False),
    "quantized_per_channel": (quantized_per_channel, True),
    "unreferenced": (unreferenced_tensor_and_buffer, True),
}
"""name -> (factory, runnable by the interpreter)"""


def endless_while() -> bytes:
    """A WHILE loop whose condition (x < 1e30) stays true because the body adds
    zero: the interpreter never returns. For the verifier's time limit."""
    from tflite_fuser.graph import Subgraph

    b = ModelBuilder()
    m = b.model
    x = b.input("x", [1])
    x = b.relu(b.add(x, np.float32([1.0])))  # something to fuse before the loop, so it is verified
    y = b.tensor([1], "y")

    def sub(name: str) -> tuple[Subgraph, Tensor]:
        sg = Subgraph(name=name)
        m.subgraphs.append(sg)
        t = sg.add_tensor(Tensor(name=f"{name}_x", shape=[1], buffer=m.buffers[0]))
        sg.inputs = [t]
        return sg, t

    cond, cx = sub("cond")
    limit = m.new_constant(cond, "limit", np.array([1e30], np.float32), TensorType.FLOAT32)
    flag = cond.add_tensor(Tensor(name="flag", shape=[1], dtype=TensorType.BOOL, buffer=m.buffers[0]))
    cond.operators.append(Operator(m.opcode(Op.LESS), [cx, limit], [flag]))
    cond.outputs = [flag]
    body, bx = sub("body")
    zero = m.new_constant(body, "zero", np.array([0.0], np.float32), TensorType.FLOAT32)
    nx = body.add_tensor(Tensor(name="next", shape=[1], buffer=m.buffers[0]))
    body.operators.append(Operator(m.opcode(Op.ADD), [bx, zero], [nx], fb.AddOptionsT(), BuiltinOptions.AddOptions))
    body.outputs = [nx]
    b.sg.operators.append(Operator(m.opcode(Op.WHILE), [x], [y],
                                  fb.WhileOptionsT(condSubgraphIndex=1, bodySubgraphIndex=2),
                                  BuiltinOptions.WhileOptions))
    b.output(y)
    return b.to_bytes()


def deep_chain(blocks: int = 100, channels: int = 4, seed: int = 1, hw: int = 8, gain: float = 1.4) -> bytes:
    """``blocks`` x (CONV_2D -> MUL -> ADD -> RELU) with 4 channels: a deep
    float32 network whose every fold is right, yet whose fused output differs
    from the original's by more than any fixed tolerance a single layer needs
    (the gain compounds float32 rounding block after block). Block ``i``'s
    conv writes ``conv_{4i+...}``; ``deep_chain_conv(i)`` names it."""
    r = _rng(seed)
    b = ModelBuilder()
    y = b.input("x", [1, hw, hw, channels])
    for _ in range(blocks):
        w = (r.standard_normal((channels, 3, 3, channels)) / np.sqrt(9 * channels) * gain).astype(np.float32)
        y = b.conv2d(y, w, (0.1 * r.standard_normal(channels)).astype(np.float32))
        y = b.add(b.mul(y, r.uniform(0.5, 2.0, channels).astype(np.float32)),
                  r.standard_normal(channels).astype(np.float32))
        y = b.relu(y)
    b.output(y)
    return b.to_bytes()


def custom_op(b: ModelBuilder, x: Tensor, code: str = "VendorOp") -> Tensor:
    """A custom op with flexbuffer options that the stock interpreter has no
    kernel for (the shape of x in, the shape of x out)."""
    out = b.tensor(x.shape, code.lower())
    oc = next((o for o in b.model.opcodes if o.custom_code == code), None)
    if oc is None:
        oc = OpCode(builtin_code=Op.CUSTOM, deprecated_builtin_code=Op.CUSTOM, custom_code=code, version=1)
        b.model.opcodes.append(oc)
    b.sg.operators.append(Operator(oc, [x], [out], custom_options=np.frombuffer(b"\x01\x02opts\x03", np.uint8),
                                   custom_options_format=fb.CustomOptionsFormat.FLEXBUFFERS))
    return out


def conv_bn_blocks_with_custom_ops(layout: str, blocks: int = 3, seed: int = 0) -> bytes:
    """CONV_2D -> MUL -> ADD -> RELU blocks with custom ops placed by
    ``layout``: "between" (one between each pair of blocks), "around" (one
    before the first block and one after the last), "feeds" (a custom op's
    output is what the blocks read: it feeds a fusable pattern, and its input
    comes from one)."""
    r = _rng(seed)
    b = ModelBuilder()
    y = b.input("x", [1, 8, 8, 4])

    def block(y):
        y = b.conv2d(y, r.standard_normal((4, 3, 3, 4)).astype(np.float32), r.standard_normal(4).astype(np.float32))
        y = b.add(b.mul(y, r.uniform(0.5, 2.0, 4).astype(np.float32)), r.standard_normal(4).astype(np.float32))
        return b.relu(y)

    if layout == "around":
        y = custom_op(b, y, "Before")
    for i in range(blocks):
        if layout == "feeds" and i == 1:
            y = custom_op(b, y, "Landmarks")
        y = block(y)
        if layout == "between" and i < blocks - 1:
            y = custom_op(b, y)
    if layout == "around":
        y = custom_op(b, y, "After")
    b.output(y)
    return b.to_bytes()


def conv_relu_0_to_1_conv(seed: int = 0) -> bytes:
    """CONV_2D -> RELU_0_TO_1 -> CONV_2D: the hard-sigmoid form onnx2tf
    writes, which LiteRT's GPU delegate refuses ("Not supported op")."""
    r = _rng(seed)
    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 4])
    y = b.conv2d(x, r.standard_normal((4, 3, 3, 4)).astype(np.float32), r.standard_normal(4).astype(np.float32))
    y = b.op(Op.RELU_0_TO_1, [y], [y.shape])[0]
    y = b.conv2d(y, r.standard_normal((4, 3, 3, 4)).astype(np.float32), r.standard_normal(4).astype(np.float32))
    b.output(y)
    return b.to_bytes()


def channel_shuffle(seed: int = 0, layout: str = "nchw", channels: int = 8, groups: int = 2) -> bytes:
    """CONV_2D -> ShuffleNet's channel shuffle -> CONV_2D, the shuffle as a
    rank-5 RESHAPE -> TRANSPOSE -> RESHAPE: ``nchw`` as litert-torch writes
    torchvision's (layout TRANSPOSEs around it, channel axes 1 and 2 swapped),
    ``nhwc`` with the channel axes last."""
    r = _rng(seed)
    b = ModelBuilder()
    h = w = 6
    x = b.input("x", [1, h, w, channels])
    y = b.conv2d(x, r.standard_normal((channels, 3, 3, channels)).astype(np.float32), activation="RELU")
    if layout == "nchw":
        y = b.transpose(y, [0, 3, 1, 2])
        y = b.reshape(y, [1, groups, channels // groups, h, w])
        y = b.transpose(y, [0, 2, 1, 3, 4], version=4)
        y = b.reshape(y, [1, channels, h, w])
        y = b.transpose(y, [0, 2, 3, 1])
    else:
        y = b.reshape(y, [1, h, w, groups, channels // groups])
        y = b.transpose(y, [0, 1, 2, 4, 3], version=4)
        y = b.reshape(y, [1, h, w, channels])
    y = b.conv2d(y, r.standard_normal((channels, 1, 1, channels)).astype(np.float32))
    b.output(y)
    return b.to_bytes()
