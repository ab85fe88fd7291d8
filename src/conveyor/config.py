"""Configuration, merged one way and validated once into frozen dataclasses.

Layers, lowest first: kit defaults -> ``invoke.yaml`` (``conveyor:`` key)
-> ``deploy/environments/<env>.yaml`` -> ``.env`` and ``.env.<env>`` -> process environment
(``CONVEYOR_*``) -> CLI flags. Every value keeps the place it came from, so ``invoke env.show`` can
print it and every error can name the file, line and key.
"""

from __future__ import annotations

import difflib
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from conveyor.errors import ConfigError, UsageError
from conveyor.secrets import SecretRef, parse_ref

ENV_DIR = Path("deploy/environments")
TARGETS = ("compose", "ecs", "k8s")
ENV_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
ENV_PREFIX = "CONVEYOR_"
RESERVED_VARS = {"CONVEYOR_ENV"}  # selects the environment; not a config key


@dataclass(frozen=True)
class Key:
    """One config key: its type, default and a line of help (shown by env.show)."""

    kind: str  # str | url | int | severity | list | map | secrets | target
    default: Any = None
    help: str = ""


SCHEMA: dict[str, Key] = {
    "project.name": Key("str", "app", "project name: compose project prefix, image labels"),
    "default_env": Key("str", "local", "environment used when --env is not given"),
    "target": Key("target", None, "where this environment deploys: compose, ecs or k8s"),
    "url": Key("url", "", "base URL the smoke probe reaches the service at (http:// or https://)"),
    "registry": Key("str", "", "registry to push to before deploying (empty: local engine only)"),
    "vars": Key("map", {}, "plain environment variables for the service"),
    "secrets": Key("secrets", {}, "NAME: reference (env:, file:, aws-sm:, ssm:) resolved at deploy"),
    "image.name": Key("str", "app", "image repository name"),
    "image.dockerfile": Key("str", "Dockerfile", "path of the Dockerfile, from the project root"),
    "image.context": Key("str", ".", "build context, from the project root"),
    "image.base_image": Key("str", "python:3.12-slim", "BASE_IMAGE build arg"),
    "image.max_size_mb": Key("int", 500, "the build fails when the runtime image is bigger"),
    "image.target": Key("str", "runtime", "default Dockerfile stage to build"),
    "security.max_severity": Key("severity", "medium", "promotion refuses findings above this severity"),
    "deploy.timeout": Key("int", 300, "seconds to wait for a new revision to win"),
    "deploy.lock_ttl": Key("int", 1800, "seconds after which a deploy lock counts as stale"),
    "deploy.keep_revisions": Key("int", 5, "old revisions kept (ECS task definitions)"),
    "compose.project": Key("str", "", "compose project name (default: <project.name>-<env>)"),
    "compose.files": Key("list", (), "compose files, from the project root"),
    "ecs.cluster": Key("str", "", "ECS cluster name"),
    "ecs.service": Key("str", "", "ECS service name"),
    "ecs.region": Key("str", "", "AWS region"),
    "ecs.profile": Key("str", "", "AWS profile (empty: default credential chain)"),
    "ecs.endpoint_url": Key("str", "", "AWS endpoint override (moto, LocalStack)"),
    "k8s.overlay": Key("str", "", "kustomize overlay directory"),
    "k8s.namespace": Key("str", "", "namespace the overlay deploys to"),
    "k8s.context": Key("str", "", "kubectl context (empty: current context)"),
}
REQUIRED_BY_TARGET = {
    "compose": ("compose.files",),
    "ecs": ("ecs.cluster", "ecs.service", "ecs.region"),
    "k8s": ("k8s.overlay", "k8s.namespace"),
}
_SECTIONS = {key.split(".")[0] for key in SCHEMA if "." in key}


@dataclass(frozen=True)
class Value:
    """A merged value and where it came from (``file:line``, ``env VAR``, ``flag --x`` or ``default``)."""

    value: Any
    source: str


@dataclass(frozen=True)
class ImageSpec:
    name: str
    dockerfile: str
    context: str
    base_image: str
    max_size_mb: int
    target: str


@dataclass(frozen=True)
class ComposeTarget:
    project: str
    files: tuple[str, ...]


@dataclass(frozen=True)
class EcsTarget:
    cluster: str
    service: str
    region: str
    profile: str
    endpoint_url: str


@dataclass(frozen=True)
class K8sTarget:
    overlay: str
    namespace: str
    context: str


@dataclass(frozen=True)
class DeploySettings:
    timeout: int
    lock_ttl: int
    keep_revisions: int


@dataclass(frozen=True)
class Environment:
    name: str
    target: str
    url: str
    registry: str
    vars: Mapping[str, str]
    secrets: Mapping[str, SecretRef]
    deploy: DeploySettings
    compose: ComposeTarget
    ecs: EcsTarget
    k8s: K8sTarget


@dataclass(frozen=True)
class Config:
    """The validated configuration of one project for one environment."""

    root: Path
    project: str
    image: ImageSpec
    env: Environment
    values: Mapping[str, Value] = field(repr=False)
    dotenv: Mapping[str, str] = field(repr=False)  # .env files then the process environment, for env: refs


