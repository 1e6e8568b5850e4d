"""CI's share of the fuzzing (issue 17): each atheris target runs briefly on the saved corpus.

Every saved input first, then mutations for a bounded count or time (whichever ends first), with the
targets' own limits (2 s and 500 MB an input). A finding fails the test and names the saved crash
file; fix it and add the input to tests/test_fuzz_regressions.py. The long runs are by hand:
`python -m fuzz.image_target -max_total_time=1800 fuzz/corpus/image` (see fuzz/__init__.py).
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip("atheris")

CORPUS = ROOT / "fuzz" / "corpus"
SECONDS = 20


@pytest.mark.parametrize("target, corpus, runs", [
    ("image_target", "image", 20_000),
    ("request_target", "request", 5_000),
    ("http_target", "http", 200_000),
    ("weights_target", "weights", 50_000),
])
def test_the_fuzz_target_finds_nothing_on_the_saved_corpus(target, corpus, runs, tmp_path):
    new_inputs = tmp_path / "new"
    new_inputs.mkdir()
    command = [sys.executable, "-m", f"fuzz.{target}", f"-runs={runs}", f"-max_total_time={SECONDS}", "-seed=1",
               f"-artifact_prefix={tmp_path}/", str(new_inputs), str(CORPUS / corpus)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 90)
    findings = sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(("crash-", "timeout-", "oom-")))
    assert result.returncode == 0 and not findings, f"{findings}\n{result.stderr[-4000:]}"
    assert "INITED" in result.stderr and "Done" in result.stderr
