"""`invoke test`'s matrix: sessions side by side in real processes, a log each, one summary."""

from __future__ import annotations

import io
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from conveyor import matrix
from conveyor.runner import Runner
from tests.conftest import Project

# A stand-in for `nox -s tests-X`: writes the junit report where the noxfile's session writes it, prints a
# line, exits with the code its Python's entry in CODES says. With BARRIER set it first waits until every
# session has started (files in BARRIER), so it only passes when the sessions really run side by side.
SESSION = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    python, code, tests, failures = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    barrier = os.environ.get("BARRIER")
    if barrier:
        Path(barrier, python).touch()
        deadline = time.monotonic() + float(os.environ.get("BARRIER_TIMEOUT", "20"))
        while len(os.listdir(barrier)) < int(os.environ["SESSIONS"]):
            if time.monotonic() > deadline:
                print("the other sessions never started: run one after another")
                sys.exit(3)
            time.sleep(0.02)
    Path("reports").mkdir(exist_ok=True)
    Path(f"reports/junit-{python}.xml").write_text(
        f'<testsuites><testsuite name="pytest" tests="{tests}" failures="{failures}" errors="0" '
        f'skipped="1"></testsuite></testsuites>'
    )
    print(f"session {python}: args {sys.argv[5:]}")
    sys.exit(code)
    """
)


def fake_sessions(
    script: Path, plan: dict[str, tuple[int, int, int]]
) -> Callable[[str, Sequence[str]], list[str]]:
    """argv_for: the stand-in session with (exit code, tests, failures) per Python."""

    def argv(python: str, posargs: Sequence[str]) -> list[str]:
        code, tests, failures = plan[python]
        return [sys.executable, str(script), python, str(code), str(tests), str(failures), *posargs]

    return argv


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "session.py"
    path.write_text(SESSION)
    return path


def test_sessions_run_side_by_side_each_logged_and_counted(
    tmp_path: Path, script: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    monkeypatch.setenv("BARRIER", str(barrier))
    monkeypatch.setenv("SESSIONS", "3")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/junit-3.12.xml").write_text("<testsuites><testsuite tests='99'/></testsuites>")
    out = io.StringIO()
    plan = {"3.11": (0, 10, 0), "3.12": (0, 12, 0), "3.13": (0, 7, 0)}
    results = matrix.run_matrix(
        Runner(out=out), tmp_path, list(plan), ["-k", "x y"], jobs=3, argv_for=fake_sessions(script, plan)
    )
    assert [r.python for r in results] == ["3.11", "3.12", "3.13"]
    assert all(r.ok for r in results), [r.log.read_text() for r in results]
    assert [r.counts for r in results] == [
        matrix.Counts(9, 0, 1),
        matrix.Counts(11, 0, 1),  # this run's report, not the stale one left before
        matrix.Counts(6, 0, 1),
    ]
    for r in results:
        assert r.log == tmp_path / "build/test" / f"{r.python}.log"
        assert f"session {r.python}: args ['-k', 'x y']" in r.log.read_text()
        assert f"session {r.python}" not in out.getvalue()  # the session's output stays in its log
    assert "<== tests on 3.12: passed in" in out.getvalue()
    matrix.check(results, tmp_path)  # nothing failed: no error
    table = matrix.summary(results, tmp_path).splitlines()
    assert table[0].split() == ["python", "status", "duration", "passed", "failed", "skipped", "log"]
    assert table[2].split()[:2] == ["3.12", "ok"]
    assert table[2].split()[3:] == ["11", "0", "1", "build/test/3.12.log"]
    assert table[-1] == "total: 26 passed, 0 failed, 3 skipped"


def test_one_session_at_a_time_with_jobs_1(
    tmp_path: Path, script: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The barrier is what proves the overlap above: with jobs=1 the first session waits for the second in
    vain and fails; the second, started after it, finds both marks and passes."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    monkeypatch.setenv("BARRIER", str(barrier))
    monkeypatch.setenv("BARRIER_TIMEOUT", "1")
    monkeypatch.setenv("SESSIONS", "2")
    plan = {"3.11": (0, 1, 0), "3.12": (0, 1, 0)}
    results = matrix.run_matrix(
        Runner(out=io.StringIO()), tmp_path, list(plan), jobs=1, argv_for=fake_sessions(script, plan)
    )
    assert [r.returncode for r in results] == [3, 0]
    assert "run one after another" in results[0].log.read_text()


def test_a_failed_session_fails_the_matrix_naming_it_and_its_log(tmp_path: Path, script: Path) -> None:
    plan = {"3.10": (0, 5, 0), "3.11": (1, 5, 2), "3.13": (2, 0, 0)}
    results = matrix.run_matrix(
        Runner(out=io.StringIO()), tmp_path, list(plan), jobs=2, argv_for=fake_sessions(script, plan)
    )
    assert [r.returncode for r in results] == [0, 1, 2]
    assert results[1].counts == matrix.Counts(2, 2, 1)
    with pytest.raises(matrix.MatrixFailed) as failed:
        matrix.check(results, tmp_path)
    assert str(failed.value) == (
        "tests failed on Python 3.11, 3.13 (logs: build/test/3.11.log, build/test/3.13.log)"
    )
    rows = matrix.summary(results, tmp_path).splitlines()
    assert rows[2].split()[:3] == ["3.11", "FAILED", "(1)"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('<testsuite tests="4" failures="1" errors="1" skipped="0"/>', matrix.Counts(2, 2, 0)),
        (
            '<testsuites><testsuite tests="3" failures="0" errors="0" skipped="1"/>'
            '<testsuite tests="2" failures="1" errors="0" skipped="0"/></testsuites>',
            matrix.Counts(3, 1, 1),
        ),
        ("<testsuites><testsuite", None),  # cut short: no counts rather than wrong ones
    ],
)
def test_junit_counts(tmp_path: Path, text: str, expected: matrix.Counts | None) -> None:
    path = tmp_path / "junit.xml"
    path.write_text(text)
    assert matrix.junit_counts(path) == expected
    assert matrix.junit_counts(tmp_path / "absent.xml") is None


PYPROJECT = """
[project]
name = "demo"
version = "0"
classifiers = ["Programming Language :: Python :: 3.11", "Programming Language :: Python :: 3.12"]
"""


def test_invoke_test_dry_lists_one_nox_session_per_python(project: Project) -> None:
    project.write("pyproject.toml", PYPROJECT)
    result = project.invoke("--dry", "test", "--pytest", "-k smoke")
    assert result.returncode == 0, result.stderr
    assert "[dry] nox -s tests-3.11 -- -k smoke" in result.stdout
    assert "[dry] nox -s tests-3.12 -- -k smoke" in result.stdout
    assert not (project.root / "build").exists()


def test_invoke_test_python_stays_one_session(project: Project) -> None:
    project.write("pyproject.toml", PYPROJECT)
    result = project.invoke("--dry", "test", "--python", "3.12")
    assert result.returncode == 0, result.stderr
    assert "[dry] nox -s tests-3.12" in result.stdout
    assert "tests-3.11" not in result.stdout


def test_negative_jobs_is_one_line_and_runs_nothing(project: Project) -> None:
    project.write("pyproject.toml", PYPROJECT)
    result = project.invoke("test", "--jobs", "-1")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "conveyor: --jobs -1: expected 1 or more sessions at once (0: all of them)"
    )
    assert not (project.root / "build").exists()
