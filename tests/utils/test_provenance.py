"""``debias_lm.utils.provenance``: the one version / git-commit helper (env, CHES manifest, harness, bench).

References: a package's own ``__version__`` attribute; the commit read straight from ``.git`` (HEAD -> ref file)
of a repository made here; a folder outside any checkout.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from debias_lm.utils.provenance import NOT_INSTALLED, git_commit, package_version, package_versions


def test_package_version_matches_the_module_attribute():
    import hypothesis

    assert package_version("pytest") == pytest.__version__
    assert package_versions(("hypothesis", "pytest")) == {"hypothesis": hypothesis.__version__,
                                                          "pytest": pytest.__version__}


def test_missing_distribution_is_left_out_or_labelled():
    missing = "debias-lm-no-such-dist-xyz"
    assert package_version(missing) == NOT_INSTALLED
    assert package_version(missing, default="unknown") == "unknown"
    assert package_versions(("pytest", missing)) == {"pytest": pytest.__version__}
    assert package_versions(("pytest", missing), missing=NOT_INSTALLED)[missing] == NOT_INSTALLED


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit_reads_head_and_marks_dirty_trees(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    (tmp_path / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "first")
    ref = (tmp_path / ".git" / "HEAD").read_text().split(": ")[1].strip()
    sha = (tmp_path / ".git" / ref).read_text().strip()
    assert git_commit(tmp_path) == sha
    (tmp_path / "a.txt").write_text("two\n")
    assert git_commit(tmp_path) == sha + "+dirty"
    (tmp_path / "untracked.txt").write_text("x")  # untracked files do not make a tree dirty
    (tmp_path / "a.txt").write_text("one\n")
    assert git_commit(tmp_path) == sha


def test_git_commit_outside_a_checkout_is_none(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_commit(tmp_path) is None
