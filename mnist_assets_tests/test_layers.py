"""The package is a house with floors: no import cycle, and no module imports one of a higher layer.

Every import counts, wherever it sits: at module level, inside a function (a lazy import still ties
the two modules together) and under ``TYPE_CHECKING`` (a type-only import still means the lower module
knows the higher one). The walk reads the source with :mod:`ast`, so it imports nothing.
``python -m mnist_assets_tests.test_layers`` prints the figures (modules, edges, cycles, upward edges).
The same walk checks the ground floor's promise: an ``MNIST_ASSETS_*`` variable is read in
:mod:`mnist_assets.settings` only.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

PACKAGE = "mnist_assets"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

LAYERS: list[list[str]] = [
    # ground floor: what every module may read
    ["mnist_assets.settings", "mnist_assets.tags", "mnist_assets.hashing", "mnist_assets.keys"],
    # the project's view of Dagster and its libraries: noise, the private API
    ["mnist_assets.quiet", "mnist_assets.dagster_private"],
    # formats: what a dataset is and how its files and records are written
    [
        "mnist_assets.catalog",
        "mnist_assets.catalog_errors",
        "mnist_assets.download",
        "mnist_assets.download_progress",
        "mnist_assets.hyperparameters",
        "mnist_assets.idx",
        "mnist_assets.manifest",
        "mnist_assets.model_file",
        "mnist_assets.shards",
    ],
    # storage: the mnist_assets.storage package and everything in it
    ["mnist_assets.storage"],
    # machine learning: configurations, the only TensorFlow import, reading splits back
    ["mnist_assets.models", "mnist_assets.training", "mnist_assets.loader"],
    # the asset graph and what it shows in the UI: the mnist_assets.assets package and everything in it
    ["mnist_assets.assets"],
    # rebuilding: the mnist_assets.rebuild package (what is stale and why, past attempts, what ran and
    # why, how it shows, the sensor and schedule, refresh); the steps below are handed its judgement
    ["mnist_assets.rebuild"],
    ["mnist_assets.definitions"],
    # on top: the commands and the package's own face (``mnist_assets.defs``, ``load``)
    ["mnist_assets.cli", "mnist_assets.status", "mnist_assets.history", "mnist_assets"],
]
"""Bottom first. A module may import its own layer's modules and lower layers' ones, never higher ones.
An entry names a module, or a package together with every module inside it (``mnist_assets.storage``,
``mnist_assets.assets``, ``mnist_assets.rebuild``);
the package ``mnist_assets`` itself stands for its ``__init__`` only."""


def module_names(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its own name, for its __init__)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _resolved(name: str, modules: dict[str, Path]) -> str | None:
    """The package module ``name`` is, or lives in (an attribute of a module: the module); None outside."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(
    module: str, path: Path, modules: dict[str, Path], loading: frozenset[str] = frozenset()
) -> set[str]:
    """The package modules ``module`` imports, anywhere in its source.

    ``loading``: the subpackages whose ``__init__`` imports modules of the package. ``from pkg import
    mod`` names such a package, so it is an edge to its ``__init__`` too (inside ``pkg`` it closes a
    cycle when ``pkg/__init__`` imports what imports ``mod``; write ``import pkg.mod as mod`` there); an
    ``__init__`` that imports nothing is a namespace, not a dependency."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package, one level up per extra dot
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            # ``from package import name``: the submodule when there is one, else the package itself
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
            ]
        named = [node.module] if isinstance(node, ast.ImportFrom) and node.module in loading else []
        for target in [*targets, *named]:
            resolved = _resolved(target, modules)
            if resolved is not None and resolved != module:
                found.add(resolved)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Each module of the package → the package modules it imports."""
    modules = module_names(root)
    inits = {m: p for m, p in modules.items() if p.name == "__init__.py" and m != PACKAGE}
    loading = frozenset(m for m, p in inits.items() if imports_of(m, p, modules))
    return {module: imports_of(module, path, modules, loading) for module, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: each group of modules that reach one another (Tarjan's strongly connected
    components of more than one module), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.get(module, ())):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(groups)


