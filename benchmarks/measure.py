"""Run a snippet in a fresh Python process and measure it.

Peak memory is the child's own maximum resident set (``wait4`` rusage), so
imports, page cache and allocator state of the benchmark driver never leak
into a figure. The child reports its own wall time for the measured section
(excluding interpreter start-up and imports) as JSON on its last stdout line.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PRELUDE = """
import json, sys, time
def _report(seconds, **extra):
    print(json.dumps({"seconds": seconds, **extra}), flush=True)
"""


@dataclass
class Sample:
    seconds: float
    peak_bytes: int
    extra: dict


def run(snippet: str, timeout: float = 3600) -> Sample:
    code = _PRELUDE + textwrap.dedent(snippet)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({proc.returncode}):\n{err.decode()[-2000:]}")
    data = json.loads(out.decode().strip().splitlines()[-1])
    return Sample(data.pop("seconds"), data.pop("peak_bytes"), data)


# VmHWM, not getrusage: Linux carries ru_maxrss across fork+exec, so a child
# would inherit the driver's peak; VmHWM belongs to the new address space.
PEAK = """
def _peak():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
"""


def median_of(samples: list[Sample]) -> Sample:
    return Sample(statistics.median(s.seconds for s in samples),
                  int(statistics.median(s.peak_bytes for s in samples)), samples[-1].extra)


def mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"


def committed_fixtures(only=None) -> list[dict]:
    """The manifest entries of the committed fixtures (``only``: those names)."""
    with open(os.path.join(ROOT, "fixtures", "manifest.json")) as f:
        manifest = json.load(f)
    return [e for e in manifest["fixtures"] if e["committed"] and (not only or e["name"] in only)]
