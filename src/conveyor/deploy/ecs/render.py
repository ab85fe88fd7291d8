"""ECS task definitions from the template and the app contract: loading, offline checks, rendering, diff.

Pure functions: nothing here calls AWS. One task definition per process of the app contract, all from
the one template (``ecs.task_definition``):

- family: the template's for the anchor process (the HTTP one, else the first), ``<family>-<process>``
  for the others;
- the app container (``ecs.container``, default the first): the release image by digest, the process's
  command when it has one, the environment's ``vars`` over the template's ``environment``, its secrets
  (``valueFrom`` references) over the template's ``secrets``, and ``IMAGE_DIGEST``. A process that does
  not serve HTTP loses the container's ``portMappings`` and (HTTP) ``healthCheck``, and gets its own
  ``healthcheck`` command as the ``healthCheck`` when it has one;
- sidecar containers are left as the template has them;
- ``${AWS_REGION}``, ``${AWS_ACCOUNT_ID}`` and ``${PROCESS}`` in any string are substituted.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor import __version__
from conveyor.config import SECRET_LIKE, AppContract, Config, EcsTarget, Process, read_yaml
from conveyor.deploy.ecs.rollout import check_rollout
from conveyor.deploy.model import Change
from conveyor.errors import ConfigError
from conveyor.secrets import SecretRef

TAG_SHA, TAG_DEPLOYER, TAG_VERSION, TAG_PROCESS = (
    "conveyor:git-sha",
    "conveyor:deployer",
    "conveyor:version",
    "conveyor:process",
)
OUR_TAGS = (TAG_SHA, TAG_DEPLOYER, TAG_VERSION, TAG_PROCESS)
# The container healthCheck of a process that is not HTTP but has a `healthcheck` command (seconds;
# ECS allows interval 5-300, timeout 2-60, retries 1-10, startPeriod 0-300).
HEALTHCHECK_TIMING = {"interval": 15, "timeout": 5, "retries": 3, "startPeriod": 30}
# IAM role ARNs of the template (taskRoleArn, executionRoleArn); ${AWS_ACCOUNT_ID} is substituted later.
ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}|\$\{AWS_ACCOUNT_ID\}):role/[\w+=,.@/${}-]+$")
# Fargate's valid task sizes (AWS docs, "Task CPU and memory"): cpu units -> allowed memory MiB.
FARGATE_SIZES: dict[int, list[int]] = {
    256: [512, 1024, 2048],
    512: list(range(1024, 4097, 1024)),
    1024: list(range(2048, 8193, 1024)),
    2048: list(range(4096, 16385, 1024)),
    4096: list(range(8192, 30721, 1024)),
    8192: list(range(16384, 61441, 4096)),
    16384: list(range(32768, 122881, 8192)),
}


@dataclass(frozen=True)
class Inputs:
    """What the release and the environment put into every process's task definition."""

    image: str  # the release image, by digest
    git_sha: str
    deployer: str
    variables: Mapping[str, str]  # the environment's `vars`
    secrets: Mapping[str, str]  # NAME -> valueFrom (a Secrets Manager ARN or SSM parameter); never a value
    substitutions: Mapping[str, str]  # ${NAME} in the template -> value (PROCESS is added per process)
    stop_timeout: int | None = None  # the app container's stopTimeout (deploy.shutdown_timeout)


# --- names -----------------------------------------------------------------------------------------


def service_names(ecs: EcsTarget, contract: AppContract) -> dict[str, str]:
    """process -> ECS service: ``ecs.services``, else ``ecs.service`` for the anchor and
    ``<ecs.service>-<process>`` for the others."""
    first = contract.anchor.name
    return {
        p.name: ecs.services.get(p.name) or (ecs.service if p.name == first else f"{ecs.service}-{p.name}")
        for p in contract.processes
    }


def family_names(family: str, contract: AppContract) -> dict[str, str]:
    """process -> task definition family: the template's for the anchor, ``<family>-<process>`` else."""
    first = contract.anchor.name
    return {p.name: family if p.name == first else f"{family}-{p.name}" for p in contract.processes}


