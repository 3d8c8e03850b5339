"""Which corpus models TFLite Micro loads, before and after ``--target micro``.

For every committed fixture: does TFLM (the ``tflite-micro`` package) load
and run the original; is it fused for the micro target and verified (on TFLM
when the original loads there, else on LiteRT's reference kernels with TFLM's
run of the fused model compared against it); does TFLM load and run the
result, in what arena. Prints a table and the reasons models still do not
load, and writes ``bench-out/micro_corpus.json``.

    python -m benchmarks.micro_corpus [--only quant/net1_fp16 ...]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.measure import committed_fixtures

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


def tflm_loads(path) -> tuple[bool, str, int | None]:
    from tflite_fuser.micro import runnables

    try:
        (r,) = runnables(path)
    except RuntimeError as e:
        return False, str(e), None
    return True, "", r.arena_bytes


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*")
    p.add_argument("--json", default=str(ROOT / "bench-out" / "micro_corpus.json"))
    args = p.parse_args(argv)
    from tflite_fuser import FuseError, fuse

    entries = committed_fixtures(args.only)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for e in entries:
            src = FIXTURES / e["file"]
            before, why_before, arena_before = tflm_loads(src)
            dst = Path(tmp) / "out.tflite"
            row = {"fixture": e["name"], "loads_before": before, "reason_before": why_before,
                   "arena_before": arena_before}
            try:
                r = fuse(src, dst, runs=1, target="micro")
                row["verified"] = r.ok
                row["verified_on"] = r.verification.kernels if r.verification else "(nothing to fuse)"
                out = dst if r.written else src
            except FuseError as err:
                row.update(verified=False, verified_on=f"not verified: {err}")
                out = src
            after, why_after, arena_after = tflm_loads(out)
            row.update(loads_after=after, reason_after=why_after, arena_after=arena_after)
            rows.append(row)
            print(f"{e['name']:36s} TFLM before: {'yes' if before else 'no ':3s}  after: {'yes' if after else 'no ':3s}"
                  f"  verified on: {row['verified_on']}", flush=True)
    n_before = sum(r["loads_before"] for r in rows)
    n_after = sum(r["loads_after"] for r in rows)
    print(f"\nTFLite Micro loads {n_before} of {len(rows)} fixtures as they are, {n_after} after --target micro")
    reasons = collections.Counter(_kind(r["reason_after"]) for r in rows if not r["loads_after"])
    for why, n in reasons.most_common():
        print(f"  still not loading: {n} x {why}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def _kind(reason: str) -> str:
    """A reason without the file-specific details."""
    return reason.split(" was not true")[0].split("Node ")[0].strip()[:120]


if __name__ == "__main__":
    sys.exit(main() and 0)
