"""The house's layering, read from the source: kernels/ is the ground floor and never imports harness/, and no
module imports itself back through a chain of imports (function-level imports included)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kernels", "harness")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules `name` imports anywhere in its source (a `from pkg import sub` of a submodule counts as sub)."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import kernels.mega.lower` names the module; trim to a known one
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def test_kernels_never_import_harness():
    bad = sorted(f"{m} imports {t}" for m, ts in _graph().items() if m.split(".")[0] == "kernels"
                 for t in ts if t.split(".")[0] == "harness")
    assert not bad, "kernels/ is the ground floor; it must not import harness/:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = _graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_a_planted_violation(tmp_path, monkeypatch):
    """The two checks above are only as good as the import parser: it must see function-level and relative
    imports, and a cycle through them."""
    for rel, text in {"kernels/__init__.py": "", "kernels/a.py": "def f():\n    from harness import b\n",
                      "harness/__init__.py": "", "harness/b.py": "from . import c\n",
                      "harness/c.py": "import harness.b\n"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    g = _graph()
    assert g["kernels.a"] == {"harness.b"} and g["harness.b"] == {"harness.c"} and g["harness.c"] == {"harness.b"}


def test_configuration_code_imports_no_triton():
    """Importing Triton before TRITON_INTERPRET is decided breaks the interpreter, so what entry points import before
    harness.use_interpreter_without_gpu() runs (configuration, models, quant table, lowering) must not import it."""
    import subprocess
    import sys

    code = ("import sys; import harness.cli, harness.config, harness.models, kernels.mega.lower, kernels.mega.tuned; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'triton'))")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout
