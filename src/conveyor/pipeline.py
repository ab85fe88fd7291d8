"""The pipeline: one definition (ci/pipeline.yaml), validated once, run locally and rendered for CI."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from conveyor.config import CiSpec, read_yaml
from conveyor.errors import CommandFailed, ConfigError, ConveyorError, ToolMissing

if TYPE_CHECKING:
    from conveyor.runner import Runner

PIPELINE_FILE = Path("ci/pipeline.yaml")
STAGE_KEYS = {"name", "run", "needs", "matrix", "reports", "deploy", "when", "engine"} | {
    "produces",
    "consumes",
    "packages",
}
WHEN = ("always", "default-branch", "manual")
# Debian/Ubuntu package names (Debian policy 5.6.7), installed by apt in the generated jobs.
PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
# Flags of a stage's command line that name an environment (deploy --env, promote --from/--to).
ENV_FLAGS = ("--env", "--from", "--to", "-e")


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
    produces: tuple[str, ...] = ()  # paths relative to the project root; a directory ends with `/`
    consumes: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()  # apt packages the job needs (e.g. server binaries of test fixtures)

    @property
    def argv(self) -> list[str]:
        return ["invoke", *shlex.split(self.run)]

    def environments(self) -> list[str]:
        """The environments the stage's command line names (``--env X``, ``--from X``, ``--to X``)."""
        words = shlex.split(self.run)
        found: list[str] = []
        for i, word in enumerate(words):
            flag, eq, value = word.partition("=")
            if flag in ENV_FLAGS and (eq or i + 1 < len(words)):
                name = value if eq else words[i + 1]
                if name not in found:
                    found.append(name)
        return found


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

    def ancestors(self, name: str) -> list[str]:
        """Every stage ``name`` needs, directly or through others, in dependency order."""
        stages = self.by_name()
        seen: set[str] = set()
        todo = list(stages[name].needs)
        while todo:
            need = todo.pop()
            if need not in seen:
                seen.add(need)
                todo += stages[need].needs
        return [n for n in self.order() if n in seen]

    def producers(self, name: str, path: str) -> list[Stage]:
        """The stages among ``name``'s needs (transitively) whose products hold ``path``."""
        stages = self.by_name()
        return [stages[n] for n in self.ancestors(name) if any(covers(p, path) for p in stages[n].produces)]

    def source(self, name: str, path: str) -> tuple[Stage, str]:
        """Where ``name`` gets ``path`` from: the producer whose produced path is the most specific one
        holding it (the nearest need on a tie), and that produced path. Only for a validated pipeline."""
        found = [(s, p) for s in self.producers(name, path) for p in s.produces if covers(p, path)]
        return max(enumerate(found), key=lambda pair: (len(pair[1][1]), pair[0]))[1]


def covers(produced: str, path: str) -> bool:
    """A produced path holds ``path``: the same path, or a directory (``dir/``) above it."""
    return produced == path or (produced.endswith("/") and path.startswith(produced))


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
    """One stage from its YAML mapping, every key checked."""
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
    name = str(raw["name"])
    packages = _strings(raw, "packages", where, name)
    for package in packages:
        if not PACKAGE_NAME.match(package):
            raise ConfigError(
                f"{where}: stage {name}: `packages` entry {package!r} is not a Debian package name"
            )
    return Stage(
        name=name,
        run=str(raw["run"]),
        needs=tuple(str(n) for n in raw.get("needs", [])),
        matrix=matrix,
        reports=bool(raw.get("reports", False)),
        deploy=str(raw.get("deploy", "")),
        when=when,
        engine=str(raw.get("engine", "")),
        produces=tuple(_path(p, "produces", where, name) for p in _strings(raw, "produces", where, name)),
        consumes=tuple(_path(p, "consumes", where, name) for p in _strings(raw, "consumes", where, name)),
        packages=packages,
    )


