"""Models too big for one flatbuffer: > 2 GB of weights in the external form.

Makes a synthetic conv-bn-relu model with ``--gb`` GB of weights (stored after
the flatbuffer with ``Buffer.offset``/``size``, as TensorFlow's converter does
above 2 GB), fuses it in a fresh process and checks that:

- every rewrite happened (4 ops per block -> 1),
- the output is still in the external form (no buffer inline),
- peak memory stays within 2x the model size (the core issue's budget),
- and, separately, that the interpreter verifies it (its own memory: it maps
  both models).

    python -m benchmarks.large [--gb 2.2] [--blocks 10] [--skip-verify]
"""

from __future__ import annotations

import argparse
import os
import tempfile

from benchmarks.measure import PEAK, mb, run

MAKE = """
from benchmarks.synth import synthetic_model
from tflite_fuser import save
t = time.perf_counter()
m = synthetic_model({blocks}, {mb})
save(m, {path!r})
_report(time.perf_counter() - t, peak_bytes=_peak())
"""

FUSE = """
from tflite_fuser import fuse, load
t = time.perf_counter()
r = fuse({src!r}, {dst!r}, runs=1, verify_output={verify})
dt = time.perf_counter() - t
peak = _peak()
out = load({dst!r})
external = all(b.external for b in out.buffers if b.nbytes)
_report(dt, peak_bytes=peak, ok=r.ok, ops_before=r.report["input"]["operators"],
        ops_after=r.report["output"]["operators"], external=external,
        max_abs=r.verification.max_abs_error if r.verification else None)
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gb", type=float, default=2.2)
    p.add_argument("--blocks", type=int, default=10)
    p.add_argument("--skip-verify", action="store_true")
    p.add_argument("--dir", default=os.environ.get("BENCH_TMP"), help="scratch folder on a real disk")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        src, dst = os.path.join(tmp, "big.tflite"), os.path.join(tmp, "big.fused.tflite")
        made = run(PEAK + MAKE.format(blocks=args.blocks, mb=args.gb * 1000, path=src))
        size = os.path.getsize(src)
        print(f"made {mb(size)} model in {made.seconds:.1f} s (generator peak {mb(made.peak_bytes)})")
        fused = run(PEAK + FUSE.format(src=src, dst=dst, verify=False))
        e = fused.extra
        print(f"fuse, no verification: {fused.seconds:.1f} s, peak {mb(fused.peak_bytes)} = "
              f"{fused.peak_bytes / size:.2f}x model size; ops {e['ops_before']} -> {e['ops_after']}; "
              f"output external form: {e['external']}")
        ok = e["external"] and e["ops_after"] * 4 == e["ops_before"] and fused.peak_bytes <= 2 * size
        if not args.skip_verify:
            checked = run(PEAK + FUSE.format(src=src, dst=dst, verify=True))
            print(f"fuse + verification: {checked.seconds:.1f} s, tool peak {mb(checked.peak_bytes)} "
                  f"(the interpreter runs in its own process); verified={checked.extra['ok']}, "
                  f"max abs error {checked.extra['max_abs']:.3g}")
            ok = ok and checked.extra["ok"]
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