def layer_of(module: str) -> int | None:
    """The index of ``module``'s layer in :data:`LAYERS` (the longest entry that names it), or None."""
    best: tuple[int, int] | None = None  # (entry length, layer)
    for number, layer in enumerate(LAYERS):
        for entry in layer:
            names_it = module == entry or (entry != PACKAGE and module.startswith(entry + "."))
            if names_it and (best is None or len(entry) > best[0]):
                best = (len(entry), number)
    return None if best is None else best[1]


def upward_edges(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Each import of a module of a higher layer than the importer's, as (importer, imported)."""
    return sorted(
        (module, imported)
        for module, imported_modules in graph.items()
        for imported in imported_modules
        if (low := layer_of(module)) is not None and (high := layer_of(imported)) is not None and high > low
    )


def figures(graph: dict[str, set[str]]) -> dict[str, int]:
    """What the closing note reports of an import graph."""
    return {
        "modules": len(graph),
        "edges": sum(len(imported) for imported in graph.values()),
        "cycles": len(cycles(graph)),
        "modules in cycles": sum(len(group) for group in cycles(graph)),
        "upward edges": len(upward_edges(graph)),
    }


GRAPH = import_graph()


def test_the_walk_sees_lazy_and_type_only_imports(tmp_path):
    """An import inside a function or under TYPE_CHECKING is an edge like any other; relative imports
    and ``from package import module`` resolve to the module, and to the package too when its
    ``__init__`` imports modules (it runs first)."""
    package = tmp_path / PACKAGE
    (package / "storage").mkdir(parents=True)
    (package / "rebuild").mkdir()
    (package / "rebuild" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "storage" / "__init__.py").write_text("from . import files\n")
    (package / "storage" / "files.py").write_text("from ..settings import DEFAULT\n")
    (package / "settings.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from mnist_assets.rebuild.refresh import Step\n"
    )
    (package / "rebuild" / "refresh.py").write_text(
        "def run():\n    from mnist_assets import storage, settings\n"
    )
    (package / "assets").mkdir()
    (package / "assets" / "__init__.py").write_text("from mnist_assets.assets.graph import build\n")
    (package / "assets" / "graph.py").write_text("from mnist_assets.assets.raw import raw\n")
    (package / "assets" / "raw.py").write_text("from mnist_assets.assets import pictures\n")
    (package / "assets" / "pictures.py").write_text("")
    graph = import_graph(package)
    # raw's import runs assets/__init__ first, which imports graph, which imports raw
    assert {"mnist_assets.assets", "mnist_assets.assets.raw"} <= set().union(*cycles(graph))
    for toy in ("mnist_assets.assets", "mnist_assets.assets.graph", "mnist_assets.assets.raw"):
        del graph[toy]
    del graph["mnist_assets.assets.pictures"]
    assert graph == {
        "mnist_assets": set(),
        "mnist_assets.rebuild": set(),
        "mnist_assets.rebuild.refresh": {"mnist_assets.storage", "mnist_assets.settings"},
        "mnist_assets.settings": {"mnist_assets.rebuild.refresh"},
        "mnist_assets.storage": {"mnist_assets.storage.files"},
        "mnist_assets.storage.files": {"mnist_assets.settings"},
    }
    # refresh -> storage -> storage.files -> settings -> refresh (the last one only for type checking)
    assert cycles(graph) == [  # rebuild/__init__ imports nothing: importing from it is no edge to it
        [
            "mnist_assets.rebuild.refresh",
            "mnist_assets.settings",
            "mnist_assets.storage",
            "mnist_assets.storage.files",
        ]
    ]
    assert ("mnist_assets.settings", "mnist_assets.rebuild.refresh") in upward_edges(graph)
    assert ("mnist_assets.storage.files", "mnist_assets.settings") not in upward_edges(graph)
    assert layer_of("mnist_assets.storage.backends.s3") == layer_of("mnist_assets.storage.io_managers")


def test_every_module_has_a_layer():
    """A new module is placed in LAYERS, so the rule covers it (``mnist_assets.storage.*`` is placed)."""
    unplaced = sorted(module for module in GRAPH if layer_of(module) is None)
    assert not unplaced, f"add these modules to a layer of LAYERS in {__file__}: {', '.join(unplaced)}"


def test_no_import_cycle():
    found = cycles(GRAPH)
    assert not found, "import cycles (each group imports itself around): " + "; ".join(
        " <-> ".join(group) for group in found
    )


def test_no_module_imports_a_higher_layer():
    found = upward_edges(GRAPH)
    assert not found, "upward imports: " + ", ".join(f"{low} imports {high}" for low, high in found)


STORAGE_LAYER = next(layer for layer in LAYERS if "mnist_assets.storage" in layer)


@pytest.mark.parametrize(
    "entry", [entry for layer in LAYERS if layer is not STORAGE_LAYER for entry in layer]
)
def test_every_layer_entry_is_a_module(entry):
    """No stale names in LAYERS (the storage layer's entries may come and go while storage/ is split)."""
    assert entry in GRAPH, f"{entry} is in LAYERS but is no module of the package"


def _variable_named(use: ast.AST) -> ast.AST | None:
    """The variable an access names: ``os.environ[N]``, ``os.environ.get(N)``, ``os.getenv(N)``,
    ``N in os.environ``; None when the environment itself is passed around (``env = os.environ``)."""
    if isinstance(use, ast.Subscript):
        return use.slice
    if isinstance(use, ast.Call) and use.args:
        return use.args[0]
    if isinstance(use, ast.Compare):
        return use.left
    return None


def environment_reads(path: Path) -> list[str]:
    """Where ``path`` touches the environment other than by naming, as a literal, a variable that is
    not the project's own (``os.environ.get("TERM")``): each as ``line: source``."""
    source = path.read_text()
    tree = ast.parse(source, str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Attribute)
            and node.attr in ("environ", "getenv")
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        ):
            continue
        use = parents[node]
        if isinstance(use, ast.Attribute) and use.attr == "get":
            use = parents[use]
        named = _variable_named(use)
        others = isinstance(named, ast.Constant) and not str(named.value).startswith("MNIST_ASSETS_")
        if not others:
            found.append(f"{node.lineno}: {ast.get_source_segment(source, use)}")
    return found


