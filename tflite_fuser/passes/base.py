"""What every pass is: match, then apply; and the context it reports into.

A pass recognises one pattern from its *anchor* ops. For each anchor,
:meth:`FusionPass.match` only reads the graph: it returns ``None`` when the op
is no candidate at all (nothing to say), a :class:`Skip` when it is one that a
precondition stops (the reason is what ``-v`` prints), or a :class:`Match`
holding everything :meth:`FusionPass.apply` needs. ``apply`` only writes, and
returns what it did in words. The base class walks the anchors, records skips
and rewrites, and never lets a pass see an op an earlier rewrite consumed (the
shape of ONNX Runtime's ``RewriteRule``: ``SatisfyCondition``, then
``Apply``). A pass never raises for a model it does not understand: unsafe
means skip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Mapping

from ..graph import Model, Operator, Subgraph
from ..options import PassOptions
from ..targets import Target


@dataclass(frozen=True)
class Skip:
    """A candidate that a precondition stopped: why, and at which op(s)."""

    reason: str
    at: tuple[Operator | str, ...]

    def __init__(self, reason: str, *at: Operator | str):
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "at", tuple(at))


@dataclass
class Match:
    """Base of a pass's match: subclasses add what ``apply`` needs. ``skips``
    are candidates met on the way that stay as they are (a chain folded up to
    an op that cannot join it, say)."""

    skips: list[Skip] = field(default_factory=list, kw_only=True)


@dataclass(frozen=True)
class Skipped:
    """A skip as recorded and reported."""

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


@dataclass(slots=True)
class Rewrite:
    """One rewrite a pass made: which pass, where, what it did in words, and
    op for op what it took out and put in (for its proof). A record, never
    changed once made (not ``frozen``: that costs 2 us a rewrite, and a big
    model makes tens of thousands)."""

    pass_name: str
    subgraph: int
    what: str
    #: the name a rewrite has across runs of the same passes on the same
    #: model: its pass, subgraph and anchor op (to revert it, forbid it)
    key: tuple = ()
    removed: tuple = field(default=(), compare=False, repr=False)
    added: tuple = field(default=(), compare=False, repr=False)
    #: float16 weights this rewrite rounded again (its proof uses the float16 grid)
    fp16_rerounded: int = 0

    def __str__(self) -> str:
        where = f"subgraph {self.subgraph}: " if self.subgraph else ""
        return f"{self.pass_name}: {where}{self.what}"


@dataclass
class PassContext:
    model: Model
    options: PassOptions = field(default_factory=PassOptions)
    log: Callable[[str], None] | None = None
    skips: dict[Skipped, None] = field(default_factory=dict)  # ordered set
    current_pass: str = ""
    subgraph_index: int = 0
    #: subgraphs no pass may touch (e.g. not topologically sorted)
    frozen: set = field(default_factory=set)
    #: weight tensors a fold re-rounded to float16 (fp16_weights="keep")
    fp16_rerounded: int = 0
    #: every rewrite made, in order (``-v`` and the report list them)
    rewrites: list[Rewrite] = field(default_factory=list)
    #: facts about constants worth computing once per run, keyed by what they
    #: are about (constants never change: a rewrite makes new ones)
    memo: dict = field(default_factory=dict)
    #: rewrites not to make (``Rewrite.key`` -> why): ones whose proof failed
    #: in an earlier run of the same passes on the same model
    forbidden: Mapping[tuple, str] = field(default_factory=dict)
    #: when a set, the only rewrites to make (a bisection's trial)
    allowed: frozenset | None = None
    #: seconds each pass ran, summed over the fixed point's rounds (the JSON
    #: report's ``passes``: which pass a big model's time goes to)
    pass_seconds: dict = field(default_factory=dict)
    #: each subgraph's operators before any pass ran: the original graph
    #: (passes never change an operator or tensor in place), which the
    #: region proofs cut the rewrites' original ops from
    original_ops: dict = field(default_factory=dict)

    @property
    def target(self) -> Target:
        """What the runtime the model is fused for runs, and runs faster (targets.py)."""
        return self.options.resolved

    def remember(self, key, compute: Callable[[], object]):
        """``compute()``, once per ``key`` for the whole run."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    def skip(self, op: Operator | str, reason: str) -> None:
        """Record that a candidate at ``op`` was left alone, and why."""
        s = Skipped(self.current_pass, self.subgraph_index, describe(op), reason,
                    op if isinstance(op, Operator) else None)
        if s not in self.skips:
            self.skips[s] = None
            if self.log:
                self.log(f"skip {s}")

    def record(self, skip: Skip) -> None:
        for op in skip.at:
            self.skip(op, skip.reason)

    def rewrote(self, what: str, key: tuple = (), journal: list | None = None, fp16_rerounded: int = 0) -> None:
        """Record a rewrite just made: in words, by key, and the edits it made."""
        removed: dict = {}
        added: dict = {}
        for old, new in journal or ():
            for op in old:
                if op in added:
                    del added[op]  # made and taken out again within the rewrite
                else:
                    removed[op] = None
            for op in new:
                added[op] = None
        r = Rewrite(self.current_pass, self.subgraph_index, what, key, tuple(removed), tuple(added),
                    fp16_rerounded)
        self.rewrites.append(r)
        if self.log:
            self.log(f"rewrote {r}")

    def standing_skips(self) -> list[Skipped]:
        """Skips whose operator is still in the model (not fused later)."""
        live = {op for sg in self.model.subgraphs for op in sg.operators}
        return [s for s in self.skips if s.target is None or s.target in live]