def _strings(raw: dict[str, Any], key: str, where: str, name: str) -> tuple[str, ...]:
    """A stage's list-of-strings key (absent: empty)."""
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: stage {name}: `{key}` must be a list of non-empty strings")
    return tuple(value)


def _path(path: str, key: str, where: str, name: str) -> str:
    """A produced/consumed path, normalised: relative to the project root, inside it, no wildcard."""
    clean = path.removeprefix("./")
    parts = clean.rstrip("/").split("/")
    if (
        clean.startswith("/")
        or not clean.rstrip("/")
        or any(p in ("", ".", "..") for p in parts)
        or any(ch in clean for ch in "*?[]\\")
    ):
        raise ConfigError(
            f"{where}: stage {name}: `{key}` path {path!r} must be a file or directory/ inside the project "
            "(relative, no `..`, no wildcard)"
        )
    return clean


def validate(stages: list[Stage], task_names: set[str], where: str) -> Pipeline:
    """Names, needs, tasks, cycles, then products: every consumed path comes from a needed stage."""
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
    for stage in stages:
        for path in stage.consumes:
            producers = pipeline.producers(stage.name, path)
            if not producers:
                raise ConfigError(
                    f"{where}: stage {stage.name} consumes `{path}`, which no stage in its needs produces "
                    "(add the producing stage to `needs` or `produces` to it)"
                )
            source = pipeline.source(stage.name, path)[0]
            if source.matrix:
                raise ConfigError(
                    f"{where}: stage {stage.name} consumes `{path}` from matrix stage {source.name}, "
                    "whose products are one per Python; consume from a stage without `matrix`"
                )
    return pipeline


def _is_flag_value(run: str, word: str) -> bool:
    """``word`` follows a ``--flag`` (so it is the flag's value, not a task)."""
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
    """The stages a local run runs: deploys only when asked, then --skip and --only."""
    names = set(pipeline.by_name())
    for name in [*only, *skip]:
        if name not in names:
            raise ConfigError(f"--only/--skip: unknown stage `{name}`; stages: {', '.join(pipeline.order())}")
    chosen = [s for s in pipeline.stages if (with_deploy or not s.deploy) and s.name not in skip]
    if only:
        chosen = [s for s in chosen if s.name in only]
    return chosen


class StageSetupFailed(ConveyorError):
    """A stage's checkout could not be made, or a product it consumes is not there."""


