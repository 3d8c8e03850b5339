"""How tool time and memory grow with model size.

Synthetic conv-bn-relu models (``benchmarks/synth.py``) with S MB of weights
and N blocks (4 ops each, one rewrite each), for S in {10, 100, 500} and N in
{10, 1000, 10000} by default. Each model is fused in a fresh process (passes
and writing, then verification); the script prints time and peak memory per
model and the fitted growth exponent k of time ~ size^k along each axis
(k = 1 is linear; the target).

    python -m benchmarks.scale [--mb 10 100 500] [--blocks 10 1000 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.measure import PEAK, mb, run

ROOT = Path(__file__).resolve().parent.parent

MAKE = """
from benchmarks.synth import synthetic_model
from tflite_fuser import save
t = time.perf_counter()
m = synthetic_model({blocks}, {mb})
save(m, {path!r})
_report(time.perf_counter() - t, peak_bytes=_peak(), ops=m.num_operators())
"""

FUSE = """
from tflite_fuser import fuse
t = time.perf_counter()
r = fuse({src!r}, {dst!r}, runs=1, verify_output={verify})
s = r.report["seconds"]
_report(time.perf_counter() - t, peak_bytes=_peak(), ok=r.ok, ops_before=r.report["input"]["operators"],
        ops_after=r.report["output"]["operators"], read=s["read"], passes=s["passes"], write=s["write"],
        verify=s["verify"])
"""


def slope(xs, ys) -> float:
    lx, ly = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
    return float(np.polyfit(lx, ly, 1)[0])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, nargs="+", default=[10, 100, 500])
    p.add_argument("--blocks", type=int, nargs="+", default=[10, 1000, 10000])
    p.add_argument("--repeat", type=int, default=1, help="fresh-process runs per model (median)")
    p.add_argument("--json", default=str(ROOT / "bench-out" / "scale.json"))
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        for s in args.mb:
            for n in args.blocks:
                src, dst = os.path.join(tmp, "m.tflite"), os.path.join(tmp, "o.tflite")
                made = run(PEAK + MAKE.format(blocks=n, mb=s, path=src))
                size = os.path.getsize(src)
                fast = sorted((run(PEAK + FUSE.format(src=src, dst=dst, verify=False))
                               for _ in range(args.repeat)), key=lambda x: x.seconds)[args.repeat // 2]
                full = run(PEAK + FUSE.format(src=src, dst=dst, verify=True))
                row = {"mb": s, "blocks": n, "bytes": size, "ops_before": fast.extra["ops_before"],
                       "ops_after": fast.extra["ops_after"], "fuse_seconds": fast.seconds,
                       "fuse_peak_bytes": fast.peak_bytes, "read": fast.extra["read"],
                       "passes": fast.extra["passes"], "write": fast.extra["write"],
                       "verified": full.extra["ok"], "with_verify_seconds": full.seconds,
                       "with_verify_peak_bytes": full.peak_bytes, "make_seconds": made.seconds}
                rows.append(row)
                print(f"S={s:>5g} MB N={n:>6}: {row['ops_before']:>6} -> {row['ops_after']:>6} ops, "
                      f"{mb(size):>8}; fuse {fast.seconds:7.2f} s (read {row['read']:.2f}, passes "
                      f"{row['passes']:.2f}, write {row['write']:.2f}), peak {mb(fast.peak_bytes)} "
                      f"({fast.peak_bytes / size:.2f}x size); with verify {full.seconds:7.2f} s, "
                      f"peak {mb(full.peak_bytes)}, verified={full.extra['ok']}", flush=True)
    # Over all sizes, fixed costs (imports are excluded, but per-run set-up is
    # not) flatten the fit; between the two largest sizes the growth shows.
    fits = {}
    for axis, key, x in (("S", "blocks", "bytes"), ("N", "mb", "ops_before")):
        for fixed in (args.blocks if axis == "S" else args.mb):
            sel = [r for r in rows if r[key] == fixed]
            if len(sel) > 1:
                xs, ys = [r[x] for r in sel], [r["fuse_seconds"] for r in sel]
                fits[f"time vs {axis} at {'N' if axis == 'S' else 'S'}={fixed:g}"] = {
                    "all sizes": slope(xs, ys), "two largest": slope(xs[-2:], ys[-2:])}
    print("fitted growth exponents (time ~ size^k; 1 = linear):")
    for k, v in fits.items():
        print(f"  {k:<24} k = {v['all sizes']:.2f} over all sizes, {v['two largest']:.2f} between the two largest")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rows": rows, "exponents": fits}, indent=2))
    return {"rows": rows, "exponents": fits}


if __name__ == "__main__":
    main()
