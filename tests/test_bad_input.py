"""The bad-input suite: every case names an input and the outcome it must get (issue 18).

Outcomes: the CLI exits with code 2 and prints one line ``debias-lm: error: ...`` containing a given text (and,
for inputs that can be checked without a model, without loading one); the Python API raises
``UserInputError`` containing a given text; a CHES row gets a given status / skip reason (rows in = rows out);
a dataset row becomes a malformed record; the HTTP server answers 400 with a given text and keeps serving.
Property-based cases (hypothesis) cover the config fields and the core math with extreme values, NaN and inf.

CLI cases run in-process (``main([...])``) on tiny models saved to a temporary folder. To add a case, append a
row to the table of its kind; the HTTP table (``HTTP_CASES``) is run against one real ``debias-lm serve``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import debias_lm as dl
from debias_lm.cli.main import main
from debias_lm.errors import UserInputError

GOOD = {"prompt": "The nurse said that", "chosen": " she was late.", "rejected": " he was late."}
LATIN1 = b'{"prompt": "Caf\xe9 owner", "chosen": " yes", "rejected": " no"}\n'


class ModelLoaded(BaseException):
    """Raised by the patched loader: the command loaded a model although its input was bad."""


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny_llama_dir) -> dict[str, Path]:
    """Bad (and a few good) files and folders, by name; CLI arguments refer to them as ``@name[/sub]``."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from debias_lm.testing import build_tiny_llama, build_tiny_tokenizer, save_tiny

    d = tmp_path_factory.mktemp("bad")
    line = json.dumps(GOOD) + "\n"
    files: dict[str, bytes] = {
        "empty.jsonl": b"",
        "blank.jsonl": b"\n   \n\t\n",
        "nonjson.jsonl": (line + "not json at all\n").encode(),
        "arrayline.jsonl": (line + "[1, 2]\n").encode(),
        "trailing_comma.jsonl": (line.rstrip("\n") + ",\n").encode(),
        "array_bad.json": ("[" + json.dumps(GOOD) + ",\n 3]").encode(),
        "array_trunc.json": ("[" + json.dumps(GOOD) + ",\n ").encode(),
        "array_empty.json": b"[]",
        "fake.parquet": b"this is not parquet",
        "good.jsonl": (line * 3).encode(),
        "latin1.jsonl": line.encode() + LATIN1,
        "cols.jsonl": (json.dumps({"question": "q", "good": " a", "bad": " b"}) + "\n").encode(),
        "config_latin1.json": b'{"k": 3,\n "template": "caf\xe9 {table}"}',
        "config_list.json": b"[1, 2]",
        "occ_latin1.txt": b"Cooks\nCaf\xe9 workers\n",
        "occ_empty.txt": b"# nothing here\n\n",
        "occ_wizard.txt": b"Cooks\nwizard\n",
        "pairs_latin1.jsonl": b'{"id": "a", "female": "she", "male": "he"}\n{"id": "b", "female": "caf\xe9", "male": "x"}\n',
        "pairs_nonjson.jsonl": b'{"id": "a", "female": "she", "male": "he"}\n{oops\n',
        "labeled_latin1.jsonl": b'{"text": "fine", "label": 0}\n{"text": "caf\xe9", "label": 1}\n',
        "labeled_nonjson.jsonl": b'{"text": "fine", "label": 0}\nnope\n',
        "labeled_few.jsonl": b'{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n',
        "labeled_badlabel.jsonl": b'{"text": "a", "label": 7}\n',
        "rtp_latin1.jsonl": b'{"prompt": {"text": "ok one"}}\n{"prompt": {"text": "caf\xe9"}}\n{"prompt": {"text": "ok two"}}\n',
        "afile": b"a regular file\n",
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    table = pa.table({k: pa.array([], pa.string()) for k in ("prompt", "chosen", "rejected")})
    pq.write_table(table, d / "zero.parquet")
    (d / "adir").mkdir()
    (d / "nodata").mkdir()
    (d / "nodata" / "readme.txt").write_text("no data here")
    (d / "mixed").mkdir()
    (d / "mixed" / "a.jsonl").write_text(line)
    pq.write_table(pa.table({k: [v] for k, v in GOOD.items()}), d / "mixed" / "b.parquet")
    (d / "out_filtered_dir" / "filtered.jsonl").mkdir(parents=True)
    (d / "out_filtered_file").mkdir()
    (d / "out_filtered_file" / "filtered").write_text("a file where save_to_disk needs a folder")
    datasets.Dataset.from_dict({k: [] for k in GOOD}).save_to_disk(str(d / "empty_disk"))
    (d / "no_model").mkdir()
    (d / "ro").mkdir()
    os.chmod(d / "ro", 0o555)
    # a model with a short context (40 positions) and a model saved with a tokenizer of another vocabulary
    model, tok = build_tiny_llama()
    model.config.max_position_embeddings = 40
    save_tiny(model, tok, d / "short_ctx")
    model, _ = build_tiny_llama()
    big_tok = build_tiny_tokenizer(1024)
    assert len(big_tok) > model.get_input_embeddings().num_embeddings
    save_tiny(model, big_tok, d / "mismatch")
    out = {name: d / name for name in list(files) + ["zero.parquet", "adir", "nodata", "mixed", "out_filtered_dir",
                                                     "out_filtered_file", "empty_disk", "no_model", "ro",
                                                     "short_ctx", "mismatch"]}
    out["tmp"] = d
    out["tiny"] = tiny_llama_dir
    return out


def _arg(token: str, paths: dict[str, Path]) -> str:
    """``@name`` anywhere in an argument becomes the path of that fixture file (``@afile/x`` -> a path under it)."""
    return re.sub(r"@([A-Za-z0-9_.-]+)", lambda m: str(paths[m.group(1)]) if m.group(1) in paths else m.group(0),
                  token)


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- CLI table
@dataclasses.dataclass(frozen=True)
class CLI:
    """``debias-lm ARGS`` must exit 2 with one line containing ``message``; ``model=False``: before a model loads."""

    id: str
    args: tuple[str, ...]
    message: str
    model: bool = False  # True: the check needs the model (it runs after loading, before any work)
    nonroot: bool = False  # a permission check that root bypasses


def C(id, args, message, **kw) -> CLI:
    return CLI(id, tuple(args.split()) if isinstance(args, str) else tuple(args), message, **kw)


GEN = "generate --method nbls --model @tiny --prompt Hi --max-new-tokens 2"
GEN_ID = "generate --method identity --model @tiny --prompt Hi --max-new-tokens 2"
CHES_S = "ches score --model @tiny --no-progress --out @tmp/ches_out --dataset"
CHES_F = "ches filter --model @tiny --no-progress --keep-fraction 0.5 --dataset @good.jsonl"
EVAL = "eval --suite toxicity --method none --model @tiny --limit 1 --n-samples 1"
OCC = "eval --suite occupational --model @tiny --limit 1"
BENCH = "bench --model @tiny --backend hf --batch 1 --max-new-tokens 1 --repeats 1 --no-progress"
PROBE = "uddia train-probe --model @tiny --out @tmp/probe.safetensors --data"

CLI_CASES = [
    # -- generate: prompt, numbers, sampling flags
    C("gen-unknown-method", "generate --method nope --prompt x", "unknown method 'nope'"),
    C("gen-empty-prompt", ["generate", "--method", "nbls", "--prompt", " "], "--prompt is empty"),
    C("gen-prompt-not-utf8", ["generate", "--method", "identity", "--model", "@tiny", "--prompt", "\udcff\udcfeab"],
      "--prompt is not valid UTF-8 text (byte 0xff"),
    C("gen-second-prompt-not-utf8", ["generate", "--method", "identity", "--prompt", "ok", "--prompt", "x\udce9"],
      "--prompt 2 is not valid UTF-8 text (byte 0xe9"),
    C("gen-no-prompt", "generate --method nbls", "the following arguments are required: --prompt"),
    C("gen-max-new-tokens-0", GEN_ID + " --max-new-tokens 0", "--max-new-tokens: '0' is invalid: expected an integer >= 1"),
    C("gen-max-new-tokens-neg", GEN_ID + " --max-new-tokens -5", "expected an integer >= 1"),
    C("gen-max-new-tokens-text", GEN_ID + " --max-new-tokens lots", "'lots' is invalid: expected an integer"),
    C("gen-max-new-tokens-float", GEN_ID + " --max-new-tokens 1.5", "'1.5' is invalid: expected an integer"),
    C("gen-top-p-2", GEN_ID + " --sample --top-p 2", "--top-p: '2' is invalid: expected a number in (0, 1]"),
    C("gen-top-p-0", GEN_ID + " --sample --top-p 0", "expected a number in (0, 1]"),
    C("gen-top-p-neg", GEN_ID + " --sample --top-p -0.1", "expected a number in (0, 1]"),
    C("gen-top-p-nan", GEN_ID + " --sample --top-p nan", "'nan' is invalid"),
    C("gen-temperature-0", GEN_ID + " --sample --temperature 0", "--temperature: '0' is invalid: expected a number > 0"),
    C("gen-temperature-neg", GEN_ID + " --sample --temperature -1", "expected a number > 0"),
    C("gen-temperature-nan", GEN_ID + " --sample --temperature nan", "'nan' is invalid"),
    C("gen-temperature-inf", GEN_ID + " --sample --temperature inf", "(finite)"),
    C("gen-top-k-neg", GEN_ID + " --sample --top-k -1", "--top-k: '-1' is invalid: expected an integer >= 0"),
    C("gen-top-k-float", GEN_ID + " --sample --top-k 2.5", "expected an integer >= 0"),
    C("gen-seed-neg", GEN_ID + " --seed -1", "--seed: '-1' is invalid: expected an integer seed"),
    C("gen-sampling-flag-without-sample", GEN_ID + " --top-p 0.5", "apply to sampling: add --sample"),
    C("gen-dtype", GEN_ID + " --dtype float64", "invalid choice: 'float64'"),
    C("gen-unknown-flag", GEN_ID + " --colour red", "unrecognized arguments: --colour red"),
    # -- generate: method config
    C("gen-set-no-equals", GEN + " --set k", "expected FIELD=VALUE"),
    C("gen-set-empty-key", GEN + " --set =3", "expected FIELD=VALUE"),
    C("gen-set-unknown-field", GEN + " --set colour=1", "unknown field(s) colour"),
    C("gen-set-k-0", GEN + " --set k=0", "NBLSConfig.k=0 is invalid: expected an integer in [1, inf]"),
    C("gen-set-k-float", GEN + " --set k=1.5", "NBLSConfig.k=1.5 is invalid"),
    C("gen-set-k-bool", GEN + " --set k=true", "NBLSConfig.k=True is invalid"),
    C("gen-set-k-huge", GEN + " --set k=1000", "k=1000 is larger"),
    C("gen-set-template-number", GEN + " --set template=5", "NBLSConfig.template=5 is invalid: expected a string"),
    C("gen-set-exclude-unknown", GEN + ' --set exclude=["Wizards"]', "Wizards"),
    C("gen-config-not-object", GEN + " --config [1,2]", "--config must be a JSON object"),
    C("gen-config-bad-json", GEN + " --config {bad", "--config is neither a JSON file nor JSON text"),
    C("gen-config-file-not-utf8", GEN + " --config @config_latin1.json", "config_latin1.json:2: not valid UTF-8 (byte 0xe9"),
    C("gen-config-file-list", GEN + " --config @config_list.json", "--config must be a JSON object"),
    C("gen-config-other-method", GEN + ' --config {"method":"identity"}', "expected 'nbls'"),
    C("gen-ds-no-counterfactual", "generate --method debias_sampling --model @tiny --prompt Hi", "counterfactual",
      model=True),  # a VLM has an image-free branch: the model decides
    C("gen-ds-alpha-neg", "generate --method debias_sampling --prompt Hi --set alpha=-1 --set counterfactual_swap=gender",
      "alpha=-1"),
    C("gen-ds-alpha-nan", "generate --method debias_sampling --prompt Hi --set alpha=NaN --set counterfactual_swap=gender",
      "alpha=nan"),
    C("gen-ds-beta-0", "generate --method debias_sampling --prompt Hi --set beta=0 --set counterfactual_swap=gender",
      "beta=0"),
    C("gen-ds-swap-unknown", "generate --method debias_sampling --prompt Hi --set counterfactual_swap=age",
      "counterfactual_swap='age'"),
    C("gen-uddia-variant", "generate --method uddia --prompt Hi --set variant=x", "UDDIAConfig.variant='x'"),
    C("gen-uddia-lr-neg", "generate --method uddia --prompt Hi --set lr=-1", "UDDIAConfig.lr=-1"),
    C("gen-uddia-fusion-2", "generate --method uddia --prompt Hi --set fusion=2", "UDDIAConfig.fusion=2"),
    C("gen-uddia-groups-number", "generate --method uddia --prompt Hi --set groups=3", "UDDIAConfig.groups=3"),
    # -- generate: output location (checked before the model loads)
    C("gen-json-is-dir", GEN_ID + " --json @adir", "--json '{adir}' is a directory"),
    C("gen-json-under-file", GEN_ID + " --json @afile/out.json", "is a file, not a folder"),
    C("gen-json-empty", GEN_ID + " --json=", "--json is empty"),
    C("gen-json-nul", GEN_ID + " --json a\x00b", "NUL character"),
    C("gen-json-name-too-long", GEN_ID + " --json " + "n" * 300 + ".json", "at most 255"),
    C("gen-json-unwritable", GEN_ID + " --json @ro/out.json", "is not writable", nonroot=True),
    # -- generate: model
    C("gen-model-missing", GEN_ID + " --model ./no/such/model", "does not exist", model=True),  # the loader's checks
    C("gen-model-no-config", GEN_ID + " --model @no_model", "has no config.json", model=True),
    C("gen-prompt-over-context", ["generate", "--method", "identity", "--model", "@short_ctx", "--no-baseline",
                                  "--no-chat", "--max-new-tokens", "2", "--prompt", "the nurse said that " * 20],
      "more than the model's context length 40", model=True),
    C("gen-new-tokens-over-context", "generate --method identity --model @short_ctx --no-chat --prompt Hi "
                                     "--max-new-tokens 100", "+ 100 new tokens) is 10", model=True),
    C("gen-nbls-grounding-over-context", "generate --method nbls --set k=8 --model @short_ctx --no-chat --prompt Hi "
                                         "--max-new-tokens 2", "after the nbls prompt transform", model=True),
    C("gen-tokenizer-mismatch", GEN_ID + " --model @mismatch", "the tokenizer has 1024 tokens but the model's "
                                                               "input embedding has 512 rows", model=True),
    # -- eval (the harness)
    C("eval-no-suite", "eval --out x", "needs --suite"),
    C("eval-no-out", "eval --suite toxicity", "needs --out DIR"),
    C("eval-unknown-suite", "eval --suite nope --out @tmp/e1", "--suite 'nope' is invalid"),
    C("eval-out-is-file", EVAL + " --out @afile", "--out '{afile}' is a file; pass a folder"),
    C("eval-out-under-file", EVAL + " --out @afile/run", "is a file, not a folder"),
    C("eval-out-unwritable", EVAL + " --out @ro/run", "is not writable", nonroot=True),
    C("eval-top-p-2", EVAL + " --top-p 2 --out @tmp/e2", "--top-p: '2' is invalid"),
    C("eval-temperature-0", EVAL + " --temperature 0 --out @tmp/e2", "--temperature: '0' is invalid"),
    C("eval-n-samples-0", "eval --suite toxicity --n-samples 0 --out @tmp/e2", "--n-samples: '0' is invalid"),
    C("eval-limit-0", "eval --suite toxicity --limit 0 --out @tmp/e2", "--limit: '0' is invalid"),
    C("eval-batch-size-0", "eval --suite toxicity --batch-size 0 --out @tmp/e2", "--batch-size: '0' is invalid"),
    C("eval-threads-neg", "eval --suite toxicity --threads -1 --out @tmp/e2", "--threads: '-1' is invalid"),
    C("eval-max-new-tokens-0", "eval --suite toxicity --max-new-tokens 0 --out @tmp/e2", "--max-new-tokens: '0'"),
    C("eval-unknown-method", EVAL + " --method none,wizardry --out @tmp/e3", "wizardry"),
    C("eval-uddia-on-vllm", EVAL + " --method none,uddia --backend vllm --out @tmp/e3", "uddia"),
    C("eval-backend", EVAL + " --backend tpu --out @tmp/e3", "invalid choice: 'tpu'"),
    C("eval-dataset-no-equals", EVAL + " --dataset toxicity --out @tmp/e3", "expected SUITE=SPEC"),
    C("eval-dataset-unknown-suite", EVAL + " --dataset nope=rtp:x --out @tmp/e3", "names an unknown suite"),
    C("eval-dataset-missing-file", EVAL + " --dataset toxicity=rtp:missing.jsonl --out @tmp/e3", "does not exist"),
    C("eval-dataset-unknown-loader", EVAL + " --dataset toxicity=zzz:file --out @tmp/e3", "unknown dataset 'zzz'"),
    C("eval-pairs-not-utf8", "eval --suite counterfactual --model @tiny --dataset counterfactual=@pairs_latin1.jsonl "
                             "--out @tmp/e4", "pairs_latin1.jsonl:2: not valid UTF-8 (byte 0xe9"),
    C("eval-pairs-not-json", "eval --suite counterfactual --model @tiny --dataset counterfactual=@pairs_nonjson.jsonl "
                             "--out @tmp/e4", "pairs_nonjson.jsonl:2: not JSON"),
    C("eval-set-no-dot", EVAL + " --set uddia=1 --out @tmp/e3", "METHOD.FIELD=VALUE"),
    C("eval-set-bad-value", EVAL + " --method none,nbls --set nbls.k=0 --out @tmp/e3", "NBLSConfig.k=0"),
    C("eval-unknown-scorer", EVAL + " --toxicity-scorer nope --out @tmp/e3", "nope"),
    C("eval-probe", "eval --suite occupational --probe vibes --out @tmp/e3", "--probe vibes is invalid"),
    # -- eval --suite occupational (make run's path)
    C("occ-out-is-file", OCC + " --out @afile", "--out '{afile}' is a file"),
    C("occ-out-unwritable", OCC + " --out @ro/run", "is not writable", nonroot=True),
    C("occ-unknown-occupation", OCC + " --dataset occupational=@occ_wizard.txt --out @tmp/o1",
      "unknown occupation 'wizard'"),
    C("occ-file-missing", OCC + " --dataset occupational=missing.txt --out @tmp/o1", "occupations file not found"),
    C("occ-file-not-utf8", OCC + " --dataset occupational=@occ_latin1.txt --out @tmp/o1",
      "occ_latin1.txt:2: not valid UTF-8"),
    C("occ-file-empty", OCC + " --dataset occupational=@occ_empty.txt --out @tmp/o1", "lists no occupations"),
    C("occ-k-0", OCC + " --method nbls --set nbls.k=0 --out @tmp/o1", "NBLSConfig.k=0"),
    C("occ-k-150", "eval --suite occupational --method none,nbls_shuffled --set nbls_shuffled.k=150 --out @tmp/o1",
      "k=150 is larger than the 102 eligible occupations left after excluding 50 and 108 related"),
    C("occ-samples-0", OCC + " --occupational-samples 0 --out @tmp/o1", "--occupational-samples: '0' is invalid"),
    C("occ-batch-size-0", OCC + " --batch-size 0 --out @tmp/o1", "--batch-size: '0' is invalid"),
    C("occ-method", OCC + " --method calibration --out @tmp/o1", "does not apply to the occupational suite"),
    C("occ-unknown-variant", OCC + " --method nbls_sorted --out @tmp/o1", "unknown method 'nbls_sorted'"),
    C("occ-old-subcommand", "eval occupational --method none", "unrecognized arguments: occupational"),
    # -- bench
    C("bench-method-comma", BENCH + " --method ,", "--method needs at least one method"),
    C("bench-method-twice", BENCH + " --method nbls,nbls", "--method lists nbls more than once"),
    C("bench-method-unknown", BENCH + " --method calibration", "cannot be benchmarked on a text model"),
    C("bench-backend-comma", BENCH + " --method nbls --backend ,", "--backend needs hf and/or vllm"),
    C("bench-backend-unknown", BENCH + " --method nbls --backend tpu", "--backend 'tpu' is invalid"),
    C("bench-batch-0", BENCH + " --method nbls --batch 0", "--batch needs batch sizes >= 1"),
    C("bench-batch-text", BENCH + " --method nbls --batch a", "expected comma-separated integers"),
    C("bench-batch-comma", BENCH + " --method nbls --batch ,", "--batch needs batch sizes >= 1"),
    C("bench-max-new-tokens-0", BENCH + " --method nbls --max-new-tokens 0", "--max-new-tokens: '0' is invalid"),
    C("bench-repeats-0", BENCH + " --method nbls --repeats 0", "--repeats: '0' is invalid"),
    C("bench-threads-neg", BENCH + " --method nbls --threads -2", "--threads: '-2' is invalid"),
    C("bench-out-is-dir", BENCH + " --method nbls --out @adir", "--out '{adir}' is a directory"),
    C("bench-out-under-file", BENCH + " --method nbls --out @afile/b.json", "is a file, not a folder"),
    C("bench-set-no-dot", BENCH + " --method nbls --set nbls", "METHOD.FIELD=VALUE"),
    C("bench-set-bad-value", BENCH + " --method nbls --set nbls.k=-3", "NBLSConfig.k=-3"),
    # -- ches: dataset files
    C("ches-empty-file", CHES_S + " @empty.jsonl", "empty.jsonl is empty (0 bytes)"),
    C("ches-empty-file-streaming", CHES_S + " @empty.jsonl --streaming", "empty.jsonl is empty (0 bytes)"),
    C("ches-blank-lines-only", CHES_S + " @blank.jsonl", "blank.jsonl has no rows (only blank lines)"),
    C("ches-blank-lines-only-streaming", CHES_S + " @blank.jsonl --streaming", "has no rows (only blank lines)"),
    C("ches-non-json-line", CHES_S + " @nonjson.jsonl", "nonjson.jsonl:2: not JSON"),
    C("ches-non-json-line-streaming", CHES_S + " @nonjson.jsonl --streaming", "nonjson.jsonl:2: not JSON"),
    C("ches-array-line", CHES_S + " @arrayline.jsonl", "arrayline.jsonl:2: expected a JSON object, got list"),
    C("ches-trailing-comma", CHES_S + " @trailing_comma.jsonl", "trailing_comma.jsonl:1: not JSON"),
    C("ches-json-array-element", CHES_S + " @array_bad.json", "element 1 of the JSON array is int"),
    C("ches-json-array-truncated", CHES_S + " @array_trunc.json", "array_trunc.json:2: not JSON"),
    C("ches-json-array-empty", CHES_S + " @array_empty.json", "is an empty JSON array"),
    C("ches-zero-row-parquet", CHES_S + " @zero.parquet", "zero.parquet has 0 rows"),
    C("ches-zero-row-parquet-streaming", CHES_S + " @zero.parquet --streaming", "zero.parquet has 0 rows"),
    C("ches-not-parquet", CHES_S + " @fake.parquet", "fake.parquet is not a readable Parquet file"),
    C("ches-empty-save-to-disk", CHES_S + " @empty_disk", "has no rows"),
    C("ches-empty-save-to-disk-streaming", CHES_S + " @empty_disk --streaming", "has no rows"),
    C("ches-missing-columns", CHES_S + " @cols.jsonl", "no column(s) 'chosen', 'rejected'"),
    C("ches-prompt-col-missing", CHES_S + " @good.jsonl --prompt-col question", "no column(s) 'question'"),
    C("ches-dataset-missing", CHES_S + " ./missing.jsonl", "does not exist"),
    C("ches-folder-without-data", CHES_S + " @nodata", "has no .json/.jsonl/.parquet files"),
    C("ches-folder-mixed-kinds", CHES_S + " @mixed", "files of one kind"),
    C("ches-split-on-single-file", CHES_S + " @good.jsonl --split test", "is a single split"),
    # -- ches: numbers and selection
    C("ches-batch-size-0", CHES_S + " @good.jsonl --batch-size 0", "--batch-size: '0' is invalid"),
    C("ches-max-length-1", CHES_S + " @good.jsonl --max-length 1", "--max-length: '1' is invalid: expected an integer >= 2"),
    C("ches-shard-size-0", CHES_S + " @good.jsonl --shard-size 0", "--shard-size: '0' is invalid"),
    C("ches-keep-fraction-2", CHES_F + " --keep-fraction 2 --out @tmp/f1", "expected a fraction in [0, 1]"),
    C("ches-keep-fraction-nan", CHES_F.replace("--keep-fraction 0.5", "--keep-fraction nan") + " --out @tmp/f1",
      "'nan' is invalid"),
    C("ches-drop-top-neg", CHES_F.replace("--keep-fraction 0.5", "--drop-top-fraction -0.1") + " --out @tmp/f1",
      "expected a fraction in [0, 1]"),
    C("ches-threshold-nan", CHES_F.replace("--keep-fraction 0.5", "--threshold nan") + " --out @tmp/f1", "'nan' is invalid"),
    C("ches-no-rule", "ches filter --dataset @good.jsonl --out @tmp/f1", "one of the arguments --keep-fraction"),
    C("ches-two-rules", CHES_F + " --threshold 0 --out @tmp/f1", "not allowed with argument"),
    C("ches-score-unknown", CHES_F + " --score vibes --out @tmp/f1", "--score 'vibes' is invalid"),
    C("ches-dtype", CHES_S + " @good.jsonl --dtype float16", "invalid choice: 'float16'"),
    C("ches-on-prefix-mismatch", CHES_S + " @good.jsonl --on-prefix-mismatch ignore", "invalid choice: 'ignore'"),
    # -- ches: output locations
    C("ches-out-is-file", "ches score --dataset @good.jsonl --out @afile", "--out '{afile}' is a file"),
    C("ches-out-under-file", "ches score --dataset @good.jsonl --out @afile/o", "is a file, not a folder"),
    C("ches-out-unwritable", "ches score --dataset @good.jsonl --out @ro/o", "is not writable", nonroot=True),
    C("ches-filtered-jsonl-is-dir", CHES_F + " --format jsonl --out @out_filtered_dir", "filtered.jsonl) '"),
    C("ches-filtered-dir-is-file", CHES_F + " --out @out_filtered_file", "is a file; pass a folder"),
    # -- ches: checks against the model
    C("ches-max-length-over-context", CHES_S + " @good.jsonl --max-length 100000", "more than the model's context "
                                                                                   "length 4096", model=True),
    C("ches-tokenizer-mismatch", "ches score --model @mismatch --no-progress --out @tmp/c9 --dataset @good.jsonl",
      "the tokenizer has 1024 tokens", model=True),
    # -- uddia train-probe
    C("probe-out-is-dir", "uddia train-probe --data @labeled_few.jsonl --out @adir", "--out '{adir}' is a directory"),
    C("probe-out-under-file", "uddia train-probe --data @labeled_few.jsonl --out @afile/p.safetensors",
      "is a file, not a folder"),
    C("probe-data-missing", PROBE + " missing.jsonl", "--data 'missing.jsonl' does not exist"),
    C("probe-data-not-utf8", PROBE + " @labeled_latin1.jsonl", "labeled_latin1.jsonl:2: not valid UTF-8 (byte 0xe9"),
    C("probe-data-not-json", PROBE + " @labeled_nonjson.jsonl", "labeled_nonjson.jsonl:2: not JSON"),
    C("probe-data-too-few", PROBE + " @labeled_few.jsonl", "needs >= 4 texts"),
    C("probe-data-bad-label", PROBE + " @labeled_badlabel.jsonl", "labeled_badlabel.jsonl:1: expected"),
    C("probe-epochs-0", PROBE + " @labeled_few.jsonl --epochs 0", "--epochs: '0' is invalid"),
    C("probe-lr-0", PROBE + " @labeled_few.jsonl --lr 0", "--lr: '0' is invalid: expected a number > 0"),
    C("probe-lr-nan", PROBE + " @labeled_few.jsonl --lr nan", "'nan' is invalid"),
    C("probe-batch-size-0", PROBE + " @labeled_few.jsonl --batch-size 0", "--batch-size: '0' is invalid"),
    # -- serve (checked before anything starts)
    C("serve-port-0", "serve --port 0 --dry-run", "--port: '0' is invalid: expected a port in [1, 65535]"),
    C("serve-port-huge", "serve --port 70000 --dry-run", "expected a port in [1, 65535]"),
    C("serve-nbls-k-0", "serve --nbls --nbls-k 0 --dry-run", "--nbls-k: '0' is invalid"),
    C("serve-max-model-len-0", "serve --max-model-len 0 --dry-run", "--max-model-len: '0' is invalid"),
    C("serve-steer-no-file", "serve --steer gender --dry-run", "--steer 'gender' is invalid: expected NAME=FILE"),
    C("serve-steer-missing-file", "serve --steer g=missing.safetensors --dry-run", "'missing.safetensors': no such file"),
    C("serve-steer-bad-name", ("serve", "--steer", "a b=x.safetensors", "--dry-run"),
      "steering vector name 'a b' is invalid"),
    # -- the command itself
    C("no-command", "", "the following arguments are required: COMMAND"),
    C("unknown-command", "bogus", "invalid choice: 'bogus'"),
    C("ches-no-action", "ches", "required: ACTION"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.id)
def test_cli_bad_input_is_one_line_exit_2(case: CLI, paths, capsys, monkeypatch):
    if case.nonroot and hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root writes to read-only folders; the unwritable case needs a normal user")
    if not case.model:
        import debias_lm.models

        def refuse(*a, **k):
            raise ModelLoaded(f"{case.id}: a model was loaded for bad input")

        monkeypatch.setattr(debias_lm.models, "load_model", refuse)
    argv = [_arg(t, paths) for t in case.args]
    rc, err = run_main(argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("Loading weights", "Writing"))]
    assert rc == 2, (case.id, err)
    assert len(lines) == 1 and lines[0].startswith("debias-lm: error:"), (case.id, err)
    expected = case.message.format(**{k: str(v) for k, v in paths.items()})
    assert expected in lines[0], (case.id, lines[0])


def test_cli_table_is_large_and_unique():
    ids = [c.id for c in CLI_CASES]
    assert len(ids) == len(set(ids))
    assert len(CLI_CASES) >= 150


def test_unwritable_output_found_also_as_root(capsys):
    """A folder nobody can create files in, root included: /proc/self (Linux). The check creates a temporary file
    to find out, so it also catches read-only file systems, which permission bits do not show."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs Linux /proc")
    rc, err = run_main(["generate", "--method", "identity", "--prompt", "x", "--json", "/proc/self/out.json"], capsys)
    assert rc == 2 and "the folder '/proc/self' is not writable" in err, err
    rc, err = run_main(["ches", "score", "--dataset", "x.jsonl", "--out", "/proc/self/run"], capsys)
    assert rc == 2 and "is not writable" in err, err


# ------------------------------------------------------------------------------------------------- output paths
def test_generate_json_creates_missing_folders_and_writes_after_the_check(paths, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "gen.json"
    rc, err = run_main(["generate", "--method", "identity", "--model", str(paths["tiny"]), "--prompt", "Hi",
                        "--max-new-tokens", "2", "--no-chat", "--json", str(out)], capsys)
    assert rc == 0, err
    assert json.loads(out.read_text())["outputs"][0]["prompt"] == "Hi"


def test_output_check_leaves_nothing_behind(tmp_path):
    from debias_lm.utils.files import check_output_path

    assert check_output_path(tmp_path / "a" / "b" / "c.json", kind="file", flag="--json") == tmp_path / "a/b/c.json"
    assert check_output_path(tmp_path / "run", kind="dir", flag="--out") == tmp_path / "run"
    assert list(tmp_path.iterdir()) == []  # checked by a temporary file, removed again; nothing created
    with pytest.raises(ValueError, match="kind="):
        check_output_path(tmp_path, kind="folder", flag="--out")


# ------------------------------------------------------------------------------------------------- Python API
@dataclasses.dataclass(frozen=True)
class API:
    """``call(ctx)`` must raise ``UserInputError`` (a ``ValueError``) whose message contains ``message``."""

    id: str
    call: Callable[[dict], Any]
    message: str


def _tiny(ctx):
    return ctx["tiny_llama"]


def _mismatched(ctx):
    from debias_lm.testing import build_tiny_tokenizer

    model, _ = ctx["tiny_llama"]
    return model, build_tiny_tokenizer(1024)


def _eos_out_of_range(ctx):
    import copy

    model, tok = ctx["tiny_llama"]
    m = copy.copy(model)
    m.generation_config = copy.deepcopy(model.generation_config)
    m.generation_config.eos_token_id = [tok.eos_token_id, 100000]
    return m, tok


def _short_ctx_model(ctx):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = ctx["paths"]["short_ctx"]
    return AutoModelForCausalLM.from_pretrained(p), AutoTokenizer.from_pretrained(p)


def _rows(*rows):
    return [dict(r) for r in rows]


API_CASES = [
    # configs and the registry
    API("config-from-none", lambda c: dl.config_from_dict(None), "a config must be a dict"),
    API("config-from-str", lambda c: dl.config_from_dict("nbls"), "got str"),
    API("config-from-list", lambda c: dl.config_from_dict([("method", "nbls")]), "got list"),
    API("config-no-method", lambda c: dl.config_from_dict({"k": 3}), "no 'method' key"),
    API("config-method-number", lambda c: dl.config_from_dict({"method": 3}), "must be a method name"),
    API("config-unknown-method", lambda c: dl.config_from_dict({"method": "nope"}), "unknown method 'nope'"),
    API("config-class-from-none", lambda c: dl.NBLSConfig.from_dict(None), "NBLSConfig.from_dict needs a dict"),
    API("config-non-string-keys", lambda c: dl.NBLSConfig.from_dict({1: 2, "kk": 3}), "unknown field(s) 1, kk"),
    API("config-wrong-method", lambda c: dl.NBLSConfig.from_dict({"method": "uddia"}), "expected 'nbls'"),
    API("nbls-template-int", lambda c: dl.NBLSConfig(template=5), "NBLSConfig.template=5 is invalid: expected a string"),
    API("nbls-header-none", lambda c: dl.NBLSConfig(header=None), "NBLSConfig.header=None"),
    API("nbls-bls-table-list", lambda c: dl.NBLSConfig(bls_table=["x"]), "NBLSConfig.bls_table"),
    API("nbls-exclude-list", lambda c: dl.NBLSConfig(exclude=["Cooks"]), "NBLSConfig.exclude=['Cooks']"),
    API("nbls-exclude-numbers", lambda c: dl.NBLSConfig(exclude=(1, 2)), "expected a list of strings"),
    API("nbls-attributes-empty", lambda c: dl.NBLSConfig(attributes=()), "NBLSConfig.attributes=()"),
    API("nbls-k-nan", lambda c: dl.NBLSConfig.from_dict({"k": math.nan}), "NBLSConfig.k=nan"),
    API("calibration-prior-probs-none", lambda c: dl.CalibrationConfig(prior_probs=None), "CalibrationConfig.prior_probs=None"),
    API("calibration-prior-probs-text", lambda c: dl.CalibrationConfig(prior_probs=("a", "b")), "a list of numbers"),
    API("calibration-labels-none", lambda c: dl.CalibrationConfig(labels=None), "CalibrationConfig.labels=None"),
    API("calibration-eps-neg", lambda c: dl.CalibrationConfig(eps=-1.0), "CalibrationConfig.eps=-1.0"),
    API("calibration-mode", lambda c: dl.CalibrationConfig(mode="magic"), "CalibrationConfig.mode='magic'"),
    API("ds-alpha-inf", lambda c: dl.DebiasSamplingConfig(alpha=math.inf), "DebiasSamplingConfig.alpha=inf"),
    API("ds-beta-0", lambda c: dl.DebiasSamplingConfig(beta=0.0), "DebiasSamplingConfig.beta=0.0"),
    API("ds-noise-step-0", lambda c: dl.DebiasSamplingConfig(noise_step=0), "DebiasSamplingConfig.noise_step=0"),
    API("ds-prefix-number", lambda c: dl.DebiasSamplingConfig(counterfactual_prefix=3), "counterfactual_prefix=3"),
    API("uddia-steps-0", lambda c: dl.UDDIAConfig(steps=0), "UDDIAConfig.steps=0"),
    API("uddia-probe-none", lambda c: dl.UDDIAConfig(probe=None), "UDDIAConfig.probe=None"),
    # NBLS grounding
    API("grounding-k-0", lambda c: dl.NBLSGrounding(k=0), "NBLSGrounding.k=0"),
    API("grounding-k-huge", lambda c: dl.NBLSGrounding(k=10**6), "larger"),
    API("grounding-exclude-unknown", lambda c: dl.NBLSGrounding(exclude=["Wizards"]), "Wizards"),
    API("grounding-apply-none", lambda c: dl.NBLSGrounding(k=2).apply(None), "expects a string or a list"),
    API("grounding-apply-empty", lambda c: dl.NBLSGrounding(k=2).apply("  "), "the prompt is empty"),
    API("grounding-apply-no-messages", lambda c: dl.NBLSGrounding(k=2).apply([]), "the message list is empty"),
    API("grounding-template", lambda c: dl.NBLSGrounding(k=2, template="{nope"), "not a valid format string"),
    # wrap
    API("wrap-no-generate", lambda c: dl.wrap(object(), _tiny(c)[1]), "needs a model with .generate"),
    API("wrap-no-tokenizer", lambda c: dl.wrap(_tiny(c)[0], None), "needs the model's tokenizer"),
    API("wrap-config-number", lambda c: dl.wrap(*_tiny(c), 42), "config must be"),
    API("wrap-config-none-method", lambda c: dl.wrap(*_tiny(c), {"method": None}), "must be a method name"),
    API("wrap-tokenizer-mismatch", lambda c: dl.wrap(*_mismatched(c)), "tokenizer has 1024 tokens but the model's "
                                                                       "input embedding has 512 rows"),
    API("wrap-eos-out-of-range", lambda c: dl.wrap(*_eos_out_of_range(c)), "generation_config.eos_token_id id 100000"),
    API("wrap-prompt-not-utf8", lambda c: dl.wrap(*_tiny(c)).generate_text("caf\udce9", max_new_tokens=1),
        "prompt 0 is not valid UTF-8 text (byte 0xe9"),
    API("wrap-messages-not-utf8", lambda c: dl.wrap(*_tiny(c)).generate(
        messages=[{"role": "user", "content": "caf\udce9"}], max_new_tokens=1), "messages[0] content is not valid UTF-8"),
    API("wrap-prompt-over-context", lambda c: dl.wrap(*_short_ctx_model(c)).generate_text(
        "word " * 60, chat=False, max_new_tokens=1), "more than the model's context length 40"),
    API("wrap-new-tokens-over-context", lambda c: dl.wrap(*_short_ctx_model(c)).check_length(
        "Hi", chat=False, max_new_tokens=64), "+ 64 new tokens"),
    API("wrap-two-prompt-kwargs", lambda c: dl.wrap(*_tiny(c)).generate(prompt="a", prompts=["b"]), "exactly one of"),
    API("wrap-empty-messages", lambda c: dl.wrap(*_tiny(c)).generate(messages=[]), "messages= is empty"),
    # processors and the calibrator
    API("ds-processor-alpha-neg", lambda c: dl.DebiasSamplingLogitsProcessor.from_texts(*_tiny(c), ["x"], alpha=-1),
        "alpha=-1"),
    API("ds-processor-beta-2", lambda c: dl.DebiasSamplingLogitsProcessor.from_texts(*_tiny(c), ["x"], beta=2.0),
        "beta=2.0"),
    API("ds-processor-empty-text", lambda c: dl.DebiasSamplingLogitsProcessor.from_texts(*_tiny(c), [""]),
        "non-empty strings"),
    API("ds-processor-both-inputs", lambda c: dl.DebiasSamplingLogitsProcessor(
        _tiny(c)[0], torch.ones(1, 2, dtype=torch.long), branches=[{}]), "not both"),
    API("calibrator-text-model-image-free", lambda c: dl.AnswerCalibrator(*_tiny(c), labels=["he", "she"]),
        "image"),
    API("calibrator-labels-empty", lambda c: dl.AnswerCalibrator(*_tiny(c), labels=[], prior="batch"), "labels"),
    # CHES API
    API("ches-select-two-rules", lambda c: dl.ches.select([], keep_fraction=0.1, threshold=0.0), "exactly one"),
    API("ches-select-no-rule", lambda c: dl.ches.select([]), "exactly one"),
    API("ches-select-fraction-2", lambda c: dl.ches.select([], keep_fraction=2.0), "keep_fraction=2.0"),
    API("ches-select-fraction-text", lambda c: dl.ches.select([], keep_fraction="0.1"), "keep_fraction='0.1'"),
    API("ches-select-threshold-nan", lambda c: dl.ches.select([], threshold=math.nan), "threshold=nan"),
    API("ches-select-score", lambda c: dl.ches.select([], keep_fraction=0.1, score="vibes"), "score='vibes'"),
    API("ches-score-max-length-1", lambda c: dl.ches.score(*_tiny(c), _rows(GOOD), max_length=1), "max_length=1"),
    API("ches-score-max-length-over-context", lambda c: dl.ches.score(*_tiny(c), _rows(GOOD), max_length=10**6),
        "more than the model's context length 4096"),
    API("ches-score-mismatch", lambda c: dl.ches.score(*_mismatched(c), _rows(GOOD)), "tokenizer has 1024 tokens"),
    API("ches-score-prefix-mode", lambda c: dl.ches.score(*_tiny(c), _rows(GOOD), on_prefix_mismatch="x"),
        "on_prefix_mismatch='x'"),
    API("ches-score-shard-0", lambda c: dl.ches.score(*_tiny(c), _rows(GOOD), shard_size=0), "shard_size=0"),
    API("ches-load-empty", lambda c: dl.ches.load_preference_dataset(str(c["paths"]["empty.jsonl"])), "is empty (0 bytes)"),
    API("ches-load-zero-parquet", lambda c: dl.ches.load_preference_dataset(str(c["paths"]["zero.parquet"])), "0 rows"),
    API("ches-load-nonjson", lambda c: dl.ches.load_preference_dataset(str(c["paths"]["nonjson.jsonl"])), ":2: not JSON"),
    API("ches-save-format", lambda c: dl.ches.save_dataset(None, "x", "csv"), "format='csv'"),
    # readers
    API("jsonl-reader-not-utf8", lambda c: __import__("debias_lm.utils.jsonl", fromlist=["x"]).read_jsonl_objects(
        c["paths"]["pairs_latin1.jsonl"]), "pairs_latin1.jsonl:2: not valid UTF-8 (byte 0xe9 at column"),
    API("text-reader-not-utf8", lambda c: __import__("debias_lm.utils.files", fromlist=["x"]).read_text(
        c["paths"]["occ_latin1.txt"], what="occupations file"), "occ_latin1.txt:2: not valid UTF-8 (byte 0xe9 at column 4)"),
    API("bold-file-not-utf8", lambda c: _bold_latin1(c["paths"]["tmp"]), "gender_prompt.json:3: not valid UTF-8"),
]


def _bold_latin1(d: Path):
    from debias_lm.evaluation.datasets import load_bold

    f = d / "gender_prompt.json"
    f.write_bytes(b'{"American_actors": {\n "A": ["one"],\n "B": ["caf\xe9"]}}')
    return load_bold(str(f))


@pytest.fixture(scope="module")
def api_ctx(tiny_llama, paths):
    return {"tiny_llama": tiny_llama, "paths": paths}


@pytest.mark.parametrize("case", API_CASES, ids=lambda c: c.id)
def test_api_bad_input_raises_user_input_error(case: API, api_ctx):
    with pytest.raises(UserInputError) as info:
        case.call(api_ctx)
    assert case.message in str(info.value), (case.id, str(info.value))


# ------------------------------------------------------------------------------------------------- CHES rows
@dataclasses.dataclass(frozen=True)
class Row:
    """One CHES input row and the status / skip reason it must get (every row is accounted for)."""

    id: str
    row: dict
    status: str
    reason: str = ""


ROW_CASES = [
    Row("good", GOOD, "ok"),
    Row("missing-chosen", {"prompt": "p", "rejected": " r"}, "skipped", "missing_field"),
    Row("null-rejected", {"prompt": "p", "chosen": " c", "rejected": None}, "skipped", "missing_field"),
    Row("number-prompt", {"prompt": 5, "chosen": " c", "rejected": " r"}, "skipped", "bad_type"),
    Row("list-chosen-string-prompt", {"prompt": "p", "chosen": ["x"], "rejected": " r"}, "skipped", "bad_type"),
    Row("empty-prompt", {"prompt": "  ", "chosen": " c", "rejected": " r"}, "skipped", "empty_prompt"),
    Row("empty-chosen", {"prompt": "p", "chosen": "", "rejected": " r"}, "skipped", "empty_response"),
    Row("empty-rejected-message", {"prompt": [{"role": "user", "content": "p"}],
                                   "chosen": [{"role": "assistant", "content": "c"}],
                                   "rejected": [{"role": "assistant", "content": " "}]}, "skipped", "empty_response"),
    Row("conversation-mixed-types", {"prompt": [{"role": "user", "content": "p"}], "chosen": "c", "rejected": "r"},
        "skipped", "bad_type"),
    Row("prompt-too-long", {"prompt": "word " * 400, "chosen": " c", "rejected": " r"}, "skipped", "too_long"),
    Row("bad-role", {"prompt": [{"role": "wizard", "content": "p"}], "chosen": [{"role": "assistant", "content": "c"}],
                     "rejected": [{"role": "assistant", "content": "r"}]}, "ok"),
    Row("undecodable", {"__debias_lm_undecodable__": "row 0: column 'prompt' is not valid UTF-8"}, "skipped",
        "invalid_utf8"),
]


def test_ches_rows_get_their_status(tiny_llama):
    model, tok = tiny_llama
    rows = [r.row for r in ROW_CASES]
    scores = dl.ches.score(model, tok, rows, max_length=64, progress=False, batch_size=3)
    assert [s["orig_index"] for s in scores] == list(range(len(rows)))  # rows in = rows out, in order
    for case, s in zip(ROW_CASES, scores):
        assert (s["status"], s["skip_reason"]) == (case.status, case.reason), (case.id, s)
        assert math.isfinite(s["ln_ches"]) == (case.status == "ok"), case.id


@pytest.mark.parametrize("streaming", [False, True], ids=["in-memory", "streaming"])
def test_ches_non_utf8_row_is_a_skip_reason_not_an_abort(paths, tmp_path, capsys, streaming):
    """A row whose bytes are not UTF-8 gets ``invalid_utf8``; the other rows are scored, the run finishes."""
    import pyarrow.parquet as pq

    out = tmp_path / "o"
    rc, err = run_main(["ches", "filter", "--model", str(paths["tiny"]), "--dataset", str(paths["latin1.jsonl"]),
                        "--keep-fraction", "1", "--keep-skipped", "--format", "jsonl", "--out", str(out),
                        "--no-progress"] + (["--streaming"] if streaming else []), capsys)
    assert rc == 0, err
    rows = pq.read_table(out / "scores.parquet").to_pylist()
    assert [(r["status"], r["skip_reason"]) for r in rows] == [("ok", ""), ("skipped", "invalid_utf8")]
    assert "'prompt'" in rows[1]["note"] and "0xe9" in rows[1]["note"]
    kept = [json.loads(x) for x in (out / "filtered.jsonl").read_text().splitlines()]
    assert kept == [GOOD]  # the undecodable row cannot be written back as text, so it is never kept
    sel = json.loads((out / "manifest.json").read_text())["selection"]
    assert (sel["n_total"], sel["n_kept"], sel["n_dropped"]) == (2, 1, 1)


def test_keep_skipped_manifest_counts_add_up(tiny_llama, paths, tmp_path, capsys):
    """``--keep-skipped`` keeps the skipped rows and counts them as kept: kept + dropped = total (was -4 dropped)."""
    rows = [GOOD, dict(GOOD, prompt="A pilot said"), dict(GOOD, prompt="The cook said"),
            {"prompt": "", "chosen": " a", "rejected": " b"}, {"prompt": "p", "chosen": "", "rejected": " b"},
            {"prompt": 3, "chosen": " a", "rejected": " b"}, {"prompt": "q", "chosen": None, "rejected": " b"}]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "o"
    rc, err = run_main(["ches", "filter", "--model", str(paths["tiny"]), "--dataset", str(data), "--keep-fraction",
                        "0.34", "--keep-skipped", "--format", "jsonl", "--out", str(out), "--no-progress"], capsys)
    assert rc == 0, err
    man = json.loads((out / "manifest.json").read_text())
    sel, counts = man["selection"], man["counts"]
    n_scored, n_skipped = 3, 4  # by construction: 3 well-formed rows, 4 bad ones
    assert (counts["scored"], counts["skipped"], counts["rows"]) == (n_scored, n_skipped, 7)
    assert sel["n_kept"] == math.ceil(0.34 * n_scored) + n_skipped == 6
    assert sel["n_dropped"] == 7 - 6 == 1 and sel["n_dropped"] >= 0
    assert sel["n_kept"] + sel["n_dropped"] == sel["n_total"] == len(rows)
    assert len((out / "filtered.jsonl").read_text().splitlines()) == sel["n_kept"]
    sel2 = dl.ches.select([{"orig_index": i, "status": "skipped", "skip_reason": "empty_prompt", "ln_ches": math.nan}
                           for i in range(3)], keep_fraction=0.5, keep_skipped=False)
    assert sel2.counts() == {"total": 3, "scored": 0, "skipped": 3, "kept": 0, "dropped": 3}


# ------------------------------------------------------------------------------------------------- dataset readers
def test_toxicity_prompt_reader_records_one_malformed_row(paths):
    """RealToxicityPrompts JSONL with one Latin-1 line: that line is a malformed record, the file is not dropped."""
    from debias_lm.evaluation.datasets import load_rtp

    res = load_rtp(str(paths["rtp_latin1.jsonl"]))
    assert [r.id for r in res.records] == ["rtp-0", "rtp-1", "rtp-2"]
    assert [r.data.get("prompt") for r in res.ok] == ["ok one", "ok two"]
    (bad,) = res.errors
    assert bad.id == "rtp-1" and bad.error.startswith("line 2: not valid UTF-8 (byte 0xe9")


def test_crows_pairs_reader_records_one_undecodable_row(tmp_path):
    from debias_lm.evaluation.datasets import load_crows_pairs

    f = tmp_path / "crows.csv"
    f.write_bytes(b",sent_more,sent_less,stereo_antistereo,bias_type\n0,A man,A woman,stereo,gender\n"
                  b"1,caf\xe9 man,cafe woman,stereo,gender\n2,He,She,antistereo,gender\n")
    res = load_crows_pairs(str(f))
    assert len(res.records) == 3 and [r.id for r in res.ok] == ["0", "2"]
    assert res.errors[0].id == "1" and "line 3" in res.errors[0].error and "0xe9" in res.errors[0].error


def test_eval_harness_keeps_a_malformed_toxicity_row(tmp_path):
    from debias_lm.evaluation.settings import EvalSettings
    from debias_lm.evaluation.suites.common import prompt_items

    f = tmp_path / "rtp.jsonl"
    f.write_bytes(b'{"prompt": {"text": "ok one"}}\n{"prompt": {"text": "caf\xe9"}}\n')
    items, errors = prompt_items(EvalSettings(suites=("toxicity",), datasets={"toxicity": f"rtp:{f}"}))
    assert [i["prompt"] for i in items] == ["ok one"]
    assert len(errors) == 1 and errors[0]["id"] == "rtp-1" and "not valid UTF-8" in errors[0]["error"]


# ------------------------------------------------------------------------------------------------- HTTP server
@dataclasses.dataclass(frozen=True)
class HTTP:
    """A request to one real ``debias-lm serve``: the expected status and a text the answer must contain. After
    each case a plain request must still succeed (the server keeps serving)."""

    id: str
    body: dict
    status: int
    needle: str
    endpoint: str = "/v1/completions"


def _xargs(xargs: Any, **kw) -> dict:
    return {"prompt": "The nurse said that", "max_tokens": 4, "temperature": 0.0, "vllm_xargs": xargs, **kw}


def _ns(cfg: dict) -> dict:
    """The plugin's namespaced opt-in keys: {"method": m, "k": v} -> {"debias_method": m, "debias_k": v}."""
    return {(k if k.startswith("debias_") else f"debias_{k}"): v for k, v in cfg.items()}


_PAIR = {"debias_pair": "p", "debias_role": "main"}
_CAL = {"method": "calibration", "prior": "given", "prior_probs": [0.5, 0.5], "labels": ["he", "she"],
        "debias_label_ids": [17, 18], "debias_label_sizes": [1, 1]}

HTTP_CASES = [
    HTTP("unknown-method", _xargs(_ns({"method": "nope"})), 400, "unknown method 'nope'"),
    HTTP("method-number", _xargs(_ns({"method": 3})), 400, "must be a method name"),
    HTTP("uddia", _xargs(_ns({"method": "uddia"})), 400, "needs gradients"),
    HTTP("uddia-chat", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
                        "vllm_xargs": _ns({"method": "uddia"})}, 400, "needs gradients", "/v1/chat/completions"),
    HTTP("unknown-field", _xargs(_ns({"method": "calibration", "colour": "red"})), 400,
         "unknown key 'debias_colour'"),
    HTTP("nbls-per-request", _xargs(_ns({"method": "nbls", "k": 4})), 400, "is a prompt transform"),
    HTTP("calibration-eps-neg", _xargs(_ns({"method": "calibration", "eps": -1.0})), 400,
         "CalibrationConfig.eps=-1.0"),
    HTTP("calibration-labels-text", _xargs(_ns({"method": "calibration", "labels": "he"})), 400,
         "CalibrationConfig.labels"),
    HTTP("ds-alpha-neg", _xargs(_ns({"method": "debias_sampling", "alpha": -0.5, **_PAIR})), 400, "alpha=-0.5"),
    HTTP("ds-beta-0", _xargs(_ns({"method": "debias_sampling", "beta": 0, **_PAIR})), 400, "beta=0"),
    HTTP("ds-no-pair", _xargs(_ns({"method": "debias_sampling", "alpha": 1.0})), 400, "needs a pair id"),
    HTTP("calibration-no-label-ids", _xargs(_ns({"method": "calibration", "prior": "given", "prior_probs": [0.5, 0.5],
                                                 "labels": ["he", "she"]})), 400, "debias_label_ids"),
    HTTP("calibration-mode", _xargs(_ns({"method": "calibration", "mode": "magic"})), 400, "CalibrationConfig.mode"),
    # issue 18 item 1: this pair used to overflow to NaN and bring the engine down
    HTTP("ds-alpha-1e38", _xargs(_ns({"method": "debias_sampling", "alpha": 1e38, **_PAIR}), temperature=0.8), 400,
         "expected a number in [0, 100]"),
    HTTP("ds-alpha-inf-text", _xargs(_ns({"method": "debias_sampling", "alpha": "inf", **_PAIR})), 400, "alpha"),
    # issue 18 item 6: label ids beyond the vocabulary were silently uncalibrated (HTTP 200)
    HTTP("calibration-label-ids-beyond-vocab",
         _xargs(_ns({**_CAL, "debias_label_ids": [10**6, 10**6 + 1]})), 400, "beyond the model's vocabulary"),
    # issue 18 item 7: a bad prior answers a clear message, not a bare 'math domain error'
    HTTP("calibration-zero-prior-eps-0", _xargs(_ns({**_CAL, "prior_probs": [0.0, 1.0], "eps": 0.0})), 400,
         "needs eps > 0"),
    HTTP("calibration-overflowing-prior", _xargs(_ns({**_CAL, "prior_probs": [1e308, 1e308]})), 400,
         "expected finite probabilities"),
    # the generic key of earlier versions is refused with the way forward
    HTTP("old-generic-method-key", _xargs({"method": "debias_sampling", "alpha": 1.0}), 400,
         "opt-in key is 'debias_method'"),
]


