"""The import structure of the project: no cycles, the layering rules of docs/architecture.md, method facts only
in the registry.

Reference: the import rules of the redesign (issue 14): ``core/`` imports torch and the standard library only;
``metrics/`` imports neither the HF adapters, the evaluation package, the method packages nor the CLI; a method
package imports no other method package, no evaluation code, no CLI and no vLLM; ``hf/`` never imports a method
package or vLLM; the evaluation package reaches engines only through its ``backends`` module; the vLLM plugin
never imports the HF adapters. The graph is read from the source with ``ast`` (imports inside functions
included), independently of what an import at run time would load. The one allowed cycle is the registry's lazy
load of the built-in method packages (``registry._ensure_builtins``), which is skipped by construction.
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"debias_lm": ROOT / "debias_lm", "vllm_debias": ROOT / "plugins" / "vllm_debias"}
# (module, function) whose imports are the registry's lazy load of the built-in methods: the allowed cycle
LAZY_BUILTINS = {("debias_lm.registry", "_ensure_builtins")}

# Areas other helpers of the redesign are rewriting at the same time; the lead removes each entry at merge.
# (module prefix -> why it is exempt for now)
ALLOWED_AREAS: dict[str, str] = {}

# Modules whose string comparisons name *result labels*, not registry lookups: the overhead table's plain row.
# Exempt from the name check only.
ARM_LABELS = {
    "debias_lm.evaluation.suites.overhead": "the plain row of the timing table",
    "debias_lm.cli.commands": "the command list: 'uddia' and 'steer' are commands as well as method names",
}


def _module_files() -> dict[str, Path]:
    out = {}
    for pkg, base in PACKAGES.items():
        for path in base.rglob("*.py"):
            rel = path.relative_to(base).with_suffix("")
            parts = [pkg, *rel.parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _module_files()


def _is_package(mod: str) -> bool:
    return MODULES[mod].name == "__init__.py"


def _resolve(mod: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if _is_package(mod) else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(mod: str) -> list[tuple[str, str | None, int]]:
    """(imported module, enclosing function or None, line) for every import statement of ``mod``."""
    tree = ast.parse(MODULES[mod].read_text(encoding="utf-8"))
    out = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            f = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Import):
                out.extend((a.name, func, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                target = _resolve(mod, child)
                for a in child.names:
                    sub = f"{target}.{a.name}"
                    out.append((sub if sub in MODULES else target, func, child.lineno))
            visit(child, f)

    visit(tree, None)
    return out


IMPORTS = {m: _imports(m) for m in MODULES}


def _project(name: str) -> str | None:
    """The project module an import names (the longest known prefix), or None for third-party / stdlib."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in MODULES:
            return cand
    return None


def _graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = defaultdict(set)
    for mod, imps in IMPORTS.items():
        for name, func, _ in imps:
            target = _project(name)
            if target and target != mod and (mod, func) not in LAZY_BUILTINS:
                g[mod].add(target)
    return g


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(MODULES):
        if v not in index:
            strong(v)
    return out


def _allowed(mod: str) -> bool:
    return any(mod == a or mod.startswith(a + ".") for a in ALLOWED_AREAS)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _method_package(mod: str) -> str | None:
    parts = mod.split(".")
    return ".".join(parts[:3]) if len(parts) >= 3 and parts[:2] == ["debias_lm", "methods"] else None


def _rule_violations() -> list[str]:
    stdlib = set(sys.stdlib_module_names)
    bad = []
    for mod, imps in IMPORTS.items():
        for name, _func, line in imps:
            top = name.split(".")[0]
            where = f"{mod}:{line} imports {name}"
            if _under(mod, "debias_lm.core") and not (top in stdlib or top == "torch" or top == "__future__"
                                                        or _under(name, "debias_lm.core")):
                bad.append(f"{where} (core/ imports torch and the standard library only)")
            if _under(mod, "debias_lm.metrics") and any(_under(name, p) for p in (
                    "debias_lm.hf", "debias_lm.eval", "debias_lm.evaluation", "debias_lm.methods", "debias_lm.cli")):
                bad.append(f"{where} (metrics/ imports no adapters, evaluation, methods or CLI)")
            own = _method_package(mod)
            if own:
                other = _method_package(name) if _under(name, "debias_lm.methods") else None
                if other and other != own:
                    bad.append(f"{where} (a method package never imports another method's package)")
                if any(_under(name, p) for p in ("debias_lm.eval", "debias_lm.evaluation", "debias_lm.cli",
                                                 "vllm_debias", "vllm")):
                    bad.append(f"{where} (method packages import no evaluation, CLI, plugin or vLLM code)")
            if _under(mod, "debias_lm.hf") and (_under(name, "debias_lm.methods") or top in ("vllm", "vllm_debias")):
                bad.append(f"{where} (hf/ finds methods through the registry and never imports vLLM)")
            if _under(mod, "vllm_debias"):
                if any(_under(name, p) for p in ("debias_lm.hf", "debias_lm.eval", "debias_lm.evaluation",
                                                 "debias_lm.cli")):
                    bad.append(f"{where} (the vLLM plugin never imports the HF adapters, evaluation or CLI)")
                if _under(name, "debias_lm.methods") and name != "debias_lm.methods" and not re.fullmatch(
                        r"debias_lm\.methods\.\w+\.vllm", name):
                    bad.append(f"{where} (the plugin reaches a method only through its vllm module)")
            for pkg in ("debias_lm.eval", "debias_lm.evaluation"):
                if _under(mod, pkg) and mod != f"{pkg}.backends" and (
                        top == "vllm_debias" or _under(name, "debias_lm.hf.wrap")):
                    bad.append(f"{where} (the evaluation package reaches engines only through {pkg}.backends)")
    return [b for b in dict.fromkeys(bad) if not _allowed(b.split(":")[0])]


