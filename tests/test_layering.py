"""The import graph of the package (issue 35): no circle, every arrow pointing down a floor, the
tools beside each other independent, and the on-device runtime free of TensorFlow.

Every import counts, those inside functions too: a lazy import is still a dependency.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "tf_fusionnet")

# Floors, lowest first: a module may import its own floor's modules and lower ones only.
FLOORS = [
    # The preset table is architecture arguments (no data), which the models' from_preset reads.
    ("bottom", ["tf_fusionnet.version", "tf_fusionnet.utils", "tf_fusionnet.portable", "tf_fusionnet.console",
                "tf_fusionnet.exits", "tf_fusionnet.models", "tf_fusionnet.presets",
                "tf_fusionnet.runtime"]),
    ("data", ["tf_fusionnet.data"]),
    ("the run folder", ["tf_fusionnet.runs"]),
    ("tools", ["tf_fusionnet.training", "tf_fusionnet.evaluation", "tf_fusionnet.export", "tf_fusionnet.loading",
               "tf_fusionnet.launch"]),
    ("command lines", ["tf_fusionnet.cli", "tf_fusionnet"]),
]
# Tools of one floor that must not import each other (the tool that a key may not import).
INDEPENDENT = {"tf_fusionnet.export": ["tf_fusionnet.evaluation", "tf_fusionnet.training"],
               "tf_fusionnet.evaluation": ["tf_fusionnet.export", "tf_fusionnet.training"],
               "tf_fusionnet.training": ["tf_fusionnet.evaluation", "tf_fusionnet.export"]}
RUNTIME = "tf_fusionnet.runtime"


def _modules() -> dict[str, str]:
    found = {}
    for dirpath, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = path
    return found


def _imports(path: str, module: str, modules: dict[str, str]) -> set[str]:
    """Every module of the package (and every outside top-level package) that ``path`` imports."""
    tree = ast.parse(open(path).read(), path)
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] != "tf_fusionnet":
                targets.add(name.split(".")[0])
                continue
            while name not in modules and "." in name:
                name = name.rsplit(".", 1)[0]
            if name != module:
                targets.add(name)
    return targets


def _graph():
    modules = _modules()
    return {m: _imports(p, m, modules) for m, p in modules.items()}


def _owner(module: str, prefixes) -> str | None:
    matches = [p for p in prefixes if module == p or module.startswith(p + ".")]
    return max(matches, key=len) if matches else None


def _floor(module: str) -> int:
    ranked = [(len(p), i) for i, (_, prefixes) in enumerate(FLOORS) for p in prefixes
              if module == p or module.startswith(p + ".")]
    assert ranked, f"{module} is on no floor: add it to FLOORS"
    return max(ranked)[1]


def test_no_module_imports_one_that_imports_it_back():
    graph = _graph()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


def test_every_import_points_down_or_along_a_floor():
    upward = [(m, t) for m, targets in _graph().items() for t in targets
              if t.startswith("tf_fusionnet") and _floor(t) > _floor(m)]
    assert not upward, "imports pointing up a floor: " + ", ".join(f"{m} -> {t}" for m, t in upward)


@pytest.mark.parametrize("tool", sorted(INDEPENDENT))
def test_the_tools_do_not_import_each_other(tool):
    crossing = [(m, t) for m, targets in _graph().items() if _owner(m, [tool]) and not _owner(m, [RUNTIME])
                for t in targets if _owner(t, INDEPENDENT[tool]) and not _owner(t, [RUNTIME])]
    assert not crossing, ", ".join(f"{m} -> {t}" for m, t in crossing)


def test_the_on_device_runtime_imports_neither_tensorflow_nor_the_rest_of_the_package():
    graph = _graph()
    runtime = [m for m in graph if _owner(m, [RUNTIME])]
    assert len(runtime) >= 8
    for module in runtime:
        assert not graph[module] & {"tensorflow", "keras", "tf_keras", "tensorflow_datasets"}, module
        outside = {t for t in graph[module] if t.startswith("tf_fusionnet") and not _owner(t, [RUNTIME])}
        assert not outside, f"{module} imports {outside}: a bundle carries the runtime package only"
    # The entry script imports the installed runtime only when it runs outside a bundle.
    assert {t for t in graph["tf_fusionnet.export.cascade_runner"] if t.startswith("tf_fusionnet")} == {RUNTIME}


def test_the_graph_is_read_for_real():
    graph = _graph()  # a check that sees no edges would pass every test above
    assert "tf_fusionnet.runs.folder" in graph["tf_fusionnet.training.trainer"]
    assert "tf_fusionnet.exits" in graph["tf_fusionnet.export.bundle"]
    assert "tensorflow" in graph["tf_fusionnet.training.trainer"]
    assert "tf_fusionnet.runtime.manifest" in graph["tf_fusionnet.runtime.runner"]  # relative imports too


def test_every_link_in_the_docs_names_a_file_of_the_repository():
    """The README, docs/ and the results' notes are a reference: each relative link resolves."""
    import glob
    import re

    pages = [os.path.join(ROOT, "README.md"), *glob.glob(os.path.join(ROOT, "docs", "*.md")),
             *glob.glob(os.path.join(ROOT, "benchmarks", "results", "**", "*.md"), recursive=True)]
    links = [(page, target) for page in pages for target in re.findall(r"\]\(([^)\s]+)\)", open(page).read())
             if "://" not in target and not target.startswith("#")]
    assert len(links) > 30
    broken = [(os.path.relpath(page, ROOT), target) for page, target in links
              if not os.path.exists(os.path.join(os.path.dirname(page), target.split("#")[0]))]
    assert not broken, broken
