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
import shlex
from collections.abc import Callable, Mapping
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
SHUTDOWN_VAR = "CONVEYOR_SHUTDOWN_TIMEOUT"  # deploy.shutdown_timeout, given to every process
DRAIN_VAR = "CONVEYOR_DRAIN_SECONDS"  # compose only: no orchestrator takes the instance out of rotation
# Not config keys: the environment selector, what the kit hands to every process (shutdown and drain
# budgets, so a kit running inside an app container still loads), and the noxfile's install switch.
RESERVED_VARS = {"CONVEYOR_ENV", SHUTDOWN_VAR, DRAIN_VAR, "CONVEYOR_NOX_INSTALL"}


@dataclass(frozen=True)
class Key:
    """One config key: its type, default and a line of help (shown by env.show)."""

    kind: str  # str | url | int | fraction (0..1) | bool | severity | list | map | secrets | target | argv
    # | processes | path
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
    "image.target": Key("str", "runtime", "the Dockerfile stage a release is built from"),
    "image.build_args": Key("map", {}, "extra build args (the kit sets BASE_IMAGE, GIT_SHA, VERSION, ...)"),
    "image.python": Key("str", "python", "interpreter in the image whose packages the SBOM lists"),
    "image.smoke_env": Key("map", {}, "variables for `image.smoke`, which runs the image alone"),
    "image.cache_from": Key(
        "str", "", "BuildKit cache to read (a dir, or a spec: type=gha, type=registry,...)"
    ),
    "image.cache_to": Key("str", "", "BuildKit cache to write (CI sets both; `build --cache-*` flags win)"),
    # The app contract: what runs, what runs once per deploy, how a revision proves itself.
    "processes": Key(
        "processes",
        {"web": {"port": 8000}},
        "NAME: {command, port, health, version, version_field, healthcheck}; the one with `port` serves HTTP",
    ),
    "release.command": Key("argv", (), "run once per deploy in the new image before apply; empty: none"),
    "security.paths": Key("list", (), "what bandit scans (default: the packages pyproject declares)"),
    "security.lock_files": Key("list", (), "requirements files pip-audit audits"),
    "ci.install": Key("str", "python -m pip install -e '.[dev]'", "install step of every generated CI job"),
    "ci.default_branch": Key("str", "", "branch deploys run from (default: git's default branch, else main)"),
    "ci.python": Key("str", "3.12", "Python of the generated CI jobs that are not a matrix"),
    "ci.gitlab_image": Key("str", "", "image of the GitLab jobs (default: python:<ci.python>)"),
    "ci.docker_service": Key("str", "docker:dind", "GitLab service that gives build jobs a Docker engine"),
    "ci.gitlab_python_image": Key(
        "str", "python", "image repository of GitLab matrix jobs (tag: the Python)"
    ),
    "ci.gitlab_docker_image": Key(
        "str",
        "",
        "image of GitLab `engine: docker` jobs (default: ci.gitlab_image + docker CLI/buildx by apt)",
    ),
    "ci.github_build_cache": Key("str", "type=gha", "BuildKit cache of the GitHub build job; empty: none"),
    "ci.gitlab_build_cache": Key(
        "str",
        "type=registry,ref=$CI_REGISTRY_IMAGE/cache",
        "BuildKit cache of the GitLab build job; empty: none",
    ),
    "security.max_severity": Key("severity", "medium", "promotion refuses findings above this severity"),
    "deploy.timeout": Key("int", 300, "seconds to wait for a new revision to win"),
    "deploy.lock_ttl": Key("int", 1800, "seconds after which a deploy lock counts as stale"),
    "deploy.keep_revisions": Key("int", 5, "old revisions kept (ECS task definitions, k8s config)"),
    "deploy.shutdown_timeout": Key(
        "int",
        20,
        "seconds a process has after SIGTERM to finish in-flight work (compose stop_grace_period, "
        "ECS stopTimeout, k8s terminationGracePeriodSeconds adds drain_seconds)",
    ),
    "deploy.drain_seconds": Key(
        "int",
        3,
        "seconds an old instance keeps serving after it left rotation, before SIGTERM "
        "(k8s preStop, ECS deregistration delay; compose: the process, failing readiness, still serves)",
    ),
    "deploy.bake": Key(
        "int", 0, "seconds the new revision is watched through Prometheus after the smoke probe; 0: no bake"
    ),
    "deploy.bake_prometheus": Key("url", "", "Prometheus base URL the deploying machine reaches (bake)"),
    "deploy.bake_max_error_rate": Key(
        "fraction", 0.01, "bake: the new revision's 5xx share of its requests above this rolls back"
    ),
    "deploy.bake_max_p95_ms": Key("int", 500, "bake: the new revision's p95 latency above this rolls back"),
    "deploy.bake_interval": Key("int", 5, "bake: seconds between two Prometheus queries"),
    "compose.project": Key("str", "", "compose project name (default: <project.name>-<env>)"),
    "compose.files": Key("list", (), "compose files, from the project root"),
    "ecs.cluster": Key("str", "", "ECS cluster name"),
    "ecs.service": Key(
        "str", "", "ECS service of the HTTP process (the first process when none serves HTTP)"
    ),
    "ecs.region": Key("str", "", "AWS region"),
    "ecs.profile": Key("str", "", "AWS profile (empty: default credential chain)"),
    "ecs.endpoint_url": Key("str", "", "AWS endpoint override (moto, LocalStack)"),
    "ecs.task_definition": Key("path", "deploy/ecs/taskdef.yaml", "task definition template"),
    "ecs.container": Key("str", "", "the app's container in the template (default: the first)"),
    "ecs.services": Key(
        "map", {}, "process: ECS service (default: ecs.service for HTTP, <ecs.service>-<process> others)"
    ),
    "ecs.stack": Key(
        "str", "", "CloudFormation stack whose outputs name the cluster and services (infra.up)"
    ),
    "ecs.minimum_healthy_percent": Key("int", 100, "rolling update: tasks kept running, % of desired"),
    "ecs.maximum_percent": Key("int", 200, "rolling update: tasks allowed during a rollout, % of desired"),
    "ecs.health_check_grace": Key("int", 0, "seconds ECS ignores load balancer health checks of new tasks"),
    "ecs.alarms": Key("list", (), "CloudWatch alarm names that roll a deployment back"),
    "infra.template": Key("path", "deploy/cloudformation/stack.yaml", "CloudFormation template (infra.*)"),
    "infra.parameters": Key("map", {}, "template parameters for this environment"),
    "infra.protected": Key("bool", False, "infra.down refuses this environment"),
    "k8s.overlay": Key("str", "", "kustomize overlay directory"),
    "k8s.namespace": Key("str", "", "namespace the overlay deploys to"),
    "k8s.context": Key("str", "", "kubectl context (empty: current context)"),
    "k8s.image": Key("str", "", "image name the manifests use as a placeholder (default: image.name)"),
    "k8s.max_surge": Key("str", "25%", "rolling update: pods above desired during a rollout"),
    "k8s.max_unavailable": Key("str", "0", "rolling update: pods below desired during a rollout"),
    "k8s.min_ready_seconds": Key("int", 0, "seconds a new pod must stay ready before it counts"),
    "k8s.progress_deadline": Key("int", 600, "seconds before a stalled rollout is ProgressDeadlineExceeded"),
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
    build_args: Mapping[str, str] = field(default_factory=dict)
    python: str = "python"
    smoke_env: Mapping[str, str] = field(default_factory=dict)


