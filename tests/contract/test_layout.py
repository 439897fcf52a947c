"""The layout rules of docs/architecture.md, checked so that the layout cannot drift back.

(i) each registered loss is defined in the module (or package) of its family;
(ii) no family module imports another family;
(iii) ``kernels/`` imports neither the registry nor a family, ``_ops/`` only ``_core``,
``distances`` and other ``_ops`` modules, ``miners`` nothing from ``losses``;
(iv) no import cycle among losslab's modules, counting imports inside functions;
(v) ``tests/`` mirrors ``src/losslab``: every folder a package, every test module named after
the source module (or package) it tests; ``tests/examples/`` mirrors the scripts of ``examples/``.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

import losslab
from losslab.registry import FAMILY_MODULES

SRC = Path(losslab.__file__).resolve().parent
TESTS = Path(__file__).resolve().parents[1]
EXAMPLES = TESTS.parent / "examples"


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """losslab modules imported anywhere in module ``name`` (top level or inside functions)."""
    mods = _modules()
    path = mods[name]
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("losslab"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("losslab"):
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if sub in mods else target)
    return {m for m in out if m in mods and m != name}


def _family_of(module: str) -> str | None:
    for mod in FAMILY_MODULES.values():
        if module == mod or module.startswith(mod + "."):
            return mod
    return None


@pytest.mark.parametrize("name", losslab.available())
def test_loss_lives_in_its_family_module(name: str) -> None:
    s = losslab.spec(name)
    home = FAMILY_MODULES[s.family]
    for obj in (s.module, s.function):
        assert _family_of(obj.__module__) == home, (
            f"{name} ({s.family}) is defined in {obj.__module__}, expected {home}"
        )


def test_family_modules_do_not_import_each_other() -> None:
    bad = []
    for mod in _modules():
        own = _family_of(mod)
        if own is None:
            continue
        for dep in _imports(mod):
            other = _family_of(dep)
            if other is not None and other != own:
                bad.append(f"{mod} imports {dep}")
    assert not bad, bad


def test_lower_layers_do_not_import_upper_ones() -> None:
    bad = []
    for mod in _modules():
        deps = _imports(mod)
        if mod.startswith("losslab.kernels"):
            bad += [f"{mod} -> {d}" for d in deps
                    if d.startswith(("losslab.losses", "losslab.registry", "losslab.lab"))]
        if mod.startswith("losslab._ops"):
            bad += [f"{mod} -> {d}" for d in deps
                    if not d.startswith(("losslab._ops", "losslab._core", "losslab.distances"))]
        if mod in ("losslab.miners", "losslab.distances", "losslab._core", "losslab.metrics") or (
            mod.startswith("losslab.metrics.")
        ):
            bad += [f"{mod} -> {d}" for d in deps
                    if d.startswith(("losslab.losses", "losslab.lab", "losslab.kernels"))]
        if mod == "losslab.registry":
            bad += [f"{mod} -> {d}" for d in deps if d.startswith("losslab.losses")]
    assert not bad, bad


def test_no_import_cycles() -> None:
    # The root package ``losslab`` (its __init__) imports the public surface by design and is
    # left out; every other edge counts, package __init__s included.
    mods = [m for m in _modules() if m != "losslab"]
    graph = {m: {d for d in _imports(m) if d != "losslab"} for m in mods}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:  # Tarjan
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
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
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            strongconnect(v)
    assert not cycles, cycles


def test_tests_mirror_src() -> None:
    folders = [p for p in TESTS.rglob("*") if p.is_dir() and p.name != "__pycache__"]
    missing = [str(p.relative_to(TESTS)) for p in folders if not (p / "__init__.py").exists()]
    assert not missing, f"test folders without __init__.py: {missing}"
    # test_<name>.py under tests/<path>/ tests src/losslab/<path>/<name>(.py | /), except the
    # contract suite, which runs over the registry.
    orphans = []
    for p in TESTS.rglob("test_*.py"):
        rel = p.relative_to(TESTS)
        if rel.parts[0] == "contract":
            continue
        if rel.parts[0] == "examples":  # tests/examples/test_X.py tests the script examples/X.py
            script = EXAMPLES.joinpath(*rel.parts[1:-1], p.stem.removeprefix("test_") + ".py")
            if not script.exists():
                orphans.append(str(rel))
            continue
        target = SRC.joinpath(*rel.parts[:-1], p.stem.removeprefix("test_"))
        if not (target.with_suffix(".py").exists() or target.is_dir()):
            orphans.append(str(rel))
    assert not orphans, f"test modules with no source module of that name: {orphans}"
