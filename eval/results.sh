#!/usr/bin/env bash
# Regenerates docs/results.md: every method vs plain decoding on the embedded SmolLM2-135M-Instruct.
#   bash eval/results.sh            (about 1.5 h on a 2-core CPU; resumable: rerun to continue)
# 1. text suites x text methods (UDDIA without redo: layer_step=0, see docs/uddia.md for its cost with redo)
# 2. pope-synthetic x VLM methods (needs the biased VLM: python eval/vlm/pope_synthetic.py --out results/pope_synthetic)
# 3. vLLM overhead (the HF overhead is part of 1)
# 4. docs/results.md from the three outputs (+ eval/results_notes.md)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
BIN=.venv/bin
OUT=${OUT:-runs}
$BIN/debias-lm eval --suite toxicity,counterfactual,occupational,bbq-gender,fluency,overhead \
  --method none,nbls,uddia,debias_sampling --set uddia.layer_step=0 \
  --limit 30 --n-samples 5 --occupational-samples 5 --threads 2 --out "$OUT/results-embedded"
if [ ! -f results/pope_synthetic/model/config.json ]; then
  $BIN/python eval/vlm/pope_synthetic.py --out results/pope_synthetic
fi
$BIN/debias-lm eval --suite pope-synthetic --method none,calibration,debias_sampling,debias_sampling+calibration \
  --threads 2 --out "$OUT/results-pope"
$BIN/debias-lm bench --backend vllm --method nbls,debias_sampling --batch 1,8 --max-new-tokens 32 --repeats 3 --dtype float32 \
  --out "$OUT/results-vllm-bench.json"
$BIN/python eval/results_md.py --embedded "$OUT/results-embedded" --pope "$OUT/results-pope" \
  --vllm-bench "$OUT/results-vllm-bench.json" --out docs/results.md
