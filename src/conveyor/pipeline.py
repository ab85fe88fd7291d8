"""The pipeline: one definition (ci/pipeline.yaml), validated once, run locally and rendered for CI."""

from __future__ import annotations

import fnmatch
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from conveyor.config import CiSpec, read_yaml
from conveyor.errors import ConfigError, ToolMissing

if TYPE_CHECKING:
    from conveyor.runner import Runner

PIPELINE_FILE = Path("ci/pipeline.yaml")
STAGE_KEYS = {"name", "run", "needs", "matrix", "reports", "deploy", "when", "engine"}
WHEN = ("always", "default-branch", "manual")


@dataclass(frozen=True)
class Stage:
    name: str
    run: str
    needs: tuple[str, ...] = ()
    matrix: str = ""
    reports: bool = False
    deploy: str = ""
    when: str = "always"
    engine: str = ""

    @property
    def argv(self) -> list[str]:
        return ["invoke", *shlex.split(self.run)]


@dataclass(frozen=True)
class Pipeline:
    stages: tuple[Stage, ...]

    def by_name(self) -> dict[str, Stage]:
        return {s.name: s for s in self.stages}

    def order(self) -> list[str]:
        """Stage names in a dependency order (stable: definition order breaks ties)."""
        done: list[str] = []
        pending = list(self.stages)
        while pending:
            ready = [s for s in pending if set(s.needs) <= set(done)]
            if not ready:  # a cycle: the rest can never run (validate() reports it)
                break
            done += [s.name for s in ready]
            pending = [s for s in pending if s not in ready]
        return done


def load(path: Path, task_names: Iterable[str]) -> Pipeline:
    """Parse and validate: unknown keys, duplicate names, unknown needs, unknown tasks, cycles."""
    where = str(path)
    data, _ = read_yaml(path, allow_empty=True)
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list) or not data["stages"]:
        raise ConfigError(f"{where}: expected `stages:` with a list of stages")
    return validate(
        [_stage(raw, where, i) for i, raw in enumerate(data["stages"], 1)], set(task_names), where
    )


def _stage(raw: Any, where: str, index: int) -> Stage:
    if not isinstance(raw, dict) or "name" not in raw or "run" not in raw:
        raise ConfigError(f"{where}: stage {index} needs `name` and `run`")
    unknown = set(raw) - STAGE_KEYS
    if unknown:
        known = ", ".join(sorted(STAGE_KEYS))
        raise ConfigError(
            f"{where}: stage {raw['name']}: unknown key `{sorted(unknown)[0]}` (known: {known})"
        )
    when = raw.get("when", "always")
    if when not in WHEN:
        raise ConfigError(
            f"{where}: stage {raw['name']}: `when` must be one of {', '.join(WHEN)}, got {when!r}"
        )
    matrix = raw.get("matrix", "")
    if matrix not in ("", "python"):
        raise ConfigError(f"{where}: stage {raw['name']}: `matrix` can only be `python`, got {matrix!r}")
    return Stage(
        name=str(raw["name"]),
        run=str(raw["run"]),
        needs=tuple(str(n) for n in raw.get("needs", [])),
        matrix=matrix,
        reports=bool(raw.get("reports", False)),
        deploy=str(raw.get("deploy", "")),
        when=when,
        engine=str(raw.get("engine", "")),
    )


def validate(stages: list[Stage], task_names: set[str], where: str) -> Pipeline:
    seen: set[str] = set()
    for stage in stages:
        if stage.name in seen:
            raise ConfigError(f"{where}: duplicate stage name `{stage.name}`")
        seen.add(stage.name)
    for stage in stages:
        for need in stage.needs:
            if need not in seen:
                raise ConfigError(f"{where}: stage {stage.name} needs unknown stage `{need}`")
        for word in shlex.split(stage.run):
            if not word.startswith("-") and word not in task_names and not _is_flag_value(stage.run, word):
                raise ConfigError(
                    f"{where}: stage {stage.name} runs unknown task `{word}` (see `invoke --list`)"
                )
    pipeline = Pipeline(tuple(stages))
    ordered = pipeline.order()
    if len(ordered) != len(stages):
        stuck = [s.name for s in stages if s.name not in ordered]
        raise ConfigError(f"{where}: the needs of {', '.join(stuck)} form a cycle")
    return pipeline