PROCESS_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
PROCESS_KEYS = ("command", "port", "health", "version", "version_field", "healthcheck")


@dataclass(frozen=True)
class Process:
    """One process type (Procfile line): a command in the release image; ``port`` makes it the HTTP one."""

    name: str
    command: tuple[str, ...] = ()  # empty: the image's CMD
    port: int | None = None
    health: str = "/health"
    version: str = "/version"  # "" (YAML `none`): no version route, the orchestrator's image is proof
    version_field: str = "git_sha"
    healthcheck: tuple[str, ...] = ()  # non-HTTP processes: a command run in the container

    @property
    def http(self) -> bool:
        return self.port is not None


@dataclass(frozen=True)
class AppContract:
    """What the kit needs to know about the app, from configuration (README: "The app contract")."""

    processes: tuple[Process, ...]
    release: tuple[str, ...] = ()

    @property
    def web(self) -> Process | None:
        """The process that serves HTTP (at most one), if any."""
        return next((p for p in self.processes if p.http), None)

    @property
    def anchor(self) -> Process:
        """The process a target reads "what serves" from and runs the release command as: the HTTP
        one, else the first."""
        return self.web or self.processes[0]

    def names(self) -> list[str]:
        return [p.name for p in self.processes]


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
    task_definition: str = "deploy/ecs/taskdef.yaml"
    container: str = ""
    services: Mapping[str, str] = field(default_factory=dict)  # process -> ECS service name
    stack: str = ""  # CloudFormation stack whose outputs name cluster and services
    minimum_healthy_percent: int = 100
    maximum_percent: int = 200
    health_check_grace: int = 0
    alarms: tuple[str, ...] = ()