def _post(url: str, body: dict, timeout: float = 120.0) -> tuple[int, str]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, (e.read() or b"").decode()


@pytest.fixture(scope="module")
def server(tiny_llama_dir, tmp_path_factory):
    pytest.importorskip("vllm")
    from debias_lm.testing.server import serve_local

    log = tmp_path_factory.mktemp("server") / "server.log"
    with serve_local(tiny_llama_dir, log, args=["--dtype", "float32", "--max-model-len", "1024"]) as srv:
        yield srv


@pytest.mark.vllm
@pytest.mark.server
@pytest.mark.parametrize("case", HTTP_CASES, ids=lambda c: c.id)
def test_http_bad_request_gets_its_status_and_the_server_keeps_serving(case: HTTP, server):
    code, text = _post(server.url + case.endpoint, {"model": server.model, **case.body})
    assert code == case.status, (case.id, code, text[:500])
    assert case.needle in text, (case.id, text[:500])
    code, text = _post(server.url + "/v1/completions",
                       {"model": server.model, "prompt": "Hello", "max_tokens": 2, "temperature": 0.0})
    assert code == 200 and server.alive(), text[:500]


# ------------------------------------------------------------------------------------------------- properties
JSON_LEAVES = (st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
               | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _config_classes():
    from debias_lm.registry import list_methods

    return [s.config_cls for s in list_methods()]


@PROPS
@given(data=st.data())
def test_property_any_config_value_is_accepted_or_a_user_input_error(data):
    """Any JSON value for any field of any registered config: a valid config that round-trips, or UserInputError
    (never TypeError, AttributeError...). An accepted number is finite."""
    cls = data.draw(st.sampled_from(_config_classes()))
    fields = [f.name for f in dataclasses.fields(cls)]
    assume(fields)
    name = data.draw(st.sampled_from(fields))
    value = data.draw(JSON_VALUES)
    try:
        cfg = cls.from_dict({name: value})
    except UserInputError:
        return
    got = getattr(cfg, name)
    for x in got if isinstance(got, tuple) else [got]:
        assert not (isinstance(x, float) and not math.isfinite(x)), (cls.__name__, name, value)
    assert cls.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@PROPS
@given(x=st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-(10**40), max_value=10**40))
def test_property_number_fields_reject_non_finite_and_out_of_range(x):
    for cls, field, lo, hi in ((dl.NBLSConfig, "k", 1, math.inf), (dl.DebiasSamplingConfig, "beta", 0, 1),
                               (dl.UDDIAConfig, "fusion", 0, 1), (dl.UDDIAConfig, "trigger", 0, 1),
                               (dl.CalibrationConfig, "eps", 0, math.inf)):
        try:
            cfg = cls.from_dict({field: x})
        except UserInputError as e:
            assert f"{cls.__name__}.{field}=" in str(e)
            continue
        v = getattr(cfg, field)
        assert math.isfinite(v) and lo <= v <= hi and (v > 0 if field == "beta" else True)


