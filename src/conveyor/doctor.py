"""Prerequisite checks: what is installed, what the chosen environment needs, and the fix for each gap."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from conveyor.aws import credential_source
from conveyor.config import declared_pythons, read_pyproject
from conveyor.errors import CommandFailed, ToolMissing
from conveyor.runner import Runner

SETUP = "conveyor setup (as root)"
NEEDS = {
    "compose": {"git", "docker engine", "compose v2", "buildx"},
    "ecs": {"git", "docker engine", "buildx", "aws"},
    "k8s": {"git", "docker engine", "buildx", "kubectl"},
}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str
    needed: bool = False


def python_versions(pyproject: Path) -> list[str]:
    """The Python versions the project declares (its "Programming Language :: Python :: 3.X" classifiers)."""
    return declared_pythons(read_pyproject(pyproject.parent))


def _query(runner: Runner, argv: list[str]) -> str | None:
    try:
        result = runner.run(argv, capture=True, mutates=False, check=True, timeout=20)
    except (ToolMissing, CommandFailed):
        return None
    return result.stdout.strip()


def run_checks(
    runner: Runner, root: Path, target: str, environ: Mapping[str, str], aws_endpoint: str
) -> list[Check]:
    """Probe every prerequisite; ``needed`` marks what ``target`` cannot work without."""
    needs = NEEDS.get(target, set())
    checks: list[Check] = []
    for version in python_versions(root / "pyproject.toml"):
        found = shutil.which(f"python{version}")
        checks.append(
            Check(
                f"python{version}",
                found is not None,
                found or "not on PATH (the nox matrix needs it)",
                "pyenv install "
                + version
                + " and pyenv global ... (our machines: pyenv global 3.11.7 3.10.13 3.12.1 3.13.0)",
            )
        )
    git = _query(runner, ["git", "--version"])
    checks.append(Check("git", git is not None, git or "missing", "apt-get install git", "git" in needs))
    server = _query(runner, ["docker", "version", "--format", "{{.Server.Version}}"])
    checks.append(
        Check(
            "docker engine",
            bool(server),
            f"server {server}" if server else "no engine answering (is dockerd running? DOCKER_HOST?)",
            SETUP + ", or start dockerd",
            "docker engine" in needs,
        )
    )
    compose = _query(runner, ["docker", "compose", "version", "--short"])
    v2 = bool(compose) and not (compose or "").startswith("1.")
    checks.append(Check("compose v2", v2, compose or "missing", SETUP, "compose v2" in needs))
    buildx = _query(runner, ["docker", "buildx", "version"])
    checks.append(
        Check(
            "buildx",
            bool(buildx),
            (buildx or "missing").split(" ")[-2:][0] if buildx else "missing",
            SETUP,
            "buildx" in needs,
        )
    )
    kubectl = _query(runner, ["kubectl", "version", "--client", "-o", "json"])
    kver = json.loads(kubectl)["clientVersion"]["gitVersion"] if kubectl else None
    checks.append(
        Check(
            "kubectl",
            kver is not None,
            kver or "missing",
            "apt-get install -t trixie kubectl",
            "kubectl" in needs,
        )
    )
    aws = credential_source(environ, aws_endpoint)
    checks.append(
        Check(
            "aws",
            aws is not None,
            aws or "no credentials and no endpoint",
            "set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or ecs.endpoint_url",
            "aws" in needs,
        )
    )
    return checks