def test_the_source_walk_sees_the_project():
    # the walk must find the modules and the function-level imports, or the checks below prove nothing
    assert {"debias_lm.registry", "debias_lm.core.contrast", "vllm_debias.processors.base"} <= set(MODULES)
    lazy = [n for n, f, _ in IMPORTS["debias_lm.registry"] if f == "_ensure_builtins"]
    assert lazy and all(_under(n, "debias_lm.methods") for n in lazy)
    inner = [(n, f) for n, f, _ in IMPORTS["debias_lm.methods.calibration.calibrator"] if f is not None]
    assert ("debias_lm.hf.image_free", "_logits_with_priors") in inner


def test_cycle_finder_finds_a_planted_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    saved = dict(MODULES)
    try:
        MODULES.update({k: ROOT for k in g})
        assert ["a", "b", "c"] in _cycles(g)
    finally:
        MODULES.clear()
        MODULES.update(saved)


def test_no_import_cycles():
    cycles = [c for c in _cycles(_graph()) if not all(_allowed(m) for m in c)]
    assert not cycles, "import cycles among project modules:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_imports_follow_the_layering_rules():
    bad = _rule_violations()
    assert not bad, "imports against the rules of docs/architecture.md:\n" + "\n".join(bad)


# -- method facts live in the registry: no method-name comparisons outside a method's own package ----------------
def _method_names() -> set[str]:
    from debias_lm.registry import list_methods

    names = set()
    for spec in list_methods():
        names.add(spec.name)
        names.update(spec.aliases)
    return names


def _names_in(node, names) -> list[str]:
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in names]
    if isinstance(node, ast.Dict):
        return [k.value for k in node.keys if isinstance(k, ast.Constant) and k.value in names]
    return []


_METHODISH = re.compile(r"method|\bname\b|\bm\b", re.I)


def name_comparisons(source: str, names: set[str]) -> list[tuple[int, str]]:
    """Lines of ``source`` that test a method's name: ``x.method == "nbls"``, ``name in ("none", "nbls")``, or a
    literal list / dict naming two or more methods (a parallel method list such as ``TEXT_METHODS``)."""
    out: dict[int, str] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            for i, side in enumerate(sides):
                consts = ([side.value] if isinstance(side, ast.Constant) and side.value in names
                          else _names_in(side, names))
                others = " ".join(ast.unparse(s) for j, s in enumerate(sides) if j != i)
                asks_spec = any(isinstance(s, ast.Attribute) and s.attr == "kind" for j, s in enumerate(sides) if j != i)
                if consts and not asks_spec and _METHODISH.search(others):
                    out.setdefault(node.lineno, ast.unparse(node))
                    break
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)) and len(set(_names_in(node, names))) >= 2:
            out.setdefault(node.lineno, ast.unparse(node)[:80])
    return sorted(out.items())


def test_the_name_check_catches_what_it_must():
    names = {"nbls", "identity", "none", "calibration"}
    src = ('if cfg.method == "nbls": pass\n'
           'if name in ("none", "identity"): pass\n'
           'TEXT_METHODS = ("none", "nbls")\n'
           'FIELDS = {"calibration": 1, "nbls": 2}\n'
           'if cfg.mode == "identity": pass\n'       # a config value that happens to read like a method name
           'if spec.kind == "none": pass\n'          # asking the spec is the point
           'if get_method(name).kind in ("none", "prompt"): pass\n')  # kinds share words with method names
    found = [line for line, _ in name_comparisons(src, names)]
    assert found == [1, 2, 3, 4]


def test_no_method_name_comparisons_outside_method_packages():
    names = _method_names()
    bad = []
    for mod, path in MODULES.items():
        if _method_package(mod) or _allowed(mod) or mod in ARM_LABELS:
            continue
        for line, text in name_comparisons(path.read_text(encoding="utf-8"), names):
            bad.append(f"{mod}:{line}: {text}")
    assert not bad, "method names tested outside their own package (ask the registry's spec):\n" + "\n".join(bad)


@pytest.mark.parametrize("area", sorted({**ALLOWED_AREAS, **ARM_LABELS}))
def test_allowed_areas_still_exist(area):
    # an exemption for an area that is gone must be removed (the lead removes them as the areas land)
    assert any(_under(m, area) for m in MODULES), f"{area} no longer exists: drop it from ALLOWED_AREAS"