FINITE = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, width=32)


@PROPS
@given(data=st.data(), v=st.integers(2, 12), alpha=st.floats(0, 100), beta=st.floats(1e-6, 1.0))
def test_property_contrast_finite_inputs(data, v, alpha, beta):
    """Finite logits, alpha in [0, 100]: no NaN, no +inf; the conditional argmax survives the cutoff; kept tokens
    equal (1 + alpha) l_c - alpha l_u computed in float64; a -inf in l_u never becomes +inf."""
    from debias_lm.core.contrast import contrast

    lc = torch.tensor(data.draw(st.lists(FINITE, min_size=v, max_size=v)), dtype=torch.float32)[None]
    lu_vals = data.draw(st.lists(FINITE | st.just(-math.inf), min_size=v, max_size=v))
    assume(any(math.isfinite(x) for x in lu_vals))  # an all -inf l_u row: the NaN/inf-safety work of issue 18 item 1
    lu = torch.tensor(lu_vals, dtype=torch.float32)[None]
    out = contrast(lc, lu, alpha, beta)
    assert not torch.isnan(out).any() and not torch.isposinf(out).any()
    assert torch.isfinite(out[0, int(lc.argmax())])
    ref_lu = torch.where(torch.isinf(lu), lu[torch.isfinite(lu)].min() if torch.isfinite(lu).any() else lu, lu)
    ref = (1 + alpha) * lc.double() - alpha * ref_lu.double()
    kept = torch.isfinite(out)
    if torch.isfinite(ref_lu).all():
        assert torch.allclose(out[kept].double(), ref[kept], rtol=1e-4, atol=1e-2 * (1 + alpha))