class Workspaces:
    """Isolated stages: each runs in a clean checkout of one commit under ``build/ci/checkouts/<stage>``,
    receives only the paths it declares in ``consumes`` (copied from its producers' collected products)
    and has its ``produces`` collected into ``build/ci/products/<stage>/`` after it passes.

    A checkout is reused between runs (``git checkout --force`` + ``git clean -ffdx``) but keeps the tool
    environments named in ``keep`` (nox's virtualenvs), as a CI runner keeps its caches. The project's
    ``.env`` files (never committed) are copied in: locally they stand for CI's variables.
    """

    KEEP = (".nox", ".venv")

    def __init__(self, root: Path, sha: str, pipeline: Pipeline, runner: Runner, kit: str = "") -> None:
        """Checkouts of ``sha`` under ``root``/build/ci/checkouts, products under build/ci/products."""
        self.root = root
        self.sha = sha
        self.pipeline = pipeline
        self.runner = runner
        self.checkouts = root / "build/ci/checkouts"
        self.products = root / "build/ci/products"
        # conveyor's own source inside the project (the kit's repository): imported from the checkout,
        # so a stage runs the committed kit, not this working tree's.
        self.kit = kit

    def env(self, cwd: Path) -> dict[str, str] | None:
        """The environment of a stage running in ``cwd`` (None: this process's own)."""
        if not self.kit:
            return None
        path = [str(cwd / self.kit), *filter(None, [os.environ.get("PYTHONPATH", "")])]
        return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}

    def checkout(self, stage: Stage) -> Path:
        """A clean checkout of ``sha`` for ``stage`` with its consumed paths in place; returns its path."""
        dest = self.checkouts / stage.name
        git = ["git", "-C", str(dest)]
        try:
            if not (dest / ".git").exists():
                shutil.rmtree(dest, ignore_errors=True)
                dest.parent.mkdir(parents=True, exist_ok=True)
                # --shared: the objects are read from the project's own repository, nothing is copied.
                clone = ["git", "clone", "-q", "--shared", "--no-checkout", str(self.root), str(dest)]
                self.runner.run(clone, capture=True)
            self.runner.run([*git, "checkout", "-q", "--force", "--detach", self.sha], capture=True)
            keep = [arg for name in self.KEEP for arg in ("-e", name)]
            self.runner.run([*git, "clean", "-q", "-ffdx", *keep], capture=True)
        except CommandFailed as exc:
            raise StageSetupFailed(f"checkout of {self.sha[:12]} failed: {exc.tail}") from None
        for env_file in sorted(self.root.glob(".env*")):
            if env_file.is_file():
                shutil.copy2(env_file, dest / env_file.name)
        for path in stage.consumes:
            self._receive(stage, path, dest)
        return dest

    def _receive(self, stage: Stage, path: str, dest: Path) -> None:
        """Copy one consumed path from the product store of the stage that produced it."""
        producer = self.pipeline.source(stage.name, path)[0]
        source = self.products / producer.name / path
        if not source.exists():
            raise StageSetupFailed(
                f"consumes {path}, but {producer.name} has not produced it in this checkout's runs "
                f"(run {producer.name} too)"
            )
        _copy(source, dest / path)

    def collect(self, stage: Stage, cwd: Path) -> str:
        """Move the declared products into the store; the reason when one is missing (else "")."""
        store = self.products / stage.name
        shutil.rmtree(store, ignore_errors=True)
        missing = [
            p for p in stage.produces if not (cwd / p).exists() or (p.endswith("/") != (cwd / p).is_dir())
        ]
        if missing:
            return f"declared product {missing[0]} was not produced"
        for path in stage.produces:
            _copy(cwd / path, store / path)
        return ""

    def discard(self, stage: Stage) -> None:
        """Forget a stage's products (it is about to run, or it failed)."""
        shutil.rmtree(self.products / stage.name, ignore_errors=True)


