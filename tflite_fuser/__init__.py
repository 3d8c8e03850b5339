"""tflite-fuse: repair TensorFlow Lite models after conversion.

Finds convolutions whose batch-norm, bias and activation were left as separate
ops, and depthwise/grouped convolutions lowered into many small ones, rewrites
them into single fused ops, and proves with the TFLite interpreter that the
result computes the same thing.
"""

__version__ = "0.1.0"

from .errors import BadModelError, FuseError, UsageError, WriteError  # noqa: E402
from .pipeline import FuseResult, fuse, load, run_passes, save  # noqa: E402

__all__ = ["fuse", "load", "save", "run_passes", "FuseResult", "FuseError", "BadModelError",
           "UsageError", "WriteError", "__version__"]
