"""Fresh clone to first deploy: `bash ci/bootstrap.sh && invoke build test deploy`, each step timed.

Run: python benchmarks/fresh.py [--wipe]   (as root on a Debian machine; deploys the local environment of
     a new clone of HEAD under /tmp and takes it down again)

As fresh as one machine can be made again: a new clone (no .nox, no build/, no .env, cold test tool cache),
empty pip and uv caches (every wheel downloaded), and with --wipe the images bootstrap makes (base image,
stand-ins, gitlab-ci-local's), the BuildKit cache and this checkout's local stack with its volumes removed,
so debootstrap and every image build run again. What stays is what the machine already had: the apt
packages (docker, PostgreSQL, ...) and the Pythons. So this is a lower bound for a new machine; the apt
downloads add to it.
Goal (issue 17): <= 6 min.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from conveyor import images  # noqa: E402

CI_IMAGES = ("firecow/gitlab-ci-local-util:latest", "conveyor-local/ci-job:1")


def timed(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, int]:
    """Run ``argv`` in ``cwd``, output to ``log``; (seconds, exit code)."""
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    return time.perf_counter() - start, code


def wipe() -> None:
    """Take this checkout's local environment down with its volumes (the clone's stack has the same name,
    and its new secrets would not open the old database), remove the images bootstrap builds and BuildKit's
    cache (the other images stay)."""
    down = [sys.executable, "-m", "invoke", "down", "--env", "local", "--volumes"]
    subprocess.run(down, cwd=ROOT, capture_output=True, check=False)
    refs = [images.LOCAL_BASE, *images.STANDINS.values(), *CI_IMAGES]
    subprocess.run(["docker", "image", "rm", "-f", *refs], capture_output=True, check=False)
    subprocess.run(["docker", "builder", "prune", "-af"], capture_output=True, check=False)


def main() -> int:
    """Clone, bootstrap, build test deploy; print the table. Non-zero when a step failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wipe", action="store_true", help="remove bootstrap's images and BuildKit's cache")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="conveyor-fresh-"))
    clone = scratch / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
        "PIP_CACHE_DIR": str(scratch / "pip-cache"),
        "UV_CACHE_DIR": str(scratch / "uv-cache"),
    }
    if args.wipe:
        wipe()
    rows: list[tuple[str, float, int]] = []
    for name, log, argv in (
        ("bash ci/bootstrap.sh", "bootstrap.log", ["bash", "ci/bootstrap.sh"]),
        (
            "invoke build test deploy",
            "build-test-deploy.log",
            [sys.executable, "-m", "invoke", "build", "test", "deploy"],
        ),
    ):
        seconds, code = timed(argv, clone, env, scratch / log)
        rows.append((name, seconds, code))
        if code != 0:
            break
    subprocess.run([sys.executable, "-m", "invoke", "down"], cwd=clone, env=env, capture_output=True)
    # bootstrap installed the clone's kit into this Python (pip install -e): point it back at this checkout.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)], check=True)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end (shared)")
    print(f"{'step':<28} {'seconds':>8}  exit")
    for name, seconds, code in rows:
        print(f"{name:<28} {seconds:8.1f}  {code:>4}")
    print(f"{'fresh clone to first deploy':<28} {sum(r[1] for r in rows):8.1f}        goal <= 360 s")
    print(f"logs: {scratch}/")
    return 1 if any(code for _, _, code in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
