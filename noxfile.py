"""Nox sessions: the same ones `invoke lint/typecheck/test/security` and CI call."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["lint", "typecheck", "tests", "rules", "integration", "security"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHONS = nox.project.python_versions(PYPROJECT)
PRIMARY = "3.12"
# Tests needing an engine run once, in `integration`; the scanners' tests run in `security`, where the
# scanners are installed (checkov pins an older botocore that must not leak into the other sessions).
ENGINE_MARKERS = ("docker", "aws", "k8s", "pipeline")
TOOL_MARKERS = ("scanners",)
# Unit-test modules whose `scanners` tests check what conveyor renders (k8s manifests with the hashed
# config names, the expanded CloudFormation template): collected by `security`, next to tests/security.
SCANNED_ELSEWHERE = ("tests/unit/test_k8s_fake.py", "tests/unit/test_infra.py")
LINT_PATHS = ["src", "app", "tests", "benchmarks", "tasks.py", "noxfile.py"]
# Prometheus rules (rules/*.yaml), their promtool unit tests (tests/*.yaml), prometheus.yml, alertmanager.yml
RULES = "monitoring"


def _install(session: nox.Session) -> None:
    session.install("-e", ".[dev]")


@nox.session(python=PRIMARY)
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)


@nox.session(python=PRIMARY)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/conveyor."""
    _install(session)
    session.run("mypy", "--strict", "src/conveyor")


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Unit tests and the app's tests against real Postgres/Redis, on every supported Python."""
    _install(session)
    reports = [
        f"--junitxml=reports/junit-{session.python}.xml",
        "--cov=conveyor",
        "--cov=app",
        f"--cov-report=xml:reports/coverage-{session.python}.xml",
    ]
    selection = " and ".join(f"not {marker}" for marker in (*ENGINE_MARKERS, *TOOL_MARKERS))
    args = session.posargs or ["-m", selection, "-p", "no:cacheprovider"]
    session.run("pytest", *reports, *args, env={"COVERAGE_FILE": f".coverage.{session.python}"})


@nox.session(python=PRIMARY)
def integration(session: nox.Session) -> None:
    """Tests against real engines (docker, compose v2, registry, moto) and whole-pipeline runs."""
    _install(session)
    args = session.posargs or ["-m", " or ".join(ENGINE_MARKERS), "-p", "no:cacheprovider"]
    session.run("pytest", *args)


@nox.session(python=PRIMARY)
def security(session: nox.Session) -> None:
    """Security scanners (bandit, pip-audit, hadolint, checkov) with a summary; `-- --allow-unverified`."""
    session.install("-e", ".[scanners]", "pytest", "kubernetes-validate")
    session.run(
        "pytest",
        "tests/security",
        *SCANNED_ELSEWHERE,
        "-m",
        " or ".join(TOOL_MARKERS),
        "-p",
        "no:cacheprovider",
    )
    session.run("python", "-m", "conveyor.security", *session.posargs)


@nox.session(python=False)
def rules(session: nox.Session) -> None:
    """promtool check and unit tests of the rules in monitoring/; the Prometheus and Alertmanager configs."""
    import glob
    import os
    import shutil

    missing = [tool for tool in ("promtool", "amtool") if shutil.which(tool) is None]
    if missing:
        hint = "apt-get install prometheus prometheus-alertmanager"
        if os.environ.get("CI") == "true":
            session.error(f"CI=true but {' and '.join(missing)} not found ({hint})")
        session.skip(f"{' and '.join(missing)} not found ({hint})")
    session.run("promtool", "check", "rules", *sorted(glob.glob(f"{RULES}/rules/*.yaml")), external=True)
    session.run("promtool", "test", "rules", *sorted(glob.glob(f"{RULES}/tests/*.yaml")), external=True)
    session.run("promtool", "check", "config", "--syntax-only", f"{RULES}/prometheus.yml", external=True)
    session.run("amtool", "check-config", f"{RULES}/alertmanager.yml", external=True)