def _copy(source: Path, dest: Path) -> None:
    """Copy a file or a directory tree to ``dest`` (replacing what is there)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(source, dest, symlinks=True)
    else:
        shutil.copy2(source, dest)


def run_local(
    stages: list[Stage],
    *,
    jobs: int,
    logs: Path,
    command: list[str],
    on_event: Any = None,
    workspaces: Workspaces | None = None,
) -> list[StageResult]:
    """Run ``stages`` in dependency order, up to ``jobs`` at once; a failure skips everything that needs it.

    ``command`` is the argv prefix that runs one stage's invoke line (e.g. [python, -m, invoke]).
    Needs on stages that were not selected count as met. With ``workspaces`` each stage runs isolated
    (see `Workspaces`); without, every stage runs in the current directory.
    """
    import subprocess
    import time
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    logs.mkdir(parents=True, exist_ok=True)
    selected = {s.name for s in stages}
    results: dict[str, StageResult] = {}
    t0 = time.time()

    def execute(stage: Stage) -> StageResult:
        """Run one stage (in its checkout when isolated), its output in its log."""
        log = logs / f"{stage.name}.log"
        start = time.time()
        reason = ""
        with log.open("w", encoding="utf-8") as handle:
            try:
                cwd = workspaces.checkout(stage) if workspaces else None
            except StageSetupFailed as exc:
                handle.write(f"conveyor: {exc}\n")
                code, reason = 1, str(exc)
            else:
                if workspaces:
                    workspaces.discard(stage)
                    handle.write(f"conveyor: stage {stage.name} in {cwd} at {workspaces.sha[:12]}\n")
                    handle.flush()
                code = subprocess.run(
                    [*command, *shlex.split(stage.run)],
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    check=False,
                    cwd=cwd,
                    env=workspaces.env(cwd) if workspaces and cwd else None,
                ).returncode
                reason = f"exit {code}" if code else ""
                if code == 0 and workspaces and cwd is not None:
                    reason = workspaces.collect(stage, cwd)
                    if reason:
                        handle.write(f"conveyor: {reason}\n")
                        code = 1
        end = time.time()
        status = "passed" if code == 0 else "failed"
        return StageResult(stage.name, status, end - start, log, start - t0, end - t0, reason)

    def blocked_by(stage: Stage) -> str | None:
        """The selected need of ``stage`` that did not pass, if any."""
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
    """The summary table: one row per stage, with its log (and why it failed when it was not its exit)."""
    rows = [f"{'stage':<18} {'status':<8} {'duration':>9} {'start':>7} {'end':>7}  log"]
    for r in results:
        log = str(r.log.relative_to(root)) if r.log else r.reason
        if r.log and r.reason and not r.reason.startswith("exit "):
            log += f"  ({r.reason})"
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


# --- what the generated jobs need: environments, artifacts, packages ---------------------------------

GITLAB_DIND_FILE = Path("ci/gitlab/dind.yml")
AWS_AUDIENCE = "sts.amazonaws.com"  # the audience AWS STS expects of an OIDC token
# The GitLab file's image variables and dind switch are the `ci.*` keys in their variable form: the same
# setting at render time (invoke.yaml) and at run time (a CI/CD variable; conveyor reads it as that key).
IMAGE_VAR = "CONVEYOR_CI__GITLAB_IMAGE"
PYTHON_IMAGE_VAR = "CONVEYOR_CI__GITLAB_PYTHON_IMAGE"  # a repository: `:$PYTHON` is appended
DOCKER_IMAGE_VAR = "CONVEYOR_CI__GITLAB_DOCKER_IMAGE"
DIND_SWITCH = "CONVEYOR_CI__DOCKER_SERVICE"  # "none": no docker:dind service, no DOCKER_HOST
CACHE_VARS = ("CONVEYOR_IMAGE__CACHE_FROM", "CONVEYOR_IMAGE__CACHE_TO")  # image.cache_from/_to


@dataclass(frozen=True)
class EnvAccess:
    """What a CI job needs to reach one environment (from deploy/environments/<env>.yaml)."""

    name: str
    target: str
    region: str = ""
    registry_committed: bool = True  # else CONVEYOR_REGISTRY comes from a CI variable


def environment_access(root: Path, pipeline: Pipeline) -> dict[str, EnvAccess]:
    """The settings of every environment a stage names, from the files (no process variable is read)."""
    from conveyor import config

    found: dict[str, EnvAccess] = {}
    for name in sorted({e for s in pipeline.stages for e in s.environments()}):
        cfg = config.load(root, name, environ={})
        source = cfg.values["registry"].source.split(":")[0]
        found[name] = EnvAccess(
            name,
            cfg.env.target,
            cfg.env.ecs.region if cfg.env.target == "ecs" else "",
            bool(cfg.env.registry) and source.endswith((".yaml", ".yml")),
        )
    return found


def job_needs(pipeline: Pipeline, stage: Stage) -> list[tuple[str, bool]]:
    """(stage, carries artifacts) for a job: its declared needs plus the producers of what it consumes."""
    producers = [_source(pipeline, stage, path)[0].name for path in stage.consumes]
    names = [*stage.needs, *(p for p in producers if p not in stage.needs)]
    return [(n, n in producers) for n in dict.fromkeys(names)]


def _source(pipeline: Pipeline, stage: Stage, path: str) -> tuple[Stage, str]:
    """The producer of a consumed path and the produced path that holds it."""
    return pipeline.source(stage.name, path)


def artifact_name(stage: Stage, path: str) -> str:
    """The GitHub artifact of one produced path (one per Python for a matrix stage)."""
    name = f"{stage.name}-{path.rstrip('/').replace('/', '-')}"
    return name + ("-${{ matrix.python }}" if stage.matrix else "")


def artifact_root(path: str) -> str:
    """Where upload-artifact roots one path (a directory: itself; a file: its directory), so the
    download goes back to the same place."""
    if path.endswith("/"):
        return path.rstrip("/")
    return path.rpartition("/")[0] or "."


def apt(packages: Iterable[str], *, sudo: bool) -> str:
    """One apt line installing ``packages`` (no recommends)."""
    prefix = "sudo " if sudo else ""
    names = " ".join(packages)
    return f"{prefix}apt-get update -qq && {prefix}apt-get install -y -qq --no-install-recommends {names}"


def _targets(stage: Stage, envs: dict[str, EnvAccess]) -> list[EnvAccess]:
    """The known environments a stage's command line names."""
    return [envs[e] for e in stage.environments() if e in envs]


