#!/usr/bin/env bash
# Occupational gender bias vs BLS CPS 2022, plain vs NBLS-grounded, on any model.
#   eval/occupational.sh [MODEL] [OUT_DIR] [extra debias-lm options...]
# MODEL: HF id or local path (default: the embedded SmolLM2-135M-Instruct).
set -euo pipefail
MODEL=${1:-default}
OUT=${2:-results/occupational-$(echo "$MODEL" | tr '/:' '__')}
shift $(( $# > 2 ? 2 : $# ))
exec debias-lm eval occupational --model "$MODEL" --method none,nbls --probe likelihood,generation \
    --dtype bfloat16 --n-samples 10 --max-new-tokens 16 --batch-size 16 --out "$OUT" "$@"
