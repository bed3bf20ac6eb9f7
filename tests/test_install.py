"""Installing outside this repository: build the wheel, install it into a fresh virtual environment, run it.

The new environment gets the wheel with ``--no-deps`` and sees the project's dependencies through a ``.pth``
line pointing at this interpreter's site-packages (offline, no resolver). A path line in a ``.pth`` file is only
appended to ``sys.path``; ``.pth`` files inside that folder (the repository's editable install) are not run, so
the package imported there is the one from the wheel — checked, not assumed.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _data_files() -> list[str]:
    """Every non-Python file of the two packages in the source tree (what the package reads at run time)."""
    out = []
    for root in (REPO / "debias_lm", REPO / "plugins" / "vllm_debias"):
        for f in root.rglob("*"):
            if f.is_file() and f.suffix not in (".py", ".pyc") and "__pycache__" not in f.parts:
                out.append(f.relative_to(root.parent).as_posix())
    return sorted(out)


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("debias_lm", "plugins"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(dist), str(src)], cwd=src)
    wheels = list(dist.glob("debias_lm-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contains_every_data_file_and_the_plugin(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    data = _data_files()
    assert "debias_lm/data/bls_cps_2022_table11.tsv" in data and any(d.startswith("debias_lm/data/eval/") for d in data)
    missing = [d for d in data if d not in names]
    assert not missing, f"package-data in pyproject.toml misses {missing}"
    assert "vllm_debias/__init__.py" in names and "debias_lm/cli/main.py" in names
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    entries = zipfile.ZipFile(wheel).read(entry).decode()
    assert "debias-lm = debias_lm.cli.main:main" in entries
    assert "[vllm.logits_processors]" in entries  # the vLLM plugin's processors load into every engine


def test_wheel_installed_in_a_fresh_venv_runs_env_and_methods(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)])
    py = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)])
    site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "_project_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    run = tmp_path / "elsewhere"
    run.mkdir()

    check = (
        "import debias_lm, vllm_debias, json\n"
        "from debias_lm.methods.nbls import load_bls_table\n"
        "from debias_lm.evaluation.suites.common import bundled as _bundled\n"
        "from debias_lm.methods.uddia.probe import embedded_probe_path\n"
        "print(json.dumps({'debias_lm': debias_lm.__file__, 'vllm_debias': vllm_debias.__file__,\n"
        "  'bls_rows': len(load_bls_table().detailed()), 'toxicity_prompts': len(_bundled('toxicity_prompts.jsonl')),\n"
        "  'gender_pairs': len(_bundled('gender_pairs.jsonl')), 'probe': embedded_probe_path().is_file()}))\n"
    )
    import json

    info = json.loads(_run([str(py), "-c", check], cwd=run, env=env).stdout.strip().splitlines()[-1])
    for mod in ("debias_lm", "vllm_debias"):  # the wheel's copy, not this checkout
        assert Path(info[mod]).resolve().is_relative_to(Path(site).resolve()), info
    assert info["bls_rows"] > 200 and info["toxicity_prompts"] >= 100 and info["gender_pairs"] >= 30
    assert info["probe"] is True
    if importlib.util.find_spec("vllm") is not None:  # installed, the processors reach vLLM through its own loader
        load = ("import json; from vllm.v1.sample.logits_processor import _load_logitsprocs_plugins as load\n"
                "print(json.dumps([[c.__module__ + ':' + c.__qualname__, __import__('sys').modules[c.__module__]"
                ".__file__] for c in load()]))")
        got = json.loads(_run([str(py), "-c", load], cwd=run, env=env).stdout.strip().splitlines()[-1])
        from vllm_debias import LOGITS_PROCESSORS

        ours = {name: path for name, path in got if name.startswith("vllm_debias.")}
        assert sorted(ours) == sorted(LOGITS_PROCESSORS), got
        assert all(Path(p).resolve().is_relative_to(Path(site).resolve()) for p in ours.values()), ours

    exe = env_dir / ("Scripts/debias-lm.exe" if os.name == "nt" else "bin/debias-lm")
    out = _run([str(exe), "env"], cwd=run, env=env).stdout
    assert "debias-lm" in out and "0.1.0" in out and "torch" in out
    out = _run([str(exe), "methods"], cwd=run, env=env).stdout
    for name in ("identity", "nbls", "calibration", "debias_sampling", "uddia"):
        assert name in out


def test_readme_install_section_does_not_send_newcomers_to_an_unpublished_package():
    """Until debias-lm is on PyPI, "Install elsewhere" must install from the repository (``.`` or a built wheel):
    ``pip install debias-lm`` fails for a newcomer. (When it is published, this test changes with the README.)"""
    import re

    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Install elsewhere"):]
    section = section[: section.index("\n## ", 3)]
    commands = "\n".join(re.findall(r"```(?:bash)?\n(.*?)```", section, flags=re.S))  # what a reader copies
    assert not re.search(r"pip install\s+[\"']?debias-lm", commands), commands
    assert re.search(r"pip install \.", commands) and "pip wheel" in commands
