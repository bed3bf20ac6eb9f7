"""A plain clone passes the tests: comparisons against the project's ``../shared/data`` skip, with the reason,
when that folder is absent (issue 14). Runs pytest on the two BLS reference comparisons with the reference folder
pointed at an empty directory, as in a clone that has nothing next to it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_shared_data_comparisons_skip_with_the_reason_when_absent(tmp_path):
    env = dict(os.environ, DEBIAS_LM_SHARED_DATA=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                        "tests/methods/nbls/test_nbls.py", "-k", "reference_csv or official_csv"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 skipped" in r.stdout and "failed" not in r.stdout and "error" not in r.stdout.lower()
    assert "reference data bls_cps_2022_table11.csv not found" in r.stdout
    assert "DEBIAS_LM_SHARED_DATA" in r.stdout
