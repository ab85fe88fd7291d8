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


@task
def rules(c: Context) -> None:
    """Check the Prometheus rules and run their promtool unit tests (nox -s rules)."""
    _nox(c, "rules")


@task(
    help={
        "python": "one Python version (e.g. 3.12) instead of the whole matrix",
        "pytest": "args for pytest",
        "jobs": "matrix sessions run side by side (0: all of them); 1: one after another",
    }
)
def test(c: Context, python: str = "", pytest: str = "", jobs: int = 0) -> None:
    """Run the tests on every declared Python, side by side, with one summary (nox -s tests-3.X)."""
    import shlex

    from conveyor.config import declared_pythons, read_pyproject
    from conveyor.errors import UsageError

    if jobs < 0:
        raise UsageError(f"--jobs {jobs}: expected 1 or more sessions at once (0: all of them)")
    root = project_root()
    matrix = declared_pythons(read_pyproject(root))
    if python:
        if matrix and python not in matrix:
            raise UsageError(
                f"--python {python}: not in the test matrix ({', '.join(matrix)}, from the "
                "`Programming Language :: Python :: 3.X` classifiers of pyproject.toml)"
            )
        _nox(c, f"tests-{python}", pytest)
        return
    if not matrix:  # no classifiers: the noxfile's own `tests` session decides
        _nox(c, "tests", pytest)
        return
    from conveyor import matrix as mx

    runner = make_runner(c)
    # All at once by default: a session waits on its servers and subprocesses about a third of the time,
    # which the others fill (benchmarks/loop.py: 121 s with all four vs 154 s two at a time, on 2 cores).
    results = mx.run_matrix(runner, root, matrix, shlex.split(pytest), jobs=jobs or len(matrix))
    if not results:  # --dry
        return
    for failed in (r for r in results if not r.ok):
        runner.say(f"---- {failed.log.relative_to(root)} ----")
        runner.out.write(failed.log.read_text(encoding="utf-8", errors="replace"))
    runner.say(mx.summary(results, root))
    mx.check(results, root)


@task(help={"allow_unverified": "pass when a scanner could not verify (pip-audit service unreachable)"})
def security(c: Context, allow_unverified: bool = False) -> None:
    """Run the security scanners with a summary (nox -s security)."""
    _nox(c, "security", "--allow-unverified" if allow_unverified else "")
