"""ci, ci.render, ci.check: the one pipeline, run locally and generated as thin CI files."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from invoke.context import Context

from conveyor.tasks._base import make_runner, project_root, task

if TYPE_CHECKING:
    from pathlib import Path

    from conveyor.pipeline import Pipeline


def _pipeline(root: Path) -> Pipeline:
    from conveyor import pipeline
    from conveyor.tasks import task_names

    return pipeline.load(root / pipeline.PIPELINE_FILE, task_names())


def _renders(root: Path) -> dict[Path, str]:
    from conveyor import pipeline
    from conveyor.doctor import python_versions

    pipe = _pipeline(root)
    pythons = python_versions(root / "pyproject.toml")
    return {
        pipeline.GITHUB_FILE: pipeline.render_github(pipe, pythons),
        pipeline.GITLAB_FILE: pipeline.render_gitlab(pipe, pythons),
    }


@task(
    default=True,
    help={
        "jobs": "stages run at once (default: number of cores)",
        "only": "comma-separated stages to run (their needs are taken as met)",
        "skip": "comma-separated stages to leave out",
        "with_deploy": "also run deploy stages (left out locally by default)",
    },
)
def run(c: Context, jobs: int = 0, only: str = "", skip: str = "", with_deploy: bool = False) -> None:
    """Run the pipeline locally in CI order, independent stages in parallel, and print a summary table."""
    import sys

    from conveyor import pipeline
    from conveyor.errors import ConveyorError

    root = project_root()
    runner = make_runner(c)
    stages = pipeline.select(
        _pipeline(root),
        only=[s for s in only.split(",") if s],
        skip=[s for s in skip.split(",") if s],
        with_deploy=with_deploy,
    )
    if runner.dry:
        for stage in stages:
            runner.say(f"[dry] stage {stage.name}: invoke {stage.run}")
        return
    results = pipeline.run_local(
        stages,
        jobs=jobs or os.cpu_count() or 2,
        logs=root / "build/ci",
        command=[sys.executable, "-m", "invoke"],
        on_event=runner.say,
    )
    for line in pipeline.summary(results, root):
        print(line)
    failed = [r.name for r in results if r.status == "failed"]
    if failed:
        raise ConveyorError(f"pipeline failed: {', '.join(failed)} (logs in build/ci/)")


@task
def render(c: Context) -> None:
    """Write .github/workflows/ci.yml and .gitlab-ci.yml from ci/pipeline.yaml."""
    root = project_root()
    for rel, text in _renders(root).items():
        if c.config.run.dry:
            print(f"[dry] would write {rel}")
            continue
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
        print(f"wrote {rel}")


@task
def check(c: Context) -> None:
    """Fail with a diff when the CI files drift from ci/pipeline.yaml; validate both against their schemas."""
    import difflib

    from conveyor import pipeline
    from conveyor.errors import ConveyorError

    root = project_root()
    drift = []
    for rel, fresh in _renders(root).items():
        path = root / rel
        committed = path.read_text(encoding="utf-8") if path.exists() else ""
        if committed != fresh:
            diff = difflib.unified_diff(
                committed.splitlines(keepends=True),
                fresh.splitlines(keepends=True),
                f"{rel} (committed)",
                f"{rel} (fresh render)",
            )
            print("".join(diff), end="")
            drift.append(str(rel))
    if drift:
        raise ConveyorError(
            f"{', '.join(drift)} differ from ci/pipeline.yaml: run `invoke ci.render` and commit"
        )
    runner = make_runner(c)
    schemas = {pipeline.GITHUB_FILE: "vendor.github-workflows", pipeline.GITLAB_FILE: "vendor.gitlab-ci"}
    for rel, schema in schemas.items():
        runner.run(["check-jsonschema", "--builtin-schema", schema, str(root / rel)], mutates=False)
    print("CI files are in sync with ci/pipeline.yaml and valid against their schemas")
