"""Measure the occupational gender bias of any causal LM against U.S. BLS shares, with and without NBLS.

    python examples/occupational_bias.py                                   # embedded model
    python examples/occupational_bias.py --model meta-llama/Llama-3.2-1B-Instruct --out runs/llama

The same thing from the shell:

    debias-lm eval occupational --model M --method none,nbls_instructions,nbls_shuffled,nbls \
        --probe likelihood,generation --out DIR
"""

import argparse

import debias_lm as dl
from debias_lm.eval.occupational import evaluate_occupational
from debias_lm.eval.report import run_occupational_suite

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="default")
parser.add_argument("--out", default=None, help="write JSON, report.md and a scatter plot here")
args = parser.parse_args()

model, tok = dl.load_model(args.model)

# One probe, one method, a handful of occupations: a result object with per-occupation p_female and metrics.
res = evaluate_occupational(model, tok, method="none", probe="likelihood",
                            occupations=["Registered nurses", "Electricians", "Lawyers", "Cashiers"])
for row in res.occupations:
    print(f"{row['occupation']:<22} BLS {row['bls_women']:5.1f}%   model {100 * row['p_female']:5.1f}%")
print(res.metrics)

# The comparison on the default 50 held-out occupations with NBLS's two controls (the wording without figures,
# and the same lines with the figures permuted across occupations), likelihood probe only, printed as a table.
run_occupational_suite(model, tok, methods=["none", "nbls_instructions", "nbls_shuffled", "nbls"],
                       probes=["likelihood"], occupations=None, model_name=args.model, out_dir=args.out)
