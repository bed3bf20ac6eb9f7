#!/usr/bin/env bash
# Occupational gender bias vs BLS CPS 2022 on any model: plain, the two NBLS controls, NBLS-grounded.
#   eval/occupational.sh [MODEL] [OUT_DIR] [extra debias-lm options...]
# MODEL: HF id or local path (default: the embedded SmolLM2-135M-Instruct).
set -euo pipefail
MODEL=${1:-default}
OUT=${2:-results/occupational-$(echo "$MODEL" | tr '/:' '__')}
shift $(( $# > 2 ? 2 : $# ))
exec debias-lm eval --suite occupational --model "$MODEL" --method none,nbls_instructions,nbls_shuffled,nbls \
    --probe likelihood,generation --dtype float32 --occupational-samples 8 --max-new-tokens 16 --batch-size 64 \
    --out "$OUT" "$@"
