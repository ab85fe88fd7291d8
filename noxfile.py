"""Nox sessions: the same ones `invoke lint/typecheck/test/security` and CI call."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import nox

# uv creates and fills virtualenvs in a fraction of pip's time; plain venv + pip where uv is not installed.
nox.options.default_venv_backend = "uv|venv"
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


# What a session's installs depend on: when none of these changed, a reused virtualenv is not reinstalled
# (the project is installed editable, so source edits need no install). `nox --no-reuse-existing-virtualenvs`
# (or removing .nox/) starts over; CONVEYOR_NOX_INSTALL=always installs every time (benchmarks/loop.py's
# "before" run).
INSTALL_INPUTS = ("pyproject.toml", "setup.cfg", "setup.py", "uv.lock", "app/requirements.lock")
STAMP = ".conveyor-install"


def install_stamp(session: nox.Session, args: tuple[str, ...]) -> str:
    """A digest of the install arguments, the backend, the interpreter and the files the install reads."""
    digest = hashlib.sha256()
    venv = session.virtualenv
    backend = getattr(venv, "venv_backend", "none")
    digest.update(f"{backend}\0{session.python}\0{chr(0).join(args)}\0".encode())
    for name in INSTALL_INPUTS:
        path = Path(name)
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"-") + b"\0")
    return digest.hexdigest()


def install(session: nox.Session, *args: str) -> None:
    """``session.install(*args)`` unless this virtualenv already holds exactly that install (same stamp)."""
    location = getattr(session.virtualenv, "location", None)
    stamp = Path(location) / STAMP if location else None
    wanted = install_stamp(session, args)
    always = os.environ.get("CONVEYOR_NOX_INSTALL") == "always"
    if not always and stamp is not None and stamp.is_file() and stamp.read_text().strip() == wanted:
        session.log(f"install skipped: {' '.join(args)} unchanged since the last install ({STAMP})")
        return
    if stamp is not None:
        stamp.unlink(missing_ok=True)  # a failed install must not leave the old stamp behind
    if getattr(session.virtualenv, "venv_backend", "") == "uv" and "-e" in args:
        # uv keeps an installed editable project as it is; metadata changes (entry points) need a rebuild
        args = (*args, "--reinstall-package", PYPROJECT["project"]["name"])
    session.install(*args)
    if stamp is not None:
        stamp.write_text(wanted + "\n")


def _install(session: nox.Session) -> None:
    install(session, "-e", ".[dev]")


@nox.session(python=PRIMARY)
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    install(session, "ruff")
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
    env = {"COVERAGE_FILE": f".coverage.{session.python}"}
    if tuple(map(int, str(session.python).split("."))) >= (3, 12):
        env["COVERAGE_CORE"] = "sysmon"  # PEP 669 monitoring: a third of the tracer's cost, same line data
    session.run("pytest", *reports, *args, env=env)


@nox.session(python=PRIMARY)
def integration(session: nox.Session) -> None:
    """Tests against real engines (docker, compose v2, registry, moto) and whole-pipeline runs."""
    _install(session)
    args = session.posargs or ["-m", " or ".join(ENGINE_MARKERS), "-p", "no:cacheprovider"]
    session.run("pytest", *args)


@nox.session(python=PRIMARY)
def security(session: nox.Session) -> None:
    """Security scanners (bandit, pip-audit, hadolint, checkov) with a summary; `-- --allow-unverified`."""
    install(session, "-e", ".[scanners]", "pytest", "kubernetes-validate")
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