@dataclass(frozen=True)
class K8sTarget:
    overlay: str
    namespace: str
    context: str
    image: str = ""  # the placeholder image name in the manifests
    max_surge: str = "25%"
    max_unavailable: str = "0"
    min_ready_seconds: int = 0
    progress_deadline: int = 600


@dataclass(frozen=True)
class DeploySettings:
    timeout: int
    lock_ttl: int
    keep_revisions: int
    shutdown_timeout: int = 20  # SIGTERM -> exit, for in-flight work
    drain_seconds: int = 3  # out of rotation -> SIGTERM
    bake: int = 0  # seconds the new revision is watched through Prometheus; 0: off
    bake_prometheus: str = ""
    bake_max_error_rate: float = 0.01
    bake_max_p95_ms: int = 500
    bake_interval: int = 5


@dataclass(frozen=True)
class InfraSpec:
    template: str
    parameters: Mapping[str, str]
    protected: bool


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
    infra: InfraSpec

    def process_env(self) -> dict[str, str]:
        """The plain variables every process gets on every target: the environment's vars and its
        shutdown budget (README "Zero-downtime deploys")."""
        return {**self.vars, SHUTDOWN_VAR: str(self.deploy.shutdown_timeout)}


@dataclass(frozen=True)
class SecuritySpec:
    paths: tuple[str, ...]
    lock_files: tuple[str, ...]


@dataclass(frozen=True)
class CiSpec:
    install: str
    default_branch: str
    python: str
    gitlab_image: str
    docker_service: str
    gitlab_docker_image: str = ""
    github_build_cache: str = ""
    gitlab_build_cache: str = ""
    gitlab_python_image: str = "python"


@dataclass(frozen=True)
class Config:
    """The validated configuration of one project for one environment."""

    root: Path
    project: str
    image: ImageSpec
    env: Environment
    app: AppContract
    security: SecuritySpec
    ci: CiSpec
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


def read_pyproject(root: Path) -> dict[str, Any]:
    """The project's pyproject.toml as a mapping ({} when there is none); unreadable is a ConfigError."""
    path = root / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        import tomllib  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"pyproject.toml: cannot read: {exc}") from None
    return data if isinstance(data, dict) else {}


