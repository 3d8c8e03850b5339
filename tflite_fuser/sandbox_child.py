"""The verifier's child process: ``python -m tflite_fuser.sandbox_child``.

Reads one pickled job from stdin (the task, ``prove``, ``verify`` or ``bench``, the two
models as paths or bytes, and the keyword arguments of :func:`verifier.verify`
or :func:`bench.measure`), runs it, and writes
length-prefixed pickled frames to the stdout it was started with: ``("stage",
marker)`` as verification moves on, then ``("result", Verification)`` or
``("error", exception)``. See :mod:`sandbox` for why this is a module run by a
fresh interpreter and not a ``multiprocessing`` target.

File descriptor 1 is pointed at stderr before any model is loaded, so that
nothing the C++ runtime or a kernel prints can corrupt the frame stream.
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys

#: what a proof imports lazily, imported before the memory limit is set
_PRELOAD = ("numpy.random", "ai_edge_litert.interpreter", "tflite_fuser.noise_floor", "tflite_fuser.reader",
            "tflite_fuser.region_proof", "tflite_fuser.regions", "tflite_fuser.writer")


def main() -> int:
    frames = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    job = pickle.loads(sys.stdin.buffer.read())

    from .bench import measure
    from .proof import prove
    from .sandbox import FRAME
    from .verifier import verify
    for name in _PRELOAD:  # loaded before the limit: it is for the models' allocations, not our code's
        importlib.import_module(name)
    limit_memory(job.get("memory_limit"))

    def send(kind: str, payload) -> None:
        data = pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
        frames.write(FRAME.pack(len(data)) + data)

    try:
        task = {"verify": verify, "prove": prove, "bench": measure, "coverage": gpu_coverage}[job.get("task", "verify")]
        result = task(job["original"], job["candidate"], progress=lambda m: send("stage", m), **job["kwargs"])
        send("result", result)
    except (MemoryError, ImportError) as e:
        # an ImportError "failed to map segment": a library loaded after the limit, which it did not fit in
        if isinstance(e, ImportError) and "failed to map" not in str(e):
            send("error", e)
        else:
            send("out of memory", None)
    except Exception as e:  # re-raised in the parent, which knows how to report it
        try:
            send("error", e)
        except Exception:  # an exception that does not pickle
            send("error", RuntimeError(f"{type(e).__name__}: {e}"))
    frames.close()
    return 0


def gpu_coverage(model, _candidate, progress=None) -> dict:
    from . import gpu

    why = gpu.unavailable()
    if why:
        return {"available": False, "reason": why}
    return {"available": True, **gpu.coverage(model).to_dict(repairs=True)}


def limit_memory(limit: int | None) -> None:
    """Cap this process's address space: a model that makes the interpreter
    allocate without bound then fails here, cleanly, instead of taking the
    machine down."""
    if not limit:
        return
    try:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        from . import verifier

        verifier.MEMORY_LIMITED = True
    except (ImportError, ValueError, OSError):  # pragma: no cover - not POSIX, or not allowed
        pass


if __name__ == "__main__":
    sys.exit(main())
