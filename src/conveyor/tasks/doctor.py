"""doctor: a table of prerequisites with OK / MISSING and the fix for each."""

from __future__ import annotations

import os

from invoke.context import Context
from invoke.exceptions import Exit

from conveyor.tasks._base import load_config, make_runner, project_root, task


@task(help={"env": "environment whose target decides what is required (default: local)"})
def doctor(c: Context, env: str = "") -> None:
    """Check prerequisites (Pythons, docker, compose v2, buildx, kubectl, AWS, git) and print the fixes."""
    from conveyor.doctor import run_checks

    cfg = load_config(env or None)
    checks = run_checks(make_runner(c), project_root(), cfg.env.target, os.environ, cfg.env.ecs.endpoint_url)
    width = max(len(ch.name) for ch in checks)
    print(f"prerequisites for environment {cfg.env.name} (target {cfg.env.target}):")
    for ch in checks:
        status = "OK" if ch.ok else ("MISSING" if ch.needed else "missing")
        need = "required" if ch.needed else "optional"
        print(f"  {ch.name:<{width}}  {status:<8} {need:<9} {ch.detail}")
        if not ch.ok:
            print(f"  {'':<{width}}  fix: {ch.fix}")
    missing = [ch.name for ch in checks if ch.needed and not ch.ok]
    if missing:
        raise Exit(f"conveyor: environment {cfg.env.name} needs: {', '.join(missing)}", code=1)
