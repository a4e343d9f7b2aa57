"""Layering: no package of phi1 imports one above it (docs/architecture.md, "Layers").

Every module under src/phi1 is parsed (ast): `import` and `from ... import` at any depth
(function-level lazy imports included, relative imports resolved) and the module names listed
in `*_MODULES` tuples, which `phi1.cli` and `phi1.utils.groups` import by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "phi1"

# Lowest first. A package may import packages of lower layers only; packages of one layer are
# peers and do not import each other. `phi1` is the package's own __init__ (the version).
LAYERS = (
    ("phi1", "errors"),
    ("utils",),
    ("chat",),
    ("tokenizer",),
    ("llm", "model"),
    ("data", "infer", "export"),
    ("eval", "train"),
    ("synth", "inspect"),
    ("demo",),
    ("cli",),
    ("__main__",),
)

# (importing module, imported module) -> why it may stay. Keep this short.
EXCEPTIONS = {
    ("phi1.tokenizer", "phi1.data.records"):
        "`phi1 tokenizer train` reads stage directories and .jsonl.gz shards through data's record "
        "reader (lazily, only for such inputs); moving the reader below tokenizer needs data.records split",
}

RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "phi1"


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(imported phi1 module, line) for every import in the file, lazy ones included."""
    mod = module_name(path)
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, node.lineno))
            out += [(f"{target}.{a.name}", node.lineno) for a in node.names
                    if (SRC.parent / (f"{target}.{a.name}".replace(".", "/") + ".py")).is_file()]
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple):
            if any(isinstance(t, ast.Name) and t.id.endswith("_MODULES") for t in node.targets):
                for e in node.value.elts:  # "module" or ("module", (command names))
                    e = e.elts[0] if isinstance(e, ast.Tuple) and e.elts else e
                    if isinstance(e, ast.Constant) and isinstance(e.value, str):
                        out.append((e.value, e.lineno))
    return [(t, line) for t, line in out if t == "phi1" or t.startswith("phi1.")]


def upward_imports(root: Path = SRC) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        mod = module_name(path)
        src_pkg = package_of(mod)
        for target, line in imports_of(path):
            dst_pkg = package_of(target)
            if dst_pkg == src_pkg or (mod, target) in EXCEPTIONS:
                continue
            if RANK[dst_pkg] >= RANK[src_pkg]:
                where = "a peer" if RANK[dst_pkg] == RANK[src_pkg] else "a higher layer"
                bad.append(f"{path.relative_to(SRC.parent)}:{line}: {mod} imports {target} ({where}: "
                           f"{src_pkg} is layer {RANK[src_pkg]}, {dst_pkg} is layer {RANK[dst_pkg]})")
    return bad


def test_every_package_has_a_layer():
    pkgs = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    pkgs |= {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"}
    missing = sorted(pkgs - set(RANK))
    assert not missing, f"packages without a layer in LAYERS (and docs/architecture.md): {missing}"


def test_no_upward_imports():
    bad = upward_imports()
    assert not bad, "upward imports (move the code to its role's package):\n" + "\n".join(bad)


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """module -> the phi1 modules it imports (any depth, lazy imports included)."""
    mods = {module_name(p): p for p in root.rglob("*.py")}
    return {m: {t for t, _ in imports_of(p) if t in mods and t != m} for m, p in mods.items()}


def circles(root: Path = SRC) -> list[list[str]]:
    """The import circles inside a package: strongly connected components (Tarjan) of the graph of
    imports between modules of one package, of two or more modules."""
    graph = import_graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:  # iterative enough: the package graphs are small
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if package_of(w) != package_of(v):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_inside_a_package():
    found = circles()
    assert not found, "import circles (move what both need into a lower module of the package):\n" + \
        "\n".join(" <-> ".join(c) for c in found)


def test_a_circle_is_caught(tmp_path):
    import shutil

    root = tmp_path / "phi1"
    shutil.copytree(SRC, root, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "data" / "zz_a.py").write_text("def f():\n    from phi1.data.zz_b import g\n")
    (root / "data" / "zz_b.py").write_text("from phi1.data.zz_a import f\n")
    found = _with_root(root, circles)
    assert ["phi1.data.zz_a", "phi1.data.zz_b"] in found, found


def graph_figures(root: Path = SRC) -> dict:
    """Modules, layers, upward imports and circles: the figures docs/architecture.md states."""
    graph = import_graph(root)
    return {"modules": len(graph), "imports": sum(len(v) for v in graph.values()), "layers": len(LAYERS),
            "upward": len(upward_imports(root)), "circles": len(circles(root))}


def test_exceptions_are_still_needed():
    found = {(module_name(p), t) for p in SRC.rglob("*.py") for t, _ in imports_of(p)}
    stale = sorted(set(EXCEPTIONS) - found)
    assert not stale, f"exceptions no longer used; remove them: {stale}"


@pytest.mark.parametrize("code", ["from phi1.demo.report import build_report\n",
                                  "def f():\n    import phi1.train.trainer\n",
                                  "from ..synth import job\n"])
def test_an_upward_import_is_caught(tmp_path, code):
    # A copy of the tree with one upward import added to phi1.data (lazy, absolute or relative).
    import shutil

    root = tmp_path / "phi1"
    shutil.copytree(SRC, root, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "data" / "zz_upward.py").write_text(code)
    bad = _with_root(root, upward_imports)
    assert any("zz_upward.py" in b for b in bad), bad


def _with_root(root: Path, fn):
    global SRC
    old, SRC = SRC, root
    try:
        return fn(root)
    finally:
        SRC = old
