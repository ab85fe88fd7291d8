"""`invoke ci` wall time vs the sum of its stage durations (lint, typecheck, tests on one Python, security).

Run: python benchmarks/pipeline.py [--jobs 2]
Works on a throwaway copy of the project whose tests stage is narrowed to one Python; venvs are created
first (a warm-up run) so the measured run compares the stages, not pip. Goal: wall / sum <= 0.75 on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def copy_project(dest: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    )
    for rel in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    pipeline = dest / "ci/pipeline.yaml"
    pipeline.write_text(pipeline.read_text().replace("    run: test\n", "    run: test --python 3.12\n"))


def run_ci(cwd: Path, jobs: int) -> tuple[float, float]:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "invoke", "ci", "--skip", "build", "--jobs", str(jobs)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "CI": ""},
    ).stdout
    wall = time.perf_counter() - start
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("stage "))
    total = sum(float(line.split()[2].rstrip("s")) for line in lines[head + 1 :] if line.split())
    return wall, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        copy_project(Path(tmp))
        run_ci(Path(tmp), args.jobs)  # warm-up: creates the nox virtualenvs
        wall, total = run_ci(Path(tmp), args.jobs)
    print(f"stages: lint, typecheck, tests (3.12), security; jobs={args.jobs}")
    print(f"sum of stage durations : {total:6.1f} s")
    print(f"wall time of invoke ci : {wall:6.1f} s")
    print(f"wall / sum             : {wall / total:.2f}  (goal <= 0.75)")


if __name__ == "__main__":
    main()
