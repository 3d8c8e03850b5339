"""The fusion passes, in the order the pass manager runs them.

Order matters once, and the fixed-point loop in :mod:`tflite_fuser.pipeline`
takes care of the rest: input-side and output-side affine folds come before
activation fusion (an activation can only be fused once the MUL/ADD between it
and the conv are gone), and all of them come before the split-conv pass, whose
branches must each be a single conv with its activation fused. The
block-diagonal pass runs last because the split pass may produce dense convs it
can still narrow.
"""

from __future__ import annotations

from .base import FusionPass, PassContext, PassOptions, Skip

#: Filled in pass by pass; each entry is a FusionPass subclass.
PASS_CLASSES: list[type[FusionPass]] = []


def _register() -> None:
    import importlib

    for module, cls in _ORDER:
        try:
            mod = importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as e:  # a pass not written yet
            if e.name != f"{__name__}.{module}":
                raise
            continue
        PASS_CLASSES.append(getattr(mod, cls))


_ORDER: list[tuple[str, str]] = [
    ("fold_pad", "FoldPadIntoConv"),
    ("fold_input_affine", "FoldInputAffine"),
    ("fold_affine", "FoldAffine"),
    ("fuse_activation", "FuseActivation"),
    ("fuse_split_conv", "FuseSplitConv"),
    ("narrow_block_diagonal", "NarrowBlockDiagonalConv"),
]

_register()


def pass_names() -> list[str]:
    return [c.name for c in PASS_CLASSES]


def select(passes: list[str] | str | None = None, disable: list[str] | None = None) -> list[FusionPass]:
    """Pass instances for ``passes`` ("all", "none", or names) minus ``disable``,
    always in the canonical order. Unknown names raise ``ValueError``."""
    known = pass_names()
    if passes is None or passes == "all" or passes == ["all"]:
        wanted = list(known)
    elif passes == "none" or passes == ["none"]:
        wanted = []
    else:
        wanted = list(passes) if not isinstance(passes, str) else passes.split(",")
    unknown = [p for p in wanted + list(disable or []) if p not in known]
    if unknown:
        raise ValueError(f"unknown pass {unknown[0]!r}; known passes: {', '.join(known) or '(none)'}")
    chosen = set(wanted) - set(disable or [])
    return [c() for c in PASS_CLASSES if c.name in chosen]


__all__ = ["FusionPass", "PassContext", "PassOptions", "Skip", "PASS_CLASSES", "pass_names", "select"]