def declared_pythons(pyproject: Mapping[str, Any]) -> list[str]:
    """The Python versions a parsed pyproject declares: its "Programming Language :: Python :: 3.X"
    classifiers, oldest first."""
    prefix = "Programming Language :: Python :: 3."
    classifiers = (pyproject.get("project") or {}).get("classifiers") or []
    found = {c[len(prefix) - 2 :].strip() for c in classifiers if isinstance(c, str) and c.startswith(prefix)}
    valid = {v for v in found if re.fullmatch(r"3\.\d+", v)}
    return sorted(valid, key=lambda v: int(v.split(".")[1]))


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

                def at(sub: str, _key: str = line_key) -> str:
                    return f"{source}:{lines.get(f'{_key}.{sub}', lines.get(_key, '?'))}"

                layers[key] = Value(_coerce(key, val, where, at), where)
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
        if SCHEMA[key].kind == "processes":
            raise ConfigError(f"{where}: `{key}` is a mapping: set it in invoke.yaml or the environment file")
        layers[key] = Value(_coerce(key, val, where), where)


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, SCHEMA, n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else f"; known keys: {', '.join(sorted(SCHEMA))}"


# Integer keys that must be at least 1 (every other integer key must be 0 or more).
INT_MINIMUM = {
    "image.max_size_mb": 1,
    "deploy.timeout": 1,
    "deploy.lock_ttl": 1,
    "deploy.keep_revisions": 1,
    "k8s.progress_deadline": 1,
    "deploy.bake_interval": 1,
}


def _coerce(key: str, val: Any, where: str, at: Callable[[str], str] | None = None) -> Any:
    """Check ``val`` against the key's kind; ``at(sub)`` names the file:line of a nested key."""
    kind = SCHEMA[key].kind
    if kind == "processes":
        return _processes(val, where, at or (lambda _sub: where))
    if kind == "argv":
        return _argv(key, val, where)
    if kind == "path":
        if not isinstance(val, str) or not val or val.startswith("/") or ".." in Path(val).parts:
            raise ConfigError(f"{where}: `{key}` must be a path inside the project, got {val!r}")
        return val
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
        number: int | None = None
        if isinstance(val, int) and not isinstance(val, bool):
            number = val
        elif isinstance(val, str) and val.strip().lstrip("-").isdigit():
            number = int(val)
        if number is None:
            raise ConfigError(f"{where}: `{key}` must be an integer, got {_typename(val)} {val!r}")
        least = INT_MINIMUM.get(key, 0)
        if number < least:
            raise ConfigError(f"{where}: `{key}` must be {least} or more, got {number}")
        return number
    if kind == "fraction":
        try:
            number_f = float(val) if not isinstance(val, bool) else None
        except (TypeError, ValueError):
            number_f = None
        if number_f is None or not 0 <= number_f <= 1:
            raise ConfigError(f"{where}: `{key}` must be a fraction from 0 to 1 (0.01 is 1%), got {val!r}")
        return number_f
    if kind == "bool":
        if isinstance(val, bool) or val in (0, 1):
            return bool(val)
        if isinstance(val, str) and val.lower() in ("true", "false", "1", "0", "yes", "no"):
            return val.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: `{key}` must be true or false, got {_typename(val)} {val!r}")
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


def _argv(key: str, val: Any, where: str) -> tuple[str, ...]:
    """A command as an argv list; a string is split like a shell would (no shell ever runs it)."""
    if val is None or val == "none":
        return ()
    if isinstance(val, str):
        try:
            return tuple(shlex.split(val))
        except ValueError as exc:
            raise ConfigError(f"{where}: `{key}`: cannot split {val!r}: {exc}") from None
    if isinstance(val, list) and all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in val):
        return tuple(str(x) for x in val)
    raise ConfigError(f"{where}: `{key}` must be a command (a list of strings), got {_typename(val)}")


def _route(name: str, key: str, val: Any, where: str) -> str:
    if val is None or val == "none":
        return ""
    if not isinstance(val, str) or not val.startswith("/"):
        raise ConfigError(
            f"{where}: `processes.{name}.{key}` must be a path like /{key} or none, got {val!r}"
        )
    return val


