"""The passes, in the order the pass manager runs them.

Order matters once, and the fixed-point loop in :mod:`tflite_fuser.pipeline`
takes care of the rest: input-side and output-side affine folds come before
activation fusion (an activation can only be fused once the MUL/ADD between it
and the conv are gone), and all of them come before the split-conv pass, whose
branches must each be a single conv with its activation fused. The affine after
a concatenation goes into its branches only after the split pass had its
chance to merge them (where the target keeps them split). The block-diagonal
pass runs last because the split pass may produce dense convs it can still
narrow.

The registry is explicit: a pass is added here, by import, and a misspelt
module is an import error, not a pass that silently never runs.
"""

from __future__ import annotations

from .base import FusionPass, Match, PassContext, Skip
from .collapse_layout_chain import CollapseLayoutChain
from .compose_linear_convs import ComposeLinearConvs
from .batch_matmul_to_fc import BatchMatmulToFc
from .densify_constants import DensifyConstants
from .dequantize_weights import DequantizeWeights
from .drop_identities import DropIdentities
from .drop_layout_island import DropLayoutIsland
from .drop_reshape_after_reduce import DropReshapeAfterReduce
from .drop_reshape_before_fc import DropReshapeBeforeFc
from .fold_affine import FoldAffine
from .fold_concat_affine import FoldConcatAffine
from .fold_constants import FoldConstants
from .fold_input_affine import FoldInputAffine
from .fold_pad import FoldPadIntoConv
from .fuse_activation import FuseActivation
from .fuse_dilated_conv import FuseDilatedConv
from .fuse_elu import FuseElu
from .fuse_gelu import FuseGelu
from .fuse_hard_swish import FuseHardSwish
from .fuse_prelu import FusePrelu
from .fuse_split_conv import FuseSplitConv
from .lower_relu_0_to_1 import LowerRelu0To1
from .lower_transpose_rank import LowerTransposeRank
from .merge_clamps import MergeClamps
from .merge_constant_chain import MergeConstantChain
from .merge_layout_pairs import MergeLayoutPairs
from .merge_parallel_convs import MergeParallelConvs
from .merge_sibling_fcs import MergeSiblingFcs
from .narrow_block_diagonal import NarrowBlockDiagonalConv
from .stride_before_pointwise import StrideBeforePointwise
from .strided_slice_to_slice import StridedSliceToSlice
from ..options import PassOptions

#: every pass, in the order it runs
PASS_CLASSES: list[type[FusionPass]] = [
    # What the target cannot run at all, first: later folds then work in the form it runs.
    DensifyConstants,
    DequantizeWeights,
    LowerRelu0To1,
    LowerTransposeRank,
    # Written-out activations become one op before the folds look at their pieces.
    FuseHardSwish,
    FuseGelu,
    FuseElu,
    FusePrelu,
    FuseDilatedConv,
    BatchMatmulToFc,
    FoldPadIntoConv,
    FoldInputAffine,
    FoldAffine,
    MergeClamps,
    FuseActivation,
    MergeParallelConvs,
    ComposeLinearConvs,
    # Off by default (no gain measured on the CPU kernel sets): --enable merge-sibling-fcs.
    MergeSiblingFcs,
    FuseSplitConv,
    FoldConcatAffine,
    NarrowBlockDiagonalConv,
    # Last: it splits one conv in two, which the folds above must not see as a chain to fold.
    StrideBeforePointwise,
    # After the merges, which read slices of either kind as the pieces of a split.
    StridedSliceToSlice,
    DropReshapeBeforeFc,
    DropReshapeAfterReduce,
    DropLayoutIsland,
    # Clean-up of what converters and the passes above leave: exact for every type.
    CollapseLayoutChain,
    MergeLayoutPairs,
    DropIdentities,
    FoldConstants,
    # Last: a chain any fold above can take goes into weights instead (no op left at all).
    MergeConstantChain,
]


def pass_names() -> list[str]:
    return [c.name for c in PASS_CLASSES]


def select(passes: list[str] | str | None = None, disable: list[str] | None = None,
           enable: list[str] | None = None) -> list[FusionPass]:
    """Pass instances for ``passes`` ("all": every pass on by default, "none",
    or names) plus ``enable`` (passes off by default) minus ``disable``,
    always in the canonical order. Unknown names raise ``ValueError``."""
    known = pass_names()
    if passes is None or passes == "all" or passes == ["all"]:
        wanted = [c.name for c in PASS_CLASSES if c.default]
    elif passes == "none" or passes == ["none"]:
        wanted = []
    else:
        wanted = list(passes) if not isinstance(passes, str) else passes.split(",")
    unknown = [p for p in wanted + list(disable or []) + list(enable or []) if p not in known]
    if unknown:
        raise ValueError(f"unknown pass {unknown[0]!r}; known passes: {', '.join(known) or '(none)'}")
    chosen = (set(wanted) | set(enable or [])) - set(disable or [])
    return [c() for c in PASS_CLASSES if c.name in chosen]


__all__ = ["FusionPass", "Match", "PassContext", "PassOptions", "Skip", "PASS_CLASSES", "pass_names", "select"]
