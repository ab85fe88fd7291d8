"""lint, typecheck, test, security: each calls the nox session of the same name, so local = CI."""

from __future__ import annotations

from invoke.context import Context

from conveyor.tasks._base import make_runner, project_root, task


def _nox(c: Context, session: str, posargs: str = "", *extra: str) -> None:
    argv = ["nox", "-s", session, *extra]
    if posargs:
        import shlex

        argv += ["--", *shlex.split(posargs)]
    make_runner(c).run(argv, cwd=project_root())


@task
def lint(c: Context) -> None:
    """Lint the project and check its formatting (nox -s lint)."""
    _nox(c, "lint")


@task
def typecheck(c: Context) -> None:
    """Type-check the project (nox -s typecheck)."""
    _nox(c, "typecheck")


@task(
    help={"python": "one Python version (e.g. 3.12) instead of the whole matrix", "pytest": "args for pytest"}
)
def test(c: Context, python: str = "", pytest: str = "") -> None:
    """Run the tests on every declared Python (nox -s tests)."""
    if python:
        from conveyor.config import declared_pythons, read_pyproject
        from conveyor.errors import UsageError

        matrix = declared_pythons(read_pyproject(project_root()))
        if matrix and python not in matrix:
            raise UsageError(
                f"--python {python}: not in the test matrix ({', '.join(matrix)}, from the "
                "`Programming Language :: Python :: 3.X` classifiers of pyproject.toml)"
            )
    _nox(c, f"tests-{python}" if python else "tests", pytest)


@task(help={"allow_unverified": "pass when a scanner could not verify (pip-audit service unreachable)"})
def security(c: Context, allow_unverified: bool = False) -> None:
    """Run the security scanners with a summary (nox -s security)."""
    _nox(c, "security", "--allow-unverified" if allow_unverified else "")
