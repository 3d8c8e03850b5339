"""Where the corpus runs under LiteRT's GPU accelerator, before and after
``--target gpu``.

For every committed fixture: the GPU coverage of the original (all on the
GPU, or how many ops on each side and which ops the delegate refused, or why
it cannot be compiled); the same of the model fused for the gpu target; and
the GPU proof's verdicts (the fused model on the GPU against the original on
the CPU, the original on the GPU against the CPU). Prints a table and the
refused ops, and writes ``bench-out/gpu_corpus.json``. Needs the GPU
accelerator (on a machine without a GPU: ``apt install chromium libvulkan1``).

    python -m benchmarks.gpu_corpus [--only naive/net1 ...]
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


def _state(cov: dict) -> str:
    if cov["error"]:
        return "no compile"
    if cov["all_on_gpu"]:
        return "all GPU"
    return f"{cov['gpu_ops']}/{cov['cpu_ops']} GPU/CPU"


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*")
    p.add_argument("--json", default=str(ROOT / "bench-out" / "gpu_corpus.json"))
    args = p.parse_args(argv)
    from tflite_fuser import FuseError, fuse, gpu
    from tflite_fuser.gpu_proof import original_vs_cpu

    why = gpu.unavailable()
    if why:
        print(f"gpu_corpus: {why}", file=sys.stderr)
        return []
    entries = committed_fixtures(args.only)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for e in entries:
            src = FIXTURES / e["file"]
            dst = Path(tmp) / "out.tflite"
            row: dict = {"fixture": e["name"]}
            try:
                r = fuse(src, dst, runs=1, target="gpu")
                g = r.verification.gpu if r.verification else None
                row["verified"] = r.ok
            except FuseError as err:
                g, row["verified"] = None, f"not verified: {err}"
            if g and g.get("available"):
                row.update(before=g["coverage_before"], after=g["coverage_after"],
                           fused_vs_cpu=g.get("fused_vs_cpu"), original_vs_cpu=g.get("original_vs_cpu"),
                           verdict=g.get("verdict", ""))
            else:  # nothing to fuse (or not verified): the original's coverage and correctness are the answer
                row["before"] = row["after"] = gpu.coverage(src).to_dict()
                row["original_vs_cpu"] = original_vs_cpu(src)
                row["verdict"] = "unchanged" + ("" if not row["original_vs_cpu"] or row["original_vs_cpu"]["ok"]
                                                else "; the GPU computes it WRONGLY")
            rows.append(row)
            print(f"{e['name']:36s} before: {_state(row['before']):16s} after: {_state(row['after']):16s} "
                  f"{row['verdict'][:90]}", flush=True)
    for side in ("before", "after"):
        n_all = sum(r[side]["all_on_gpu"] for r in rows)
        n_none = sum(bool(r[side]["error"]) for r in rows)
        left = sum(r[side]["cpu_ops"] or 0 for r in rows if not r[side]["all_on_gpu"])
        print(f"{side}: {n_all} of {len(rows)} all on the GPU, {len(rows) - n_all - n_none} in part "
              f"({left} ops on the CPU), {n_none} do not compile")
    refused = collections.Counter((op, why) for r in rows for op, why in
                                  {(x["op"], x["reason"]) for x in r["after"]["refused"]})
    for (op, why), n in refused.most_common():
        print(f"  still refused after: {n} x {op}: {why}")
    wrong = [r["fixture"] for r in rows if r.get("original_vs_cpu") and not r["original_vs_cpu"]["ok"]]
    still = [r["fixture"] for r in rows if r.get("fused_vs_cpu") and not r["fused_vs_cpu"]["ok"]
             or r["verdict"].endswith("WRONGLY")]
    print(f"the GPU computes the original wrongly: {len(wrong)} ({', '.join(wrong) or '-'}); "
          f"after --target gpu: {len(still)} ({', '.join(still) or '-'})")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    sys.exit(main() and 0)
