"""What the region proofs cost, next to the whole-model proof they sit beside.

Every rewrite is cut out and proved alone (see ``tflite_fuser/regions.py``);
regions share one pair of cut models (a few, for large tensors), so thousands
of them must prove in seconds. For the largest fixtures with rewrites and for
synthetic conv-bn-relu chains of thousands of blocks, each fused in a fresh
process with the default proofs (in the verifier's child), this prints the
regions, the seconds of the whole-model proof and of the region proofs, and
their ratio. Then the memory limit: a model whose proof needs more than
``--verify-memory`` allows exits 2 before any work.

    python -m benchmarks.region_proofs [--blocks 1000 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from benchmarks.measure import PEAK, mb, run

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ["naive/mobilenetv2", "naive/resnext", "tf/mobilenetv2", "quant/mobilenetv2_fp16", "naive/resnet18"]

JOB = """
from tflite_fuser import fuse
t = time.perf_counter()
r = fuse({src!r}, None, runs=3)
v = r.verification
s = v.region_summary
_report(time.perf_counter() - t, peak_bytes=_peak(), ok=r.ok, ops=r.report["input"]["operators"],
        rewrites=len(r.report["rewrites"]), regions=s["regions"], region_s=s["seconds"], whole_s=v.seconds,
        verify_s=r.report["seconds"]["verify"], bound=s["bound_used"], inputs=s["inputs"])
"""

MEMORY = """
from tflite_fuser import fuse, BadModelError
t = time.perf_counter()
try:
    fuse({src!r}, None, memory_limit=256 << 20)
    said = "no error"
except BadModelError as e:
    said = str(e)
_report(time.perf_counter() - t, peak_bytes=_peak(), said=said)
"""


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, nargs="*", default=[1000, 3000])
    p.add_argument("--json", default=str(ROOT / "bench-out" / "region_proofs.json"))
    args = p.parse_args(argv)
    from benchmarks.synth import synthetic_model
    from tflite_fuser import save

    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        cases = [(name, str(ROOT / "fixtures" / f"{name}.tflite")) for name in FIXTURES]
        for n in args.blocks:
            path = os.path.join(tmp, f"chain{n}.tflite")
            save(synthetic_model(n, 0, channels=4, spatial=8), path)
            cases.append((f"chain of {n} conv-bn-relu blocks", path))
        for name, src in cases:
            job = run(PEAK + JOB.format(src=src))
            e = job.extra
            row = {"model": name, **e, "total_s": job.seconds, "peak": job.peak_bytes}
            rows.append(row)
            print(f"{name}: {e['ops']:,} ops, {e['rewrites']:,} rewrites in {e['regions']:,} regions "
                  f"(inputs {e['inputs']}); whole-model proof {e['whole_s']:.2f} s, region proofs "
                  f"{e['region_s']:.2f} s ({e['region_s'] / max(e['whole_s'], 1e-9):.2f}x); the closest region at "
                  f"{100 * e['bound']:.2g}% of its bound; verification {e['verify_s']:.2f} s in all, fuse "
                  f"{job.seconds:.2f} s, peak {mb(job.peak_bytes)}{'' if e['ok'] else '  NOT OK'}", flush=True)
        from tflite_fuser.builder import ModelBuilder
        import numpy as np

        b = ModelBuilder()
        x = b.input("x", [1, 1024, 1024, 16])
        y = b.conv2d(x, np.ones((16, 1, 1, 16), np.float32), np.zeros(16, np.float32))
        b.output(b.relu(b.add(b.mul(y, np.float32(2.0)), np.float32(1.0))))
        big = os.path.join(tmp, "big.tflite")
        Path(big).write_bytes(b.to_bytes())
        job = run(PEAK + MEMORY.format(src=big))
        rows.append({"model": "memory limit 256 MiB, 64 MiB tensors", "seconds": job.seconds, **job.extra})
        print(f"memory limit: a model with 64 MiB tensors under --verify-memory 256M: {job.seconds:.2f} s, "
              f"\"{job.extra['said']}\"")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
