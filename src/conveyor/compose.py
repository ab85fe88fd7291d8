"""docker compose v2 as argv lists: one Stack per environment (project name + files + variables).

The compose contract: every process of the app contract is a compose service of the same name. conveyor
adds one generated file, on stdin (``--file -``), that gives each process service the release image, the
process command, the environment's vars and secrets, conveyor's labels and, for a process with a
``healthcheck`` command, that healthcheck. Everything else (networks, volumes, dependencies, the other
services) is the project's own compose files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from conveyor.config import DRAIN_VAR, SHUTDOWN_VAR, AppContract, Config
from conveyor.errors import CommandFailed, ConfigError, ConveyorError
from conveyor.runner import Runner
from conveyor.secrets import SecretResolver

LABEL_SHA, LABEL_IMAGE, LABEL_PROCESS = "dev.conveyor.git-sha", "dev.conveyor.image", "dev.conveyor.process"


@dataclass(frozen=True)
class Stack:
    project: str
    files: tuple[Path, ...]
    variables: Mapping[str, str]
    override: str = ""  # generated compose YAML, passed on stdin as the last file
    app_env: Mapping[str, str] = field(default_factory=dict)  # vars + secrets: what the override carries
    shutdown: int = 20  # deploy.shutdown_timeout
    drain: int = 0  # deploy.drain_seconds: the process drains itself after SIGTERM (nothing else does here)

    def argv(self, *args: str) -> list[str]:
        argv = ["docker", "compose", "--project-name", self.project]
        for path in self.files:
            argv += ["--file", str(path)]
        if self.override:
            argv += ["--file", "-"]
        return [*argv, *args]

    def project_files(self) -> Stack:
        """The project's own files only (what `validate` checks the contract against)."""
        return replace(self, override="")


def process_override(
    contract: AppContract,
    image: str,
    git_sha: str,
    environment: Mapping[str, str],
    shutdown: int = 20,
    drain: int = 0,
) -> str:
    """The generated compose file: image, command, environment, labels, the stop budget (and healthcheck)
    per process. After SIGTERM a process drains for CONVEYOR_DRAIN_SECONDS (failing readiness while it
    still serves), then has CONVEYOR_SHUTDOWN_TIMEOUT to finish: stop_grace_period is both."""
    services: dict[str, Any] = {}
    escaped = {k: v.replace("$", "$$") for k, v in environment.items()}  # values are not interpolated
    escaped.update({SHUTDOWN_VAR: str(shutdown), DRAIN_VAR: str(drain)})
    for proc in contract.processes:
        service: dict[str, Any] = {
            "image": image.replace("$", "$$"),
            "environment": dict(sorted(escaped.items())),
            "labels": {LABEL_SHA: git_sha, LABEL_IMAGE: image, LABEL_PROCESS: proc.name},
            "stop_grace_period": f"{shutdown + drain}s",
        }
        if proc.command:
            service["command"] = [arg.replace("$", "$$") for arg in proc.command]
        if proc.healthcheck:
            service["healthcheck"] = {
                "test": ["CMD", *(arg.replace("$", "$$") for arg in proc.healthcheck)],
                "interval": "5s",
                "timeout": "5s",
                "retries": 3,
                "start_period": "10s",
            }
        services[proc.name] = service
    return yaml.safe_dump({"services": services}, sort_keys=False)


def stack_for(cfg: Config, resolver: SecretResolver, app_image: str, git_sha: str = "") -> Stack:
    """The environment's stack: its files, the generated process file, and the interpolation variables
    (.env/environment + vars + secrets + APP_IMAGE)."""
    if cfg.env.target != "compose":
        raise ConfigError(f"environment {cfg.env.name} has target {cfg.env.target}, not compose")
    files = tuple(cfg.root / f for f in cfg.env.compose.files)
    for path in files:
        if not path.is_file():
            raise ConfigError(f"compose.files: {path.relative_to(cfg.root)} does not exist")
    variables: dict[str, str] = {k: v for k, v in cfg.dotenv.items() if not k.startswith("CONVEYOR_")}
    app_env = dict(cfg.env.vars)
    for name, ref in cfg.env.secrets.items():
        app_env[name] = resolver.resolve(ref)
    variables.update(app_env)
    variables["APP_IMAGE"] = app_image
    variables["COMPOSE_PROJECT_NAME"] = cfg.env.compose.project
    shutdown, drain = cfg.env.deploy.shutdown_timeout, cfg.env.deploy.drain_seconds
    override = process_override(cfg.app, app_image, git_sha, app_env, shutdown, drain)
    return Stack(cfg.env.compose.project, files, variables, override, app_env, shutdown, drain)


def run(runner: Runner, stack: Stack, *args: str, capture: bool = False, mutates: bool = True) -> str:
    try:
        result = runner.run(
            stack.argv(*args),
            env=dict(stack.variables),
            capture=capture,
            mutates=mutates,
            input=stack.override or None,
        )
    except CommandFailed as exc:
        raise ConveyorError(
            f"docker compose {args[0]} failed: {exc.tail or f'exit code {exc.returncode}'}"
        ) from None
    return result.stdout


def run_release(runner: Runner, stack: Stack, contract: AppContract) -> None:
    """The release command as a one-off of the HTTP process's service (else the first process's): the
    new image, the process environment, and its `depends_on` services started first."""
    run(runner, stack, "run", "--rm", "--no-TTY", "--quiet-pull", contract.anchor.name, *contract.release)


def validate(runner: Runner, stack: Stack, processes: list[str] | None = None) -> list[str]:
    """Check each file's YAML (to name file:line), then `docker compose config` (compose's own message),
    then that every process of the app contract is a service. Returns the project's services."""
    for path in stack.files:
        check_yaml(path)
    out = run(runner, stack.project_files(), "config", "--services", capture=True, mutates=False)
    services = sorted(line for line in out.splitlines() if line.strip())
    missing = [name for name in processes or [] if name not in services]
    if missing:
        files = ", ".join(str(p.name) for p in stack.files)
        raise ConfigError(
            f"compose.files ({files}): process `{missing[0]}` has no service of that name "
            f"(services: {', '.join(services) or 'none'}); every process is a compose service"
        )
    return services


def model(runner: Runner, stack: Stack) -> dict[str, Any]:
    """The resolved compose model (`docker compose config --format json`), the generated file included."""
    out = run(runner, stack, "config", "--format", "json", capture=True, mutates=False)
    try:
        return dict(json.loads(out)) if out.strip() else {}
    except ValueError:
        raise ConveyorError("docker compose config --format json did not print JSON") from None


def check_yaml(path: Path) -> None:
    try:
        yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path.parent.name}/{path.name}" + (f":{mark.line + 1}" if mark is not None else "")
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: malformed compose file: {problem}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def ps(runner: Runner, stack: Stack) -> list[dict[str, Any]]:
    out = run(runner, stack, "ps", "--all", "--format", "json", capture=True, mutates=False).strip()
    if not out:
        return []
    if out.startswith("["):
        rows: list[dict[str, Any]] = json.loads(out)
        return rows
    return [json.loads(line) for line in out.splitlines() if line.strip()]