def _registry_variable(stage: Stage, envs: dict[str, EnvAccess]) -> bool:
    """CONVEYOR_REGISTRY from a CI variable: one environment, whose registry is not committed."""
    targets = _targets(stage, envs)
    return len(targets) == 1 and not targets[0].registry_committed


# --- rendering for CI ------------------------------------------------------------------------------


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
    """A generated YAML file: the header, then the document in its given key order."""
    return HEADER + yaml.safe_dump(data, sort_keys=False, width=110, default_flow_style=False)


def render_github(
    pipeline: Pipeline,
    pythons: list[str],
    ci: CiSpec,
    default_branch: str,
    envs: dict[str, EnvAccess] | None = None,
) -> str:
    """GitHub Actions: one job per stage; artifacts per produced path; packages, buildx, OIDC as declared."""
    require_pythons(pipeline, pythons, ci)
    envs = envs or {}
    jobs: dict[str, Any] = {}
    for stage in pipeline.stages:
        python = "${{ matrix.python }}" if stage.matrix else ci.python
        run = f"invoke {stage.run}" + (" --python ${{ matrix.python }}" if stage.matrix else "")
        job: dict[str, Any] = {"runs-on": "ubuntu-latest"}
        needs = [n for n, _ in job_needs(pipeline, stage)]
        if needs:
            job["needs"] = needs
        if stage.when in ("default-branch", "manual"):
            job["if"] = f"github.ref == 'refs/heads/{default_branch}'"
        if stage.deploy:
            # `production` is gated by the environment's required reviewers (repository settings).
            job["environment"] = {"name": stage.deploy}
            job["concurrency"] = {"group": f"deploy-{stage.deploy}", "cancel-in-progress": False}
        if stage.matrix:
            job["strategy"] = {"fail-fast": False, "matrix": {"python": list(pythons)}}
        targets = _targets(stage, envs)
        if any(t.target == "ecs" for t in targets):
            job["permissions"] = {"contents": "read", "id-token": "write"}  # the OIDC token for AWS
        env: dict[str, str] = {}
        if _registry_variable(stage, envs):
            env["CONVEYOR_REGISTRY"] = "${{ vars.CONVEYOR_REGISTRY }}"
        steps: list[dict[str, Any]] = [
            {"uses": "actions/checkout@v4"},
            {"uses": "actions/setup-python@v5", "with": {"python-version": python, "cache": "pip"}},
        ]
        if stage.packages:
            steps.append({"name": "packages", "run": apt(stage.packages, sudo=True)})
        if ci.install:
            steps.append({"run": ci.install})
        downloads: dict[str, str] = {}
        for path in stage.consumes:
            producer, produced = _source(pipeline, stage, path)
            downloads[artifact_name(producer, produced)] = artifact_root(produced)
        for name, root in downloads.items():
            steps.append({"uses": "actions/download-artifact@v4", "with": {"name": name, "path": root}})
        if stage.engine == "docker":
            steps.append({"uses": "docker/setup-buildx-action@v3"})
            if ci.github_build_cache:  # type=gha reads the runtime token this action exports
                steps.append({"uses": "crazy-max/ghaction-github-runtime@v3"})
                env[CACHE_VARS[0]] = ci.github_build_cache
                env[CACHE_VARS[1]] = f"{ci.github_build_cache},mode=max"
        ecs = next((t for t in targets if t.target == "ecs"), None)
        if ecs is not None:
            aws = {"role-to-assume": "${{ vars.AWS_ROLE_ARN }}", "aws-region": ecs.region}
            steps.append({"uses": "aws-actions/configure-aws-credentials@v4", "with": aws})
        for k8s in (t for t in targets if t.target == "k8s"):
            steps.append(
                {
                    "name": f"cluster access ({k8s.name})",
                    "env": {"KUBECONFIG_DATA": "${{ secrets.KUBECONFIG }}"},
                    "run": 'umask 077 && printf "%s" "$KUBECONFIG_DATA" > "$RUNNER_TEMP/kubeconfig" '
                    '&& echo "KUBECONFIG=$RUNNER_TEMP/kubeconfig" >> "$GITHUB_ENV"',
                }
            )
        if env:
            job["env"] = env
        steps.append({"run": run})
        for path in stage.produces:
            upload: dict[str, Any] = {
                "uses": "actions/upload-artifact@v4",
                "with": {
                    "name": artifact_name(stage, path),
                    "path": path,
                    "if-no-files-found": "warn" if stage.reports else "error",
                },
            }
            if stage.reports:
                upload = {"if": "always()", **upload}
            steps.append(upload)
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


