"""The `conveyor` command: `init` adopts an existing project, `setup` prepares a fresh Debian machine.

Everything else is an invoke task (`invoke --list` in a project that `conveyor init` prepared).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from conveyor.errors import ConveyorError

if TYPE_CHECKING:
    from conveyor.runner import Runner

SETUP_SCRIPT = "data/setup-debian.sh"  # inside the conveyor package
EPILOG = """\
After `conveyor init`:
  invoke env.init --env local     generate the local secrets into .env (never committed)
  invoke build deploy             build the image, deploy it to docker compose on this machine
  invoke --list                   every task (build, test, deploy, rollback, history, ci.render, ...)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conveyor",
        description="conveyor: a DevOps workflow kit for Python services. These two commands set a "
        "project or a machine up; the daily work is invoke tasks (`invoke --list`).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    init = sub.add_parser(
        "init",
        help="detect the project's framework and write what conveyor needs (never overwrites)",
        description="Detect the framework (FastAPI, Starlette, Flask or Django) and its entry point from "
        "the project's Python files and dependencies, then write what the project lacks: Dockerfile, "
        ".dockerignore, .gitignore, tasks.py, noxfile.py, invoke.yaml (the app contract), "
        "deploy/environments/{local,staging,production}.yaml, compose/compose.yaml, k8s/base and "
        "k8s/overlays, deploy/ecs/taskdef.yaml, ci/pipeline.yaml and the generated CI files. Existing "
        "files are never changed unless --force is given.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument("path", nargs="?", default=".", help="the project folder (default: the current one)")
    init.add_argument(
        "--diff", action="store_true", help="print a unified diff of what would change; write nothing"
    )
    init.add_argument("--force", action="store_true", help="overwrite files that exist with other content")
    sub.add_parser(
        "setup",
        help="install and start what conveyor needs on a fresh Debian bookworm machine (as root)",
        description="Run the setup script shipped with conveyor (Docker engine, compose v2, buildx, "
        "kubectl, the scanners' prerequisites, the Python matrix check). Idempotent; needs root.",
    )
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    stdout, stderr = out or sys.stdout, err or sys.stderr
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(stdout)
        return 2
    try:
        if args.command == "init":
            return init(Path(args.path), diff=args.diff, force=args.force, out=stdout)
        return setup(out=stdout)
    except ConveyorError as exc:
        stderr.write(f"conveyor {args.command}: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        stderr.write("conveyor: interrupted\n")
        return 130


def init(root: Path, *, diff: bool, force: bool, out: TextIO) -> int:
    """Detect, render, then show (--diff) or write; nothing is written when anything fails first."""
    from conveyor import pipeline
    from conveyor.errors import ConfigError
    from conveyor.init import detect, route_hints, scaffold
    from conveyor.runner import Runner

    det = detect(root)
    notes = list(det.notes)
    try:
        branch = pipeline.default_branch(Runner(echo=False), det.root)
    except ConfigError as exc:  # git's default branch cannot go into the CI files: write the fallback
        branch = pipeline.FALLBACK_BRANCH
        notes.append(f"{exc} (invoke.yaml says `default_branch: {branch}`)")
    files = scaffold.render(det, branch=branch)
    files.update(scaffold.render_ci(det.root, files, branch=branch))
    if diff:
        out.write(scaffold.diff(det.root, files, force=force))
        return 0
    say = out.write
    say(f"conveyor init: {det.describe}\n")
    for proc in det.processes:
        say(f"  process {proc.name} ({proc.source}): {scaffold.shell_line(proc.command)}\n")
    say(f"  release command: {scaffold.shell_line(det.release) if det.release else 'none'}\n")
    outcome = scaffold.apply(det.root, files, force=force)
    for rel in outcome.written:
        say(f"  wrote     {rel}\n")
    for rel in outcome.unchanged:
        say(f"  unchanged {rel}\n")
    for rel in outcome.skipped:
        say(f"  skipped   {rel} (exists with other content; --diff shows it, --force overwrites)\n")
    for dep in det.missing:
        say(f"missing dependency: {dep}\n")
    for note in notes:
        say(f"note: {note}\n")
    for block in route_hints(det):
        say("\n" + block)
    say("\nnext: git add the files, then `invoke env.init --env local` and `invoke build deploy`\n")
    return 0


def setup(*, out: TextIO, runner: Runner | None = None) -> int:
    """Run the packaged setup script with bash; root only (apt-get and dockerd need it)."""
    from conveyor.runner import Runner

    if os.geteuid() != 0:
        raise ConveyorError("run it as root (apt-get and dockerd need it), e.g. `sudo conveyor setup`")
    runner = runner or Runner(out=out, echo=False)
    with resources.as_file(resources.files("conveyor") / SETUP_SCRIPT) as script:
        out.write(f"conveyor setup: bash {script}\n")
        out.flush()
        return runner.run(["bash", str(script)], check=False).returncode
