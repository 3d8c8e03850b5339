"""Verification runs in a child process: a hang in the C++ interpreter is cut
off at the time limit and reported as one error line, and the tool lives on."""

from __future__ import annotations

import os
import time

import models
from tflite_fuser.cli import main


def test_a_model_that_never_finishes_is_cut_off_at_the_time_limit(tmp_path, capsys):
    src = tmp_path / "loop.tflite"
    src.write_bytes(models.endless_while())
    start = time.monotonic()
    rc = main([str(src), str(tmp_path / "out.tflite"), "--verify-timeout", "3"])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "took longer than 3 s while running the input model" in err[0]
    assert elapsed < 60  # generous: only "bounded", not a timing assertion
    assert os.listdir(tmp_path) == ["loop.tflite"]


def test_isolated_and_in_process_verification_agree(tmp_path):
    from tflite_fuser import fuse

    data = models.rich_metadata()
    a = fuse(data, passes="none", isolate=True, runs=2).verification
    b = fuse(data, passes="none", isolate=False, runs=2).verification
    assert a.ok and b.ok
    assert [(o.signature, o.name, o.max_abs_error) for o in a.outputs] == \
           [(o.signature, o.name, o.max_abs_error) for o in b.outputs]
