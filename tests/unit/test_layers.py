"""The import graph keeps the layers apart (read from the source, lazy imports included):

    mixture  <-  wire  <-  kafka_common  <-  stream_app, trainer, producer

- `mixture/` (the model) imports nothing of the project outside itself;
- `wire/` (the record formats) imports only `mixture`;
- `kafka_common/` never imports a process (`stream_app`, `trainer`, `producer`);
- the processes never import one another, nor the test and benchmark code;
- Faust is imported only by the Faust app's own modules, so everything else in the worker
  (record path, model holder, metrics) runs and is tested without it;
- no module imports a module that imports it back (directly or through others).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT, parse_source

PACKAGES = ("mixture", "wire", "kafka_common", "stream_app", "trainer", "producer")
#: What each package may import of the project, besides itself.
ALLOWED = {
    "mixture": set(),
    "wire": {"mixture"},
    "kafka_common": {"mixture", "wire"},
    "stream_app": {"mixture", "wire", "kafka_common"},
    "trainer": {"mixture", "wire", "kafka_common"},
    "producer": {"mixture", "wire", "kafka_common"},
}
PROJECT = {*PACKAGES, "support", "bench", "tests"}
#: The Faust app's modules: the only ones that may import Faust (or its `mode` library).
FAUST_MODULES = {
    "stream_app.app",
    "stream_app.agents",
    "stream_app.views",
    "stream_app.topics",
    "stream_app.faust_sensor",
}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of its code (absolute names)."""
    names: set[str] = set()
    for node in ast.walk(parse_source(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (`from m import f` counts as importing m)."""
    modules = {
        _module(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }

    def resolve(name: str) -> str | None:
        if name in modules:
            return name
        parent = name.rpartition(".")[0]
        if parent in modules:
            return parent
        return name if name.split(".")[0] in PROJECT else None

    return {
        name: {m for m in map(resolve, _imports(path)) if m is not None and m != name}
        for name, path in modules.items()
    }


GRAPH = _graph()


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_the_layers_below_it(package):
    wrong = sorted(
        f"{name} imports {imported}"
        for name, imported_names in GRAPH.items()
        if name.split(".")[0] == package
        for imported in imported_names
        if imported.split(".")[0] not in {package, *ALLOWED[package]}
    )
    assert wrong == []


def test_only_the_faust_app_imports_faust():
    wrong = sorted(
        f"{_module(path)} imports {name}"
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        for name in _imports(path)
        if name.split(".")[0] in {"faust", "mode"} and _module(path) not in FAUST_MODULES
    )
    assert wrong == []


def test_no_module_imports_itself_back():
    cycles = []
    for start in GRAPH:
        seen, todo = set(), list(GRAPH[start])
        while todo:
            name = todo.pop()
            if name == start:
                cycles.append(start)
                break
            if name not in seen:
                seen.add(name)
                todo.extend(GRAPH.get(name, ()))
    assert cycles == []


def test_the_graph_sees_the_arrows_it_checks():
    """The checks above would pass on an empty graph: this one fails if the parsing breaks."""
    assert "stream_app.record_path" in GRAPH["stream_app.worker"]
    assert "mixture.params" in GRAPH["kafka_common.params_topic"]
    assert "mixture.fit" in GRAPH["kafka_common.jax_cache"]  # a lazy import, inside a function


def test_every_package_is_installed_and_in_the_image():
    """A new package must reach `pip install` (pyproject) and the service image (Dockerfile)."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert [p for p in PACKAGES if f'"{p}*"' not in pyproject] == []
    assert [p for p in PACKAGES if f"COPY {p} ./{p}" not in dockerfile] == []
