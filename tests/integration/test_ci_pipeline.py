"""`invoke ci` on a copy of this project: real nox sessions, in parallel, with a summary table."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Project
from tests.integration.conftest import copy_project

pytestmark = pytest.mark.pipeline


def table(stdout: str) -> dict[str, dict[str, str]]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("stage "))
    rows = {}
    for line in lines[start + 1 :]:
        parts = line.split()
        if len(parts) >= 5:
            rows[parts[0]] = {"status": parts[1], "start": parts[3].rstrip("s"), "end": parts[4].rstrip("s")}
    return rows


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return copy_project(tmp_path_factory.mktemp("ci"), base="python:3.12-slim")


def test_only_lint_and_typecheck_run_in_parallel(project: Project) -> None:
    result = project.invoke("ci", "--only", "lint,typecheck", "--jobs", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    rows = table(result.stdout)
    assert set(rows) == {"lint", "typecheck"}
    lint, typecheck = rows["lint"], rows["typecheck"]
    assert (lint["status"], typecheck["status"]) == ("passed", "passed")
    # Overlapping windows: each started before the other ended.
    assert float(lint["start"]) < float(typecheck["end"])
    assert float(typecheck["start"]) < float(lint["end"])
    assert (project.root / "build/ci/lint.log").read_text().count("Session lint was successful") == 1


def test_a_failing_stage_skips_its_dependents_and_exits_nonzero(project: Project) -> None:
    bad = project.root / "src/conveyor/_lint_bait.py"
    bad.write_text("import os\n")  # F401: unused import
    try:
        result = project.invoke("ci", "--skip", "tests,security", "--jobs", "2")
    finally:
        bad.unlink()
    assert result.returncode == 1
    rows = table(result.stdout)
    assert rows["lint"]["status"] == "failed"
    assert rows["typecheck"]["status"] == "passed"
    assert rows["build"]["status"] == "skipped"
    assert result.stderr.strip() == "conveyor: pipeline failed: lint (logs in build/ci/)"
    assert "F401" in (project.root / "build/ci/lint.log").read_text()


def test_hand_edited_ci_file_fails_check_with_a_diff(project: Project) -> None:
    path = project.root / ".github/workflows/ci.yml"
    saved = path.read_text()
    path.write_text(saved.replace("invoke lint", "invoke lint && echo sneaky"))
    try:
        result = project.invoke("ci.check")
    finally:
        path.write_text(saved)
    assert result.returncode == 1
    assert "-    - run: invoke lint && echo sneaky" in result.stdout
    assert "+    - run: invoke lint" in result.stdout
    assert result.stderr.strip().startswith("conveyor: .github/workflows/ci.yml differ from ci/pipeline.yaml")
    assert project.invoke("ci.check").returncode == 0


def test_rendered_files_pass_their_schemas(project: Project, tmp_path: Path) -> None:
    result = project.invoke("ci.check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok -- validation done") == 2
