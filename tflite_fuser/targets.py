"""Targets: the runtime a model is fused for, as data.

Some rewrites are faster on one runtime and slower on another, and some forms
run on one runtime and not at all on another. A :class:`Target` says, for one
runtime, which forms it runs (``supports``), which speed questions it answers
yes or no (``prefers``, each answer measured: the fixture benchmark checks it,
see ``benchmarks/fixtures_bench.py``), which quantized merges its kernels
compute bit-exactly, its limits, and the kernels that verify a model for it.
Passes ask the target (``ctx.target.refuses(...)``); no pass branches on a
target's name. A rewrite a target refuses is reported as "kept for target X".

Measured here (LiteRT 2.3, one thread; ``benchmarks/fixtures_bench.py``):

- a grouped CONV_2D is faster than its split form under XNNPACK (ResNeXt
  G=32 1.5x, onnx2tf RegNetX/ResNeXt ``-dgc`` 1.06-1.35x) and slower on the
  built-in kernels (0.61-0.72x); a depthwise merge is faster on both;
- int8 merges: DEPTHWISE_CONV_2D gives the very bytes of the per-channel
  CONV_2Ds on every kernel set; a grouped CONV_2D does on XNNPACK, LiteRT's
  reference kernels and TFLite Micro, but the optimized built-in kernel rounds
  some values one step differently (``tests/test_grouped_conv_runtime.py``);
- a clamp to [0, 1] as one RELU_0_TO_1, next to RELU fused into the conv and
  a MINIMUM: 1.02x on the built-in kernels, 0.96x under XNNPACK (nobuco's
  MobileNetV3);
- TFLite Micro loads no CONCATENATION of more than 10 inputs, and has no
  kernel for float16 DEQUANTIZE, RELU_0_TO_1, DENSIFY or GELU;
- ELU as one op, next to its written-out form (EXP, SUB, GREATER_EQUAL,
  SELECT) in NHWC: 1.41x against 1.06x under XNNPACK, 0.88x against 1.07x on
  the built-in kernels, whose ELU is a scalar ``expm1`` loop (litert-torch's
  ``elu_net``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping

from .schema import TensorType

# Forms (what a runtime can run at all).
GROUPED_CONV = "grouped CONV_2D"
FLOAT16_DEQUANTIZE = "float16 weights behind DEQUANTIZE"
RELU_0_TO_1 = "RELU_0_TO_1"
DENSIFY = "DENSIFY"
RANK_5 = "tensors of rank 5 or more"
GELU = "GELU"
#: a quantized 1x1 CONV_2D with stride > 1 (LiteRT's GPU delegate ignores the
#: stride: "Shape mismatch ... output of convolution1x1"; its output is wrong)
QUANTIZED_STRIDED_POINTWISE = "quantized 1x1 CONV_2D with stride > 1, computed right"

# Speed questions (what a runtime runs faster).
MERGE_GROUPED = "merge-grouped"
#: a clamp to [0, 1] as one RELU_0_TO_1 rather than RELU + MINIMUM
CLAMP_AS_RELU_0_TO_1 = "clamp-as-relu-0-to-1"
#: ELU as the one builtin ELU rather than EXP, SUB, a comparison and SELECT
ELU_AS_ONE_OP = "elu-as-one-op"

#: a FULLY_CONNECTED that reads a rank-4 input with more than one non-1 axis as
#: rows of its input size (LiteRT's GPU delegate computes that wrongly: measured
#: on special/sparse_fp16, a [1, 8, 8, 16] input; [1, 1, 1, C] is right)
FLATTENING_FC = "FULLY_CONNECTED flattening a rank-4 input, computed right"

#: every form a target may lack, for the table's completeness
FORMS = (GROUPED_CONV, FLOAT16_DEQUANTIZE, RELU_0_TO_1, DENSIFY, RANK_5, QUANTIZED_STRIDED_POINTWISE, FLATTENING_FC,
         GELU)


@dataclass(frozen=True)
class Target:
    name: str
    summary: str
    #: the kernels that prove a model for this target: "builtin" or
    #: "xnnpack" (LiteRT's CPU interpreter), "micro" (TFLite Micro), "gpu"
    verify_on: str
    supports: frozenset = frozenset(FORMS)
    #: answers to speed questions: rewrite -> (make it?, the measurement behind it)
    prefers: Mapping[str, tuple[bool, str]] = field(default_factory=dict)
    #: (dtype, merged kind) pairs whose merge the target's kernels compute bit-exactly
    exact_quantized: frozenset = frozenset()
    #: limits of the runtime ("max_concat_inputs": 10)
    limits: Mapping[str, int] = field(default_factory=dict)

    def refuses(self, rewrite: str) -> str | None:
        """Why this target keeps the form ``rewrite`` would replace (None: make it)."""
        make, why = self.prefers.get(rewrite, (True, ""))
        return None if make else f"kept for target {self.name}: {why}"

    def lacks(self, form: str) -> str | None:
        """Why a rewrite into ``form`` is refused here (None: the runtime runs it)."""
        return None if form in self.supports else f"kept for target {self.name}: it has no {form}"

    def quantized_merge_refused(self, dtype: int, depthwise: bool) -> str | None:
        """Why per-group quantized convs must stay as they are on this
        target (None: its kernels give the merged op the very same bytes)."""
        if dtype not in (TensorType.INT8, TensorType.UINT8):
            return None
        kind = "depthwise" if depthwise else "grouped"
        if (dtype, kind) in self.exact_quantized:
            return None
        name = "int8" if dtype == TensorType.INT8 else "uint8"
        op = "DEPTHWISE_CONV_2D" if depthwise else "grouped CONV_2D"
        return (f"{name} {op}: the {self.verify_on} kernels of target {self.name} round it one step differently "
                f"from the per-group convs (measured), and steps compound; left as it is")


_INT8_DW = (TensorType.INT8, "depthwise")
_INT8_GROUPED = (TensorType.INT8, "grouped")
_GROUPED_SLOWER = (False, "a grouped CONV_2D measured 0.61-0.72x the speed of its split form on the built-in "
                          "kernels (ResNeXt, RegNetX)")
_GROUPED_FASTER = (True, "a grouped CONV_2D measured 1.06-1.5x faster than its split form under XNNPACK")
_ELU_FASTER = (True, "ELU measured 1.41x the original under XNNPACK, its written-out form in NHWC 1.06x "
                     "(litert-torch elu_net)")
_ELU_SLOWER = (False, "the built-in ELU kernel measured 0.88x the original, its written-out form in NHWC "
                      "1.07x (litert-torch elu_net)")
_RELU01_FASTER = (True, "RELU_0_TO_1 measured 1.02x the speed of RELU (fused) + MINIMUM on the built-in "
                        "kernels (nobuco MobileNetV3's 5 squeeze-excite gates)")
_RELU01_SLOWER = (False, "RELU_0_TO_1 measured 0.96x the speed of RELU (fused) + MINIMUM under XNNPACK "
                         "(nobuco MobileNetV3's 5 squeeze-excite gates; onnx2tf's lowered: 1.03x)")

TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("xnnpack", "LiteRT's CPU path with the XNNPACK delegate (its default)", "xnnpack",
           prefers={MERGE_GROUPED: _GROUPED_FASTER, CLAMP_AS_RELU_0_TO_1: _RELU01_SLOWER, ELU_AS_ONE_OP: _ELU_FASTER},
           exact_quantized=frozenset({_INT8_DW, _INT8_GROUPED})),
    Target("builtin", "LiteRT's own CPU kernels, without a delegate (and runtimes built on them)", "builtin",
           prefers={MERGE_GROUPED: _GROUPED_SLOWER, CLAMP_AS_RELU_0_TO_1: _RELU01_FASTER, ELU_AS_ONE_OP: _ELU_SLOWER},
           exact_quantized=frozenset({_INT8_DW})),
    Target("gpu", "LiteRT's GPU accelerator (grouped CONV_2D runs; rank 5, RELU_0_TO_1 and DENSIFY do not)",
           "gpu", supports=frozenset({GROUPED_CONV, FLOAT16_DEQUANTIZE, GELU}),
           prefers={MERGE_GROUPED: (True, "the GPU accelerator runs a grouped CONV_2D (fewer dispatches; "
                                          "its speed on a phone GPU was not measured here)")}),
    Target("micro", "TFLite Micro (microcontrollers): its op set and limits, proved on TFLM itself", "micro",
           supports=frozenset({GROUPED_CONV, RANK_5, QUANTIZED_STRIDED_POINTWISE, FLATTENING_FC}),
           prefers={MERGE_GROUPED: (True, "TFLite Micro cannot load the split form's CONCATENATION of more than "
                                          "10 inputs; a grouped CONV_2D runs")},
           exact_quantized=frozenset({_INT8_DW, _INT8_GROUPED}), limits={"max_concat_inputs": 10}),
    Target("portable", "only rewrites that are a win or neutral on every target measured", "builtin",
           prefers={MERGE_GROUPED: (False, "a grouped CONV_2D is slower than its split form on the built-in "
                                           "kernels (0.61-0.72x), faster under XNNPACK"),
                    CLAMP_AS_RELU_0_TO_1: (False, "RELU_0_TO_1 is faster on the built-in kernels, slower under "
                                                  "XNNPACK, and missing on the GPU and TFLite Micro"),
                    ELU_AS_ONE_OP: (False, "ELU is faster under XNNPACK, slower on the built-in kernels")},
           exact_quantized=frozenset({_INT8_DW})),
]}

DEFAULT_TARGET = "xnnpack"


def target(name: str, grouped_conv: bool = True) -> Target:
    """The target ``name``; ``grouped_conv=False`` (``--no-grouped-conv``,
    for a delegate without grouped convolutions) takes the form away."""
    from .errors import UsageError

    try:
        t = TARGETS[name]
    except KeyError:
        raise UsageError(f"unknown target {name!r}; targets: {', '.join(TARGETS)}") from None
    if not grouped_conv:
        t = dataclasses.replace(t, name=f"{t.name} with --no-grouped-conv", supports=t.supports - {GROUPED_CONV})
    return t
