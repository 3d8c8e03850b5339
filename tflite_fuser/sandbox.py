"""Run the verifier in a child process.

The TFLite interpreter is C++ that trusts its input: a model that passed our
structural checks can still make a kernel abort, and a WHILE loop whose
condition never turns false runs forever. Neither may take the tool down or
hang a deployment script. The child runs :func:`verifier.verify` and streams
its stage markers back; if it dies by a signal or overruns the time limit, the
last marker tells whose fault it was:

- while loading or running the *input* model: the input is bad (exit 2);
- while loading or running the *rewritten* model: verification failed (exit 1),
  the output is not written.

The child is a fresh ``python -m tflite_fuser.sandbox_child``, started with
:mod:`subprocess`, not :mod:`multiprocessing`: ``spawn`` re-imports the
caller's ``__main__``, so a deployment script without an
``if __name__ == "__main__"`` guard, a script piped to ``python -``, or code in
a notebook would re-run itself in the child. Our child imports nothing of the
caller's. The job (paths when the models are files, so a large model is never
copied through the pipe; bytes otherwise) goes to the child's stdin as one
pickle, and the child answers with length-prefixed pickled frames on its
stdout. The child's stderr is read too: the C++ runtime's chatter ("Created
TensorFlow Lite XNNPACK delegate") stays off the user's terminal, and the last
lines it wrote before a crash go into the error message.
"""

from __future__ import annotations

import itertools
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .errors import BadModelError
from .options import VerifyOptions
from .region_proof import STAGE_CAPTURE
from .verifier import STAGE_LOAD_ORIGINAL, STAGE_RUN_ORIGINAL, Verification

#: frame header: payload length, little-endian uint64
FRAME = struct.Struct("<Q")
#: how much of the child's stderr is kept for a crash message
_STDERR_TAIL = 4096
#: lines of the C++ runtime that are never worth showing
_NOISE = ("INFO: Created TensorFlow Lite", "INFO: Initialized TensorFlow Lite")


def child_command() -> list[str]:
    """The command that starts a child: this interpreter, our module."""
    return [sys.executable, "-m", "tflite_fuser.sandbox_child"]


