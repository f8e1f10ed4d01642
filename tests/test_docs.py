"""The docs against the code: README.md and docs/ say what the repository has.

Links between the docs resolve (files and headings); every setting and metric is
documented; every test the guarantees name exists; the README's walkthrough
publishes where the development sidecar listens; and nothing in the docs or the
project's own files cites a document outside the repository.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from worker.metrics import Metrics
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
DOC_FILES = sorted([README, *DOCS.glob("*.md")])

# Citations of a working note kept outside the repository: users have only the repo.
# (Built from pieces so that this file does not match itself.)
OUTSIDE = (re.compile("contract " + "§", re.I), re.compile(r"\.\./" + "shared"),
           re.compile(r"\b(contract|dapr-http|style)\.md\b"))
# The project's own files that may carry such a citation in a comment, a docstring
# or a metric's help text (which /metrics shows).
OWN_FILES = sorted({
    *DOC_FILES, ROOT / "Makefile", ROOT / "Dockerfile", ROOT / "pyproject.toml",
    *(p for d in ("worker", "devsidecar", "deploy", "components", "run", "bench", "tests", "e2e")
      for p in (ROOT / d).rglob("*")
      if p.is_file() and p.suffix in (".py", ".md", ".yaml", ".yml", ".json", ".sql", ".lua")
      and "__pycache__" not in p.parts),
})

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else _HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return _LINK.findall(text)


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(path: Path) -> None:
    problems = []
    for target in links(path):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{target}: no such file")
            continue
        if ROOT not in dest.parents and dest != ROOT:
            problems.append(f"{target}: outside the repository")
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading with that anchor in {dest.name}")
    assert not problems, "\n".join(problems)


def test_the_docs_link_each_other() -> None:
    readme_links = {t.partition("#")[0] for t in links(README)}
    for doc in DOCS.glob("*.md"):
        assert f"docs/{doc.name}" in readme_links, f"README does not link docs/{doc.name}"


@pytest.mark.parametrize("path", OWN_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_outside_the_repository_is_cited(path: Path) -> None:
    if path == Path(__file__).resolve():
        return
    text = path.read_text(encoding="utf-8", errors="replace").replace("\\u00a7", "§")
    for number, line in enumerate(text.splitlines(), 1):
        for pattern in OUTSIDE:
            assert not pattern.search(line), f"{path.name}:{number}: {line.strip()}"


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 100, f"README.md has {len(lines)} lines: move the detail to docs/"
    head = "\n".join(lines[:15])
    assert "make run" in head and "make test" in head


def test_readme_walkthrough_publishes_where_the_dev_sidecar_listens() -> None:
    fields = Settings.model_fields  # the defaults, whatever this environment sets
    url = (f"http://127.0.0.1:{fields['dapr_http_port'].default}/v1.0/publish/"
           f"{fields['pubsub'].default}/{fields['task_topic'].default}")
    readme = README.read_text(encoding="utf-8")
    assert url in readme
    assert ".venv/bin/reminder-worker --explain me 1" in readme


def env_names() -> set[str]:
    """The environment names of every setting (aliases included)."""
    from pydantic import AliasChoices

    prefix = str(Settings.model_config.get("env_prefix", "") or "")
    names: set[str] = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, str):
            names.add(alias.upper())
        elif isinstance(alias, AliasChoices):
            names.update(a.upper() for a in alias.choices if isinstance(a, str))
        else:
            names.add((field.alias or prefix + field_name).upper())
    return names


def test_every_setting_is_documented() -> None:
    events = (DOCS / "events.md").read_text(encoding="utf-8")
    table = events[events.index("## Settings"):events.index("## HTTP surface")]
    missing = sorted(n for n in env_names() if f"`{n}`" not in table)
    assert not missing, f"settings missing from docs/events.md: {missing}"


def test_every_metric_is_documented() -> None:
    registry = CollectorRegistry()
    Metrics.create(registry, process=False)
    operations = (DOCS / "operations.md").read_text(encoding="utf-8")
    names = []
    for family in registry.collect():
        names.append(family.name + ("_total" if family.type == "counter" else ""))
    assert len(names) >= 8
    missing = [n for n in names if f"`{n}`" not in operations]
    assert not missing, f"metrics missing from docs/operations.md: {missing}"


def test_the_tests_the_guarantees_name_exist() -> None:
    text = (DOCS / "guarantees.md").read_text(encoding="utf-8")
    current: Path | None = None
    named = 0
    for m in re.finditer(r"`(tests/[\w/]+\.py)?::(\w+)`", text):
        if m.group(1):
            current = ROOT / m.group(1)
        assert current is not None, f"::{m.group(2)} names no file"
        source = current.read_text(encoding="utf-8")
        assert re.search(rf"^(async )?def {m.group(2)}\(", source, re.M), (
            f"{current.relative_to(ROOT)}::{m.group(2)} does not exist")
        named += 1
    assert named >= 40