def _is_flag_value(run: str, word: str) -> bool:
    words = shlex.split(run)
    i = words.index(word)
    return i > 0 and words[i - 1].startswith("--") and "=" not in words[i - 1]


# --- running it locally ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StageResult:
    name: str
    status: str  # passed | failed | skipped
    duration: float = 0.0
    log: Path | None = None
    started: float = 0.0
    ended: float = 0.0
    reason: str = ""


def select(pipeline: Pipeline, *, only: list[str], skip: list[str], with_deploy: bool) -> list[Stage]:
    names = set(pipeline.by_name())
    for name in [*only, *skip]:
        if name not in names:
            raise ConfigError(f"--only/--skip: unknown stage `{name}`; stages: {', '.join(pipeline.order())}")
    chosen = [s for s in pipeline.stages if (with_deploy or not s.deploy) and s.name not in skip]
    if only:
        chosen = [s for s in chosen if s.name in only]
    return chosen


def run_local(
    stages: list[Stage],
    *,
    jobs: int,
    logs: Path,
    command: list[str],
    on_event: Any = None,
) -> list[StageResult]:
    """Run ``stages`` in dependency order, up to ``jobs`` at once; a failure skips everything that needs it.

    ``command`` is the argv prefix that runs one stage's invoke line (e.g. [python, -m, invoke]).
    Needs on stages that were not selected count as met.
    """
    import subprocess
    import time
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    logs.mkdir(parents=True, exist_ok=True)
    selected = {s.name for s in stages}
    results: dict[str, StageResult] = {}
    t0 = time.time()

    def execute(stage: Stage) -> StageResult:
        log = logs / f"{stage.name}.log"
        start = time.time()
        with log.open("w", encoding="utf-8") as handle:
            code = subprocess.run(
                [*command, *shlex.split(stage.run)], stdout=handle, stderr=subprocess.STDOUT, check=False
            ).returncode
        end = time.time()
        status = "passed" if code == 0 else "failed"
        return StageResult(
            stage.name, status, end - start, log, start - t0, end - t0, f"exit {code}" if code else ""
        )

    def blocked_by(stage: Stage) -> str | None:
        for need in stage.needs:
            if need in selected and need in results and results[need].status != "passed":
                return need
        return None

    pending = list(stages)
    running: dict[Future[StageResult], Stage] = {}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        while pending or running:
            progressed = True
            while progressed:  # skipping one stage can unblock (or skip) another: repeat until stable
                progressed = False
                for stage in list(pending):
                    blocker = blocked_by(stage)
                    if blocker is not None:
                        results[stage.name] = StageResult(
                            stage.name, "skipped", reason=f"{blocker} did not pass"
                        )
                        pending.remove(stage)
                        progressed = True
                        continue
                    ready = all(n not in selected or n in results for n in stage.needs)
                    if ready and len(running) < jobs:
                        if on_event:
                            on_event(f"start {stage.name}: invoke {stage.run}")
                        running[pool.submit(execute, stage)] = stage
                        pending.remove(stage)
            if not running:
                if pending:  # cannot happen for a validated pipeline; never spin
                    raise ConfigError(f"stages {', '.join(s.name for s in pending)} can never start")
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                stage = running.pop(future)
                results[stage.name] = future.result()
                if on_event:
                    r = results[stage.name]
                    on_event(f"{r.status} {stage.name} in {r.duration:.1f}s")
    return [results[s.name] for s in stages]


def summary(results: list[StageResult], root: Path) -> list[str]:
    rows = [f"{'stage':<18} {'status':<8} {'duration':>9} {'start':>7} {'end':>7}  log"]
    for r in results:
        log = str(r.log.relative_to(root)) if r.log else r.reason
        rows.append(
            f"{r.name:<18} {r.status:<8} {r.duration:>8.1f}s {r.started:>6.1f}s {r.ended:>6.1f}s  {log}"
        )
    return rows


