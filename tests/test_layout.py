"""The package's shape, checked rather than promised: stage packages import no other module's private names,
the import graph has no circle, modules stay readable, and ``import nomoat`` / ``nomoat --help`` stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "nomoat"
MAX_LINES = 420  # "~400 lines": a module past this is split by responsibility


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` reads from (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    is_package = _modules()[module].name == "__init__.py"
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(module: str, path: Path) -> list[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` for every import in the file, lazy ones included."""
    known = _modules()
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name.startswith("nomoat")]
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            if not source.startswith("nomoat"):
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                is_module = submodule in known
                found.append((submodule, None, node.lineno) if is_module else (source, alias.name, node.lineno))
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = []
    for module, path in _modules().items():
        for source, name, line in _imports(module, path):
            if name and name.startswith("_") and not name.startswith("__") and source != module:
                offenders.append(f"{path.relative_to(SRC)}:{line}: {name} from {source}")
    assert not offenders, "private names imported across modules:\n" + "\n".join(offenders)


def test_the_import_graph_has_no_circle() -> None:
    known = _modules()
    graph: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        for source, _, _ in _imports(module, path):
            # `from nomoat.kb import store` runs nomoat/__init__ and nomoat/kb/__init__ first; both are kept free of
            # stage imports at import time, so the edge that matters is the one to the module itself.
            if source in known and source != module and source not in ("nomoat",):
                graph[module].add(source)
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_modules_stay_readable() -> None:
    sizes = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    long = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_base_imports_no_stage() -> None:
    base = ("nomoat.config", "nomoat.paths", "nomoat.errors")
    for module in base:
        stages = {s for s, _, _ in _imports(module, _modules()[module]) if s not in base}
        assert not stages, f"{module} imports {stages}"
    for module in ("nomoat.kb.store", "nomoat.kb.schema"):  # the store owns the tables; it calls no stage
        found = {s for s, _, _ in _imports(module, _modules()[module])}
        assert found <= {"nomoat", "nomoat.paths", "nomoat.config", "nomoat.errors", "nomoat.kb.schema"}, found


def test_help_imports_neither_torch_nor_llama_cpp() -> None:
    code = (
        "import sys\nfrom nomoat.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "for name in ('torch', 'llama_cpp', 'transformers', 'onnxruntime', 'numpy', 'sqlean', 'fastapi'):\n"
        "    assert name not in sys.modules, name\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_import_nomoat_loads_no_stage() -> None:
    code = "import sys, nomoat\nprint(sorted(m for m in sys.modules if m.startswith('nomoat')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = set(ast.literal_eval(done.stdout.strip()))
    assert loaded <= {"nomoat", "nomoat.api", "nomoat.config", "nomoat.errors"}, loaded


def test_only_the_runtime_modules_import_llama_cpp() -> None:
    allowed = {"nomoat.llm.llamacpp", "nomoat.llm.runtime", "nomoat.llm.batching"}  # loading, chat, batch engine
    offenders = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if module not in allowed and any(n.split(".")[0] == "llama_cpp" for n in names):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not offenders, "llama_cpp imported outside llm/llamacpp, runtime, batching:\n" + "\n".join(offenders)