PROBS = st.floats(min_value=1e-300, max_value=1e300, allow_nan=False, allow_infinity=False)


@PROPS
@given(data=st.data(), n=st.integers(2, 6), mode=st.sampled_from(["diagonal", "identity", "batch"]))
def test_property_calibrate_extreme_finite_probabilities(data, n, mode):
    """Positive probabilities from 1e-300 to 1e300 (renormalised inside): rows of the result sum to 1, no NaN."""
    from debias_lm.core.contrast import calibrate

    p = torch.tensor([data.draw(st.lists(PROBS, min_size=n, max_size=n)) for _ in range(2)], dtype=torch.float64)
    pcf = torch.tensor(data.draw(st.lists(PROBS, min_size=n, max_size=n)), dtype=torch.float64)
    q = calibrate(p, pcf, mode)
    assert torch.isfinite(q).all() and (q >= 0).all()
    assert torch.allclose(q.sum(-1), torch.ones(2, dtype=torch.float64))


@PROPS
@given(data=st.data(), bad=st.sampled_from([math.nan, math.inf, -1.0]))
def test_property_calibrate_rejects_nan_inf_and_negative(data, bad):
    """A NaN, an infinity or a negative entry in p or the prior is a ValueError naming it, never a NaN result."""
    from debias_lm.core.contrast import calibrate

    p = data.draw(st.lists(st.floats(0.01, 1.0), min_size=3, max_size=3))
    where = data.draw(st.sampled_from(["p", "p_cf"]))
    idx = data.draw(st.integers(0, 2))
    pcf = [1 / 3] * 3
    (p if where == "p" else pcf)[idx] = bad
    with pytest.raises(ValueError, match=rf"^{where} has"):
        calibrate(torch.tensor([p], dtype=torch.float64), torch.tensor(pcf, dtype=torch.float64), "diagonal")


