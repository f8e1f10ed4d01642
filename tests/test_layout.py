"""The layout of worker/ as docs/development.md ("Layout") tells it: each sub-package
imports only the layers below it, and no module imports itself round a circle (lazy
imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = "worker"
# package -> the packages it may import (besides itself); commands/ may import any.
ALLOWED: dict[str, set[str]] = {
    "worker.rrule": set(),
    "worker.rules": {"worker.rrule", CORE},
    CORE: {"worker.rules", "worker.rrule"},
    "worker.dapr": {CORE},
    "worker.server": {CORE, "worker.dapr"},
}


def modules() -> dict[str, Path]:
    found = {}
    for top in ("worker", "devsidecar"):
        for path in (ROOT / top).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project's modules `path` imports, wherever the import statement is."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out.update(n for n in names if n in known)
    return out


def package(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "worker":
        return parts[0]
    if len(parts) > 1 and (ROOT / "worker" / parts[1]).is_dir():
        return f"worker.{parts[1]}"
    return CORE


def test_each_package_imports_only_the_layers_below_it() -> None:
    known = modules()
    wrong = []
    for name, path in known.items():
        mine = package(name)
        if mine not in ALLOWED or name == "worker.__main__":  # the entry point calls the CLI
            continue
        for other in imports(path, known):
            theirs = package(other)
            if theirs != mine and theirs not in ALLOWED[mine]:
                wrong.append(f"{name} imports {other}")
    assert not wrong, "\n".join(wrong)


def test_no_import_circle() -> None:
    known = modules()
    graph = {name: imports(path, known) - {name} for name, path in known.items()}
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            circle = " -> ".join([*trail[trail.index(name):], name])
            raise AssertionError(f"import circle: {circle}")
        if name in done:
            return
        for other in sorted(graph[name]):
            visit(other, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert len(graph) > 40