# --- rendering for CI ------------------------------------------------------------------------------

GITHUB_FILE = Path(".github/workflows/ci.yml")
GITLAB_FILE = Path(".gitlab-ci.yml")
HEADER = (
    "# GENERATED by `invoke ci.render` from ci/pipeline.yaml - do not edit by hand.\n"
    "# `invoke ci.check` fails when this file differs from a fresh render.\n"
)
FALLBACK_BRANCH = "main"
# What can go into `on.push.branches` and a quoted `github.ref == '...'` expression unescaped.
BRANCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/+-]*$")
NO_SERVICE = ("", "none")


def choose_default_branch(configured: str, *, origin_head: str, init_default: str, current: str) -> str:
    """The branch deploys run from: configured, else origin's HEAD, init.defaultBranch, main/master, main.

    Each argument is what git answered ("" when it had no answer); ``origin_head`` is ``origin/<name>``.
    """
    if configured:
        return configured
    if origin_head:
        return origin_head.removeprefix("origin/")
    if init_default:
        return init_default
    if current in ("main", "master"):
        return current
    return FALLBACK_BRANCH


def default_branch(runner: Runner, root: Path, configured: str = "", where: str = "") -> str:
    """Resolve the default branch (asking git only when it is not configured) and check it is usable.

    ``where`` names the source of ``configured`` (file:line) for the error message.
    """

    def git(*args: str) -> str:
        try:
            result = runner.run(["git", *args], cwd=root, capture=True, mutates=False, check=False)
        except ToolMissing:
            return ""
        return result.stdout.strip() if result.ok else ""

    if configured:
        branch = configured
    else:
        branch = choose_default_branch(
            "",
            origin_head=git("symbolic-ref", "--short", "-q", "refs/remotes/origin/HEAD"),
            init_default=git("config", "init.defaultBranch"),
            current=git("symbolic-ref", "--short", "-q", "HEAD"),
        )
    if not BRANCH_NAME.match(branch):
        source = f"{where}: `ci.default_branch`" if configured else f"git's default branch {branch!r}"
        raise ConfigError(
            f"{source} cannot be used in the CI files (letters, digits and . _ / + - only); "
            "set `ci.default_branch` in invoke.yaml"
        )
    return branch


def require_pythons(pipeline: Pipeline, pythons: list[str], ci: CiSpec) -> None:
    """A `matrix: python` stage needs the Pythons pyproject.toml declares; an empty matrix is an error."""
    matrix = [s.name for s in pipeline.stages if s.matrix == "python"]
    if matrix and not pythons:
        raise ConfigError(
            f"pyproject.toml: stage {matrix[0]} has `matrix: python` but [project] classifiers declare no "
            f'Python version; add e.g. "Programming Language :: Python :: {ci.python}" to `classifiers`'
        )


def _docker_service(ci: CiSpec) -> tuple[list[Any], dict[str, str]]:
    """GitLab `services` and `variables` giving a job a Docker engine (nothing for `none`)."""
    image = ci.docker_service.strip()
    if image.lower() in NO_SERVICE:
        return [], {}
    name = image.rsplit("/", 1)[-1]
    if not fnmatch.fnmatchcase(name, "docker:*dind"):
        return [image], {}
    # The daemon is reached as host `docker`: an image from another registry path needs that alias.
    service: Any = image if image == name else {"name": image, "alias": "docker"}
    return [service], {"DOCKER_HOST": "tcp://docker:2375", "DOCKER_TLS_CERTDIR": ""}


