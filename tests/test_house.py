"""The house rules (DESIGN.md section 2, docs/house.md), checked on the source.

1. Imports point one way. Every module of the source tree sits in a tier;
   a module imports only from its own tier or below, and no two modules
   import each other, directly or around a loop. The graph is read with the
   ``ast`` module: package ``__init__`` files and imports inside functions
   count as much as the ones at the top of a file.
2. Size: no function over 80 lines, no file over 600 lines.

A few files are being reworked by their owners; the allow-lists at the end
name each one and why, and shrink as they are fixed.
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: Packages whose imports are checked, and those whose sizes are.
IMPORT_PACKAGES = ("netdef", "layers", "solver", "detection", "prototxt", "bench")
SIZE_PACKAGES = IMPORT_PACKAGES + ("tools",)

#: Generated files, exempt from the size rule.
GENERATED = {"netdef/caffe_pb2.py"}

MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80

#: The tiers, bottom first. A module belongs to the tier of the longest
#: prefix (whole dotted parts) that names it here.
TIERS = (
    ("netdef's low-level parts", (
        "netdef.blob", "netdef.device", "netdef.errors", "netdef.fillers", "netdef.schema",
        "netdef.caffe_pb2", "netdef.proto", "netdef.caffemodel", "netdef.snapshot_format",
        "netdef.weights")),
    ("layers", ("layers",)),
    ("the Net", ("netdef",)),       # the package (it re-exports Net), net, graph, plan, ...
    ("optimizer, detection library and networks", ("solver", "detection", "prototxt")),
    ("entry points", (
        "solver.train", "solver.test", "solver.detect", "solver.plot", "solver.schedule",
        "solver.schedule_file", "solver.schedule_state", "solver.schedule_train",
        "solver.schedule_stages", "solver.schedule_eval", "solver.session",
        "solver.train_settings", "solver.train_caffe", "solver.parse_log", "solver.visualize",
        "solver.cli", "solver.proposals", "solver.rcnn_eval",
        "bench")),
)

#: Import edges allowed for now though they close a cycle or point up,
#: each (importer, imported): the reason, to be removed by the file's owner.
ALLOWED_EDGES = {}

#: Files allowed past the size rule for now: path -> reason.
ALLOWED_SIZES = {}


# -- reading the source ---------------------------------------------------------------

def source_files(packages):
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def known_modules():
    return {module_name(p): p for p in source_files(IMPORT_PACKAGES)}


def owning_module(name, modules):
    """The longest prefix of dotted ``name`` that is one of ``modules``."""
    parts = name.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts) or None


def imported_names(node, importer, is_package):
    """Dotted names a node imports (absolute), ``from P import n`` giving
    ``P.n`` (a submodule when one exists, else an attribute of ``P``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = importer.split(".")
            base = base if is_package else base[:-1]
            base = base[:len(base) - (node.level - 1)]
            package = ".".join(base + ([node.module] if node.module else []))
        else:
            package = node.module
        return [f"{package}.{alias.name}" for alias in node.names]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module" and node.args
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return [node.args[0].value]          # importlib.import_module("a.b")
    return []


def import_graph():
    """{module: {imported module: line}} over the source tree."""
    modules = known_modules()
    graph = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, {})
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            for target in imported_names(node, name, path.name == "__init__.py"):
                found = owning_module(target, modules)
                if found and found != name:
                    edges.setdefault(found, node.lineno)
    return graph


def tier_of(module):
    best = None
    for index, (_, prefixes) in enumerate(TIERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > len(best[1]):
                    best = (index, prefix)
    return None if best is None else best[0]


def strongly_connected(graph):
    """Tarjan's components of more than one module, each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def checked_graph():
    graph = import_graph()
    return {m: {t: line for t, line in edges.items() if (m, t) not in ALLOWED_EDGES}
            for m, edges in graph.items()}


def function_lengths(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


# -- the rules ------------------------------------------------------------------------

def test_every_module_has_a_tier():
    assert [m for m in known_modules() if tier_of(m) is None] == []


def test_no_import_cycle():
    cycles = strongly_connected(checked_graph())
    assert cycles == [], "modules that import each other (directly or around a loop): " + \
        "; ".join(" <-> ".join(c) for c in cycles)


def test_imports_point_down_the_tiers():
    graph = checked_graph()
    wrong = []
    for module, edges in sorted(graph.items()):
        for target, line in sorted(edges.items()):
            if tier_of(target) > tier_of(module):
                wrong.append(f"{module} (line {line}, tier '{TIERS[tier_of(module)][0]}') imports "
                             f"{target} (tier '{TIERS[tier_of(target)][0]}')")
    assert wrong == [], "imports against the tiers:\n" + "\n".join(wrong)


def test_nothing_under_layers_imports_the_rooms_above():
    graph = import_graph()
    wrong = [f"{m} imports {t}" for m, edges in graph.items() if m.split(".")[0] == "layers"
             for t in edges if t.split(".")[0] in ("solver", "detection", "prototxt", "bench")]
    assert wrong == []


def test_allow_lists_name_what_exists():
    graph = import_graph()
    assert [e for e in ALLOWED_EDGES if e[1] not in graph.get(e[0], {})] == []
    assert [p for p in ALLOWED_SIZES if not (ROOT / p).exists()] == []


def size_problems():
    problems = []
    for path in source_files(SIZE_PACKAGES):
        relative = path.relative_to(ROOT).as_posix()
        if relative in GENERATED or relative in ALLOWED_SIZES:
            continue
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_FILE_LINES:
            problems.append(f"{relative}: {lines} lines (at most {MAX_FILE_LINES})")
        for name, line, length in function_lengths(ast.parse(text, filename=relative)):
            if length > MAX_FUNCTION_LINES:
                problems.append(f"{relative}:{line}: function {name} has {length} lines "
                                f"(at most {MAX_FUNCTION_LINES})")
    return problems


def test_no_file_or_function_too_long():
    problems = size_problems()
    assert problems == [], "split these by concern:\n" + "\n".join(problems)


# -- the checker itself ---------------------------------------------------------------

def test_relative_and_function_local_imports_are_read():
    tree = ast.parse("from . import b\nfrom .c import d\ndef f():\n    import x.y\n")
    names = [n for node in ast.walk(tree) for n in imported_names(node, "p.a", False)]
    assert sorted(names) == ["p.b", "p.c.d", "x.y"]
    tree = ast.parse("from .. import e\nimportlib.import_module('q.r')\n")
    names = [n for node in ast.walk(tree) for n in imported_names(node, "p.s.t", True)]
    assert sorted(names) == ["p.s.e", "q.r"]


@pytest.mark.parametrize("module,tier", [
    ("netdef.errors", 0), ("layers.roi_data", 1), ("netdef.net", 2), ("netdef", 2),
    ("solver.sgd", 3), ("detection.detector", 3), ("detection.evaluate", 3), ("prototxt.rfcn", 3),
    ("solver.train", 4), ("solver.schedule_file", 4), ("bench.conv", 4)])
def test_tiers(module, tier):
    assert tier_of(module) == tier


def test_cycles_are_found():
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