# --- environments ----------------------------------------------------------------------------------


def check_env_name(name: str) -> str:
    """Refuse path-like or odd names before they touch the filesystem."""
    if not ENV_NAME.match(name):
        raise UsageError(
            f"--env: `{name}` is not an environment name (lowercase letters, digits, '-' and '_'; "
            "environments are deploy/environments/<name>.yaml)"
        )
    return name


def list_environments(root: Path) -> list[str]:
    folder = root / ENV_DIR
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


# --- loading ---------------------------------------------------------------------------------------


def load(
    root: Path,
    env_name: str | None = None,
    *,
    environ: Mapping[str, str],
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Merge every layer for ``env_name`` (or the configured default) and validate the result."""
    from dotenv import dotenv_values

    root = root.resolve()
    layers: dict[str, Value] = {k: Value(spec.default, "default") for k, spec in SCHEMA.items()}

    project_file = root / "invoke.yaml"
    if project_file.exists():
        data, lines = read_yaml(project_file, allow_empty=True)
        conveyor = data.get("conveyor") if isinstance(data, dict) else None
        if conveyor is not None:
            if not isinstance(conveyor, dict):
                raise ConfigError(f"{_rel(project_file, root)}: key `conveyor` must be a mapping")
            _merge(layers, conveyor, _rel(project_file, root), lines, prefix="conveyor")

    name = check_env_name(env_name or environ.get("CONVEYOR_ENV") or str(layers["default_env"].value))
    env_file = root / ENV_DIR / f"{name}.yaml"
    if not env_file.is_file():
        known = ", ".join(list_environments(root)) or "none"
        raise ConfigError(f"unknown environment `{name}`; known: {known} ({ENV_DIR}/<name>.yaml)")
    data, lines = read_yaml(env_file, allow_empty=False)
    if not isinstance(data, dict):
        raise ConfigError(f"{_rel(env_file, root)}: expected a mapping of keys at the top level")
    _merge(layers, data, _rel(env_file, root), lines)

    dotenv: dict[str, str] = {}
    for dot in (root / ".env", root / f".env.{name}"):
        if not dot.exists():
            continue
        try:
            values = dotenv_values(stream=io.StringIO(dot.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not valid UTF-8 text"
            raise ConfigError(f"{_rel(dot, root)}: cannot read: {reason}") from None
        for var, val in values.items():
            dotenv[var] = val or ""
        _merge_vars(layers, {k: v or "" for k, v in values.items()}, _rel(dot, root) + " ")
    dotenv.update(environ)
    _merge_vars(layers, environ, "env ")
    for key, val in (flags or {}).items():
        if val is not None:
            layers[key] = Value(_coerce(key, val, "flag"), f"flag --{key.split('.')[-1].replace('_', '-')}")
    return _build(root, name, layers, dotenv)


def read_yaml(path: Path, *, allow_empty: bool) -> tuple[Any, dict[str, int]]:
    """Parse YAML keeping the line of every key (dotted path -> line)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path.name}{line}: malformed YAML: {problem}") from None
    finally:
        loader.dispose()
    if data is None and not allow_empty:
        raise ConfigError(f"{path}: the file is empty; expected at least `target: compose|ecs|k8s`")
    lines: dict[str, int] = {}
    if node is not None:
        _key_lines(node, "", lines)
    return data, lines