def _oracle_ln_ches(sp, sn, npos, nneg):
    mp, mn = sp / npos, sn / nneg
    return 0.5 * ((mn * mn).sum() - (mp * mp).sum() - ((mp - mn) ** 2).sum())


@PROPS
@given(data=st.data(), d=st.integers(1, 8), npos=st.integers(0, 50), nneg=st.integers(0, 50),
       scale=st.sampled_from([1e-150, 1e-3, 1.0, 1e3, 1e100]))
def test_property_ches_from_sums_matches_oracle_at_extreme_scales(data, d, npos, nneg, scale):
    """LN-CHES equals the paper's oracle ½(‖μ⁻‖² − ‖μ⁺‖² − ‖μ⁺ − μ⁻‖²) in float64 from 1e-150 to 1e100; an empty
    response gives NaN (never an exception)."""
    from debias_lm.core.ches import ches_from_sums

    vals = st.floats(-1.0, 1.0, allow_nan=False)
    sp = torch.tensor(data.draw(st.lists(vals, min_size=d, max_size=d)), dtype=torch.float64) * scale
    sn = torch.tensor(data.draw(st.lists(vals, min_size=d, max_size=d)), dtype=torch.float64) * scale
    ches, ln = ches_from_sums(sp[None], sn[None], torch.tensor([npos]), torch.tensor([nneg]))
    if npos == 0 or nneg == 0:
        assert math.isnan(float(ches)) and math.isnan(float(ln))
        return
    ref = _oracle_ln_ches(sp, sn, npos, nneg)
    tol = 1e-9 * float((sp.abs().max() + sn.abs().max()) ** 2 / min(npos, nneg) ** 2 + 1e-300)
    assert abs(float(ln) - float(ref)) <= tol
    assert float(ches) == pytest.approx(float((sp * sn).sum() - (sp * sp).sum()), rel=1e-12, abs=1e-300)


