"""Build TFLite models op by op, through the same graph and writer as the fuser.

Two users: the fixture script's *naive converter*, which emits exactly one
TFLite op per PyTorch op (the worst case the fuser exists for), and the tests,
which need small models of precise shapes (negative cases, random graphs)
that no real converter would produce on demand.

Every method takes and returns :class:`~tflite_fuser.graph.Tensor` objects::

    b = ModelBuilder()
    x = b.input("x", [1, 8, 8, 3])
    y = b.conv2d(x, weights, bias, padding="SAME")
    y = b.relu(b.add(b.mul(y, scale), shift))
    b.output(y)
    model_bytes = b.to_bytes()
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

from .graph import Model, Operator, Subgraph, Tensor
from .schema import ActivationFunctionType as Act
from .schema import BuiltinOperator as Op
from .schema import BuiltinOptions, Padding, TensorType, fb, op_name
from .writer import write_model

_ACT = {None: Act.NONE, "NONE": Act.NONE, "RELU": Act.RELU, "RELU6": Act.RELU6,
        "RELU_N1_TO_1": Act.RELU_N1_TO_1, "TANH": Act.TANH}
_PAD = {"SAME": Padding.SAME, "VALID": Padding.VALID}
_DTYPES = {np.dtype(np.float32): TensorType.FLOAT32, np.dtype(np.float16): TensorType.FLOAT16,
           np.dtype(np.int32): TensorType.INT32, np.dtype(np.int64): TensorType.INT64,
           np.dtype(np.int8): TensorType.INT8, np.dtype(np.uint8): TensorType.UINT8}


def conv_output_size(size: int, kernel: int, stride: int, dilation: int, padding: str) -> int:
    effective = (kernel - 1) * dilation + 1
    if padding == "SAME":
        return -(-size // stride)
    return (size - effective + stride) // stride


class ModelBuilder:
    def __init__(self, description: str = "tflite-fuse builder"):
        self.model = Model(description=description)
        self.sg = Subgraph(name="main")
        self.model.subgraphs.append(self.sg)
        self._ids = itertools.count()

    # ------------------------------------------------------------- tensors

    def _name(self, hint: str) -> str:
        return f"{hint}_{next(self._ids)}"

    def input(self, name: str, shape: Sequence[int], dtype: int = TensorType.FLOAT32,
              quantization=None) -> Tensor:
        t = self.sg.add_tensor(Tensor(name=name, shape=list(shape), dtype=dtype,
                                      buffer=self.model.buffers[0], quantization=quantization))
        self.sg.inputs.append(t)
        return t

    def output(self, *tensors: Tensor) -> None:
        self.sg.outputs.extend(tensors)

    def const(self, array, name: str = "const", dtype: int | None = None, quantization=None) -> Tensor:
        arr = np.asarray(array)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        return self.model.new_constant(self.sg, self._name(name), arr,
                                       _DTYPES[arr.dtype] if dtype is None else dtype, quantization)

    def tensor(self, shape: Sequence[int], name: str = "t", dtype: int = TensorType.FLOAT32,
               quantization=None) -> Tensor:
        return self.sg.add_tensor(Tensor(name=self._name(name), shape=list(shape), dtype=dtype,
                                         buffer=self.model.buffers[0], quantization=quantization))

    def _as_tensor(self, x) -> Tensor:
        return x if isinstance(x, Tensor) else self.const(x)

    def op(self, code: int, inputs: list, out_shapes: list[Sequence[int]], options=None,
           options_type: int = 0, version: int = 1, name: str | None = None,
           dtype: int | None = None, quantization=None) -> list[Tensor]:
        ins = [None if x is None else self._as_tensor(x) for x in inputs]
        dt = dtype if dtype is not None else next((t.dtype for t in ins if t is not None), TensorType.FLOAT32)
        hint = name or op_name(code).lower()
        outs = [self.tensor(s, hint, dt, quantization) for s in out_shapes]
        self.sg.append_operator(Operator(self.model.opcode(code, version), ins, outs,
                                         options=options, options_type=options_type))
        return outs

    # ----------------------------------------------------------- convolutions

    def conv2d(self, x: Tensor, w, b=None, stride=1, padding="SAME", dilation=1,
               activation=None, **kw) -> Tensor:
        """``w`` is TFLite's OHWI layout ``[Cout, kh, kw, Cin/groups]``."""
        w = self._as_tensor(w)
        cout = w.shape[0]
        out, (sh, sw), (dh, dw) = _conv_geometry(x, w, cout, stride, dilation, padding)
        b = np.zeros(cout, np.float32) if b is None else b  # the CONV_2D kernel requires a bias
        opts = fb.Conv2DOptionsT(padding=_PAD[padding], strideW=sw, strideH=sh,
                                 fusedActivationFunction=_ACT[activation], dilationWFactor=dw,
                                 dilationHFactor=dh)
        return self.op(Op.CONV_2D, [x, w, b], [out], opts, BuiltinOptions.Conv2DOptions,
                       version=kw.pop("version", 1), **kw)[0]

    def depthwise_conv2d(self, x: Tensor, w, b=None, stride=1, padding="SAME", dilation=1,
                         depth_multiplier=1, activation=None, **kw) -> Tensor:
        """``w`` is TFLite's ``[1, kh, kw, Cin*M]`` layout."""
        w = self._as_tensor(w)
        cout = w.shape[3]
        out, (sh, sw), (dh, dw) = _conv_geometry(x, w, cout, stride, dilation, padding)
        b = np.zeros(cout, np.float32) if b is None else b
        opts = fb.DepthwiseConv2DOptionsT(padding=_PAD[padding], strideW=sw, strideH=sh,
                                          depthMultiplier=depth_multiplier,
                                          fusedActivationFunction=_ACT[activation],
                                          dilationWFactor=dw, dilationHFactor=dh)
        return self.op(Op.DEPTHWISE_CONV_2D, [x, w, b], [out], opts,
                       BuiltinOptions.DepthwiseConv2DOptions, version=kw.pop("version", 2), **kw)[0]

    def average_pool2d(self, x: Tensor, window, stride=1, padding="VALID", activation=None, **kw) -> Tensor:
        kh, kw_ = _pair(window)
        sh, sw = _pair(stride)
        n, h, wd, c = x.shape
        out = [n, conv_output_size(h, kh, sh, 1, padding), conv_output_size(wd, kw_, sw, 1, padding), c]
        opts = fb.Pool2DOptionsT(padding=_PAD[padding], strideW=sw, strideH=sh, filterWidth=kw_, filterHeight=kh,
                                 fusedActivationFunction=_ACT[activation])
        return self.op(Op.AVERAGE_POOL_2D, [x], [out], opts, BuiltinOptions.Pool2DOptions, **kw)[0]

    def fully_connected(self, x: Tensor, w, b=None, activation=None, keep_num_dims=False, **kw) -> Tensor:
        """``w`` is ``[units, in]``."""
        w = self._as_tensor(w)
        units = w.shape[0]
        out = list(x.shape[:-1]) + [units] if keep_num_dims else [int(np.prod(x.shape[:-1])), units]
        opts = fb.FullyConnectedOptionsT(fusedActivationFunction=_ACT[activation], keepNumDims=keep_num_dims)
        return self.op(Op.FULLY_CONNECTED, [x, w, b], [out], opts, BuiltinOptions.FullyConnectedOptions,
                       **kw)[0]

    def transpose_conv(self, x: Tensor, w, out_shape: Sequence[int], b=None, stride=1,
                       padding="SAME", activation=None, **kw) -> Tensor:
        sh, sw = _pair(stride)
        shape_t = self.const(np.asarray(out_shape, np.int32), "output_shape")
        opts = fb.TransposeConvOptionsT(padding=_PAD[padding], strideW=sw, strideH=sh,
                                        fusedActivationFunction=_ACT[activation])
        kw.setdefault("dtype", x.dtype)  # not the int32 of output_shape, the first input
        return self.op(Op.TRANSPOSE_CONV, [shape_t, self._as_tensor(w), x, b], [list(out_shape)], opts,
                       BuiltinOptions.TransposeConvOptions, version=kw.pop("version", 3), **kw)[0]

    # ------------------------------------------------------------- elementwise

    def _binary(self, code, opts_cls, opts_type, a, b, activation, **kw) -> Tensor:
        a, b = self._as_tensor(a), self._as_tensor(b)
        shape = list(np.broadcast_shapes(tuple(a.shape), tuple(b.shape)))
        opts = opts_cls(fusedActivationFunction=_ACT[activation])
        return self.op(code, [a, b], [shape], opts, opts_type, **kw)[0]

    def add(self, a, b, activation=None, **kw) -> Tensor:
        return self._binary(Op.ADD, fb.AddOptionsT, BuiltinOptions.AddOptions, a, b, activation, **kw)

    def sub(self, a, b, activation=None, **kw) -> Tensor:
        return self._binary(Op.SUB, fb.SubOptionsT, BuiltinOptions.SubOptions, a, b, activation, **kw)

    def mul(self, a, b, activation=None, **kw) -> Tensor:
        return self._binary(Op.MUL, fb.MulOptionsT, BuiltinOptions.MulOptions, a, b, activation, **kw)

    def div(self, a, b, activation=None, **kw) -> Tensor:
        return self._binary(Op.DIV, fb.DivOptionsT, BuiltinOptions.DivOptions, a, b, activation, **kw)

    def maximum(self, a, b, **kw) -> Tensor:
        a, b = self._as_tensor(a), self._as_tensor(b)
        shape = list(np.broadcast_shapes(tuple(a.shape), tuple(b.shape)))
        return self.op(Op.MAXIMUM, [a, b], [shape], fb.MaximumMinimumOptionsT(),
                       BuiltinOptions.MaximumMinimumOptions, **kw)[0]

    def minimum(self, a, b, **kw) -> Tensor:
        a, b = self._as_tensor(a), self._as_tensor(b)
        shape = list(np.broadcast_shapes(tuple(a.shape), tuple(b.shape)))
        return self.op(Op.MINIMUM, [a, b], [shape], fb.MaximumMinimumOptionsT(),
                       BuiltinOptions.MaximumMinimumOptions, **kw)[0]

    def _unary(self, code, x, **kw) -> Tensor:
        return self.op(code, [x], [list(x.shape)], **kw)[0]

    def relu(self, x, **kw) -> Tensor:
        return self._unary(Op.RELU, x, **kw)

    def relu6(self, x, **kw) -> Tensor:
        return self._unary(Op.RELU6, x, **kw)

    def relu_n1_to_1(self, x, **kw) -> Tensor:
        return self._unary(Op.RELU_N1_TO_1, x, **kw)

    def dequantize(self, x, **kw) -> Tensor:
        return self.op(Op.DEQUANTIZE, [x], [list(x.shape)], dtype=TensorType.FLOAT32, **kw)[0]

    # ------------------------------------------------------------- data movement

    def split(self, x: Tensor, num: int, axis: int = -1, **kw) -> list[Tensor]:
        ax = axis % len(x.shape)
        if x.shape[ax] % num:
            raise ValueError(f"cannot split {x.shape[ax]} channels into {num} equal pieces")
        piece = list(x.shape)
        piece[ax] //= num
        axis_t = self.const(np.asarray(ax, np.int32), "split_dim")
        kw.setdefault("dtype", x.dtype)
        return self.op(Op.SPLIT, [axis_t, x], [piece] * num, fb.SplitOptionsT(numSplits=num),
                       BuiltinOptions.SplitOptions, **kw)

    def split_v(self, x: Tensor, sizes: Sequence[int], axis: int = -1, **kw) -> list[Tensor]:
        ax = axis % len(x.shape)
        shapes = []
        for s in sizes:
            p = list(x.shape)
            p[ax] = s
            shapes.append(p)
        return self.op(Op.SPLIT_V, [x, self.const(np.asarray(sizes, np.int32), "size_splits"),
                                    self.const(np.asarray(ax, np.int32), "split_dim")], shapes,
                       fb.SplitVOptionsT(numSplits=len(sizes)), BuiltinOptions.SplitVOptions, **kw)

    def slice(self, x: Tensor, begin: Sequence[int], size: Sequence[int], **kw) -> Tensor:
        out = [x.shape[i] - begin[i] if s == -1 else s for i, s in enumerate(size)]
        return self.op(Op.SLICE, [x, np.asarray(begin, np.int32), np.asarray(size, np.int32)], [out],
                       fb.SliceOptionsT(), BuiltinOptions.SliceOptions, **kw)[0]

    def strided_slice(self, x: Tensor, begin, end, strides=None, **kw) -> Tensor:
        strides = [1] * len(begin) if strides is None else strides
        out = [len(range(b, e, s)) for b, e, s in zip(begin, end, strides)]
        return self.op(Op.STRIDED_SLICE, [x, np.asarray(begin, np.int32), np.asarray(end, np.int32),
                                          np.asarray(strides, np.int32)], [out],
                       fb.StridedSliceOptionsT(), BuiltinOptions.StridedSliceOptions, **kw)[0]

    def concat(self, xs: Sequence[Tensor], axis: int = -1, activation=None, **kw) -> Tensor:
        ax = axis % len(xs[0].shape)
        out = list(xs[0].shape)
        out[ax] = sum(t.shape[ax] for t in xs)
        return self.op(Op.CONCATENATION, list(xs), [out],
                       fb.ConcatenationOptionsT(axis=ax, fusedActivationFunction=_ACT[activation]),
                       BuiltinOptions.ConcatenationOptions, **kw)[0]

    def pad(self, x: Tensor, paddings: Sequence[Sequence[int]], **kw) -> Tensor:
        out = [d + a + b for d, (a, b) in zip(x.shape, paddings)]
        return self.op(Op.PAD, [x, np.asarray(paddings, np.int32)], [out], fb.PadOptionsT(),
                       BuiltinOptions.PadOptions, **kw)[0]

    def reshape(self, x: Tensor, shape: Sequence[int], **kw) -> Tensor:
        return self.op(Op.RESHAPE, [x, np.asarray(shape, np.int32)], [list(shape)],
                       fb.ReshapeOptionsT(newShape=list(shape)), BuiltinOptions.ReshapeOptions, **kw)[0]

    # ------------------------------------------------------------------ output

    def transpose(self, x: Tensor, perm: Sequence[int], **kw) -> Tensor:
        out = [x.shape[p] for p in perm]
        return self.op(Op.TRANSPOSE, [x, np.array(perm, np.int32)], [out], fb.TransposeOptionsT(),
                       BuiltinOptions.TransposeOptions, version=kw.pop("version", 1), **kw)[0]

    def build(self) -> Model:
        return self.model

    def to_bytes(self) -> bytes:
        return write_model(self.model)


def _conv_geometry(x: Tensor, w: Tensor, cout: int, stride, dilation, padding: str):
    """Output shape, (stride_h, stride_w) and (dilation_h, dilation_w) of a 2-D
    conv of NHWC ``x`` with a filter whose kernel sits in dims 1 and 2."""
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    n, h, wd, _ = x.shape
    kh, kw = w.shape[1], w.shape[2]
    out = [n, conv_output_size(h, kh, sh, dh, padding), conv_output_size(wd, kw, sw, dw, padding), cout]
    return out, (sh, sw), (dh, dw)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))