def _processes(val: Any, where: str, at: Callable[[str], str]) -> tuple[Process, ...]:
    """``processes:`` -> Process tuples; at most one serves HTTP (has a ``port``)."""
    if not isinstance(val, dict) or not val:
        raise ConfigError(
            f"{where}: `processes` must map process names to their settings, got {_typename(val)}"
        )
    out: list[Process] = []
    for name, spec in val.items():
        here = at(str(name))
        if not isinstance(name, str) or not PROCESS_NAME.match(name):
            raise ConfigError(
                f"{here}: process name {name!r}: lowercase letters, digits and '-', starting with a letter"
            )
        spec = {} if spec is None else spec
        if not isinstance(spec, dict):
            raise ConfigError(f"{here}: `processes.{name}` must be a mapping, got {_typename(spec)}")
        for sub in spec:
            if sub not in PROCESS_KEYS:
                close = difflib.get_close_matches(str(sub), PROCESS_KEYS, n=1, cutoff=0.6)
                hint = f"; did you mean `{close[0]}`?" if close else f"; known: {', '.join(PROCESS_KEYS)}"
                raise ConfigError(f"{at(f'{name}.{sub}')}: unknown key `processes.{name}.{sub}`{hint}")
        port = spec.get("port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
            raise ConfigError(
                f"{at(f'{name}.port')}: `processes.{name}.port` must be a TCP port, got {port!r}"
            )
        if port is None and any(k in spec for k in ("health", "version", "version_field")):
            raise ConfigError(f"{here}: `processes.{name}` has HTTP routes but no `port`")
        field_name = spec.get("version_field", "git_sha")
        if not isinstance(field_name, str) or not field_name:
            raise ConfigError(f"{at(f'{name}.version_field')}: `version_field` must be a JSON key name")
        out.append(
            Process(
                name=name,
                command=_argv(f"processes.{name}.command", spec.get("command"), at(f"{name}.command")),
                port=port,
                health=_route(name, "health", spec.get("health", "/health"), at(f"{name}.health")),
                version=_route(name, "version", spec.get("version", "/version"), at(f"{name}.version")),
                version_field=field_name,
                healthcheck=_argv(
                    f"processes.{name}.healthcheck", spec.get("healthcheck"), at(f"{name}.healthcheck")
                ),
            )
        )
    http = [p.name for p in out if p.http]
    if len(http) > 1:
        raise ConfigError(f"{where}: only one process can serve HTTP (have a `port`); got {', '.join(http)}")
    return tuple(out)


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
        if key in ("ecs.cluster", "ecs.service") and get("ecs.stack"):
            continue  # the stack's outputs name them
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
        deploy=DeploySettings(
            get("deploy.timeout"),
            get("deploy.lock_ttl"),
            get("deploy.keep_revisions"),
            get("deploy.shutdown_timeout"),
            get("deploy.drain_seconds"),
            get("deploy.bake"),
            get("deploy.bake_prometheus"),
            get("deploy.bake_max_error_rate"),
            get("deploy.bake_max_p95_ms"),
            get("deploy.bake_interval"),
        ),
        compose=ComposeTarget(get("compose.project") or f"{project}-{name}", tuple(get("compose.files"))),
        ecs=EcsTarget(
            get("ecs.cluster"),
            get("ecs.service"),
            get("ecs.region"),
            get("ecs.profile"),
            get("ecs.endpoint_url"),
            get("ecs.task_definition"),
            get("ecs.container"),
            MappingProxyType(dict(get("ecs.services"))),
            get("ecs.stack"),
            get("ecs.minimum_healthy_percent"),
            get("ecs.maximum_percent"),
            get("ecs.health_check_grace"),
            tuple(get("ecs.alarms")),
        ),
        k8s=K8sTarget(
            get("k8s.overlay"),
            get("k8s.namespace"),
            get("k8s.context"),
            get("k8s.image") or get("image.name"),
            get("k8s.max_surge"),
            get("k8s.max_unavailable"),
            get("k8s.min_ready_seconds"),
            get("k8s.progress_deadline"),
        ),
        infra=InfraSpec(
            get("infra.template"),
            MappingProxyType(dict(get("infra.parameters"))),
            get("infra.protected"),
        ),
    )
    image = ImageSpec(
        name=get("image.name"),
        dockerfile=get("image.dockerfile"),
        context=get("image.context"),
        base_image=get("image.base_image"),
        max_size_mb=get("image.max_size_mb"),
        target=get("image.target"),
        build_args=MappingProxyType(dict(get("image.build_args"))),
        python=get("image.python"),
        smoke_env=MappingProxyType(dict(get("image.smoke_env"))),
    )
    processes = layers["processes"]
    if isinstance(processes.value, dict):  # the kit default, not yet coerced
        processes = Value(_processes(processes.value, "default", lambda _sub: "default"), "default")
    app = AppContract(processes.value, get("release.command"))
    unknown = set(get("ecs.services")) - set(app.names())
    if unknown:
        where = layers["ecs.services"].source
        raise ConfigError(
            f"{where}: `ecs.services` names unknown process `{sorted(unknown)[0]}` "
            f"(processes: {', '.join(app.names())})"
        )
    if get("deploy.bake") and not get("deploy.bake_prometheus"):
        raise ConfigError(
            f"{layers['deploy.bake'].source}: `deploy.bake` is {get('deploy.bake')}s but "
            "`deploy.bake_prometheus` is not set (the Prometheus URL the bake queries)"
        )
    if get("deploy.bake") and app.web is None:
        raise ConfigError(
            f"{layers['deploy.bake'].source}: `deploy.bake` watches HTTP request metrics, but no process "
            "serves HTTP (`processes.<name>.port`)"
        )
    security = SecuritySpec(get("security.paths"), get("security.lock_files"))
    ci = CiSpec(
        get("ci.install"),
        get("ci.default_branch"),
        get("ci.python"),
        get("ci.gitlab_image") or f"python:{get('ci.python')}",
        get("ci.docker_service"),
        get("ci.gitlab_docker_image") or get("ci.gitlab_image") or f"python:{get('ci.python')}",
        get("ci.github_build_cache"),
        get("ci.gitlab_build_cache"),
        get("ci.gitlab_python_image"),
    )
    values = {**layers, "processes": processes}
    return Config(
        root,
        project,
        image,
        env,
        app,
        security,
        ci,
        MappingProxyType(values),
        MappingProxyType(dict(dotenv)),
    )


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
        elif key == "processes":
            for proc in value.value:
                rows.append((f"processes.{proc.name}", describe_process(proc), value.source))
        elif SCHEMA[key].kind == "argv":
            rows.append((key, shlex.join(value.value) if value.value else "(none)", value.source))
        elif isinstance(value.value, tuple):
            rows.append((key, ", ".join(value.value), value.source))
        else:
            rows.append((key, "" if value.value is None else str(value.value), value.source))
    return rows


