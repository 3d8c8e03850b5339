"""The library as deployment scripts call it: the README's snippet, pasted
into a file with no ``if __name__ == "__main__"`` guard, piped to ``python -``,
passed to ``python -c``, or run from a thread. Verification runs in a child
process; that child must never re-import the caller's main module (as
multiprocessing's ``spawn`` does, re-running an unguarded script)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from conftest import FIXTURES, ROOT


def readme_library_snippet() -> str:
    """The first python block under the README's "## Library" heading, verbatim."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Library\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def workdir(tmp_path):
    """A folder holding ``model.tflite``, the name the README's snippet uses
    (a model with something to fuse, so the snippet verifies a rewrite)."""
    (tmp_path / "model.tflite").write_bytes((FIXTURES / "naive" / "net1.tflite").read_bytes())
    return tmp_path


def _python(args, workdir, **kw):
    return subprocess.run([sys.executable, *args], cwd=workdir, capture_output=True, text=True, timeout=300, **kw)


def _assert_snippet_ran(proc, workdir):
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "RuntimeError" not in proc.stderr
    assert "{'CONV_2D': 1}" in proc.stdout  # the snippet prints the fused op counts
    assert (workdir / "model.fused.tflite").exists() and (workdir / "out.tflite").exists()


def test_readme_snippet_runs_as_an_unguarded_script(workdir):
    (workdir / "deploy.py").write_text(readme_library_snippet())
    _assert_snippet_ran(_python(["deploy.py"], workdir), workdir)


def test_readme_snippet_runs_piped_to_python_stdin(workdir):
    _assert_snippet_ran(_python(["-"], workdir, input=readme_library_snippet()), workdir)


def test_readme_snippet_runs_from_python_c(workdir):
    _assert_snippet_ran(_python(["-c", readme_library_snippet()], workdir), workdir)


def test_fuse_runs_from_a_thread_of_an_unguarded_script(workdir):
    (workdir / "threaded.py").write_text(textwrap.dedent("""
        import threading
        import tflite_fuser

        results = []
        t = threading.Thread(target=lambda: results.append(tflite_fuser.fuse("model.tflite", "out.tflite")))
        t.start()
        t.join()
        print("ok" if results and results[0].ok and results[0].verification is not None else "failed")
    """))
    proc = _python(["threaded.py"], workdir)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    assert (workdir / "out.tflite").exists()


def test_the_child_does_not_import_the_callers_main_module(workdir):
    """A script with a side effect at import time runs it exactly once."""
    (workdir / "count.py").write_text(textwrap.dedent("""
        import tflite_fuser
        with open("runs.txt", "a") as f:
            f.write("x")
        assert tflite_fuser.fuse("model.tflite", "out.tflite").verification.ok
    """))
    proc = _python(["count.py"], workdir)
    assert proc.returncode == 0, proc.stderr
    assert (workdir / "runs.txt").read_text() == "x"
