"""The engine's named steering vectors: ``NAME=FILE`` specs, the checked files, the per-layer tables.

An engine with steering serves a fixed set of vector files, each under a name (``debias-lm serve --steer
gender=g.safetensors --steer tox=t.safetensors``). The set travels to every worker as one JSON string in the
model's HF config (``hf_overrides={"debias_steer_vectors": ...}``), so it is part of the config vLLM hashes for
its compile cache. The frontend, which judges requests at admission, learns it from the environment variable
``VLLM_DEBIAS_STEER_VECTORS`` (the same JSON; ``debias-lm serve`` sets it) or from the engines built in this
process (:func:`announce`).

Tables (worker): per layer ``l``, ``table[l]`` is ``[1 + 2V, hidden]`` float32: row 0 zeros (plain tokens), rows
``1..V`` the vectors ``v_l`` (``add``), rows ``V+1..2V`` the unit directions ``v_l / |v_l|`` (``ablate``); a layer a
file does not hold has zero rows. Bias-site files (``site_kind = "uddia_sites"``, distilled UDDIA offsets) fill
per-site tables ``sites[name]`` ``[1 + 2V, width]`` the same way (``add`` rows only) and zero rows of the residual
tables; residual files leave the site tables' rows zero. One index per token thus serves both kinds.

Every file's content is hashed into the engine arguments (``debias_steer_digest``), so vLLM's compile cache (keyed
by the HF config) never mixes engines whose files differ, and the worker refuses files changed since.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence

from debias_lm.errors import UserInputError
from debias_lm.methods.steer.vllm import VectorInfo

ENV = "VLLM_DEBIAS_STEER_VECTORS"
HF_KEY = "debias_steer_vectors"
DIGEST_KEY = "debias_steer_digest"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# HF model_type -> vLLM architecture whose decoder layers return (hidden, residual), the stream being their sum
ARCHITECTURES = {"llama": "LlamaForCausalLM"}


def alias(arch: str) -> str:
    """The steer-capable architecture name registered for a vLLM architecture."""
    return "DebiasSteer" + arch


def parse_specs(specs: Mapping[str, str] | Sequence[str]) -> dict[str, str]:
    """``{name: file}`` from a mapping or ``NAME=FILE`` strings; names checked, files resolved (shipped short
    names like ``toxicity`` allowed as FILE), each name once."""
    from debias_lm.methods.steer.vllm import resolve_vectors

    items: list[tuple[str, str]] = []
    if isinstance(specs, Mapping):
        items = [(str(k), str(v)) for k, v in specs.items()]
    else:
        for spec in specs:
            name, sep, path = str(spec).partition("=")
            if not sep or not path:
                raise UserInputError(f"--steer {spec!r} is invalid: expected NAME=FILE (e.g. gender=gender.safetensors)")
            items.append((name, path))
    if not items:
        raise UserInputError("steering needs at least one NAME=FILE vector file")
    out: dict[str, str] = {}
    for name, path in items:
        if not _NAME.fullmatch(name):
            raise UserInputError(f"steering vector name {name!r} is invalid: use 1-64 letters, digits, '_', '.', '-' "
                                 "(starting with a letter or digit)")
        if name in out:
            raise UserInputError(f"steering vector name {name!r} is given twice")
        out[name] = os.path.abspath(resolve_vectors(path))
    return out


def encode(files: Mapping[str, str]) -> str:
    return json.dumps(dict(sorted(files.items())), sort_keys=True)


def digest(files: Mapping[str, str]) -> str:
    """sha256 over the names and the bytes of the files (what the engine will load)."""
    import hashlib

    h = hashlib.sha256()
    for name, path in sorted(files.items()):
        h.update(name.encode() + b"\0")
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:32]


def decode(raw: str, where: str) -> dict[str, str]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        raise UserInputError(f"{where} is not a JSON object of name -> vector file") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise UserInputError(f"{where} is not a JSON object of name -> vector file")
    return data


def load_files(files: Mapping[str, str]) -> dict:
    """``{name: SteerFile}``, every file checked (format, NaN, ...), residual kind, and all for one model shape."""
    from debias_lm.utils.steer_file import SteerFile

    loaded = {name: SteerFile.load(path) for name, path in files.items()}
    first = None
    for name, f in loaded.items():
        shape = (f.meta["model_type"], f.meta["hidden_size"], f.meta["num_layers"], f.meta["model_fingerprint"])
        if first is None:
            first = (name, shape)
        elif shape != first[1]:
            raise UserInputError(f"--steer {name} and --steer {first[0]} were built for different models "
                                 f"({shape[:3]} vs {first[1][:3]}); one engine serves one model")
    return loaded


_INFO_CACHE: dict[tuple, dict[str, VectorInfo]] = {}


def infos(files: Mapping[str, str]) -> dict[str, VectorInfo]:
    """What admission needs (layers) for each name; files are read again only when they change."""
    key = tuple(sorted((n, p, *_stamp(p)) for n, p in files.items()))
    hit = _INFO_CACHE.get(key)
    if hit is None:
        hit = {}
        for name, f in load_files(files).items():
            depth = int(f.meta["num_layers"])
            layers = tuple(f.layers) if f.site_kind == "residual" else tuple(range(depth + 1))
            hit[name] = VectorInfo(layers=layers, num_layers=depth, path=f.path, site_kind=f.site_kind)
        if len(_INFO_CACHE) > 64:
            _INFO_CACHE.clear()
        _INFO_CACHE[key] = hit
    return hit


def _stamp(path: str) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        return (None, None)
    return (st.st_mtime_ns, st.st_size)


def architecture_for(files: Mapping[str, str], model_type: str | None = None) -> str:
    """The steer alias for the model the files were built for (``model_type`` overrides the files' own)."""
    loaded = load_files(files)
    mt = model_type or next(iter(loaded.values())).meta["model_type"]
    arch = ARCHITECTURES.get(mt)
    if arch is None:
        raise UserInputError(f"vLLM steering supports model types {', '.join(sorted(ARCHITECTURES))}; the vectors "
                             f"are for {mt!r} (use the HF path: debias_lm.wrap(model, tok, SteerConfig(...)))")
    return alias(arch)


def check_model_config(files: Mapping[str, str], hf_config) -> None:
    """Hidden size and layer count of the served model against the files (before the engine starts)."""
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    hidden, depth = int(text.hidden_size), int(text.num_hidden_layers)
    for name, f in load_files(files).items():
        if f.meta["hidden_size"] != hidden or f.meta["num_layers"] != depth:
            raise UserInputError(f"--steer {name}: {f.where} was built for hidden size {f.meta['hidden_size']} and "
                                 f"{f.meta['num_layers']} layers; the served model has {hidden} and {depth}")


# -- what the frontend knows ---------------------------------------------------------------------------------
_ANNOUNCED: dict[str, dict[str, VectorInfo]] = {}  # encoded files -> infos, engines configured in this process


def announce(files: Mapping[str, str]) -> None:
    """Record an engine's vectors in this process (``steer_engine_args``; a worker built in this process)."""
    key = encode(files)
    if key not in _ANNOUNCED:
        _ANNOUNCED[key] = infos(files)


def frontend_vectors() -> dict[str, VectorInfo] | None:
    """The vectors a steer request may name, as far as this process knows: ``VLLM_DEBIAS_STEER_VECTORS``, else
    every engine announced in this process (their union), else None (unknown: such requests are refused)."""
    raw = os.environ.get(ENV, "").strip()
    if raw:
        return infos(decode(raw, ENV))
    if not _ANNOUNCED:
        return None
    out: dict[str, VectorInfo] = {}
    for known in _ANNOUNCED.values():
        out.update(known)
    return out


class VectorTables:
    """The engine's vectors as ``[L, 1 + 2V, hidden]`` float32 (see the module docstring) and their ids."""

    def __init__(self, files: Mapping[str, str], *, hidden_size: int, num_layers: int) -> None:
        import torch

        loaded = load_files(files)
        self.names = sorted(loaded)
        self.ids = {n: i + 1 for i, n in enumerate(self.names)}  # add rows; ablate rows are id + V
        self.files = {n: loaded[n] for n in self.names}
        self.kinds = {n: loaded[n].site_kind for n in self.names}
        self.num_layers = num_layers
        # blocks a request steers by default: a residual file's layers; every block of a site file that holds a
        # site there (the final norm is block num_layers)
        self.layers = {n: tuple(loaded[n].layers) if self.kinds[n] == "residual" else
                       tuple(sorted({site_block(k, num_layers) for k in loaded[n].site_vectors()}))
                       for n in self.names}
        v = len(self.names)
        self.table = torch.zeros(num_layers, 1 + 2 * v, hidden_size, dtype=torch.float32)
        self.sites: dict[str, torch.Tensor] = {}  # HF site name -> [1 + 2V, width]
        for name, f in loaded.items():
            if f.meta["hidden_size"] != hidden_size or f.meta["num_layers"] != num_layers:
                raise UserInputError(f"steering vectors {name!r}: {f.where} was built for hidden size "
                                     f"{f.meta['hidden_size']} and {f.meta['num_layers']} layers; the served model "
                                     f"has {hidden_size} and {num_layers}")
            i = self.ids[name]
            if f.site_kind != "residual":
                for site, vec in f.site_vectors().items():
                    t = self.sites.setdefault(site, torch.zeros(1 + 2 * v, vec.numel(), dtype=torch.float32))
                    if t.shape[1] != vec.numel():
                        raise UserInputError(f"steering vectors {name!r}: site {site!r} has {vec.numel()} values, "
                                             f"another file's has {t.shape[1]}")
                    t[i] = vec.float()
                continue
            for layer, vec in f.layer_vectors().items():
                u = vec.float()
                self.table[layer, i] = u
                if bool(u.norm() > 0):  # a zero vector has no direction: ablating it changes nothing
                    self.table[layer, v + i] = u / u.norm()  # as core.steer.ablate_direction normalises

    @property
    def num_vectors(self) -> int:
        return len(self.names)

    @property
    def num_blocks(self) -> int:
        """Rows of the per-token coefficients: the decoder layers and the final norm."""
        return self.num_layers + 1


def site_block(site: str, num_layers: int) -> int:
    """The block of an HF site name (``model.layers.3.mlp.down_proj`` -> 3; ``final_norm`` -> num_layers)."""
    if site == "final_norm":
        return num_layers
    m = re.search(r"\.(\d+)\.", site)
    if m is None:
        raise UserInputError(f"steering site {site!r} names no decoder block")
    return int(m.group(1))
