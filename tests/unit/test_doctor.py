"""doctor: reads the declared Pythons and fails only for what the chosen target needs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from conveyor.doctor import python_versions
from tests.conftest import REPO, Project


def test_python_versions_come_from_pyproject_classifiers() -> None:
    assert python_versions(REPO / "pyproject.toml") == ["3.10", "3.11", "3.12", "3.13"]


def test_doctor_fails_naming_what_the_target_needs(project: Project, tmp_path: Path) -> None:
    # A PATH with only this Python: git and docker are gone, so a compose environment cannot work.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python").symlink_to(sys.executable)
    result = project.invoke("doctor", env={"PATH": str(bindir), "HOME": os.environ.get("HOME", "/root")})
    assert result.returncode == 1
    assert "docker engine  MISSING" in result.stdout
    assert "fix: conveyor setup" in result.stdout
    assert result.stderr.strip().splitlines() == [
        "conveyor: environment local needs: git, docker engine, compose v2, buildx"
    ]
