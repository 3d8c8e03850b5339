"""Revert what fails its proof, keep the rest.

One wrong rewrite among hundreds (a bug, a kernel quirk on one runtime) must
not cost the user the other rewrites, nor leave them without a hint of which
one it was. The passes are deterministic, and each rewrite has a name that
holds across runs (``Rewrite.key``: pass, subgraph, anchor op), so "run the
passes again without these rewrites" and "with only these" are well defined:

1. A region that fails its own proof names its rewrites: forbid them, run the
   passes again from the original graph, prove again.
2. When the whole model runs, a rewrite that cannot be proved alone is covered
   by the whole-model proof; when it does not, such a rewrite is unproved and
   is reverted too.
3. When the whole-model proof fails and no region explains it (or the GPU
   accelerator computes the fused model wrongly), bisect: the
   smallest prefix of the rewrites (in the order they were made) whose
   whole-model proof fails ends with a culprit; forbid it and prove again.

Each step is a fresh attempt (passes, regions, write, both proofs), up to
:data:`MAX_ATTEMPTS`; what is still failing then fails the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .errors import FuseError

#: attempts (each a full run of the passes and both proofs) before giving up
MAX_ATTEMPTS = 8


@dataclass(frozen=True)
class Reverted:
    """A rewrite taken back: which, and the proof it failed."""

    pass_name: str
    subgraph: int
    what: str
    key: tuple
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"pass": self.pass_name, "subgraph": self.subgraph, "what": self.what, "key": list(self.key),
                "error": self.error}

    def __str__(self) -> str:
        where = f"subgraph {self.subgraph}: " if self.subgraph else ""
        return f"{self.pass_name}: {where}{self.what}: {self.error}"


#: rerun(forbidden, allowed, regions) -> a new attempt (pipeline._Attempt)
Rerun = Callable[[dict, "frozenset | None", bool], Any]


def recover(attempt, rerun: Rerun, say: Callable[[str], None]) -> tuple[Any, list[Reverted]]:
    """Attempts until one passes both proofs (or none can); the last attempt
    and the rewrites reverted on the way."""
    forbidden: dict[tuple, str] = {}
    reverted: list[Reverted] = []
    for _ in range(MAX_ATTEMPTS - 1):
        v = attempt.verification
        if v is None or v.ok:
            break
        culprits = failing_regions(attempt)
        if not culprits and v.whole_model == "ran" and (not _whole_ok(v) or _gpu_failed(v)) \
                and not _not_a_rewrite(v):
            say(f"verifying: bisecting {len(attempt.ctx.rewrites)} rewrites for the one the whole model fails on")
            culprits = bisect(attempt, rerun, forbidden, say)
        if not culprits:
            break  # nothing a revert can fix (the failure is not a rewrite's)
        for rewrite, error in culprits:
            forbidden[rewrite.key] = error
            reverted.append(Reverted(rewrite.pass_name, rewrite.subgraph, rewrite.what, rewrite.key, error))
        say(f"verifying: reverting {len(culprits)} rewrite(s) and proving again")
        attempt.discard()
        attempt = rerun(dict(forbidden), None, True)
    return attempt, reverted


def _not_a_rewrite(v) -> bool:
    """Failures no revert can fix: the verifier ran out of memory or time."""
    return any(why in v.message for why in ("ran out of memory", "took longer than"))


def _gpu_failed(v) -> bool:
    """The GPU part of the proof failed (gpu_proof.py): the fused model is
    wrong on the GPU accelerator where the original is right."""
    return bool(getattr(v, "gpu", None) and v.gpu.get("failed"))


def _whole_ok(v) -> bool:
    return bool(v.outputs) and all(c.ok for c in v.outputs) and not v.message.startswith("the rewritten model")


def failing_regions(attempt) -> list[tuple[Any, str]]:
    """(rewrite, why) for every rewrite of a region that failed its proof, or
    that could not be proved at all."""
    v = attempt.verification
    by_index = {r.index: r for r in attempt.regions}
    out = []
    whole = "" if v.whole_model == "ran" else f"; the whole model could not be run either ({v.whole_model})"
    failed = [(by_index[c["index"]], c) for c in v.regions if not c["ok"]]
    several = [region for region, c in failed if c["proved"] and len(region.rewrites) > 1]
    at_fault = attempt.pinpoint(several) if several else {}
    for region, check in failed:
        why = (f"its region proof failed: {check['message']}" if check["proved"] else
               f"unproved: {check['message']}{whole}")
        if region.index in at_fault:
            rw = at_fault[region.index]
            others = len(region.rewrites) - 1
            out.append((rw, f"{why} (of the {others + 1} rewrites there, the one whose own step fails)"))
        else:
            out += [(rw, why) for rw in region.rewrites]
    if v.whole_model != "ran":
        for region in attempt.regions:
            if region.problem is not None:
                why = f"unproved: it cannot be proved alone ({region.problem}) and the whole model does not run"
                out += [(rw, why) for rw in region.rewrites]
    return out


def bisect(attempt, rerun: Rerun, forbidden: dict, say: Callable[[str], None]) -> list[tuple[Any, str]]:
    """The rewrite that ends the shortest failing prefix, by whole-model
    proofs of trial runs that make only the rewrites of a prefix."""
    rewrites = list(attempt.ctx.rewrites)
    keys = [r.key for r in rewrites]
    lo, hi = 0, len(keys)  # the prefix of length lo passes (nothing rewritten), hi fails
    step = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        step += 1
        say(f"verifying: bisecting, trial {step} ({mid} of {len(keys)} rewrites)")
        try:
            trial = rerun(dict(forbidden), frozenset(keys[:mid]), False)
        except FuseError as e:  # the trial could not be proved at all: no verdict to bisect on
            say(f"verifying: bisection stopped ({e})")
            return []
        ok = trial.verification is None or trial.verification.ok
        trial.discard()
        lo, hi = (mid, hi) if ok else (lo, mid)
    if hi == 0:
        return []
    error = attempt.verification.message or "the whole-model proof failed"
    return [(rewrites[hi - 1], f"whole-model proof (found by bisection over {len(keys)} rewrites): {error}")]