def child_environment() -> dict[str, str]:
    """The caller's environment, with our package importable even when the
    caller found it through ``sys.path`` rather than an install."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


#: what the child addresses before any model: Python, numpy, LiteRT (measured ~200 MiB)
CHILD_BASELINE = 256 << 20


def memory_needed(model, file_bytes: int) -> int:
    """A lower bound on what the child must address to prove ``model``: it
    holds two interpreters at once (the original and the fused model, about
    the same size), each maps its file, and the tensors one operator reads
    and writes are alive together whatever the arena planner does. When even
    this is over the limit, the proof is bound to fail: say so before trying."""
    largest = 0
    for sg in model.subgraphs:
        for op in sg.operators:
            seen = {t for t in itertools.chain(op.inputs, op.outputs) if t is not None and not t.is_constant}
            largest = max(largest, sum(t.value_bytes for t in seen))
    return CHILD_BASELINE + 2 * (file_bytes + largest)


def check_memory(need: int, limit: int | None, failure: str | None = None) -> None:
    """BadModelError when a model that needs at least ``need`` bytes cannot
    run within the child's ``limit``: surely when ``need`` is over it; and,
    once the interpreter failed to load the input (``failure``), when it needed
    more than half of it (its tensors beyond one operator's then likely
    ran into the limit)."""
    if not limit or (need <= limit if failure is None else need <= limit / 2):
        return
    what = (f"proving the model needs at least {need / 2**30:.3g} GiB (two interpreters, each with the file and "
            f"the tensors of the largest operator)" if failure is None else
            f"the interpreter could not run the input model ({failure}), which needs at least "
            f"{need / 2**30:.3g} GiB")
    raise BadModelError(f"{what}, more than the verifier may address ({limit / 2**30:.3g} GiB); --verify-memory "
                        f"SIZE raises the limit, --no-verify skips verification")


def verify_isolated(original, candidate, check: VerifyOptions | None = None, *, regions=None,
                    sig_subgraphs=None, whole: bool = True,
                    progress: Callable[[str], None] | None = None) -> Verification:
    """:func:`proof.prove` (the whole-model proof, and the region proofs of
    ``regions``, a :class:`regions.RegionJob`) in a child process, with
    ``check.timeout`` as the time limit and ``check.memory_bytes`` as the
    limit of its address space."""
    check = check or VerifyOptions()
    kwargs = check.check_kwargs()
    memory = check.memory_bytes
    job = {**kwargs, "regions": regions, "sig_subgraphs": sig_subgraphs, "whole": whole}
    return _in_child("prove", original, candidate, job, check.timeout, progress,
                     lambda stage, what, last_words: _blame(stage, what, kwargs, last_words, memory), memory)


def bench_isolated(original, candidate, kwargs: dict, timeout: float | None,
                   progress: Callable[[str], None] | None = None) -> dict:
    """:func:`bench.measure` in a child process (the models have been verified
    by then; a failure here costs the figures, not the run)."""
    def failed(stage, what, last_words):
        return {"error": f"the benchmark {what}" + (f" ({last_words})" if last_words else "")}
    return _in_child("bench", original, candidate, kwargs, timeout, progress, failed)


def gpu_coverage_isolated(model, timeout: float | None = 300.0) -> dict:
    """:func:`gpu.coverage` of ``model`` in a child process (the GPU driver is
    C++ too), with each refused op's repair named; ``available`` False and a
    ``reason`` when no GPU accelerator starts."""
    def failed(stage, what, last_words):
        return {"available": False, "reason": f"the GPU accelerator {what}" + (f" ({last_words})" if last_words else "")}
    return _in_child("coverage", model, None, {}, timeout, None, failed)


def _in_child(task: str, original, candidate, kwargs: dict, timeout: float | None, progress, on_death,
              memory_limit: int | None = None):
    if not sys.executable:
        raise BadModelError("cannot start the verifier's child process: this Python has no sys.executable; "
                            "pass isolate=False (or --no-verify)")
    job = pickle.dumps({"task": task, "original": _portable(original), "candidate": _portable(candidate),
                        "kwargs": kwargs, "memory_limit": memory_limit}, protocol=pickle.HIGHEST_PROTOCOL)
    start = time.monotonic()
    proc = subprocess.Popen(child_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=child_environment(), close_fds=True)
    channel = _Channel(proc)
    stage = STAGE_LOAD_ORIGINAL
    try:
        channel.send(job)
        while True:
            left = None if timeout is None else timeout - (time.monotonic() - start)
            if left is not None and left <= 0:
                _kill(proc)
                return on_death(stage, f"took longer than {timeout:g} s", "")
            frame = channel.receive(min(left, 0.5) if left is not None else 0.5)
            if frame is None:
                if channel.closed:
                    proc.wait()
                    return on_death(stage, _death(proc.returncode), channel.stderr_tail())
                continue
            kind, payload = frame
            if kind == "stage":
                stage = payload
                if progress and (payload.startswith("verifying") or payload.startswith("benchmarking")):
                    progress(payload)
            elif kind == "result":
                return payload
            elif kind == "out of memory":
                return on_death(stage, "ran out of memory", "")
            else:
                raise payload
    finally:
        _kill(proc)
        channel.close()


class _Channel:
    """Frames from the child's stdout, and a tail of its stderr, read with
    ``select`` so that neither pipe can fill up and block the child."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.out = proc.stdout.fileno()
        self.err = proc.stderr.fileno()
        self.pending = bytearray()
        self.errors = bytearray()
        self.open = {self.out, self.err}

    @property
    def closed(self) -> bool:
        return self.out not in self.open

    def send(self, job: bytes) -> None:
        try:
            self.proc.stdin.write(job)
            self.proc.stdin.close()
        except BrokenPipeError:  # the child died at start-up; receive() reports it
            pass

    def receive(self, wait: float) -> tuple[str, Any] | None:
        """The next complete frame, or None after ``wait`` seconds without one."""
        deadline = time.monotonic() + wait
        while True:
            frame = self._frame()
            if frame is not None:
                return frame
            left = deadline - time.monotonic()
            if not self.open or left <= 0:
                return None
            ready, _, _ = select.select(list(self.open), [], [], left)
            for fd in ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    self.open.discard(fd)
                elif fd == self.out:
                    self.pending += chunk
                else:
                    self.errors += chunk
                    del self.errors[:-_STDERR_TAIL]

    def _frame(self) -> tuple[str, Any] | None:
        if len(self.pending) < FRAME.size:
            return None
        (n,) = FRAME.unpack_from(self.pending)
        if len(self.pending) < FRAME.size + n:
            return None
        payload = bytes(self.pending[FRAME.size:FRAME.size + n])
        del self.pending[:FRAME.size + n]
        return pickle.loads(payload)

    def stderr_tail(self) -> str:
        lines = [ln.strip() for ln in self.errors.decode("utf-8", "replace").splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith(_NOISE)]
        return lines[-1] if lines else ""

    def close(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:  # pragma: no cover
                pass


def _portable(model):
    return os.fspath(model) if isinstance(model, os.PathLike) else model


def _death(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            return f"crashed ({signal.Signals(-returncode).name})"
        except ValueError:
            return f"crashed (signal {-returncode})"
    return f"exited unexpectedly (code {returncode})"


def _blame(stage: str, what: str, kwargs, last_words: str, memory_limit: int | None = None) -> Verification:
    said = f" ({last_words})" if last_words else ""
    if memory_limit and (what == "ran out of memory" or "bad_alloc" in last_words):
        # Not the rewrite's fault (the fused model needs what the original
        # does): the proof does not fit in the memory it may use.
        raise BadModelError(f"the verifier ran out of memory while {stage}{said}: it may address "
                            f"{memory_limit / 2**30:.3g} GiB; --verify-memory SIZE raises the limit, --no-verify "
                            f"skips verification")
    if stage in (STAGE_LOAD_ORIGINAL, STAGE_RUN_ORIGINAL, STAGE_CAPTURE):
        raise BadModelError(f"the TFLite interpreter {what} while {stage}{said}; "
                            f"pass --no-verify to skip verification")
    return Verification(ok=False, runs=0, atol=kwargs.get("atol", 0.0), rtol=kwargs.get("rtol", 0.0),
                        seed=kwargs.get("seed", 0), kernels=kwargs.get("kernels") or "builtin",
                        message=f"the TFLite interpreter {what} while {stage}{said}")


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pass
