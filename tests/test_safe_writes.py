"""Output files are replaced atomically: a full disk or a killed process
leaves the old file or the complete new one, never half of one, and the input
is never opened for writing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import models
from benchmarks.synth import synthetic_model
from conftest import ROOT
from tflite_fuser import load, save

OLD = b"old output, must survive a failed write"


def _cli(args: list[str], prelude: str = "", **kw) -> subprocess.CompletedProcess:
    code = textwrap.dedent(prelude) + "\nimport sys\nfrom tflite_fuser.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, **kw)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_failing_mid_file_keeps_the_old_output(tmp_path):
    """The process may not write past 64 KiB (RLIMIT_FSIZE, SIGXFSZ ignored, so
    the write fails with EFBIG the way a full disk fails with ENOSPC)."""
    src, dst = tmp_path / "in.tflite", tmp_path / "out.tflite"
    save(synthetic_model(2, 1.0), src)
    assert src.stat().st_size > 4 * 65536
    dst.write_bytes(OLD)
    proc = _cli([str(src), str(dst), "--passes", "none"], prelude="""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
    """)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "cannot write output" in proc.stderr
    assert dst.read_bytes() == OLD
    assert _leftovers(tmp_path) == []


def test_full_tmpfs_keeps_the_old_output(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a size-limited tmpfs here (needs root)")
    try:
        src = tmp_path / "in.tflite"
        save(synthetic_model(2, 1.0), src)
        dst = mnt / "out.tflite"
        dst.write_bytes(OLD)
        proc = _cli([str(src), str(dst), "--passes", "none"])
        assert proc.returncode == 2, proc.stderr
        assert "No space left on device" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert dst.read_bytes() == OLD
        assert _leftovers(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_killing_the_process_at_any_moment_leaves_old_or_new_output(tmp_path):
    """SIGKILL at a spread of moments during a 60 MB fuse: afterwards the
    destination is byte-for-byte the old file or the complete new one."""
    src, dst = tmp_path / "in.tflite", tmp_path / "out.tflite"
    save(synthetic_model(4, 60.0), src)
    good = tmp_path / "good.tflite"
    assert _cli([str(src), str(good), "-q", "--runs", "1"]).returncode == 0
    new = good.read_bytes()
    seen = {"old": 0, "new": 0}
    for delay in (0.05, 0.2, 0.4, 0.6, 0.8, 1.0, 1.3, 1.7, 2.2, 3.0):
        dst.write_bytes(OLD)
        code = "import sys\nfrom tflite_fuser.cli import main\nsys.exit(main(sys.argv[1:]))"
        proc = subprocess.Popen([sys.executable, "-c", code, str(src), str(dst), "-q", "--runs", "1"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        content = dst.read_bytes()
        assert content in (OLD, new), f"half-written output after SIGKILL at {delay} s"
        seen["old" if content == OLD else "new"] += 1
        for leftover in _leftovers(tmp_path):  # a killed process cannot clean up; only hidden temps remain
            assert leftover.startswith(".out.tflite.")
            os.unlink(tmp_path / leftover)
    assert seen["old"] > 0


def test_input_file_is_never_opened_for_writing(tmp_path):
    """The input is read-only on disk and the fuse still succeeds; --in-place
    replaces it by rename, keeping the original inode as the backup."""
    src = tmp_path / "in.tflite"
    src.write_bytes(models.conv_bn_relu().to_bytes())
    src.chmod(0o444)
    inode = src.stat().st_ino
    proc = _cli([str(src), "--in-place", "-q"])
    assert proc.returncode == 0, proc.stderr
    backup = tmp_path / "in.tflite.orig"
    assert backup.stat().st_ino == inode
    load(src)
