"""Requests through the proxy during a deploy, a rollback and a failed release of the `--env local` stack.

Run: python benchmarks/deploy_under_load.py [--clients 2] [--interval 0.02]
On a throwaway copy of the project (its own compose project and port): build and deploy a first release,
then, with a steady mixed load running (tests/load.py: GET /notes and POST /notes through HAProxy, keep-alive
clients), one after another: a deploy of a changed build, `invoke rollback`, and a deploy of a release whose
/ready never answers (rolled back automatically). Prints, for each: requests sent and failed, the failing
window, p50/p99 latency during the operation and the p99 of the steady state measured just before it,
side by side in one run. Goal: 0 failed requests in all three, p99 during <= 2x steady.
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
sys.path.insert(0, str(ROOT))

from conveyor import config  # noqa: E402
from tests.integration.conftest import copy_project, own_stack  # noqa: E402
from tests.load import HEADER, Load, row  # noqa: E402

READY = 'status_code=503 if status == "not ready" else 200)'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2, help="client threads (default 2)")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between a client's requests")
    parser.add_argument("--steady", type=float, default=5.0, help="seconds of steady state before each step")
    args = parser.parse_args()
    base = config.load(ROOT, environ=dict(os.environ)).image.base_image
    project = copy_project(Path(tempfile.mkdtemp(prefix="deploy-under-load-")), base)
    _, port = own_stack(project, "bench")

    def invoke(*argv: str, expect: int = 0) -> None:
        result = project.invoke(*argv)
        if result.returncode != expect:
            sys.exit(f"invoke {' '.join(argv)} exited {result.returncode}: {result.stderr[-2000:]}")

    def change(path: str, old: str, new: str, message: str) -> None:
        file = project.root / path
        text = file.read_text() if file.exists() else ""
        file.write_text(text.replace(old, new) if old else new)
        git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@conveyor.invalid"]
        subprocess.run(["git", "add", "-A"], cwd=project.root, check=True)
        subprocess.run([*git, "commit", "-q", "-m", message], cwd=project.root, check=True)

    rows = []
    try:
        print("first release: build + deploy ...", flush=True)
        invoke("build", "deploy")
        change("app/release_note.py", "", "NOTE = 'second'\n", "second release")
        invoke("build")
        url = f"http://127.0.0.1:{port}"
        with Load(url, clients=args.clients, interval=args.interval) as load:
            steps: list[tuple[str, tuple[str, ...], int]] = [
                ("deploy of a changed build", ("deploy",), 0),
                ("invoke rollback", ("rollback",), 0),
                ("failed release, rolled back", ("deploy",), 1),
            ]
            for label, argv, expect in steps:
                if expect:
                    change(
                        "app/main.py",
                        READY,
                        "status_code=503)  # never ready",
                        "a release that never gets ready",
                    )
                    invoke("build")
                steady_from = time.monotonic()
                time.sleep(args.steady)
                print(f"{label} ...", flush=True)
                start = time.monotonic()
                invoke(*argv, expect=expect)
                end = time.monotonic()
                rows.append(row(label, load.window(start, end), load.window(steady_from, start), end - start))
            time.sleep(1)
        written = len(load.written)
    finally:
        project.invoke("down", "--volumes")
    print(HEADER)
    for line in rows:
        print(line)
    print(f"notes written during the run: {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
