#!/usr/bin/env bash
# The UDDIA effect run as measured for docs/uddia.md (resumable: rerun to continue). ~1 h on 2 shared cores.
set -e
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
N=${N_SAMPLES:-4}
nice -n 10 $PY eval/uddia/run_effect.py --suite toxicity --methods plain,t,u --n-samples $N --prompts-per-batch 10 --limit 50
nice -n 10 $PY eval/uddia/run_effect.py --suite gender --methods plain,b,u --n-samples $N --prompts-per-batch 10
nice -n 10 $PY eval/uddia/run_effect.py --suite toxicity --methods plain,t,u --n-samples $N --prompts-per-batch 10