def test_only_settings_reads_the_projects_environment_variables():
    """Every ``MNIST_ASSETS_*`` read (and its default) is in mnist_assets.settings: elsewhere the
    environment is touched only for other programs' variables, named as literals (TERM, TF_CPP_...)."""
    found = {
        module: reads
        for module, path in module_names().items()
        if module != "mnist_assets.settings" and (reads := environment_reads(path))
    }
    assert not found, f"read these through mnist_assets.settings: {found}"


README = ROOT.parent / "README.md"


def layout_names(readme: Path = README) -> set[str]:
    """The files and folders the README's "Layout" section names: each ``name.py``, ``path/name.py`` or
    ``folder/`` written as code."""
    text = readme.read_text().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`([\w/.]+\.py|\w+/)`", text))


def test_the_readme_layout_names_every_module_and_none_that_is_not_there():
    """A newcomer reads the tree in the README: every module of the package (a subpackage as its
    folder, its ``__init__`` with it) is named, and every file or folder named exists (a bare name in
    the package or among the tests' own modules, a path from the repository's top)."""
    names = layout_names()
    modules = {path for path in module_names().values() if path.name != "__init__.py"}
    folders = {path.parent.name + "/" for path in module_names().values() if path.name == "__init__.py"}
    folders.discard(PACKAGE + "/")
    unnamed = sorted({path.name for path in modules} - names) + sorted(folders - names)
    assert not unnamed, f"README.md's Layout does not name: {', '.join(unnamed)}"
    tests = ROOT.parent / f"{PACKAGE}_tests"
    known = {path.name for path in modules} | {p.name for p in tests.glob("*.py")} | folders
    missing = sorted(name for name in names if name not in known and not (ROOT.parent / name).exists())
    assert not missing, f"README.md's Layout names what is not there: {', '.join(missing)}"


if __name__ == "__main__":
    for name, value in figures(GRAPH).items():
        print(f"{name}: {value}")
    for group in cycles(GRAPH):
        print("cycle:", " <-> ".join(group))
    for low, high in upward_edges(GRAPH):
        print(f"upward: {low} -> {high}")
    sys.exit(0)
