"""The test matrix run side by side: one nox session per Python, each in its own process with its own log,
then one summary table (Python, status, duration, tests passed/failed/skipped from the session's junit
xml). The only xml parsed is the report our own pytest run wrote (hence the bandit B405/B314 waivers).
"""

from __future__ import annotations

import threading
import time
import xml.etree.ElementTree as ElementTree  # nosec B405
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from conveyor.errors import CommandFailed, ConveyorError
from conveyor.runner import Runner

LOGS = Path("build/test")  # one log per session, relative to the project root
JUNIT = "reports/junit-{python}.xml"  # where the `tests` session writes its junit report (noxfile.py)


class MatrixFailed(ConveyorError):
    """One or more sessions of the test matrix failed."""


@dataclass(frozen=True)
class Counts:
    """What a junit report counted."""

    passed: int
    failed: int
    skipped: int


@dataclass(frozen=True)
class SessionResult:
    """How one matrix session ended."""

    python: str
    returncode: int
    duration: float
    log: Path
    counts: Counts | None

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def junit_counts(path: Path) -> Counts | None:
    """Passed, failed (failures + errors), skipped of a pytest junit xml; None if absent or unreadable."""
    try:
        root = ElementTree.parse(path).getroot()  # noqa: S314  # nosec B314
    except (OSError, ElementTree.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = failed = skipped = 0
    for suite in suites:
        total += int(suite.get("tests", "0"))
        failed += int(suite.get("failures", "0")) + int(suite.get("errors", "0"))
        skipped += int(suite.get("skipped", "0"))
    return Counts(total - failed - skipped, failed, skipped)


def session_argv(python: str, posargs: Sequence[str] = ()) -> list[str]:
    """``nox -s tests-<python>`` with pytest arguments after ``--``."""
    return ["nox", "-s", f"tests-{python}", *(["--", *posargs] if posargs else [])]


def run_matrix(
    runner: Runner,
    root: Path,
    pythons: Sequence[str],
    posargs: Sequence[str] = (),
    *,
    jobs: int = 2,
    argv_for: Callable[[str, Sequence[str]], list[str]] = session_argv,
) -> list[SessionResult]:
    """Run one session per Python, at most ``jobs`` at a time, each logged to build/test/<python>.log."""
    if runner.dry:
        for python in pythons:
            runner.run(argv_for(python, posargs), cwd=root)
        return []
    if pythons:
        runner.which(argv_for(pythons[0], posargs)[0])
    (root / LOGS).mkdir(parents=True, exist_ok=True)
    said = threading.Lock()

    def one(python: str) -> SessionResult:
        log = root / LOGS / f"{python}.log"
        junit = root / JUNIT.format(python=python)
        junit.unlink(missing_ok=True)  # a report left by an earlier run must not be counted
        argv = argv_for(python, posargs)
        with said:
            runner.say(f"==> tests on {python} (log: {log.relative_to(root)})")
        start = time.monotonic()
        with log.open("w", encoding="utf-8") as out:
            session = Runner(redactor=runner.redact, out=out)
            try:
                code = session.run(argv, cwd=root, check=False).returncode
            except CommandFailed as exc:  # a timeout; the tool itself was checked above
                out.write(f"{exc}\n")
                code = exc.returncode
        result = SessionResult(python, code, time.monotonic() - start, log, junit_counts(junit))
        with said:
            state = "passed" if result.ok else f"FAILED (exit {code})"
            runner.say(f"<== tests on {python}: {state} in {result.duration:.1f}s")
        return result

    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="matrix") as pool:
        return list(pool.map(one, pythons))


def summary(results: Sequence[SessionResult], root: Path | None = None) -> str:
    """The results as one table, a row per Python; logs shown relative to ``root``."""
    rows = [("python", "status", "duration", "passed", "failed", "skipped", "log")]
    for r in results:
        c = r.counts
        rows.append(
            (
                r.python,
                "ok" if r.ok else f"FAILED ({r.returncode})",
                f"{r.duration:.1f}s",
                str(c.passed) if c else "-",
                str(c.failed) if c else "-",
                str(c.skipped) if c else "-",
                str(r.log.relative_to(root) if root and r.log.is_relative_to(root) else r.log),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    counted = [r.counts for r in results if r.counts]
    if counted:  # the plain closing line CI log readers look for
        passed, failed = sum(c.passed for c in counted), sum(c.failed for c in counted)
        lines.append(f"total: {passed} passed, {failed} failed, {sum(c.skipped for c in counted)} skipped")
    return "\n".join(lines)


def check(results: Sequence[SessionResult], root: Path) -> None:
    """Raise MatrixFailed naming every session that did not pass and its log."""
    failed = [r for r in results if not r.ok]
    if failed:
        logs = ", ".join(str(r.log.relative_to(root)) for r in failed)
        names = ", ".join(r.python for r in failed)
        raise MatrixFailed(f"tests failed on Python {names} (logs: {logs})")
