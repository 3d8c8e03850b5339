"""The official TFLite flatbuffer schema, imported from one place.

We do not hand-parse bytes: every read and write goes through the code that
``flatc`` generated from TensorFlow Lite's ``schema.fbs``. ``ai-edge-litert``
ships that module *with* the object API (``ModelT``, ``Conv2DOptionsT`` ...),
which we need for lossless copies of nested tables we never interpret
(quantization, sparsity, the ~150 kinds of builtin options). The ``tflite``
PyPI package only carries readers, so it is used in the tests as an
independent second reader, not here.

TensorFlow's own copy of the module is accepted as a fallback so that the
library also works in an environment that has TensorFlow but not LiteRT.
"""

from __future__ import annotations

try:  # the run-time dependency
    from ai_edge_litert import schema_py_generated as fb  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - exercised only without ai-edge-litert
    from tensorflow.lite.python import schema_py_generated as fb  # type: ignore[no-redef]

import numpy as np

FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3

BuiltinOperator = fb.BuiltinOperator
BuiltinOptions = fb.BuiltinOptions
ActivationFunctionType = fb.ActivationFunctionType
Padding = fb.Padding
TensorType = fb.TensorType

#: name -> value and value -> name tables for operators, built once.
OP_CODES: dict[str, int] = {
    k: v for k, v in vars(BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)
}
OP_NAMES: dict[int, str] = {v: k for k, v in OP_CODES.items()}

ACTIVATION_NAMES: dict[int, str] = {
    v: k
    for k, v in vars(ActivationFunctionType).items()
    if not k.startswith("_") and isinstance(v, int)
}

TENSOR_TYPE_NAMES: dict[int, str] = {
    v: k for k, v in vars(TensorType).items() if not k.startswith("_") and isinstance(v, int)
}

#: numpy dtype of each tensor type that has a fixed-size element. Sub-byte and
#: exotic types are absent on purpose: no pass reads their values.
NUMPY_DTYPES: dict[int, np.dtype] = {
    TensorType.FLOAT32: np.dtype("<f4"),
    TensorType.FLOAT16: np.dtype("<f2"),
    TensorType.FLOAT64: np.dtype("<f8"),
    TensorType.INT8: np.dtype("i1"),
    TensorType.UINT8: np.dtype("u1"),
    TensorType.INT16: np.dtype("<i2"),
    TensorType.UINT16: np.dtype("<u2"),
    TensorType.INT32: np.dtype("<i4"),
    TensorType.UINT32: np.dtype("<u4"),
    TensorType.INT64: np.dtype("<i8"),
    TensorType.UINT64: np.dtype("<u8"),
    TensorType.BOOL: np.dtype("?"),
    TensorType.COMPLEX64: np.dtype("<c8"),
    TensorType.COMPLEX128: np.dtype("<c16"),
}


def op_name(code: int) -> str:
    return OP_NAMES.get(code, f"BUILTIN_{code}")


def type_name(tensor_type: int) -> str:
    return TENSOR_TYPE_NAMES.get(tensor_type, f"TYPE_{tensor_type}")