def describe_process(proc: Process) -> str:
    """One line: command, and for the HTTP process its port and routes."""
    parts = [f"command: {shlex.join(proc.command) if proc.command else '(the image CMD)'}"]
    if proc.http:
        version = f"{proc.version} .{proc.version_field}" if proc.version else "none"
        parts.append(f"port {proc.port}, health {proc.health or 'none'}, version {version}")
    if proc.healthcheck:
        parts.append(f"healthcheck: {shlex.join(proc.healthcheck)}")
    return "; ".join(parts)


def schema_table() -> str:
    """Every key as a Markdown table (README "Configuration keys"; `invoke env.keys` prints it)."""
    rows = ["| key | default | what it is |", "|---|---|---|"]
    for key, spec in SCHEMA.items():
        default = spec.default
        if isinstance(default, (dict, tuple)) and not default:
            shown = "-"
        elif key == "processes":
            shown = ", ".join(f"`{name}` ({describe_process(proc)})" for name, proc in _default_processes())
        elif default in (None, ""):
            shown = "-"
        else:
            shown = f"`{default}`"
        text = spec.help.replace("|", "/").replace("<", "&lt;")
        rows.append(f"| `{key}` | {shown} | {text} |")
    return "\n".join(rows) + "\n"


def _default_processes() -> list[tuple[str, Process]]:
    return [(p.name, p) for p in _processes(SCHEMA["processes"].default, "default", lambda _s: "default")]