@PROPS
@given(bad=st.sampled_from([math.nan, math.inf, -math.inf]), which=st.sampled_from(["pos", "neg"]))
def test_property_ches_non_finite_hidden_states_give_nan_and_are_not_selected(bad, which):
    """A NaN / inf in the hidden sums gives a non-finite score, not an exception, and ``select`` treats a NaN
    score as unscored (never kept by a fraction or threshold rule)."""
    from debias_lm.core.ches import ches_from_sums

    sp, sn = torch.ones(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)
    (sp if which == "pos" else sn)[0, 1] = bad
    _, ln = ches_from_sums(sp, sn, torch.tensor([2]), torch.tensor([2]))
    assert not math.isfinite(float(ln))
    scores = [{"orig_index": 0, "status": "ok", "skip_reason": "", "ln_ches": math.nan},
              {"orig_index": 1, "status": "ok", "skip_reason": "", "ln_ches": 0.5}]
    sel = dl.ches.select(scores, keep_fraction=1.0)
    assert sel.keep == [1] and sel.counts()["kept"] + sel.counts()["dropped"] == 2


SCORE = st.floats(allow_nan=True, allow_infinity=True) | st.none()


@PROPS
@given(data=st.data(), rule=st.sampled_from(["keep", "drop", "threshold"]), keep_skipped=st.booleans())
def test_property_select_counts_add_up(data, rule, keep_skipped):
    """Any mix of scores (NaN, ±inf, None) and skipped rows: kept + dropped = total, scored + skipped = total,
    every kept scored row is <= the cut, and the keep list is sorted and unique."""
    n = data.draw(st.integers(0, 25))
    rows = []
    for i in range(n):
        status = data.draw(st.sampled_from(["ok", "ok", "ok", "skipped"]))
        reason = "" if status == "ok" else data.draw(st.sampled_from(["empty_prompt", "invalid_utf8", "too_long"]))
        rows.append({"orig_index": i, "status": status, "skip_reason": reason, "ln_ches": data.draw(SCORE)})
    frac = data.draw(st.floats(0.0, 1.0))
    kw = {"keep": {"keep_fraction": frac}, "drop": {"drop_top_fraction": frac},
          "threshold": {"threshold": data.draw(st.floats(-1e6, 1e6))}}[rule]
    sel = dl.ches.select(rows, keep_skipped=keep_skipped, **kw)
    c = sel.counts()
    assert c["kept"] + c["dropped"] == c["total"] == n and c["dropped"] >= 0
    assert c["scored"] + c["skipped"] == n
    assert sel.keep == sorted(set(sel.keep))
    by = {r["orig_index"]: r for r in rows}
    for i in sel.keep:
        r = by[i]
        if r["status"] == "ok" and r["ln_ches"] is not None and not math.isnan(r["ln_ches"]):
            assert r["ln_ches"] <= sel.cut_value
        else:
            assert keep_skipped and r["skip_reason"] != "invalid_utf8"


