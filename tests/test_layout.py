"""The house rules of the layout, read from the imports (issue: every piece of code in the one room
where it belongs): services share nothing but events and the common packages; the common
packages import no service; the CLI stands above all of them; no import circles."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shared", "rendering", "services", "devtools", "uanet_cli")
# Beyond this a service's module wants splitting by what it does (migrations are generated,
# not read).
MOST_LINES = 500


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[str]:
    """The project modules ``name`` imports, wherever in the file (a lazy import counts too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target in MODULES and target != name:
                yield target


GRAPH = {name: set(_imports(name, path)) for name, path in MODULES.items()}


def _service(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "services" and len(parts) > 1 else None


def test_no_service_imports_another() -> None:
    crossings = [
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if _service(module) and _service(target) and _service(module) != _service(target)
    ]
    assert crossings == []


def test_the_common_packages_import_no_service_and_no_tool() -> None:
    upward = [
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if module.split(".")[0] in ("shared", "rendering")
        for target in targets
        if target.split(".")[0] in ("services", "devtools", "uanet_cli")
    ]
    assert upward == []
    # shared is below rendering too: the renderer uses the events, never the other way round.
    assert not [
        m
        for m, ts in GRAPH.items()
        if m.startswith("shared") and any(t.startswith("rendering") for t in ts)
    ]


def test_no_import_circles() -> None:
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                circles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert circles == []


def test_every_service_module_reads_at_once() -> None:
    long = {
        name: lines
        for name, path in MODULES.items()
        if name.startswith("services.")
        and (lines := len(path.read_text().splitlines())) > MOST_LINES
    }
    assert long == {}