def _dump(data: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(data, sort_keys=False, width=110, default_flow_style=False)


def render_github(pipeline: Pipeline, pythons: list[str], ci: CiSpec, default_branch: str) -> str:
    require_pythons(pipeline, pythons, ci)
    jobs: dict[str, Any] = {}
    for stage in pipeline.stages:
        python = "${{ matrix.python }}" if stage.matrix else ci.python
        run = f"invoke {stage.run}" + (" --python ${{ matrix.python }}" if stage.matrix else "")
        job: dict[str, Any] = {"runs-on": "ubuntu-latest"}
        if stage.needs:
            job["needs"] = list(stage.needs)
        if stage.when in ("default-branch", "manual"):
            job["if"] = f"github.ref == 'refs/heads/{default_branch}'"
        if stage.deploy:
            # `production` is gated by the environment's required reviewers (repository settings).
            job["environment"] = {"name": stage.deploy}
            job["concurrency"] = {"group": f"deploy-{stage.deploy}", "cancel-in-progress": False}
        if stage.matrix:
            job["strategy"] = {"fail-fast": False, "matrix": {"python": list(pythons)}}
        steps: list[dict[str, Any]] = [
            {"uses": "actions/checkout@v4"},
            {"uses": "actions/setup-python@v5", "with": {"python-version": python, "cache": "pip"}},
            *([{"run": ci.install}] if ci.install else []),
            {"run": run},
        ]
        if stage.reports:
            steps.append(
                {
                    "if": "always()",
                    "uses": "actions/upload-artifact@v4",
                    "with": {"name": "reports-${{ matrix.python }}", "path": "reports/"},
                }
            )
        job["steps"] = steps
        jobs[stage.name] = job
    workflow = {
        "name": "ci",
        "on": {"push": {"branches": [default_branch]}, "pull_request": None},
        "concurrency": {"group": "ci-${{ github.ref }}", "cancel-in-progress": True},
        "permissions": {"contents": "read"},
        "jobs": jobs,
    }
    return _dump(workflow).replace("pull_request: null", "pull_request:")


def render_gitlab(pipeline: Pipeline, pythons: list[str], ci: CiSpec) -> str:
    """GitLab CI; deploy rules use $CI_DEFAULT_BRANCH, so the branch is GitLab's own setting."""
    require_pythons(pipeline, pythons, ci)
    depth: dict[str, int] = {}
    for name in pipeline.order():
        stage = pipeline.by_name()[name]
        depth[name] = 1 + max((depth[n] for n in stage.needs), default=0)
    levels = sorted(set(depth.values()))
    default: dict[str, Any] = {
        "image": ci.gitlab_image,
        "interruptible": True,
        "cache": {"key": "pip-$CI_JOB_IMAGE", "paths": [".cache/pip"]},
    }
    if ci.install:
        default["before_script"] = [ci.install]
    doc: dict[str, Any] = {
        "workflow": {
            "rules": [
                {"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'},
                {"if": "$CI_COMMIT_BRANCH && $CI_OPEN_MERGE_REQUESTS", "when": "never"},
                {"if": "$CI_COMMIT_BRANCH"},
            ],
            "auto_cancel": {"on_new_commit": "interruptible"},
        },
        "stages": [f"level-{n}" for n in levels],
        "variables": {"PIP_CACHE_DIR": "$CI_PROJECT_DIR/.cache/pip"},
        "default": default,
    }
    for stage in pipeline.stages:
        job: dict[str, Any] = {"stage": f"level-{depth[stage.name]}"}
        if stage.needs:
            job["needs"] = list(stage.needs)
        if stage.matrix:
            job["image"] = "python:$PYTHON"
            job["parallel"] = {"matrix": [{"PYTHON": list(pythons)}]}
            job["script"] = [f"invoke {stage.run} --python $PYTHON"]
        else:
            job["script"] = [f"invoke {stage.run}"]
        if stage.engine == "docker":
            services, variables = _docker_service(ci)  # fresh objects per job: no YAML anchors
            if services:
                job["services"] = services
            if variables:
                job["variables"] = variables
        if stage.reports:
            job["artifacts"] = {
                "when": "always",
                "paths": ["reports/"],
                "reports": {
                    "junit": "reports/junit-*.xml",
                    "coverage_report": {"coverage_format": "cobertura", "path": "reports/coverage-*.xml"},
                },
            }
        if stage.deploy:
            job["environment"] = {"name": stage.deploy}
            job["resource_group"] = f"deploy-{stage.deploy}"
            job["interruptible"] = False
        if stage.when == "default-branch":
            job["rules"] = [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}]
        elif stage.when == "manual":
            job["rules"] = [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH", "when": "manual"}]
        doc[stage.name] = job
    return _dump(doc)