def render_gitlab_dind(pipeline: Pipeline, ci: CiSpec) -> str | None:
    """The docker:dind service of the `engine: docker` jobs, in its own file (None: no service).

    .gitlab-ci.yml includes it unless $CONVEYOR_CI__DOCKER_SERVICE is "none", so a runner that mounts the
    host's Docker socket gets jobs with no `services:` and no DOCKER_HOST at all."""
    docker = [s for s in pipeline.stages if s.engine == "docker"]
    services, _ = _docker_service(ci)
    if not docker or not services:
        return None
    doc: dict[str, Any] = {}
    for stage in docker:
        services, variables = _docker_service(ci)  # fresh objects per job: no YAML anchors
        doc[stage.name] = {"services": services, **({"variables": variables} if variables else {})}
    return _dump(doc)


def render_gitlab(
    pipeline: Pipeline, pythons: list[str], ci: CiSpec, envs: dict[str, EnvAccess] | None = None
) -> str:
    """GitLab CI; deploy rules use $CI_DEFAULT_BRANCH, so the branch is GitLab's own setting."""
    require_pythons(pipeline, pythons, ci)
    envs = envs or {}
    depth: dict[str, int] = {}
    for name in pipeline.order():
        stage = pipeline.by_name()[name]
        depth[name] = 1 + max((depth[n] for n, _ in job_needs(pipeline, stage)), default=0)
    levels = sorted(set(depth.values()))
    default: dict[str, Any] = {
        "image": f"${IMAGE_VAR}",
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
    }
    if render_gitlab_dind(pipeline, ci) is not None:
        rule = {"if": f'${DIND_SWITCH} != "none"'}
        doc["include"] = [{"local": str(GITLAB_DIND_FILE), "rules": [rule]}]
    variables = {
        "PIP_CACHE_DIR": "$CI_PROJECT_DIR/.cache/pip",
        IMAGE_VAR: ci.gitlab_image,
        PYTHON_IMAGE_VAR: ci.gitlab_python_image,
    }
    if any(s.engine == "docker" for s in pipeline.stages):
        variables[DOCKER_IMAGE_VAR] = ci.gitlab_docker_image or ci.gitlab_image
    doc |= {"stages": [f"level-{n}" for n in levels], "variables": variables, "default": default}
    for stage in pipeline.stages:
        doc[stage.name] = _gitlab_job(pipeline, stage, pythons, ci, envs, depth[stage.name])
    return _dump(doc)


