"""The package's shape: imports point one way between its layers, with no
circle; no private name is imported across modules (the benchmarks included);
no module is longer than MAX_LINES.

The import graph is built from the source (the AST of every module, relative
and absolute imports, at module level and inside functions), not from what
happens to be imported at run time.
"""
import ast
import importlib
import re
import sys

import pytest

from helpers import REPO

PACKAGE = REPO / "lightgcn_ext"
MAX_LINES = 450
# Lower layers never import higher ones. data and evaluation share a layer and
# do not import each other; so do distributed and inference.
LAYERS = {"core": 0, "data": 1, "evaluation": 1, "training": 2, "distributed": 3,
          "inference": 3, "cli": 4}
# The imports allowed against the layers, each from inside a function, run when
# called, never at import time: the package offers lightgcn_ext.load_run
# (PEP 562's module __getattr__) without loading the training code.
ALLOWED = {("lightgcn_ext", "lightgcn_ext.inference")}


def module_name(path):
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module):
    """The layer name of a module of the package."""
    parts = module.split(".")
    if len(parts) == 1:
        return "core"
    if parts[1] in ("cli", "__main__"):
        return "cli"
    return parts[1] if parts[1] in LAYERS else "core"


def imports_of(module, path, known):
    """(imported module, imported names) for every import of `module` that
    names a module in `known`. `from X import a` imports the module X.a when
    there is one, else the name a of X."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name in known]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in known:
                    found.append((submodule, []))
                elif source in known:
                    found.append((source, [alias.name]))
    return found


def import_graph():
    return {module: sorted({target for target, _ in imports_of(module, path, MODULES)
                            if target != module and (module, target) not in ALLOWED})
            for module, path in MODULES.items()}


def test_every_layer_is_found():
    assert {layer_of(m) for m in MODULES} == set(LAYERS)
    assert "lightgcn_ext.cli" in MODULES and "lightgcn_ext.validation" in MODULES


def test_no_import_circle():
    graph = import_graph()
    done, path = set(), []

    def visit(module):
        if module in path:
            cycle = path[path.index(module):] + [module]
            pytest.fail("import circle: " + " -> ".join(cycle))
        if module in done:
            return
        path.append(module)
        for target in graph[module]:
            visit(target)
        path.pop()
        done.add(module)

    for module in graph:
        visit(module)


def test_imports_point_one_way():
    upward = []
    for module, targets in import_graph().items():
        for target in targets:
            mine, theirs = layer_of(module), layer_of(target)
            if LAYERS[theirs] > LAYERS[mine] or (LAYERS[theirs] == LAYERS[mine]
                                                 and mine != theirs):
                upward.append(f"{module} ({mine}) imports {target} ({theirs})")
    assert not upward, "\n".join(upward)


def test_only_the_cli_imports_training_and_distributed():
    both = [module for module, targets in import_graph().items()
            if {layer_of(t) for t in targets} >= {"training", "distributed"}
            and layer_of(module) != "distributed"]
    assert both == ["lightgcn_ext.cli"]


@pytest.mark.parametrize("folder", ["lightgcn_ext", "bench"])
def test_no_private_name_is_imported_across_modules(folder):
    """A private name (one underscore, not a dunder) stays in its module; the
    package's private modules (_ops, _extension) are for the package itself."""
    paths = sorted((REPO / folder).rglob("*.py"))
    known = set(MODULES) | {module_name(p) for p in paths}
    found = []
    for path in paths:
        module = module_name(path)
        for target, names in imports_of(module, path, known):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if folder == "bench" and target.startswith("lightgcn_ext") and any(
                    part.startswith("_") for part in target.split(".")):
                private.append(target)
            found += [f"{module} imports {target}: {name}" for name in private]
    assert not found, "\n".join(found)


def test_no_module_is_too_long():
    long = {module: n for module, path in MODULES.items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_checker_sees_a_circle_an_upward_import_and_a_private_name(tmp_path, monkeypatch):
    """The checks above can fail: on a package made to break each rule."""
    package = tmp_path / "lightgcn_ext"
    (package / "training").mkdir(parents=True)
    (package / "__init__.py").write_text("from . import graph\n")
    (package / "graph.py").write_text("from .training import loop\n")  # core -> training
    (package / "training" / "__init__.py").write_text("")
    (package / "training" / "loop.py").write_text("from ..graph import _private\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    modules = {module_name(p): p for p in sorted(package.rglob("*.py"))}
    monkeypatch.setattr(sys.modules[__name__], "MODULES", modules)
    with pytest.raises(pytest.fail.Exception, match="import circle"):
        test_no_import_circle()
    with pytest.raises(AssertionError, match=r"lightgcn_ext.graph \(core\) imports "
                                             r"lightgcn_ext.training.loop \(training\)"):
        test_imports_point_one_way()
    with pytest.raises(AssertionError, match="imports lightgcn_ext.graph: _private"):
        test_no_private_name_is_imported_across_modules("lightgcn_ext")


def _resolve(path):
    """The object a dotted path names: the longest importable module, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


def _paths(cell):
    """The dotted paths of a table cell: `a.b.c`, `.d` meaning a.b.d."""
    paths = []
    for token in re.findall(r"`([^`]+)`", cell):
        if token.startswith("."):
            paths.append(paths[-1].rsplit(".", 1)[0] + token)
        elif re.fullmatch(r"[\w.]+", token) and "." in token:
            paths.append(token)
    return paths


def test_the_migration_table_names_new_paths_that_exist_and_old_ones_that_are_gone():
    rows = [line.split("|")[1:3] for line in
            (REPO / "docs" / "migration.md").read_text().splitlines()
            if line.startswith("| `")]
    assert len(rows) > 30
    for old, new in rows:
        assert _paths(new), new
        for path in _paths(new):
            _resolve(path)  # raises when it does not exist
        for path in _paths(old):
            with pytest.raises((ImportError, AttributeError)):
                _resolve(path)


def test_tests_share_code_only_through_conftest_and_helpers():
    """Test modules import no other test module, and their names are unique
    across tests/'s folders (pytest imports them by name, without packages)."""
    modules = sorted((REPO / "tests").rglob("test_*.py"))
    names = [path.stem for path in modules]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    found = []
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            imported = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.relative_to(REPO)} imports {name}" for name in imported
                      if name.split(".")[-1].startswith(("test_", "conftest"))]
    assert not found, "\n".join(found)
