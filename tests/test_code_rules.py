"""Code rules read from the source with `ast` (nothing of the project is imported, no Ray is started):

- no access to private parts of Ray, Optuna or MLflow (their `_private` modules, their underscore names, an
  underscore attribute of any object but self/cls) outside the one adapter, bickd_tune/ray_internals.py;
- an import inside a function says why on its line or the line above (a heavy or optional dependency, or a cycle);
- no import cycles among the project's modules (their module-level imports);
- layering: bickd/ imports nothing of the platform, Ray, Optuna or MLflow; bickd_tune/ nothing of the entry
  points, benchmarks or tests.
"""
from __future__ import annotations

import ast
import graphlib
import io
import tokenize
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("bickd", "bickd_tune", "platform", "benchmarks", "cluster", "tests")
MODULE_PACKAGES = ("bickd", "bickd_tune", "platform", "benchmarks", "cluster")  # the import graph's nodes
ADAPTER = ROOT / "bickd_tune" / "ray_internals.py"  # the only file allowed to touch Ray's private modules
LIBRARIES = ("ray", "optuna", "mlflow")
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def files(packages: tuple[str, ...]) -> list[Path]:
    return sorted(path for package in packages for path in (ROOT / package).rglob("*.py"))


@cache
def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:{line}"


def is_private(name: str) -> bool:
    """A single leading underscore: private by convention (dunders like __init__ are public protocol)."""
    return name.startswith("_") and not name.startswith("__")


def library_module(module: str) -> bool:
    return module.split(".")[0] in LIBRARIES


# --------------------------------------------------------------------------------- private access

def private_accesses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Import):
            found += [f"{where(path, node.lineno)}: import {a.name}" for a in node.names
                      if library_module(a.name) and any(map(is_private, a.name.split(".")))]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and library_module(node.module or ""):
            if any(map(is_private, node.module.split("."))):
                found.append(f"{where(path, node.lineno)}: from {node.module} import ...")
            found += [f"{where(path, node.lineno)}: from {node.module} import {a.name}" for a in node.names
                      if is_private(a.name)]
        elif isinstance(node, ast.Attribute) and is_private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{where(path, node.lineno)}: .{node.attr} of {ast.unparse(node.value)}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) > 1
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and is_private(node.args[1].value)):
            found.append(f"{where(path, node.lineno)}: {node.func.id}(..., {node.args[1].value!r})")
    return sorted(found, key=lambda line: int(line.split(": ", 1)[0].rpartition(":")[2]))


def test_no_private_access_to_ray_optuna_or_mlflow_outside_the_adapter():
    exempt = {ADAPTER, Path(__file__).resolve()}
    found = [line for path in files(CHECKED) if path not in exempt for line in private_accesses(path)]
    assert found == [], "private access outside bickd_tune/ray_internals.py:\n" + "\n".join(found)


def test_the_private_access_rule_catches_each_form(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from ray.autoscaler._private.util import prepare_config\n"
                      "import ray._private.utils\n"
                      "from optuna.samplers import _tpe\n"
                      "def f(searcher, self):\n"
                      "    searcher._ot_study.tell(1)\n"
                      "    getattr(searcher, '_completed_trials')\n"
                      "    return self._mine, searcher.__class__, searcher.public\n", encoding="utf-8")
    assert [line.split(": ", 1)[0] for line in private_accesses(sample)] == [
        f"sample.py:{n}" for n in (1, 2, 3, 5, 6)]


# --------------------------------------------------------------------------------- function-level imports

def comment_lines(path: Path) -> tuple[set[int], set[int]]:
    """(lines holding a comment, lines holding only a comment)."""
    text = path.read_text(encoding="utf-8")
    anywhere = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(text).readline)
                if tok.type == tokenize.COMMENT}
    lines = text.splitlines()
    return anywhere, {n for n in anywhere if lines[n - 1].lstrip().startswith("#")}