def _gitlab_job(
    pipeline: Pipeline,
    stage: Stage,
    pythons: list[str],
    ci: CiSpec,
    envs: dict[str, EnvAccess],
    level: int,
) -> dict[str, Any]:
    """One GitLab job from one stage."""
    job: dict[str, Any] = {"stage": f"level-{level}"}
    needs = job_needs(pipeline, stage)
    if needs:
        job["needs"] = [{"job": n, "artifacts": carries} for n, carries in needs]
    targets = _targets(stage, envs)
    setup: list[str] = []
    if stage.packages:
        setup.append(apt(stage.packages, sudo=False))
    if stage.engine == "docker":  # an image that has docker + buildx installs nothing
        docker = apt(("docker.io", "docker-buildx"), sudo=False)
        setup.append(f"docker buildx version >/dev/null 2>&1 || ({docker})")
    if any(t.target == "k8s" for t in targets):
        setup.append(f"command -v kubectl >/dev/null || ({apt(('kubectl',), sudo=False)})")
    if stage.matrix:
        job["image"] = f"${PYTHON_IMAGE_VAR}:$PYTHON"
        job["parallel"] = {"matrix": [{"PYTHON": list(pythons)}]}
    elif stage.engine == "docker":
        job["image"] = f"${DOCKER_IMAGE_VAR}"
    if setup:
        job["before_script"] = [*setup, *([ci.install] if ci.install else [])]
    script: list[str] = []
    variables: dict[str, str] = {}
    if stage.engine == "docker" and ci.gitlab_build_cache:
        variables[CACHE_VARS[0]] = ci.gitlab_build_cache
        variables[CACHE_VARS[1]] = f"{ci.gitlab_build_cache},mode=max"
        # A registry cache needs a BuildKit container builder and a login to the project's registry.
        script.append(
            f'if [ -n "${{{CACHE_VARS[1]}:-}}" ]; then docker buildx create --use --driver docker-container'
            ' >/dev/null && { [ -z "${CI_REGISTRY:-}" ] || echo "$CI_REGISTRY_PASSWORD" | docker login'
            ' -u "$CI_REGISTRY_USER" --password-stdin "$CI_REGISTRY"; }; fi'
        )
    if any(t.target == "ecs" for t in targets):
        # OIDC when a role is set (AWS_ROLE_ARN, a CI variable); else the job's plain AWS_* variables.
        job["id_tokens"] = {"AWS_ID_TOKEN": {"aud": AWS_AUDIENCE}}
        script.append(  # the token file lives outside the checkout (a file there makes the tree dirty)
            'if [ -n "${AWS_ROLE_ARN:-}" ] && [ -n "${AWS_ID_TOKEN:-}" ]; then'
            ' AWS_WEB_IDENTITY_TOKEN_FILE="$(mktemp)" && export AWS_WEB_IDENTITY_TOKEN_FILE'
            ' && printf "%s" "$AWS_ID_TOKEN" > "$AWS_WEB_IDENTITY_TOKEN_FILE"; fi'
        )
    for k8s in (t for t in targets if t.target == "k8s"):
        script.append(
            f'test -f "${{KUBECONFIG:-}}" || {{ echo "conveyor: set KUBECONFIG, a File variable holding '
            f'the kubeconfig of {k8s.name}" >&2; exit 1; }}'
        )
    script.append(f"invoke {stage.run}" + (" --python $PYTHON" if stage.matrix else ""))
    job["script"] = script
    if variables:
        job["variables"] = variables
    if stage.produces:
        job["artifacts"] = {"paths": list(stage.produces)}
    if stage.reports:
        job["artifacts"] = {
            "when": "always",
            "paths": list(stage.produces) or ["reports/"],
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
    return job
