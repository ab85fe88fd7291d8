"""ci, ci.render, ci.check: the one pipeline, run locally and generated as thin CI files."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from invoke.context import Context

from conveyor.tasks._base import load_config, make_runner, project_root, task

if TYPE_CHECKING:
    from pathlib import Path

    from conveyor.pipeline import Pipeline


def _pipeline(root: Path) -> Pipeline:
    from conveyor import pipeline
    from conveyor.tasks import task_names

    return pipeline.load(root / pipeline.PIPELINE_FILE, task_names())


def _renders(c: Context, root: Path) -> dict[Path, str]:
    """Both CI files, rendered in memory (a ConfigError here means nothing gets written)."""
    from conveyor import pipeline
    from conveyor.doctor import python_versions

    pipe = _pipeline(root)
    cfg = load_config(None)
    pythons = python_versions(root / "pyproject.toml")
    branch = pipeline.default_branch(
        make_runner(c), root, cfg.ci.default_branch, cfg.values["ci.default_branch"].source
    )
    return {
        pipeline.GITHUB_FILE: pipeline.render_github(pipe, pythons, cfg.ci, branch),
        pipeline.GITLAB_FILE: pipeline.render_gitlab(pipe, pythons, cfg.ci),
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
    """Run ci/pipeline.yaml locally in CI order, with a summary."""
    import sys

    from conveyor import pipeline
    from conveyor.errors import ConveyorError

    if jobs < 0:
        from conveyor.errors import UsageError

        raise UsageError(f"--jobs {jobs}: expected 1 or more stages at once (0: one per core)")
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
    """Write the GitHub and GitLab CI files from ci/pipeline.yaml."""
    root = project_root()
    for rel, text in _renders(c, root).items():
        if c.config.run.dry:
            print(f"[dry] would write {rel}")
            continue
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
        print(f"wrote {rel}")


@task
def check(c: Context) -> None:
    """Check the CI files match ci/pipeline.yaml and their schemas."""
    import difflib
    import sys

    from conveyor import pipeline
    from conveyor.errors import ConveyorError

    root = project_root()
    drift = []
    for rel, fresh in _renders(c, root).items():
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
        argv = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(root / rel)]
        runner.run(argv, mutates=False)
    print("CI files are in sync with ci/pipeline.yaml and valid against their schemas")
