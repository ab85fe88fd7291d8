"""The kit knows nothing of the reference app: its names live in the project's own config.

Any Python service adopts conveyor by configuration alone, so `src/conveyor` may not mention the
reference app (its module `app`, its image `conveyor-demo`, its `app/` paths, the `web`/`migrate`
service names) - except in the kit defaults (`conveyor.config.SCHEMA`), which a project overrides.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

KIT = Path(__file__).resolve().parents[2] / "src" / "conveyor"
TEXT_PATTERNS = {
    "the reference image name": re.compile(r"conveyor-demo"),
    "the reference app's module": re.compile(r"python3? -m app\b"),
    "a path into the reference app": re.compile(r"(?<![\w./${}-])app/"),
}
# String constants that name the reference app's module or its services.
NAMES = {"app", "web", "migrate", "worker"}


def kit_files() -> list[Path]:
    return sorted(p for p in KIT.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            ids.add(id(first.value))
    return ids


def _defaults(tree: ast.AST) -> set[int]:
    """The nodes of the kit defaults block (``SCHEMA = {...}``), exempt by design."""
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == "SCHEMA" for t in targets):
            return {id(n) for n in ast.walk(node)}
    return set()


def test_the_kit_has_files_to_check() -> None:
    assert len([p for p in kit_files() if p.suffix == ".py"]) > 20


@pytest.mark.parametrize("path", kit_files(), ids=lambda p: str(p.relative_to(KIT)))
def test_no_mention_of_the_reference_app(path: Path) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return
    exempt_lines: set[int] = set()
    found: list[str] = []
    if path.suffix == ".py":
        tree = ast.parse(text)
        docstrings, defaults = _docstrings(tree), _defaults(tree)
        for node in ast.walk(tree):
            if id(node) in defaults:
                if isinstance(node, ast.Assign):
                    exempt_lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
                continue
            named = isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in NAMES
            if named and id(node) not in docstrings:
                found.append(f"line {node.lineno}: the string {node.value!r}")
    for number, line in enumerate(text.splitlines(), 1):
        if number in exempt_lines:
            continue
        for what, pattern in TEXT_PATTERNS.items():
            if pattern.search(line):
                found.append(f"line {number}: {what}: {line.strip()}")
    assert not found, f"{path.relative_to(KIT)} knows the reference app:\n" + "\n".join(found)
