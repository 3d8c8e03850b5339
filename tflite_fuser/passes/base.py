"""What every fusion pass is, and the context it reports into.

A pass looks for one pattern, checks the pattern's preconditions, and either
rewrites it or records *why not* (``ctx.skip``), so ``-v`` can explain every
candidate that was left alone. A pass never raises for a model it does not
understand: unsafe means skip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

from ..graph import Model, Operator, Subgraph


@dataclass(frozen=True)
class Skip:
    pass_name: str
    subgraph: int
    op: str
    reason: str
    #: the operator the candidate started at; a skip whose operator a later
    #: rewrite removed is stale and left out of the final report
    target: Operator | None = field(default=None, compare=False, hash=False, repr=False)

    def __str__(self) -> str:
        where = f"subgraph {self.subgraph}: " if self.subgraph else ""
        return f"{self.pass_name}: {where}{self.op}: {self.reason}"


@dataclass(frozen=True)
class Rewrite:
    """One rewrite a pass made: which pass, where, and what it did, in words."""

    pass_name: str
    subgraph: int
    what: str

    def __str__(self) -> str:
        where = f"subgraph {self.subgraph}: " if self.subgraph else ""
        return f"{self.pass_name}: {where}{self.what}"


@dataclass
class PassOptions:
    """Knobs a user can turn; every pass reads only what it needs."""

    #: float16 weights behind DEQUANTIZE. "keep": fold in float64 and store the
    #: result back as float16 (same file size; the re-rounding moves outputs by
    #: up to 2^-11 relative, so verification uses float16-grid tolerances);
    #: "exact": keep float16 but fold only where the result is exactly
    #: representable; "float32": store folded weights as float32 (larger file,
    #: no re-rounding).
    fp16_weights: str = "keep"
    #: emit grouped CONV_2D (filter in-channels < input channels). Off keeps
    #: grouped convs in split form: not every delegate runs them (older GPU
    #: delegates stop at CONV_2D version 1, converters such as onnx2tflite
    #: split them for that reason), and the built-in CPU kernels run ResNeXt's
    #: G=32 convs faster split (XNNPACK runs them faster grouped).
    grouped_conv: bool = True


@dataclass
class PassContext:
    model: Model
    options: PassOptions = field(default_factory=PassOptions)
    log: Callable[[str], None] | None = None
    skips: dict[Skip, None] = field(default_factory=dict)  # ordered set
    current_pass: str = ""
    subgraph_index: int = 0
    #: subgraphs no pass may touch (e.g. not topologically sorted)
    frozen: set = field(default_factory=set)
    #: weight tensors a fold re-rounded to float16 (fp16_weights="keep")
    fp16_rerounded: int = 0
    #: every rewrite made, in order (``-v`` and the report list them)
    rewrites: list[Rewrite] = field(default_factory=list)

    def skip(self, op: Operator | str, reason: str) -> None:
        """Record that a candidate at ``op`` was left alone, and why."""
        s = Skip(self.current_pass, self.subgraph_index, describe(op), reason,
                 op if isinstance(op, Operator) else None)
        if s not in self.skips:
            self.skips[s] = None
            if self.log:
                self.log(f"skip {s}")

    def standing_skips(self) -> list[Skip]:
        """Skips whose operator is still in the model (not fused later)."""
        live = {op for sg in self.model.subgraphs for op in sg.live_operators()}
        return [s for s in self.skips if s.target is None or s.target in live]

    def rewrote(self, what: str) -> None:
        """Record a rewrite just made, described in words."""
        r = Rewrite(self.current_pass, self.subgraph_index, what)
        self.rewrites.append(r)
        if self.log:
            self.log(f"rewrote {r}")


def describe(op: Operator | str) -> str:
    if isinstance(op, str):
        return op
    out = next((t.name for t in op.outputs if t is not None), "?")
    return f"{op.type_name} -> {out!r}"


class FusionPass:
    """Base class. Subclasses set ``name``, ``summary`` and ``anchors`` (the
    operator codes a candidate pattern is recognised from) and implement
    :meth:`rewrite_at`, returning how many rewrites it made there."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    anchors: ClassVar[tuple[int, ...]] = ()

    def run(self, model: Model, ctx: PassContext) -> int:
        ctx.current_pass = self.name
        total = 0
        for i, sg in enumerate(model.subgraphs):
            if sg in ctx.frozen:
                continue
            ctx.subgraph_index = i
            total += self.run_subgraph(model, sg, ctx)
            sg.compact()
        return total

    def run_subgraph(self, model: Model, sg: Subgraph, ctx: PassContext) -> int:
        """Try :meth:`rewrite_at` at every anchor operator, in list order, on a
        snapshot of the list; operators an earlier rewrite consumed are skipped.
        One walk per pass run: the pipeline's fixed-point loop does the rest."""
        rewrites = 0
        for op in list(sg.live_operators()):
            if op.code in self.anchors and op in sg.uses.position:
                rewrites += self.rewrite_at(model, sg, ctx, op)
        return rewrites

    def rewrite_at(self, model: Model, sg: Subgraph, ctx: PassContext, op: Operator) -> int:  # pragma: no cover
        raise NotImplementedError
