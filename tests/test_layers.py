"""The import structure of src/utamoe (docs/architecture.md): layers that import only downward,
no import circles, and function-local imports of utamoe modules only where they defer an
optional dependency (marked `# deferred: <why>` on the import line).

A new upward import or a new circle fails here with the edge that breaks the rule. The layer
order is the one place it is written down: a new package goes into LAYERS at its level."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

# Bottom to top. A module may import modules of its own layer entry (its own package) and of
# the entries of lower layers; entries that share a layer may import each other (the base).
LAYERS: list[tuple[str, ...]] = [
    ("utamoe", "utamoe._runtime", "utamoe.config", "utamoe.fsutil", "utamoe.packages",
     "utamoe.plugins", "utamoe.progress"),
    ("utamoe.benchmarks",),   # what a benchmark's data offers (a registry)
    ("utamoe.tasks",),        # the task registry
    ("utamoe.hf",),           # Hugging Face / GGUF loading
    ("utamoe.text",),         # text tokenizer, span and box grammar, span tokens
    ("utamoe.moe",),          # TA-MoE and MoLE
    ("utamoe.vision",),       # image processing, encoders, MoVE, the VQ tokenizer
    ("utamoe.data",),         # dataset format, importers, splits on disk, sequences, packing
    ("utamoe.model",),        # the unified model
    ("utamoe.infer",),        # the decoding engine and the predictor
    ("utamoe.tasks_exec",),   # span router and executors
    ("utamoe.eval",),         # scoring
    ("utamoe.analysis",),     # conflict, routing and MoME analysis
    ("utamoe.train",),        # trainer, engines, recipes, codec training
    ("utamoe.shapes",),       # ShapesWorld, a plug-in
    ("utamoe.serve",),        # HTTP
    ("utamoe.chat",),
    ("utamoe.demo",),
    ("utamoe.cli",),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "utamoe").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _entry(module: str) -> tuple[int, str]:
    """(layer index, entry) of the longest LAYERS entry that is `module` or a package above it."""
    best = None
    for i, layer in enumerate(LAYERS):
        for entry in layer:
            if (module == entry or module.startswith(entry + ".")) and (
                    best is None or len(entry) > len(best[1])):
                best = (i, entry)
    assert best is not None, f"{module} is in no layer: add its package to LAYERS"
    return best


def _imports(module: str, path: Path):
    """(imported utamoe module, line, local?, the source line) of every import in `module`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines = path.read_text(encoding="utf-8").splitlines()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node, local: bool):
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                         for a in child.names]
            else:
                yield from visit(child, inner)
                continue
            for name in names:
                target = _resolve(name) if name.startswith("utamoe") else None
                if target and target != module:
                    yield target, child.lineno, inner, lines[child.lineno - 1]

    yield from visit(tree, False)


EDGES = [(m, *imp) for m, path in MODULES.items() for imp in _imports(m, path)]


def test_every_module_is_in_a_layer():
    for module in MODULES:
        _entry(module)


def test_imports_run_only_downward():
    upward = []
    for module, target, line, _, _ in EDGES:
        i, j = _entry(module)[0], _entry(target)[0]
        if j > i:
            upward.append(f"{module}:{line} imports {target} ({LAYERS[j][0]} is above "
                          f"{LAYERS[i][0]})")
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_no_import_circles():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, target, *_ in EDGES:
        graph[module].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            connect(v)
    assert not circles, f"import circles: {circles}"


def test_function_local_imports_only_defer_optional_dependencies():
    hidden = [f"{module}:{line} imports {target} inside a function" for module, target, line, local,
              text in EDGES if local and "# deferred:" not in text]
    assert not hidden, ("import at the top of the module, or mark the line `# deferred: <the "
                        "optional dependency it defers>`:\n" + "\n".join(hidden))


def test_the_rules_catch_what_they_forbid():
    """The checks above can fail: an upward edge and a local import are seen for what they are."""
    assert _entry("utamoe.model.unified")[0] > _entry("utamoe.vision.mixture")[0]
    assert _entry("utamoe.shapes.scorers")[0] > _entry("utamoe.eval.run")[0]
    local = [e for e in EDGES if e[0] == "utamoe.cli.serve" and e[3]]
    assert local and all("# deferred:" in e[4] for e in local)