def function_imports(module: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    inside = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and in_function:
                inside.append(child)
            visit(child, in_function or isinstance(child, FUNCTIONS))
    visit(module, False)
    return sorted(inside, key=lambda n: n.lineno)


def unexplained_imports(path: Path) -> list[str]:
    """Imports inside functions with no comment on their lines or on the line above; a block of imports may
    share one comment (on the line above its first import, or beside one of them)."""
    anywhere, only = comment_lines(path)
    explained_ends: set[int] = set()
    missing = []
    for node in function_imports(tree(path)):
        own = any(n in anywhere for n in range(node.lineno, node.end_lineno + 1))
        if own or node.lineno - 1 in only or node.lineno - 1 in explained_ends:
            explained_ends.add(node.end_lineno)
        else:
            missing.append(f"{where(path, node.lineno)}: {ast.unparse(node)}")
    return missing


def test_every_import_inside_a_function_says_why():
    missing = [line for path in files(CHECKED) + [ROOT / "conftest.py"] for line in unexplained_imports(path)]
    assert missing == [], ("imports inside functions without a comment saying why (a heavy or optional "
                           "dependency, or an import cycle); move them to the top otherwise:\n" + "\n".join(missing))


# --------------------------------------------------------------------------------- import cycles

def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_imports(module: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports run when the module is imported: top level, and inside top-level if/try/with blocks."""
    found, pending = [], list(module.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            pending += [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)]
            pending += [stmt for handler in getattr(node, "handlers", []) for stmt in handler.body]
    return found


def imported_names(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the importer's package
        package = importer.split(".") if is_package else importer.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    return [f"{base}.{alias.name}" for alias in node.names]  # a submodule, or else an attribute of `base`


def import_graph(paths: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project's modules its module-level imports name."""
    def project_module(name: str) -> str | None:
        """The module a dotted name lives in: itself if it is one, else its closest enclosing module."""
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in paths.items():
        targets = {project_module(target) for node in module_level_imports(tree(path))
                   for target in imported_names(node, name, path.name == "__init__.py")}
        graph[name] = {target for target in targets if target and target != name}
    return graph


def cycle_in(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path (its first module repeated at the end), or [] when there is none."""
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        return list(err.args[1])
    return []


def test_no_import_cycles_among_the_projects_modules():
    graph = import_graph({module_name(path): path for path in files(MODULE_PACKAGES)})
    assert "bickd_tune.tuner" in graph["bickd_tune.runner"]  # the graph is built from the real imports
    cycle = cycle_in(graph)
    assert cycle == [], "import cycle among module-level imports: " + " -> ".join(reversed(cycle))


def test_the_cycle_check_finds_a_cycle_through_relative_and_from_imports(tmp_path):
    (tmp_path / "pkg").mkdir()
    modules = {"pkg": "from pkg import a\n", "pkg.a": "from . import b\n", "pkg.b": "import pkg.c\n",
               "pkg.c": "def f():\n    import pkg.a  # inside a function: not a module-level cycle\n",
               "pkg.d": "try:\n    from pkg.e import x\nexcept ImportError:\n    x = None\n",
               "pkg.e": "from pkg.d import *\n"}
    paths = {}
    for name, text in modules.items():
        path = tmp_path / (name.replace(".", "/") + ("/__init__.py" if name == "pkg" else ".py"))
        path.write_text(text, encoding="utf-8")
        paths[name] = path
    graph = import_graph(paths)
    assert graph["pkg.c"] == set() and graph["pkg.a"] == {"pkg.b"}
    assert sorted(cycle_in(graph)[:-1]) == ["pkg.d", "pkg.e"]


def test_the_comment_rule_accepts_a_reason_beside_or_above_and_refuses_a_bare_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n"
                      "def f():\n"
                      "    import ray  # heavy\n"
                      "    # optional extra\n"
                      "    import boto3\n"
                      "    from moto.server import ThreadedMotoServer\n"
                      "    x = 1\n"
                      "    import json\n", encoding="utf-8")
    assert unexplained_imports(sample) == ["sample.py:8: import json"]


# --------------------------------------------------------------------------------- layering

# What each layer must not import, anywhere in it (inside functions too): the method in bickd/ runs without
# the platform and without Ray, Optuna or MLflow; the platform does not reach into the entry points, the
# benchmarks or the tests.
FORBIDDEN = {
    "bickd": ("bickd_tune", "platform", "benchmarks", "cluster", "tests", *LIBRARIES),
    "bickd_tune": ("platform", "benchmarks", "tests"),
}


def layer_breaches(package: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in files((package,)):
        name = module_name(path)
        for node in ast.walk(tree(path)):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
                for target in imported_names(node, name, path.name == "__init__.py"):
                    if target.split(".")[0] in forbidden:
                        found.append(f"{where(path, node.lineno)} imports {target}")
    return found


def test_each_layer_imports_only_what_is_below_it():
    assert layer_breaches("bickd", FORBIDDEN["bickd"]) == []
    assert layer_breaches("bickd_tune", FORBIDDEN["bickd_tune"]) == []


def test_the_layer_rule_finds_the_imports_a_layer_has():
    # bickd_tune does import Ray: the scan must say so, or the rule above could pass by seeing nothing
    assert any("imports ray" in line for line in layer_breaches("bickd_tune", ("ray",)))