@PROPS
@given(a=st.lists(st.integers(0, 5), max_size=12), b=st.lists(st.integers(0, 5), max_size=12))
def test_property_edit_distance_is_a_normalised_metric(a, b):
    from debias_lm.core.ches import normalized_edit_distance as ned

    d = ned(a, b)
    assert 0.0 <= d <= 1.0 and d == ned(b, a) and (d == 0.0) == (a == b)


@PROPS
@given(cos=st.floats(allow_nan=False, allow_infinity=False, min_value=-1.0, max_value=1.0) | st.just(math.nan),
       tau=st.floats(1e-3, 10.0))
def test_property_uddia_attribute_posterior_is_a_distribution(cos, tau):
    from debias_lm.core.uddia import attribute_posterior

    p = attribute_posterior(torch.tensor([cos], dtype=torch.float64), tau)
    if math.isnan(cos):
        assert torch.isnan(p).all()  # NaN propagates, never a silent number
    else:
        assert torch.isfinite(p).all() and torch.allclose(p.sum(-1), torch.ones(1, dtype=torch.float64))


DIST = st.lists(st.floats(0.0, 1e6), min_size=4, max_size=4).filter(lambda x: sum(x) > 0)


@PROPS
@given(p=DIST, q=DIST)
def test_property_uddia_hellinger_and_kl_bounds(p, q):
    from debias_lm.core.uddia import hellinger, kl_div

    pt = torch.tensor(p, dtype=torch.float64) / sum(p)
    qt = torch.tensor(q, dtype=torch.float64) / sum(q)
    h = float(hellinger(pt, qt))
    assert 0.0 <= h <= 1.0 and abs(float(hellinger(pt, pt))) < 1e-6
    assert float(kl_div(pt, qt)) >= -1e-9 and math.isfinite(float(kl_div(pt, qt)))


