"""ci, ci.render, ci.check: the one pipeline, run locally and generated as thin CI files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from invoke.context import Context

from conveyor.tasks._base import load_config, make_runner, project_root, task

if TYPE_CHECKING:
    from conveyor.pipeline import Pipeline
    from conveyor.runner import Runner


def _pipeline(root: Path) -> Pipeline:
    """ci/pipeline.yaml, checked against the tasks of the project's own tasks.py."""
    from conveyor import pipeline

    return pipeline.load(root / pipeline.PIPELINE_FILE, _task_names(root))


def _task_names(root: Path) -> set[str]:
    """Every task the project's tasks.py offers (conveyor's menu when it has none of its own)."""
    from invoke.collection import Collection
    from invoke.exceptions import CollectionNotFound
    from invoke.loader import FilesystemLoader

    from conveyor.tasks import task_names

    try:
        module, _ = FilesystemLoader(start=str(root)).load()
    except CollectionNotFound:
        return task_names()
    names: set[str] = set()

    def walk(coll: Collection, prefix: str) -> None:
        """Collect the task names of ``coll`` and its sub-collections."""
        names.update(prefix + name for name in coll.tasks)
        if coll.default:
            names.add(prefix.rstrip("."))
        for sub_name, sub in coll.collections.items():
            walk(sub, f"{prefix}{sub_name}.")

    walk(Collection.from_module(module), "")
    return names


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
    envs = pipeline.environment_access(root, pipe)
    files = {
        pipeline.GITHUB_FILE: pipeline.render_github(pipe, pythons, cfg.ci, branch, envs),
        pipeline.GITLAB_FILE: pipeline.render_gitlab(pipe, pythons, cfg.ci, envs),
    }
    dind = pipeline.render_gitlab_dind(pipe, cfg.ci)
    if dind is not None:
        files[pipeline.GITLAB_DIND_FILE] = dind
    return files


@task(
    default=True,
    help={
        "jobs": "stages run at once (default: number of cores)",
        "only": "comma-separated stages to run (their needs are taken as met)",
        "skip": "comma-separated stages to leave out",
        "with_deploy": "also run deploy stages (left out locally by default)",
        "in_place": "run every stage in this working tree (no clean checkouts, products not carried)",
    },
)
def run(
    c: Context,
    jobs: int = 0,
    only: str = "",
    skip: str = "",
    with_deploy: bool = False,
    in_place: bool = False,
) -> None:
    """Run ci/pipeline.yaml locally in CI order, each stage in a clean checkout of HEAD, with a summary."""
    import sys

    from conveyor import pipeline
    from conveyor.errors import ConveyorError

    if jobs < 0:
        from conveyor.errors import UsageError

        raise UsageError(f"--jobs {jobs}: expected 1 or more stages at once (0: one per core)")
    root = project_root()
    runner = make_runner(c)
    pipe = _pipeline(root)
    stages = pipeline.select(
        pipe,
        only=[s for s in only.split(",") if s],
        skip=[s for s in skip.split(",") if s],
        with_deploy=with_deploy,
    )
    workspaces = (
        None if in_place else pipeline.Workspaces(root, _head(runner, root), pipe, runner, _kit_path(root))
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
        workspaces=workspaces,
    )
    for line in pipeline.summary(results, root):
        print(line)
    failed = [r.name for r in results if r.status == "failed"]
    if failed:
        raise ConveyorError(f"pipeline failed: {', '.join(failed)} (logs in build/ci/)")


def _head(runner: Runner, root: Path) -> str:
    """The commit the isolated stages run; says loudly when the work tree has changes they will not see."""
    from conveyor.errors import ConveyorError

    sha = runner.run(["git", "rev-parse", "--verify", "-q", "HEAD^{commit}"], cwd=root, capture=True,
                     mutates=False, check=False)  # fmt: skip
    if not sha.ok:
        raise ConveyorError(
            f"{root}: no commit to check out; `invoke ci` runs each stage in a clean checkout of HEAD "
            "(commit first, or use --in-place)"
        )
    status = runner.run(["git", "status", "--porcelain"], cwd=root, capture=True, mutates=False)
    head = sha.stdout.strip()
    if status.stdout.strip():
        changed = len(status.stdout.splitlines())
        runner.say(
            f"WARNING: {changed} uncommitted change(s) are NOT in this run: every stage runs the committed "
            f"HEAD {head[:12]} in a clean checkout, as CI would (commit them, or use --in-place)"
        )
        if any(line[3:].strip() == "ci/pipeline.yaml" for line in status.stdout.splitlines()):
            runner.say("WARNING: the stages are those of the uncommitted ci/pipeline.yaml (CI reads HEAD's)")
    return head


def _kit_path(root: Path) -> str:
    """Where conveyor itself lives inside the project ("" when it is installed from elsewhere): in the kit's
    own repository a stage then imports the checkout's committed copy, not this working tree's."""
    import conveyor

    kit = Path(conveyor.__file__).resolve().parent.parent
    here = root.resolve()
    return str(kit.relative_to(here)) if kit.is_relative_to(here) and kit != here else ""


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
    if (root / pipeline.GITLAB_DIND_FILE).is_file():  # an included GitLab file holds to the same schema
        schemas[pipeline.GITLAB_DIND_FILE] = "vendor.gitlab-ci"
    for rel, schema in schemas.items():
        argv = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(root / rel)]
        runner.run(argv, mutates=False)
    print("CI files are in sync with ci/pipeline.yaml and valid against their schemas")
