"""`invoke --list` on conveyor's tasks.py vs a bare invoke tasks.py with the same number of tasks.

Run: python benchmarks/startup.py [--runs 15]. Prints both medians and their ratio (goal <= 1.3), measured
side by side (interleaved) in one run so machine noise hits both alike. Also checks that importing
conveyor.tasks imports neither boto3, docker nor a kubernetes client.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def count_tasks() -> int:
    from conveyor.tasks import namespace

    def walk(coll) -> int:  # type: ignore[no-untyped-def]
        return len(coll.tasks) + sum(walk(sub) for sub in coll.collections.values())

    return walk(namespace())


def bare_project(n: int) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="bare-invoke-"))
    body = ["from invoke import task", ""]
    for i in range(n):
        body += ["@task", f"def task{i}(c, env=''):", f'    """Task number {i}."""', ""]
    (folder / "tasks.py").write_text("\n".join(body))
    return folder


def time_list(cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "invoke", "--list"], cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def heavy_imports() -> list[str]:
    code = "import sys, conveyor.tasks; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    return [m for m in loaded if m.split(".")[0] in {"boto3", "botocore", "docker", "kubernetes"}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    n = count_tasks()
    bare = bare_project(n)
    ours, theirs = [], []
    time_list(ROOT), time_list(bare)  # warm the OS caches for both
    for _ in range(args.runs):
        ours.append(time_list(ROOT))
        theirs.append(time_list(bare))
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"tasks: {n}; runs: {args.runs} each, interleaved")
    print(f"invoke --list, conveyor tasks.py : {a * 1000:7.1f} ms (median)")
    print(f"invoke --list, bare tasks.py     : {b * 1000:7.1f} ms (median)")
    print(f"ratio conveyor / bare            : {a / b:.2f}  (goal <= 1.3)")
    heavy = heavy_imports()
    print(f"heavy modules imported by conveyor.tasks: {', '.join(heavy) if heavy else 'none'}")


if __name__ == "__main__":
    main()
