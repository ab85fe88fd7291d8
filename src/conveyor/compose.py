"""docker compose v2 as argv lists: one Stack per environment (project name + files + variables)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from conveyor.config import Config
from conveyor.errors import CommandFailed, ConfigError, ConveyorError
from conveyor.runner import Runner
from conveyor.secrets import SecretResolver


@dataclass(frozen=True)
class Stack:
    project: str
    files: tuple[Path, ...]
    variables: Mapping[str, str]

    def argv(self, *args: str) -> list[str]:
        argv = ["docker", "compose", "--project-name", self.project]
        for path in self.files:
            argv += ["--file", str(path)]
        return [*argv, *args]


def stack_for(cfg: Config, resolver: SecretResolver, app_image: str) -> Stack:
    """The environment's stack: its files; variables = .env/environment + vars + secrets + APP_IMAGE."""
    if cfg.env.target != "compose":
        raise ConfigError(f"environment {cfg.env.name} has target {cfg.env.target}, not compose")
    files = tuple(cfg.root / f for f in cfg.env.compose.files)
    for path in files:
        if not path.is_file():
            raise ConfigError(f"compose.files: {path.relative_to(cfg.root)} does not exist")
    variables: dict[str, str] = {k: v for k, v in cfg.dotenv.items() if not k.startswith("CONVEYOR_")}
    variables.update(cfg.env.vars)
    for name, ref in cfg.env.secrets.items():
        variables[name] = resolver.resolve(ref)
    variables["APP_IMAGE"] = app_image
    variables["COMPOSE_PROJECT_NAME"] = cfg.env.compose.project
    return Stack(cfg.env.compose.project, files, variables)


def run(runner: Runner, stack: Stack, *args: str, capture: bool = False, mutates: bool = True) -> str:
    try:
        result = runner.run(stack.argv(*args), env=dict(stack.variables), capture=capture, mutates=mutates)
    except CommandFailed as exc:
        raise ConveyorError(
            f"docker compose {args[0]} failed: {exc.tail or f'exit code {exc.returncode}'}"
        ) from None
    return result.stdout


def validate(runner: Runner, stack: Stack) -> list[str]:
    """Check each file's YAML (to name file:line), then `docker compose config` (compose's own message)."""
    for path in stack.files:
        check_yaml(path)
    out = run(runner, stack, "config", "--services", capture=True, mutates=False)
    return [line for line in out.splitlines() if line.strip()]


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
