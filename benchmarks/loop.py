"""The inner loop, measured side by side in one run: warm `invoke build test deploy` after a one-file edit,
and warm `invoke test` the way it runs now next to the way it ran before.

Run: python benchmarks/loop.py   (needs what `bash ci/bootstrap.sh` sets up; deploys the local environment)
     python benchmarks/loop.py --no-before        # skip the old way (it takes the longest)
     python benchmarks/loop.py --pytest "-k k8s"  # a subset, for a quick look (not the goal's numbers)

- now:    `invoke test`: nox on uv (`uv|venv`), installs skipped while pyproject.toml and the locks are
          unchanged, the four sessions at once (build/test/<python>.log, one summary).
- before: `nox -s tests` with the venv backend, `pip install -e .[dev]` in every session on every run
          (CONVEYOR_NOX_INSTALL=always), the sessions one after another, in separate virtualenvs
          (build/nox-before/), warmed first so both sides start from existing virtualenvs.
Both sides run today's tests, so both read the tool cache (build/tool-cache/; warm after one run): the
ratio is what the session mechanics save, the cache's share shows against earlier runs of this script.
The edit appends a comment line to app/settings.py and removes exactly that line afterwards (other edits to
the file made meanwhile are kept). Goals (issue 17): build test deploy <= 60 s, invoke test <= 45 s.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EDITED = ROOT / "app" / "settings.py"


def timed(argv: list[str], *, env: dict[str, str] | None = None, log: Path) -> tuple[float, int]:
    """Run ``argv`` in the project, output to ``log``; (seconds, exit code)."""
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(
            argv,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        ).returncode
    return time.perf_counter() - start, code


def one_file_edit() -> tuple[str, str]:
    """Append a comment line to app/settings.py; the line, to remove it again."""
    line = f"# edited by benchmarks/loop.py at {time.time()}\n"
    with EDITED.open("a") as out:
        out.write(line)
    return str(EDITED), line


def undo_edit(line: str) -> None:
    """Remove exactly the appended line, keeping whatever else changed in the file meanwhile."""
    text = EDITED.read_text()
    if line in text:
        EDITED.write_text(text.replace(line, "", 1))


def main() -> int:
    """Measure and print the table; non-zero when a measured command failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-before", action="store_true", help="skip the old way")
    parser.add_argument("--no-deploy", action="store_true", help="skip (a): build test deploy")
    parser.add_argument("--pytest", default="", help="pytest args for every session (default: the suite)")
    args = parser.parse_args()
    logs = ROOT / "build" / "bench-loop"
    logs.mkdir(parents=True, exist_ok=True)
    pytest = shlex.split(args.pytest)
    invoke = [sys.executable, "-m", "invoke"]
    test_now = [*invoke, "test", *(["--pytest", args.pytest] if pytest else [])]
    before_env = {"CONVEYOR_NOX_INSTALL": "always"}
    before = ["nox", "--force-venv-backend", "venv", "--envdir", "build/nox-before", "-s", "tests"]
    rows: list[tuple[str, float, int, str]] = []
    failed = False

    # Warm both sides: virtualenvs exist and hold the install (untimed).
    subprocess.run(["nox", "--install-only", "-s", "tests"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    if not args.no_before:
        subprocess.run(
            [*before, "--install-only"],
            cwd=ROOT,
            env={**os.environ, **before_env},
            check=True,
            stdout=subprocess.DEVNULL,
        )

    if not args.no_deploy:
        _, line = one_file_edit()
        try:
            seconds, code = timed(
                [*invoke, "build", *test_now[len(invoke) :], "deploy"], log=logs / "build-test-deploy.log"
            )
        finally:
            undo_edit(line)
        rows.append(("(a) invoke build test deploy, 1 file edited", seconds, code, "<= 60 s"))
        subprocess.run([*invoke, "down"], cwd=ROOT, check=False, stdout=subprocess.DEVNULL)

    now_s, now_code = timed(test_now, log=logs / "test-now.log")
    rows.append(("(b) invoke test (uv, stamps, side by side)", now_s, now_code, "<= 45 s"))
    if not args.no_before:
        argv = [*before, *(["--", *pytest] if pytest else [])]
        before_s, before_code = timed(argv, env=before_env, log=logs / "test-before.log")
        rows.append(("(c) before: nox -s tests (venv, pip, in turn)", before_s, before_code, ""))

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end (shared)")
    print(f"{'measure':<48} {'seconds':>8}  {'exit':>4}  goal")
    for name, seconds, code, goal in rows:
        failed |= code != 0
        print(f"{name:<48} {seconds:8.1f}  {code:>4}  {goal}")
    if not args.no_before:
        print(f"{'(b) / (c): now over before':<48} {now_s / before_s:8.2f}")
    print(f"logs: {logs.relative_to(ROOT)}/")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
