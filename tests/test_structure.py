"""The package's import structure, read from the source with ``ast`` (only the last test imports idclab).

* no import cycle among idclab's modules;
* ``idclab.data`` never imports the CIR harness (``idclab.cir``) or a model (``idclab.models``);
* no ``import idclab...`` inside a function, where it could hide a cycle;
* one image reader: every public name for it is the same function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "idclab"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_names(node: ast.Import | ast.ImportFrom, importer: str) -> list[str]:
    """The idclab modules an import statement loads (``from idclab import cir`` loads ``idclab.cir``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: resolve against the importer's package
        package = importer if MODULES[importer].name == "__init__.py" else importer.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def idclab_imports(node: ast.AST, importer: str) -> list[str]:
    names = imported_names(node, importer) if isinstance(node, (ast.Import, ast.ImportFrom)) else []
    return [n for n in names if n == "idclab" or n.startswith("idclab.")]


def split_imports(tree: ast.Module) -> tuple[list[ast.AST], list[ast.AST]]:
    """(imports run when the module is imported, imports inside a function body)."""
    top, inside = [], []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (inside if in_function else top).append(child)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return top, inside


def module_graph(*, with_functions: bool = False) -> dict[str, set[str]]:
    """Module -> the idclab modules its import runs, with the packages above each (their ``__init__`` runs first),
    except the importer's own packages (already being imported). ``with_functions``: count the imports inside
    functions too (those run later, but would close a cycle if moved to the top)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        top, inside = split_imports(ast.parse(path.read_text(encoding="utf-8")))
        edges = set()
        for node in top + (inside if with_functions else []):
            for target in idclab_imports(node, name):
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    step = ".".join(parts[:i])
                    if step in MODULES and not (name == step or name.startswith(step + ".")):
                        edges.add(step)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_package_is_found():
    assert {"idclab", "idclab.backbones", "idclab.cir", "idclab.data.cirr", "idclab.models.pic2word"} <= set(MODULES)


@pytest.mark.parametrize("with_functions", [False, True], ids=["module-level", "with-function-level"])
def test_no_import_cycle(with_functions):
    cycle = find_cycle(module_graph(with_functions=with_functions))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle():
    graph = {"idclab.a": {"idclab.b"}, "idclab.b": {"idclab.c"}, "idclab.c": {"idclab.a"}, "idclab.d": set()}
    assert find_cycle(graph) == ["idclab.a", "idclab.b", "idclab.c", "idclab.a"]
    assert find_cycle({"idclab.a": {"idclab.b"}, "idclab.b": set()}) is None


def test_data_never_imports_the_harness_or_a_model():
    graph = module_graph()
    bad = {f"{m} -> {t}" for m, targets in graph.items() if m.startswith("idclab.data")
           for t in targets if t.startswith(("idclab.cir", "idclab.models"))}
    for name, path in MODULES.items():  # function-level imports count too
        if name.startswith("idclab.data"):
            _, inside = split_imports(ast.parse(path.read_text(encoding="utf-8")))
            bad |= {f"{name} -> {t}" for node in inside for t in idclab_imports(node, name)
                    if t.startswith(("idclab.cir", "idclab.models"))}
    assert not bad, f"idclab.data must not import the CIR harness or a model: {sorted(bad)}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_idclab_import_inside_a_function(name):
    _, inside = split_imports(ast.parse(MODULES[name].read_text(encoding="utf-8")))
    found = [f"line {node.lineno}: {ast.unparse(node)}" for node in inside if idclab_imports(node, name)]
    assert not found, (f"{name} imports idclab modules inside functions; move them to the top of the module "
                       f"(a function-level import can hide an import cycle): {found}")


def test_function_level_imports_are_found():
    tree = ast.parse("import os\nfrom idclab import cir\n\n\ndef f():\n    from idclab.data import shapes\n"
                     "    import numpy\n\n\nclass C:\n    from idclab import images\n")
    top, inside = split_imports(tree)
    assert [ast.unparse(n) for n in top] == ["import os", "from idclab import cir", "from idclab import images"]
    assert [idclab_imports(n, "idclab.viz") for n in inside] == [["idclab.data.shapes"], []]


def test_one_image_reader():
    from idclab import backbones, cir, images
    from idclab.data import _common

    assert backbones.load_image is images.read_image
    assert cir.read_image is images.read_image
    assert _common.read_image is images.read_image
    definitions = [f"{name}:{node.lineno}" for name, path in MODULES.items()
                   for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                   if isinstance(node, ast.FunctionDef) and node.name in ("read_image", "load_image")]
    assert definitions == [f"idclab.images:{definitions[0].split(':')[1]}"], definitions
