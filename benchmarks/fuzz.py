"""Mutation fuzzing of the whole tool: mutated real models through the real CLI.

Every mutated file is run as ``python -m tflite_fuser MUTANT OUT`` in its own
process with a wall-clock limit, and the outcome must be one of:

- ``rejected``: exit 2, exactly one stderr line, no traceback, no output file;
- ``fused``: exit 0 and an output that loads again (the mutation was benign);
- ``verify-failed``: exit 1 and no output file.

Anything else - exit 3 (internal error), a traceback, several error lines, a
signal, a hang past the limit, an output file left on failure - is a finding,
printed with the mutant saved under ``--keep`` for reproduction.

    python -m benchmarks.fuzz --per-kind 40 [--jobs 2] [--keep bench-out/fuzz]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import mutate

ROOT = Path(__file__).resolve().parent.parent


def sources() -> list[Path]:
    files = sorted((ROOT / "fixtures").rglob("*.tflite"))
    return [p for p in files if p.stat().st_size < 400_000]


def run_one(mutant: bytes, workdir: Path, limit: float) -> tuple[str, str]:
    src, out = workdir / "in.tflite", workdir / "out.tflite"
    src.write_bytes(mutant)
    if out.exists():
        out.unlink()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    try:
        proc = subprocess.run([sys.executable, "-m", "tflite_fuser", str(src), str(out), "-q",
                               "--runs", "1", "--verify-timeout", str(limit / 2)],
                              capture_output=True, text=True, timeout=limit, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return "HANG", f"no exit within {limit:g} s"
    err = proc.stderr.strip().splitlines()
    rc = proc.returncode
    if rc < 0:
        return "CRASH", f"signal {-rc}"
    if "Traceback" in proc.stderr:
        return "TRACEBACK", proc.stderr[-400:]
    if rc == 2:
        if len(err) != 1:
            return "MULTILINE", proc.stderr[-400:]
        return ("LEFT-OUTPUT", err[0]) if out.exists() else ("rejected", err[0])
    if rc == 1:
        return ("LEFT-OUTPUT", "exit 1") if out.exists() else ("verify-failed", "")
    if rc == 0:
        from tflite_fuser import load
        try:
            load(out)
        except Exception as e:  # noqa: BLE001 - any failure is a finding
            return "BAD-OUTPUT", str(e)
        return "fused", ""
    return f"EXIT-{rc}", proc.stderr[-400:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-kind", type=int, default=20, help="mutants per mutation kind")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=float, default=60.0, help="seconds per file before it counts as a hang")
    p.add_argument("--keep", default=str(ROOT / "bench-out" / "fuzz"), help="where findings are saved")
    args = p.parse_args(argv)

    srcs = [(s, s.read_bytes()) for s in sources()]
    rng = random.Random(args.seed)
    jobs = []
    for kind in mutate.ALL_MUTATIONS:
        for i in range(args.per_kind):
            name, data = srcs[rng.randrange(len(srcs))]
            jobs.append((kind.__name__, name.name, kind(data, random.Random(rng.getrandbits(32)))))
    print(f"{len(jobs)} mutants of {len(srcs)} fixtures, {len(mutate.ALL_MUTATIONS)} kinds, "
          f"{args.jobs} at a time")
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    findings = []
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, cf.ThreadPoolExecutor(args.jobs) as pool:
        dirs = [Path(tmp) / f"w{i}" for i in range(len(jobs))]
        futures = {}
        for (kind, src, data), d in zip(jobs, dirs):
            d.mkdir()
            futures[pool.submit(run_one, data, d, args.limit)] = (kind, src, data)
        for n, fut in enumerate(cf.as_completed(futures), 1):
            kind, src, data = futures[fut]
            outcome, detail = fut.result()
            counts[kind][outcome] += 1
            if outcome.isupper():
                findings.append((kind, src, outcome, detail, data))
            if n % 50 == 0:
                print(f"  {n}/{len(jobs)} done, {len(findings)} finding(s), {time.monotonic() - start:.0f} s",
                      file=sys.stderr)
    outcomes = sorted({o for c in counts.values() for o in c})
    width = max(len(k) for k in counts)
    print(f"{'mutation':<{width}} " + " ".join(f"{o:>13}" for o in outcomes))
    for kind in counts:
        print(f"{kind:<{width}} " + " ".join(f"{counts[kind][o]:>13}" for o in outcomes))
    total = collections.Counter()
    for c in counts.values():
        total.update(c)
    print(f"{'total':<{width}} " + " ".join(f"{total[o]:>13}" for o in outcomes))
    print(f"{len(jobs)} files in {time.monotonic() - start:.0f} s; findings: {len(findings)}")
    if findings:
        keep = Path(args.keep)
        keep.mkdir(parents=True, exist_ok=True)
        for i, (kind, src, outcome, detail, data) in enumerate(findings):
            path = keep / f"{i:03d}-{kind}-{outcome}.tflite"
            path.write_bytes(data)
            print(f"  {outcome}: {kind} of {src} -> {path}: {detail.strip()[:200]}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