def _key_lines(node: yaml.Node, prefix: str, out: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            dotted = f"{prefix}{key_node.value}"
            out[dotted] = key_node.start_mark.line + 1
            _key_lines(value_node, dotted + ".", out)


def _merge(
    layers: dict[str, Value], data: Mapping[str, Any], source: str, lines: Mapping[str, int], prefix: str = ""
) -> None:
    def walk(mapping: Mapping[str, Any], path: str) -> None:
        for raw_key, val in mapping.items():
            key = f"{path}{raw_key}"
            line_key = f"{prefix}.{key}" if prefix else key
            where = f"{source}:{lines.get(line_key, '?')}"
            if key in SCHEMA:
                layers[key] = Value(_coerce(key, val, where), where)
            elif str(raw_key) in _SECTIONS and not path and isinstance(val, dict):
                walk(val, f"{key}.")
            else:
                raise ConfigError(f"{where}: unknown key `{key}`{_suggest(key)}")

    walk(data, "")


def _merge_vars(layers: dict[str, Value], variables: Mapping[str, str], source: str) -> None:
    """Apply ``CONVEYOR_SECTION__KEY=value`` variables (``__`` separates section and key)."""
    for var, val in variables.items():
        if not var.startswith(ENV_PREFIX) or var in RESERVED_VARS:
            continue
        key = var[len(ENV_PREFIX) :].lower().replace("__", ".")
        where = f"{source}{var}".strip()
        if key not in SCHEMA:
            expected = f"CONVEYOR_{key.upper().replace('.', '__')}"
            raise ConfigError(f"{where}: unknown setting `{key}`{_suggest(key)} (variable form: {expected})")
        layers[key] = Value(_coerce(key, val, where), where)


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, SCHEMA, n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else f"; known keys: {', '.join(sorted(SCHEMA))}"


def _coerce(key: str, val: Any, where: str) -> Any:
    kind = SCHEMA[key].kind
    if kind == "str":
        if isinstance(val, (str, int, float)) and not isinstance(val, bool):
            return str(val)
        raise ConfigError(f"{where}: `{key}` must be a string, got {_typename(val)}")
    if kind == "url":
        if isinstance(val, str) and (val == "" or val.startswith(("http://", "https://"))):
            return val
        raise ConfigError(f"{where}: `{key}` must be an http:// or https:// URL, got {val!r}")
    if kind == "severity":
        if val not in ("low", "medium", "high", "critical"):
            raise ConfigError(f"{where}: `{key}` must be one of low, medium, high, critical, got {val!r}")
        return val
    if kind == "int":
        if isinstance(val, int) and not isinstance(val, bool):
            return val
        if isinstance(val, str) and val.strip().lstrip("-").isdigit():
            return int(val)
        raise ConfigError(f"{where}: `{key}` must be an integer, got {_typename(val)} {val!r}")
    if kind == "target":
        if val not in TARGETS:
            raise ConfigError(f"{where}: `target` must be one of {', '.join(TARGETS)}, got {val!r}")
        return val
    if kind == "list":
        if isinstance(val, str):
            return tuple(part for part in val.split(",") if part)
        if isinstance(val, list) and all(isinstance(x, str) for x in val):
            return tuple(val)
        raise ConfigError(f"{where}: `{key}` must be a list of strings, got {_typename(val)}")
    # map / secrets
    if not isinstance(val, dict) or not all(isinstance(k, str) for k in val):
        raise ConfigError(f"{where}: `{key}` must be a mapping of NAME: value, got {_typename(val)}")
    if kind == "secrets":
        return {k: parse_ref(str(v), where=f"{where}: secrets.{k}") for k, v in val.items()}
    for k, v in val.items():
        if isinstance(v, (dict, list)) or v is None:
            raise ConfigError(f"{where}: `{key}.{k}` must be a scalar, got {_typename(v)}")
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in val.items()}


def _typename(val: Any) -> str:
    return {dict: "a mapping", list: "a list", bool: "a boolean", type(None): "nothing"}.get(
        type(val), type(val).__name__
    )


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _build(root: Path, name: str, layers: Mapping[str, Value], dotenv: Mapping[str, str]) -> Config:
    def get(key: str) -> Any:
        return layers[key].value

    target = get("target")
    if target is None:
        raise ConfigError(
            f"{ENV_DIR}/{name}.yaml: missing required key `target` (one of {', '.join(TARGETS)})"
        )
    for key in REQUIRED_BY_TARGET[target]:
        if not get(key):
            raise ConfigError(
                f"{ENV_DIR}/{name}.yaml: target {target} needs key `{key}` ({SCHEMA[key].help})"
            )
    project = get("project.name")
    env = Environment(
        name=name,
        target=target,
        url=get("url"),
        registry=get("registry"),
        vars=MappingProxyType(dict(get("vars"))),
        secrets=MappingProxyType(dict(get("secrets"))),
        deploy=DeploySettings(get("deploy.timeout"), get("deploy.lock_ttl"), get("deploy.keep_revisions")),
        compose=ComposeTarget(get("compose.project") or f"{project}-{name}", tuple(get("compose.files"))),
        ecs=EcsTarget(
            get("ecs.cluster"),
            get("ecs.service"),
            get("ecs.region"),
            get("ecs.profile"),
            get("ecs.endpoint_url"),
        ),
        k8s=K8sTarget(get("k8s.overlay"), get("k8s.namespace"), get("k8s.context")),
    )
    image = ImageSpec(
        name=get("image.name"),
        dockerfile=get("image.dockerfile"),
        context=get("image.context"),
        base_image=get("image.base_image"),
        max_size_mb=get("image.max_size_mb"),
        target=get("image.target"),
    )
    return Config(root, project, image, env, MappingProxyType(dict(layers)), MappingProxyType(dict(dotenv)))


SECRET_LIKE = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE)", re.IGNORECASE)


def describe(config: Config) -> list[tuple[str, str, str]]:
    """Rows of (key, shown value, source) for env.show; plain vars that look secret are masked."""
    rows: list[tuple[str, str, str]] = []
    for key in sorted(config.values):
        value = config.values[key]
        if key == "vars":
            for var, val in sorted(value.value.items()):
                shown = "***" if SECRET_LIKE.search(var) else val
                rows.append((f"vars.{var}", shown, value.source))
        elif key == "secrets":
            for var, ref in sorted(value.value.items()):
                rows.append((f"secrets.{var}", f"<{ref}> (resolved at deploy)", value.source))
        elif isinstance(value.value, tuple):
            rows.append((key, ", ".join(value.value), value.source))
        else:
            rows.append((key, "" if value.value is None else str(value.value), value.source))
    return rows
