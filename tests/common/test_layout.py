"""The layout tells the architecture: services never import the tooling, packages import without
cycles, and migrations stand alone."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def _package(module: str) -> str:
    """services.query.planner -> services.query; tools.loadtest.chaos -> tools.loadtest."""
    return ".".join(module.split(".")[:2])


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in [*ROOT.glob("services/**/*.py"), *ROOT.glob("tools/**/*.py")]:
        source = _package(_module(path))
        for imported in _imports(path):
            if imported.split(".")[0] in ("services", "tools") and _package(imported) != source:
                graph.setdefault(source, set()).add(_package(imported))
    return graph


def test_nothing_under_services_imports_the_tooling() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {imported}"
        for path in ROOT.glob("services/**/*.py")
        for imported in _imports(path)
        if imported == "tools" or imported.startswith("tools.")
    ]
    assert offenders == []


def test_packages_import_each_other_without_a_cycle() -> None:
    graph = _package_graph()
    assert graph["tools.loadtest"] >= {"services.common"}  # the walk found real edges
    visiting: list[str] = []
    done: set[str] = set()

    def visit(package: str) -> None:
        assert package not in visiting, " -> ".join([*visiting[visiting.index(package) :], package])
        if package in done:
            return
        visiting.append(package)
        for imported in sorted(graph.get(package, ())):
            visit(imported)
        visiting.pop()
        done.add(package)

    for package in sorted(graph):
        visit(package)


def test_shared_code_depends_on_no_service() -> None:
    assert _package_graph().get("services.common", set()) == set()


def test_migrations_import_no_live_code() -> None:
    """A revision must keep working as it was applied while the code moves on."""
    offenders = [
        f"{path.name} imports {imported}"
        for path in (ROOT / "alembic" / "versions").glob("*.py")
        for imported in _imports(path)
        if imported.split(".")[0] in ("services", "tools")
    ]
    assert offenders == []


def test_the_production_image_copies_no_tooling() -> None:
    copied = [line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")]
    assert "services" in copied
    assert not any(source.startswith(("tools", "tests", ".")) for source in copied)