def describe(op: Operator | str) -> str:
    if isinstance(op, str):
        return op
    for t in op.outputs:  # a loop, not next(genexpr): every rewrite and skip is named by it
        if t is not None:
            return f"{op.type_name} -> {t.name!r}"
    return f"{op.type_name} -> '?'"


class FusionPass:
    """Base class. Subclasses set ``name``, ``summary`` and ``anchors`` (the
    operator codes a candidate pattern is recognised from) and implement
    :meth:`match` and :meth:`apply`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    anchors: ClassVar[tuple[int, ...]] = ()
    #: runs with "all"; False: only when named (``--enable``), for a rewrite
    #: that measured no faster on the CPU kernel sets here
    default: ClassVar[bool] = True

    def match(self, ctx: PassContext, sg: Subgraph, op: Operator) -> Match | Skip | None:  # pragma: no cover
        raise NotImplementedError

    def apply(self, ctx: PassContext, sg: Subgraph, m: Match) -> str:  # pragma: no cover
        raise NotImplementedError

    def run(self, model: Model, ctx: PassContext) -> int:
        ctx.current_pass = self.name
        total = 0
        for i, sg in enumerate(model.subgraphs):
            if sg in ctx.frozen:
                continue
            ctx.subgraph_index = i
            total += self.run_subgraph(ctx, sg)
        return total

    def run_subgraph(self, ctx: PassContext, sg: Subgraph) -> int:
        """Match at every anchor operator, in list order, on a snapshot of the
        list; operators an earlier rewrite consumed are passed over. One walk
        per pass run: the pipeline's fixed-point loop does the rest."""
        rewrites = 0
        anchors = frozenset(self.anchors)
        for op in [op for op in sg.operators if op.opcode.code in anchors]:
            if not sg.contains(op):
                continue
            fp16_before = ctx.fp16_rerounded  # a match may fold (and round) to see whether it can
            m = self.match(ctx, sg, op)
            if m is None:
                continue
            if isinstance(m, Skip):
                ctx.record(m)
                continue
            for s in m.skips:
                ctx.record(s)
            key = (self.name, ctx.subgraph_index, describe(op))
            if key in ctx.forbidden:
                ctx.skip(op, f"reverted: its rewrite failed its proof ({ctx.forbidden[key]})")
                continue
            if ctx.allowed is not None and key not in ctx.allowed:
                continue
            sg.journal = []
            try:
                what = self.apply(ctx, sg, m)
            finally:
                journal, sg.journal = sg.journal, None
            ctx.rewrote(what, key, journal, ctx.fp16_rerounded - fp16_before)
            rewrites += 1
        return rewrites
