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

The child is started with ``spawn`` (a fresh interpreter, nothing inherited
from threads the caller may run) and receives paths when it can, so a large
model is never copied through the pipe.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from typing import Any, Callable

from .errors import BadModelError
from .verifier import (STAGE_LOAD_ORIGINAL, STAGE_RUN_ORIGINAL,
                       Verification, verify)

#: Default limit for one verification, generous for big models on small machines.
DEFAULT_TIMEOUT = 900.0


def _child(conn, original, candidate, kwargs) -> None:
    try:
        result = verify(original, candidate, progress=lambda m: conn.send(("stage", m)), **kwargs)
        conn.send(("result", result))
    except BaseException as e:  # sent back and re-raised in the parent
        conn.send(("error", e))
    finally:
        conn.close()


def verify_isolated(original, candidate, *, timeout: float | None = DEFAULT_TIMEOUT,
                    progress: Callable[[str], None] | None = None, **kwargs: Any) -> Verification:
    """:func:`verifier.verify` in a child process, with a time limit."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, _portable(original), _portable(candidate), kwargs),
                       daemon=True)
    start = time.monotonic()
    proc.start()
    child.close()
    stage = STAGE_LOAD_ORIGINAL
    try:
        while True:
            left = None if timeout is None else timeout - (time.monotonic() - start)
            if left is not None and left <= 0:
                _kill(proc)
                return _blame(stage, f"took longer than {timeout:g} s", kwargs)
            if parent.poll(min(left, 0.5) if left is not None else 0.5):
                try:
                    kind, payload = parent.recv()
                except EOFError:
                    proc.join()
                    return _blame(stage, _death(proc.exitcode), kwargs)
                if kind == "stage":
                    stage = payload
                    if progress and payload.startswith("verifying"):
                        progress(payload)
                elif kind == "result":
                    return payload
                else:
                    raise payload
            elif not proc.is_alive():
                proc.join()
                if not parent.poll():
                    return _blame(stage, _death(proc.exitcode), kwargs)
    finally:
        _kill(proc)
        parent.close()


def _portable(model):
    return os.fspath(model) if isinstance(model, os.PathLike) else model


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"crashed ({signal.Signals(-exitcode).name})"
        except ValueError:
            return f"crashed (signal {-exitcode})"
    return f"exited unexpectedly (code {exitcode})"


def _blame(stage: str, what: str, kwargs) -> Verification:
    if stage in (STAGE_LOAD_ORIGINAL, STAGE_RUN_ORIGINAL):
        raise BadModelError(f"the TFLite interpreter {what} while {stage}; "
                            f"pass --no-verify to skip verification")
    return Verification(ok=False, runs=0, atol=kwargs.get("atol", 0.0), rtol=kwargs.get("rtol", 0.0),
                        seed=kwargs.get("seed", 0), kernels="xnnpack" if kwargs.get("xnnpack") else "builtin",
                        message=f"the TFLite interpreter {what} while {stage}")


def _kill(proc) -> None:
    if proc.is_alive():
        proc.kill()
    proc.join(timeout=5)
