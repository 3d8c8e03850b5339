"""Bad input: one clear error line naming the file, exit code 2, no output file.

Each case runs the real CLI entry point in-process (fast) and one case runs the
installed console script in a subprocess to pin the same behaviour end to end.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import models
from tflite_fuser.cli import main

GOOD = models.conv_relu().to_bytes()


def _unsupported_version() -> bytes:
    b = models.conv_relu()
    b.model.version = 4
    return b.to_bytes()


def _wrong_identifier() -> bytes:
    data = bytearray(GOOD)
    data[4:8] = b"ONNX"
    return bytes(data)


def _offset_out_of_range() -> bytes:
    data = bytearray(GOOD)
    data[0:4] = (len(GOOD) + 1000).to_bytes(4, "little")  # root table past the end
    return bytes(data)


def _bad_tensor(index: int, **changes) -> bytes:
    """conv_relu with one tensor changed: a shape or type the validator refuses."""
    b = models.conv_relu()
    for k, v in changes.items():
        setattr(b.sg.tensors[index], k, v)
    return b.to_bytes()


BAD_FILES = {
    "empty file": (b"", "empty"),
    "not a tflite file": (b"\x89PNG\r\n\x1a\n" + bytes(64), "not a TFLite model"),
    "text file": (b"hello, this is not a model at all\n" * 4, "not a TFLite model"),
    "wrong identifier": (_wrong_identifier(), "file identifier"),
    "truncated at 16 bytes": (GOOD[:16], "truncated or corrupt"),
    "truncated at half": (GOOD[: len(GOOD) // 2], "truncated"),
    "root offset outside the file": (_offset_out_of_range(), "truncated or corrupt"),
    "unsupported schema version": (_unsupported_version(), "unsupported TFLite schema version 4"),
    # the validator's tensor checks (asked a column at a time, then named)
    "rank 17": (_bad_tensor(3, shape=[1] * 17), "tensor 'conv_2d_2' has rank 17"),
    "negative dimension": (_bad_tensor(3, shape=[1, 8, -8, 8]), "tensor 'conv_2d_2' has a negative dimension"),
    "impossible shape": (_bad_tensor(3, shape=[1, 65536, 65536, 8]), "tensor 'conv_2d_2' has an impossible shape"),
    "constant of the wrong size": (_bad_tensor(2, shape=[9]), "constant 'const_1' (FLOAT32[9]) needs 36 bytes"),
    "unknown tensor type": (_bad_tensor(3, dtype=99), "tensor 'conv_2d_2' has unknown type 99"),
}


def _run(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_one_error_line(err: str, *needles: str):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tflite-fuse: error: ")
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_model_file_exits_2_with_one_line_and_writes_nothing(kind, tmp_path, capsys):
    data, needle = BAD_FILES[kind]
    src = tmp_path / "in.tflite"
    src.write_bytes(data)
    dst = tmp_path / "out.tflite"
    rc, out, err = _run(capsys, [str(src), str(dst)])
    assert rc == 2
    _assert_one_error_line(err, str(src), needle)
    assert not dst.exists() and sorted(os.listdir(tmp_path)) == ["in.tflite"]
    assert src.read_bytes() == data


def test_missing_input_file(tmp_path, capsys):
    rc, _, err = _run(capsys, [str(tmp_path / "nope.tflite"), str(tmp_path / "out.tflite")])
    assert rc == 2
    _assert_one_error_line(err, "nope.tflite", "no such file")
    assert os.listdir(tmp_path) == []


def test_directory_as_input(tmp_path, capsys):
    rc, _, err = _run(capsys, [str(tmp_path), str(tmp_path / "out.tflite")])
    assert rc == 2
    _assert_one_error_line(err, "is a directory")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("where", ["missing parent", "output is a directory", "unwritable filesystem"])
def test_unwritable_output(where, tmp_path, capsys):
    src = tmp_path / "in.tflite"
    src.write_bytes(GOOD)
    dst = {"missing parent": tmp_path / "no" / "such" / "out.tflite",
           "output is a directory": tmp_path,
           "unwritable filesystem": "/proc/out.tflite"}[where]
    rc, _, err = _run(capsys, [str(src), str(dst)])
    assert rc == 2
    _assert_one_error_line(err, str(dst))
    assert sorted(os.listdir(tmp_path)) == ["in.tflite"]


def test_output_equal_to_input_needs_in_place(tmp_path, capsys):
    src = tmp_path / "in.tflite"
    src.write_bytes(GOOD)
    rc, _, err = _run(capsys, [str(src), str(tmp_path / "." / "in.tflite")])
    assert rc == 2
    _assert_one_error_line(err, "--in-place")
    assert src.read_bytes() == GOOD and os.listdir(tmp_path) == ["in.tflite"]


def test_unreadable_inputs_npz(tmp_path, capsys):
    src = tmp_path / "in.tflite"
    src.write_bytes(GOOD)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    rc, _, err = _run(capsys, [str(src), str(tmp_path / "out.tflite"), "--inputs", str(tmp_path / "bad.npz")])
    assert rc == 2
    _assert_one_error_line(err, "bad.npz")
    assert not (tmp_path / "out.tflite").exists()


def test_every_truncation_of_a_real_model_is_rejected_cleanly():
    """Cutting the file at any byte gives BadModelError (or, rarely, a model
    that still parses and validates) - never another exception."""
    from tflite_fuser import BadModelError, load

    outcomes = {"rejected": 0, "parsed": 0}
    for n in range(len(GOOD)):
        try:
            load(GOOD[:n])
            outcomes["parsed"] += 1
        except BadModelError:
            outcomes["rejected"] += 1
    assert outcomes["rejected"] >= len(GOOD) - 8


@pytest.mark.parametrize("fixture", ["tf/net2", "litert_torch/net2", "naive/net2", "quant/net1_int8"])
def test_a_real_model_cut_short_anywhere_says_truncated(fixture):
    """A download or copy cut off at any point is named for what it is, not
    reported as an opaque length or unpack error."""
    from conftest import FIXTURES
    from tflite_fuser import BadModelError, load

    data = (FIXTURES / f"{fixture}.tflite").read_bytes()
    for n in range(16, len(data), max(1, len(data) // 97)):
        with pytest.raises(BadModelError, match="truncated"):
            load(data[:n])


def test_console_script_reports_bad_input_without_traceback(tmp_path):
    src = tmp_path / "in.tflite"
    src.write_bytes(GOOD[:40])
    proc = subprocess.run([sys.executable, "-m", "tflite_fuser", str(src), str(tmp_path / "out.tflite")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    _assert_one_error_line(proc.stderr, str(src))
    assert proc.stdout == ""
    assert sorted(os.listdir(tmp_path)) == ["in.tflite"]