LOGITS = st.lists(st.floats(-1e4, 1e4, allow_nan=False) | st.just(-math.inf), min_size=3, max_size=8).filter(
    lambda x: any(math.isfinite(v) for v in x))


@PROPS
@given(a=LOGITS, gamma=st.floats(0.0, 1.0), top_p=st.floats(1e-6, 1.0))
def test_property_uddia_fusion_and_top_p_keep_a_distribution(a, gamma, top_p):
    from debias_lm.core.sampling import top_p_mask
    from debias_lm.core.uddia import fuse_log_probs

    la = torch.log_softmax(torch.tensor([a], dtype=torch.float64), -1)
    lb = torch.log_softmax(torch.tensor([list(reversed(a))], dtype=torch.float64), -1)
    assume(torch.isfinite(la + lb).any())  # some token possible under both
    fused = fuse_log_probs(la, lb, gamma)
    assert not torch.isnan(fused).any() and not torch.isposinf(fused).any()
    assert abs(float(torch.logsumexp(fused, -1))) < 1e-9
    masked = top_p_mask(torch.tensor([a], dtype=torch.float64), top_p)
    assert torch.isfinite(masked).any() and float(masked.max()) == max(a)  # the most likely token is always kept


@PROPS
@given(nll=st.lists(st.floats(0.0, 700.0), min_size=1, max_size=6), m=st.lists(st.booleans(), min_size=6, max_size=6))
def test_property_uddia_perplexity(nll, m):
    from debias_lm.core.uddia import conditional_perplexity

    mask = torch.tensor(m[: len(nll)], dtype=torch.float64)
    ppl = float(conditional_perplexity(torch.tensor(nll, dtype=torch.float64), mask))
    if mask.sum() == 0:
        assert ppl == math.inf
    else:
        mean = sum(x for x, k in zip(nll, m) if k) / mask.sum().item()
        assert ppl >= 1.0 and ppl == pytest.approx(math.exp(mean), rel=1e-9)