def container_names(definition: Mapping[str, Any]) -> list[str]:
    return [str(c.get("name", "?")) for c in definition.get("containerDefinitions") or []]


def app_container(template: Mapping[str, Any], name: str, where: str) -> str:
    """The name of the app's container: ``name`` (``ecs.container``), or the template's first."""
    names = container_names(template)
    if not name:
        return names[0]
    if name not in names:
        raise ConfigError(
            f"{where}: ecs.container `{name}` names no container of the template "
            f"(containers: {', '.join(names)})"
        )
    return name


def find_container(definition: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The container called ``name``, else the first (a live revision from before a rename)."""
    containers = definition.get("containerDefinitions") or [{}]
    return dict(next((c for c in containers if c.get("name") == name), containers[0]))


# --- loading and static checks ---------------------------------------------------------------------


def template_path(cfg: Config) -> tuple[Path, str]:
    """Where the template is, and how errors name it (the configured, project-relative path)."""
    return cfg.root / cfg.env.ecs.task_definition, cfg.env.ecs.task_definition


def load_template(path: Path, *, name: str = "") -> dict[str, Any]:
    """Parse and check the template against ECS's RegisterTaskDefinition model (no API call)."""
    where = name or str(path)
    if not path.is_file():
        raise ConfigError(f"{where}: no such task definition template (ecs.task_definition)")
    data, _ = read_yaml(path, allow_empty=True)
    if not isinstance(data, dict) or not data.get("containerDefinitions"):
        raise ConfigError(f"{where}: expected a task definition with containerDefinitions")
    containers = data["containerDefinitions"]
    if not isinstance(containers, list):
        raise ConfigError(
            f"{where}: containerDefinitions must be a list of container mappings, got {_kind(containers)}"
        )
    if not isinstance(data.get("family"), str) or not data["family"]:
        raise ConfigError(f"{where}: missing `family` (the task definition family of the HTTP process)")
    _check_keys(data, _members("RegisterTaskDefinition"), where)
    container_keys = _members("RegisterTaskDefinition", "ContainerDefinition")
    for i, container in enumerate(containers):
        at = f"{where}: containerDefinitions[{i}]"
        if not isinstance(container, dict):
            raise ConfigError(f"{at} must be a container mapping, got {_kind(container)}")
        label = container.get("name")
        if label is None or label == "":
            raise ConfigError(f"{at} has no `name`")
        if not isinstance(label, str):
            raise ConfigError(f"{at}: `name` must be a string, got {_kind(label)}")
        at = f"{at} ({label})"
        _check_keys(container, container_keys, at)
        _check_shapes(container, at)
        _check_log_configuration(container, at, fargate=_is_fargate(data))
    _check_task_fields(data, where)
    return data


def _is_fargate(definition: Mapping[str, Any]) -> bool:
    compat = definition.get("requiresCompatibilities") or []
    return isinstance(compat, list) and "FARGATE" in compat


def _check_task_fields(data: Mapping[str, Any], where: str) -> None:
    """Task role, execution role and runtimePlatform: the shapes RegisterTaskDefinition accepts."""
    for key in ("taskRoleArn", "executionRoleArn"):
        arn = data.get(key)
        if arn is not None and (not isinstance(arn, str) or not ROLE_ARN.match(arn)):
            raise ConfigError(
                f"{where}: `{key}` must be an IAM role ARN "
                f"(arn:aws:iam::${{AWS_ACCOUNT_ID}}:role/NAME), got {arn!r}"
            )
    platform = data.get("runtimePlatform")
    if platform is not None:
        if not isinstance(platform, dict):
            raise ConfigError(
                f"{where}: `runtimePlatform` must be a mapping "
                f"{{cpuArchitecture, operatingSystemFamily}}, got {_kind(platform)}"
            )
        known = _members("RegisterTaskDefinition", "RuntimePlatform")
        _check_keys(platform, known, f"{where}: runtimePlatform")
        for key, shape in (("cpuArchitecture", "CPUArchitecture"), ("operatingSystemFamily", "OSFamily")):
            allowed = _enum(shape)
            if key in platform and platform[key] not in allowed:
                raise ConfigError(
                    f"{where}: runtimePlatform.{key} must be one of {', '.join(allowed)}, "
                    f"got {platform[key]!r}"
                )
    if _is_fargate(data) and not data.get("executionRoleArn"):
        pulls_logs_or_secrets = [
            str(c.get("name"))
            for c in data["containerDefinitions"]
            if c.get("secrets") or (c.get("logConfiguration") or {}).get("logDriver") == "awslogs"
        ]
        if pulls_logs_or_secrets:
            raise ConfigError(
                f"{where}: container {pulls_logs_or_secrets[0]} uses awslogs or secrets, which Fargate "
                "reaches with the task execution role: set `executionRoleArn`"
            )


def _check_log_configuration(container: Mapping[str, Any], where: str, *, fargate: bool) -> None:
    """logConfiguration: a known driver, string options; awslogs needs its group and region, and
    ``awslogs-create-group`` is the string "true" or "false"."""
    logs = container.get("logConfiguration")
    if logs is None:
        return
    if not isinstance(logs, dict):
        raise ConfigError(
            f"{where}: `logConfiguration` must be a mapping {{logDriver, options}}, got {_kind(logs)}"
        )
    drivers = _enum("LogDriver")
    if logs.get("logDriver") not in drivers:
        raise ConfigError(
            f"{where}: logConfiguration.logDriver must be one of {', '.join(drivers)}, "
            f"got {logs.get('logDriver')!r}"
        )
    options = logs.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: logConfiguration.options must be a mapping, got {_kind(options)}")
    for key, value in options.items():
        if not isinstance(value, str):
            raise ConfigError(
                f'{where}: logConfiguration.options.{key} must be a string (quote it: "{value}"), '
                f"got {_kind(value)}"
            )
    if logs["logDriver"] != "awslogs":
        return
    needed = ["awslogs-group", "awslogs-region"] + (["awslogs-stream-prefix"] if fargate else [])
    for key in needed:
        if not options.get(key):
            raise ConfigError(f"{where}: the awslogs driver needs logConfiguration.options.{key}")
    create = options.get("awslogs-create-group")
    if create is not None and create not in ("true", "false"):
        raise ConfigError(
            f'{where}: logConfiguration.options.awslogs-create-group must be "true" or "false", '
            f"got {create!r}"
        )


def _enum(shape: str) -> list[str]:
    """The allowed values of an ECS enum shape, from botocore's model (offline)."""
    return list(_model().shape_for(shape).enum)


def _check_shapes(container: Mapping[str, Any], where: str) -> None:
    """The values rendering and RegisterTaskDefinition rely on: ``where`` is the template and container."""
    for key, field in (("environment", "value"), ("secrets", "valueFrom")):
        _check_pairs(container.get(key), key, field, where)
    for key in ("command", "entryPoint"):
        argv = container.get(key)
        if argv is None:
            continue
        if not isinstance(argv, list):
            raise ConfigError(f"{where}: `{key}` must be a list of strings (exec form), got {_kind(argv)}")
        for j, arg in enumerate(argv):
            if not isinstance(arg, str):
                raise ConfigError(f"{where}: `{key}[{j}]` must be a string (quote it), got {_kind(arg)}")
    mappings = container.get("portMappings")
    if mappings is None:
        return
    if not isinstance(mappings, list):
        raise ConfigError(
            f"{where}: `portMappings` must be a list of {{containerPort, protocol}} mappings, "
            f"got {_kind(mappings)}"
        )
    for j, mapping in enumerate(mappings):
        if not isinstance(mapping, dict):
            raise ConfigError(f"{where}: `portMappings[{j}]` must be a mapping, got {_kind(mapping)}")
        port = mapping.get("containerPort")
        if port is None and "containerPortRange" in mapping:
            continue
        if not isinstance(port, int) or isinstance(port, bool):
            raise ConfigError(
                f"{where}: `portMappings[{j}]` needs an integer `containerPort`, got {_kind(port)}"
            )


def _check_pairs(items: Any, key: str, field: str, where: str) -> None:
    """``environment`` / ``secrets``: a list of ``{name, <field>}`` mappings (not compose's NAME: value)."""
    if items is None:
        return
    if not isinstance(items, list):
        hint = f"; write one `- {{name: ..., {field}: ...}}` per entry" if isinstance(items, dict) else ""
        raise ConfigError(
            f"{where}: `{key}` must be a list of {{name, {field}}} mappings, got {_kind(items)}{hint}"
        )
    for j, item in enumerate(items):
        at = f"{where}: `{key}[{j}]`"
        if not isinstance(item, dict):
            raise ConfigError(f"{at} must be a {{name, {field}}} mapping, got {_kind(item)}")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{at} needs a string `name`, got {_kind(name)}")
        value = item.get(field)
        # ECS takes strings; a YAML number is written as its text (valueFrom is always a reference).
        scalar = (str,) if field == "valueFrom" else (str, int, float)
        if not isinstance(value, scalar):
            raise ConfigError(f"{at} ({name}) needs a string `{field}`, got {_kind(value)}")


def _kind(value: Any) -> str:
    """How an error names what it found instead."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    kinds = {dict: "a mapping", list: "a list", str: "a string", int: "an integer", float: "a number"}
    return kinds.get(type(value), type(value).__name__)


@functools.cache
def _model() -> Any:
    """botocore's ECS service model (offline, parsed once)."""
    from botocore.loaders import create_loader
    from botocore.model import ServiceModel

    return ServiceModel(create_loader().load_service_model("ecs", "service-2"), "ecs")


def _members(operation: str, shape: str | None = None) -> set[str]:
    """Known keys from botocore's own ECS model (offline): RegisterTaskDefinition or one of its shapes."""
    op = _model().operation_model(operation).input_shape
    if shape is None:
        return set(op.members)
    return set(_model().shape_for(shape).members)


def _check_keys(data: Mapping[str, Any], known: set[str], where: str) -> None:
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            raise ConfigError(f"{where}: unknown key `{key}`{hint}")


def check_fargate(definition: Mapping[str, Any], where: str) -> None:
    """The checks the API itself applies to Fargate tasks, done before any call."""
    if "FARGATE" not in (definition.get("requiresCompatibilities") or []):
        return
    if definition.get("networkMode") != "awsvpc":
        raise ConfigError(
            f"{where}: Fargate requires networkMode awsvpc, got {definition.get('networkMode')!r}"
        )
    try:
        cpu, memory = int(str(definition["cpu"])), int(str(definition["memory"]))
    except (KeyError, ValueError):
        raise ConfigError(f"{where}: Fargate needs task-level cpu and memory (numbers)") from None
    if cpu not in FARGATE_SIZES:
        raise ConfigError(
            f"{where}: Fargate cpu must be one of {', '.join(map(str, FARGATE_SIZES))}, got {cpu}"
        )
    if memory not in FARGATE_SIZES[cpu]:
        allowed = FARGATE_SIZES[cpu]
        raise ConfigError(
            f"{where}: Fargate cpu {cpu} allows memory {allowed[0]}-{allowed[-1]} MiB "
            f"(in steps of {allowed[1] - allowed[0]}), got {memory}"
        )


def check_static(cfg: Config, template: Mapping[str, Any]) -> None:
    """Everything checkable without AWS: the app container, service names, the HTTP port, Fargate sizes
    and networking, secret reference schemes."""
    where = cfg.env.ecs.task_definition
    check_fargate(template, where)
    container = find_container(template, app_container(template, cfg.env.ecs.container, where))
    web = cfg.app.web
    ports = [m.get("containerPort") for m in container.get("portMappings") or []]
    if web is not None and ports and web.port not in ports:
        raise ConfigError(
            f"{where}: container {container['name']} maps port(s) {', '.join(map(str, ports))} "
            f"but process {web.name} serves on {web.port} (processes.{web.name}.port)"
        )
    services = service_names(cfg.env.ecs, cfg.app)
    seen: dict[str, str] = {}
    for process, service in services.items():
        if service in seen:
            source = cfg.values["ecs.services"].source if "ecs.services" in cfg.values else "ecs.services"
            raise ConfigError(
                f"{source}: processes {seen[service]} and {process} would both deploy ECS service "
                f"{service}; give each its own in `ecs.services`"
            )
        seen[service] = process
    for name, ref in cfg.env.secrets.items():
        if ref.scheme not in ("aws-sm", "ssm"):
            raise ConfigError(
                f"secrets.{name}: `{ref}`: ECS reads secrets by reference from Secrets Manager or SSM only"
            )
    if cfg.env.secrets and _is_fargate(template) and not template.get("executionRoleArn"):
        raise ConfigError(
            f"{where}: the environment's secrets reach a Fargate task through its execution role: "
            "set `executionRoleArn`"
        )
    if "stopTimeout" in container:
        raise ConfigError(
            f"{where}: container {container['name']}: `stopTimeout` of the app container comes from "
            "deploy.shutdown_timeout; remove it from the template"
        )
    check_rollout(cfg, fargate=_is_fargate(template))
    for process, definition in render_offline(cfg, template, image=PLACEHOLDER_IMAGE).items():
        check_fargate(definition, f"{where} (process {process})")
        validate_definition(definition, f"{where} (process {process})")


PLACEHOLDER_IMAGE = "placeholder.invalid/app@sha256:" + "0" * 64  # what the static checks render with


def offline_value_from(ref: SecretRef, region: str) -> str:
    """A secret's valueFrom as far as it is known without AWS (a Secrets Manager ARN's random suffix and
    the account are not)."""
    if ref.scheme == "aws-sm":
        arn = f"arn:aws:secretsmanager:{region}:${{AWS_ACCOUNT_ID}}:secret:{ref.target}"
        return f"{arn}:{ref.key}::" if ref.key else arn
    return ref.target


def render_offline(
    cfg: Config, template: Mapping[str, Any], *, image: str, git_sha: str = "0" * 40, deployer: str = ""
) -> dict[str, dict[str, Any]]:
    """Every process's task definition without AWS: secrets as their references, the account unknown."""
    region = cfg.env.ecs.region
    inputs = Inputs(
        image=image,
        git_sha=git_sha,
        deployer=deployer,
        variables=cfg.env.process_env(),
        secrets={name: offline_value_from(ref, region) for name, ref in cfg.env.secrets.items()},
        substitutions={"AWS_REGION": region, "AWS_ACCOUNT_ID": "${AWS_ACCOUNT_ID}"},
        stop_timeout=cfg.env.deploy.shutdown_timeout,
    )
    container = app_container(template, cfg.env.ecs.container, cfg.env.ecs.task_definition)
    return render_all(template, cfg.app, container=container, inputs=inputs)


def validate_definition(definition: Mapping[str, Any], where: str) -> None:
    """The rendered definition against RegisterTaskDefinition's input shape (botocore's own validator:
    types, required members, ranges), offline."""
    from botocore.validate import ParamValidator

    shape = _model().operation_model("RegisterTaskDefinition").input_shape
    report = ParamValidator().validate(dict(definition), shape)
    if report.has_errors():
        first = [line for line in report.generate_report().splitlines() if line.strip()] or ["invalid"]
        raise ConfigError(
            f"{where}: the rendered task definition is refused by the ECS model: {first[0].strip()}"
        )


# --- rendering -------------------------------------------------------------------------------------


def render(
    template: Mapping[str, Any], process: Process, *, family: str, container: str, inputs: Inputs
) -> dict[str, Any]:
    """The task definition to register for ``process``: a pure function of the template and the release."""
    definition: dict[str, Any] = _substitute(
        copy.deepcopy(dict(template)), {**inputs.substitutions, "PROCESS": process.name}
    )
    definition["family"] = family
    for spec in definition["containerDefinitions"]:
        if spec.get("name") == container:
            _fill_app_container(spec, process, inputs)
    own = [t for t in definition.get("tags") or [] if t.get("key") not in OUR_TAGS]
    definition["tags"] = [
        *own,
        {"key": TAG_SHA, "value": inputs.git_sha},
        {"key": TAG_DEPLOYER, "value": inputs.deployer},
        {"key": TAG_VERSION, "value": __version__},
        {"key": TAG_PROCESS, "value": process.name},
    ]
    return definition


def render_all(
    template: Mapping[str, Any], contract: AppContract, *, container: str, inputs: Inputs
) -> dict[str, dict[str, Any]]:
    """process -> its task definition, for every process of the contract."""
    families = family_names(str(template["family"]), contract)
    return {
        p.name: render(template, p, family=families[p.name], container=container, inputs=inputs)
        for p in contract.processes
    }


def _fill_app_container(spec: dict[str, Any], process: Process, inputs: Inputs) -> None:
    spec["image"] = inputs.image
    if inputs.stop_timeout is not None:
        spec["stopTimeout"] = inputs.stop_timeout
    if process.command:
        spec["command"] = list(process.command)
    env = _pairs(spec.get("environment"), "value")
    env.update(inputs.variables)
    env["IMAGE_DIGEST"] = inputs.image
    spec["environment"] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    secrets = _pairs(spec.get("secrets"), "valueFrom")
    secrets.update(inputs.secrets)
    if secrets:
        spec["secrets"] = [{"name": k, "valueFrom": v} for k, v in sorted(secrets.items())]
    if process.http:
        if not spec.get("portMappings"):
            spec["portMappings"] = [{"containerPort": process.port, "protocol": "tcp"}]
    else:
        spec.pop("portMappings", None)
        spec.pop("healthCheck", None)
    if process.healthcheck:
        spec["healthCheck"] = {"command": ["CMD", *process.healthcheck], **HEALTHCHECK_TIMING}


def _pairs(items: Sequence[Mapping[str, Any]] | None, field: str) -> dict[str, str]:
    return {str(item["name"]): str(item[field]) for item in items or []}


def _substitute(value: Any, subs: Mapping[str, str]) -> Any:
    """``${NAME}`` -> ``subs[NAME]`` in every string of a JSON-like value (keys are left alone)."""
    if isinstance(value, str):
        for key, text in subs.items():
            value = value.replace("${" + key + "}", text)
        return value
    if isinstance(value, list):
        return [_substitute(item, subs) for item in value]
    if isinstance(value, dict):
        return {k: _substitute(v, subs) for k, v in value.items()}
    return value


# --- diff ------------------------------------------------------------------------------------------

REMOVED = "(removed)"
HEALTH_SHOWN = 80  # characters of a healthCheck command shown in a plan


def diff(live: Mapping[str, Any] | None, new: Mapping[str, Any], *, container: str) -> list[Change]:
    """What changes from the live task definition to the new one (of one process). Secrets show their
    ``valueFrom`` only, variables whose name looks secret show ``***``; removed variables and secrets are
    changes too."""
    live = live or {}
    changes: list[Change] = []

    def note(what: str, old: str, now: str) -> None:
        if old != now:
            changes.append(Change(what, old, now))

    old_c = find_container(live, container) if live else {}
    new_c = find_container(new, container)
    note("image", str(old_c.get("image", "")), str(new_c.get("image", "")))
    if old_c.get("command") or new_c.get("command"):
        note("command", _argv(old_c.get("command"), bool(live)), _argv(new_c.get("command"), True))
    for key in ("cpu", "memory"):
        note(key, str(live.get(key, "")), str(new.get(key, "")))
    note("ports", _ports(old_c), _ports(new_c))
    note("healthCheck", _health(old_c), _health(new_c))
    old_env = _pairs(old_c.get("environment"), "value")
    new_env = _pairs(new_c.get("environment"), "value")
    for name in sorted((set(old_env) | set(new_env)) - {"IMAGE_DIGEST"}):  # IMAGE_DIGEST follows image
        if old_env.get(name, "") != new_env.get(name, REMOVED):  # compared in clear, shown masked
            old = _shown(name, old_env[name]) if name in old_env else ""
            now = _shown(name, new_env[name]) if name in new_env else REMOVED
            changes.append(Change(f"env {name}", old, now))
    old_secrets = _pairs(old_c.get("secrets"), "valueFrom")
    new_secrets = _pairs(new_c.get("secrets"), "valueFrom")
    for name in sorted(set(old_secrets) | set(new_secrets)):
        note(f"secret {name} (valueFrom)", old_secrets.get(name, ""), new_secrets.get(name, REMOVED))
    changes += _fields("", live, new, _members("RegisterTaskDefinition") - TASK_SHOWN, bool(live))
    container_keys = _members("RegisterTaskDefinition", "ContainerDefinition")
    changes += _fields("container ", old_c, new_c, container_keys - CONTAINER_SHOWN, bool(live))
    old_side = {c["name"]: c for c in live.get("containerDefinitions") or [] if c.get("name") != container}
    if live and old_c.get("name") != container:
        old_side.pop(str(old_c.get("name")), None)  # the app container under its old name
    new_side = {c["name"]: c for c in new["containerDefinitions"] if c.get("name") != container}
    for name in sorted(set(old_side) | set(new_side)):
        old_image = str(old_side[name].get("image", "")) if name in old_side else ""
        new_image = str(new_side[name].get("image", "")) if name in new_side else REMOVED
        note(f"sidecar {name} image", old_image, new_image)
        if name in old_side and name in new_side:
            keys = container_keys - {"name", "image"}
            changes += _fields(f"sidecar {name} ", old_side[name], new_side[name], keys, True)
    return changes


# Fields the diff shows in their own way; every other RegisterTaskDefinition field is compared as a value.
TASK_SHOWN = {"family", "containerDefinitions", "tags", "cpu", "memory"}
CONTAINER_SHOWN = {"name", "image", "command", "portMappings", "healthCheck", "environment", "secrets"}
VALUE_SHOWN = 100  # characters of a field's value shown in a plan


def _fields(
    prefix: str, old: Mapping[str, Any], new: Mapping[str, Any], keys: set[str], known: bool
) -> list[Change]:
    """One change per field of ``keys`` whose value differs (a field gone is ``(removed)``); the
    defaults ECS fills in on registration (empty lists, container cpu 0, essential true) count as unset."""
    changes = []
    for key in sorted(keys):
        before, after = _normal(key, old.get(key)), _normal(key, new.get(key))
        if before == after:
            continue
        shown_old = _value(before) if known and before is not None else ""
        changes.append(Change(f"{prefix}{key}", shown_old, REMOVED if after is None else _value(after)))
    return changes


def _normal(key: str, value: Any) -> Any:
    if value in (None, [], {}, ""):
        return None
    if (key == "cpu" and value == 0) or (key == "essential" and value is True):
        return None
    return value


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= VALUE_SHOWN else text[: VALUE_SHOWN - 3] + "..."


def _shown(name: str, value: str) -> str:
    """A variable's value for a plan line: ``***`` when its name looks secret (``SECRET_LIKE``)."""
    return "***" if value and SECRET_LIKE.search(name) else value


def _argv(command: Any, known: bool) -> str:
    if not known:
        return ""
    return shlex.join(str(a) for a in command) if command else "(the image CMD)"


def _ports(container: Mapping[str, Any]) -> str:
    return ", ".join(str(m.get("containerPort")) for m in container.get("portMappings") or [])


def _health(container: Mapping[str, Any]) -> str:
    """The healthCheck command, shortened for a plan line."""
    check = container.get("healthCheck")
    if not check:
        return ""
    text = " ".join(str(a) for a in check.get("command") or [])
    return text if len(text) <= HEALTH_SHOWN else text[: HEALTH_SHOWN - 3] + "..."
