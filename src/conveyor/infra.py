"""An environment's infrastructure as one CloudFormation stack: render, validate, plan, apply, delete.

The template (``infra.template``, default ``deploy/cloudformation/stack.yaml``) is static; its parameters
are computed from the configuration (the app contract, the rollout settings, the secrets the environment
references) and the environment file's ``infra.parameters``. Before any AWS call the template is
expanded (``Fn::ForEach``: one ECS service per process), written to ``build/infra/<env>.json`` and checked
by cfn-lint; a bad template or parameter is one line and no call. Then:

- ``plan``: a change set, printed (added / modified / replaced / removed), deleted again; nothing applied;
- ``up``: the same change set executed, the stack's events printed as they come, boto3's waiter confirms;
- ``down``: the stack deleted (refused when ``infra.protected``), events and waiter as for ``up``.

``resolve_ecs`` gives the deploy the cluster and per-process service names from the stack's outputs when
the environment names a stack (``ecs.stack``). Importing this module imports neither boto3 nor botocore.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from conveyor.aws import AwsError, translate
from conveyor.config import ENV_DIR, Config, EcsTarget
from conveyor.errors import ConfigError, ConveyorError
from conveyor.runner import Runner

BUILD_DIR = Path("build/infra")
MAX_BODY = 51_200  # CreateChangeSet's TemplateBody limit (bytes); larger templates need S3
CAPABILITIES = ["CAPABILITY_NAMED_IAM"]
NO_CHANGES = ("didn't contain changes", "No updates are to be performed")
FOREACH = "Fn::ForEach::"
# Parameters conveyor computes; infra.parameters may not set them (the configuration key is named).
COMPUTED: dict[str, str] = {
    "ProjectName": "project.name",
    "EnvironmentName": "the environment's name",
    "HttpProcess": "processes (the one with a port)",
    "HttpPort": "processes.<http>.port",
    "HealthPath": "processes.<http>.health",
    "OtherProcesses": "processes",
    "TaskFamily": "the family of ecs.task_definition",
    "ContainerName": "ecs.container",
    "ExecutionRoleName": "the executionRoleArn of ecs.task_definition",
    "TaskRoleName": "the taskRoleArn of ecs.task_definition",
    "LogGroupName": "the awslogs-group of ecs.task_definition's app container",
    "MinimumHealthyPercent": "ecs.minimum_healthy_percent",
    "MaximumPercent": "ecs.maximum_percent",
    "HealthCheckGracePeriod": "ecs.health_check_grace",
    "DeregistrationDelay": "deploy.drain_seconds + deploy.shutdown_timeout",
    "SecretArns": "secrets (aws-sm: references)",
    "ParameterArns": "secrets (ssm: references)",
    "RepositoryName": "image.name",
    "DeletionProtection": "infra.protected",
    "Image": "the environment's pushed release (build/release.json), or the stack's first image",
}
TERMINAL_BAD = ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "DELETE_FAILED", "UPDATE_ROLLBACK_FAILED")
RED, BOLD, RESET = "\033[31m", "\033[1m", "\033[0m"


class InfraError(ConveyorError):
    """A stack operation failed or was refused; the message names the stack."""


# --- the template ------------------------------------------------------------------------------------


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms (``!Ref X`` -> ``{"Ref": "X"}``, ``!GetAtt A.B``)."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    if suffix == "Condition":
        return {"Condition": value}
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _tag)


def _parse(text: str) -> Any:
    """One YAML document through the safe loader above (what ``yaml.load`` would do with it)."""
    loader = _CfnLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_template(path: Path, where: str) -> dict[str, Any]:
    """Parse the template (JSON or YAML with short forms); ``where`` names it in errors."""
    if not path.is_file():
        raise ConfigError(f"{where}: no such CloudFormation template (infra.template)")
    try:
        data = _parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where}{at}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("Resources"), dict):
        raise ConfigError(f"{where}: expected a CloudFormation template with a `Resources` mapping")
    return data


def alnum(text: str) -> str:
    """``&{X}`` of Fn::ForEach: the value without its non-alphanumeric characters (logical ids)."""
    return re.sub(r"[^A-Za-z0-9]", "", text)


def expand(template: Mapping[str, Any], values: Mapping[str, str], where: str) -> dict[str, Any]:
    """The template with every ``Fn::ForEach::<name>`` of Resources, Outputs and Conditions unrolled and
    the transform removed. The identifier is replaced in every key and string of the fragment (``${X}``
    and ``&{X}``, alphanumerics only) and ``{"Ref": X}`` becomes the value."""
    out = {k: v for k, v in template.items() if k != "Transform"}
    declared = dict(template.get("Parameters") or {})
    used: set[str] = set()
    for section in ("Resources", "Outputs", "Conditions"):
        if isinstance(out.get(section), dict):
            out[section] = _unroll(out[section], declared, values, where, used)
    if used:  # a collection parameter is consumed by the expansion: the expanded template has none
        out["Parameters"] = {k: v for k, v in declared.items() if k not in used}
    return out


def _unroll(
    block: Mapping[str, Any],
    declared: Mapping[str, Any],
    values: Mapping[str, str],
    where: str,
    used: set[str],
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, body in block.items():
        if not key.startswith(FOREACH):
            result[key] = body
            continue
        if not (isinstance(body, list) and len(body) == 3 and isinstance(body[2], dict)):
            raise ConfigError(f"{where}: {key} must be [identifier, collection, {{fragment}}]")
        ident, collection, fragment = body
        ref = collection.get("Ref") if isinstance(collection, dict) else None
        if isinstance(ref, str):
            used.add(ref)
        for item in _collection(collection, declared, values, f"{where}: {key}"):
            made = _substitute(fragment, ident, item)
            for name, value in _unroll(made, declared, values, where, used).items():
                if name in result:
                    raise ConfigError(f"{where}: {key} makes `{name}` twice (values that differ only in "
                                      "non-alphanumeric characters?)")  # fmt: skip
                result[name] = value
    return result


def _collection(
    collection: Any, declared: Mapping[str, Any], values: Mapping[str, str], where: str
) -> list[str]:
    if isinstance(collection, list) and all(isinstance(x, str) for x in collection):
        return list(collection)
    ref = collection.get("Ref") if isinstance(collection, dict) else None
    if isinstance(ref, str) and ref in declared:
        text = values.get(ref, str(declared[ref].get("Default", "")))
        return [part.strip() for part in text.split(",") if part.strip()]
    raise ConfigError(f"{where}: the collection must be a list or a Ref to a parameter")


def _substitute(value: Any, ident: str, item: str) -> Any:
    if isinstance(value, str):
        return value.replace("${" + ident + "}", item).replace("&{" + ident + "}", alnum(item))
    if isinstance(value, list):
        return [_substitute(v, ident, item) for v in value]
    if isinstance(value, dict):
        if value == {"Ref": ident}:
            return item
        return {_substitute(k, ident, item): _substitute(v, ident, item) for k, v in value.items()}
    return value


# --- parameters ----------------------------------------------------------------------------------------


def stack_name(cfg: Config) -> str:
    """``ecs.stack``, else ``<project>-<env>``."""
    return cfg.env.ecs.stack or f"{cfg.project}-{cfg.env.name}"


def partition(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    return "aws-us-gov" if region.startswith("us-gov-") else "aws"


def secret_resources(cfg: Config, region: str, account: str) -> tuple[list[str], list[str]]:
    """IAM resources of exactly the secrets the environment references: Secrets Manager ARNs (a name
    gets the 6 random characters AWS appends) and SSM parameter ARNs."""
    part = partition(region)
    secrets: list[str] = []
    params: list[str] = []
    for ref in cfg.env.secrets.values():
        if ref.scheme == "aws-sm":
            arn = ref.target if ref.target.startswith("arn:") else (
                f"arn:{part}:secretsmanager:{region}:{account}:secret:{ref.target}-??????"
            )  # fmt: skip
            secrets.append(arn)
        elif ref.scheme == "ssm":
            arn = ref.target if ref.target.startswith("arn:") else (
                f"arn:{part}:ssm:{region}:{account}:parameter/{ref.target.lstrip('/')}"
            )  # fmt: skip
            params.append(arn)
    return sorted(set(secrets)), sorted(set(params))


def taskdef_names(cfg: Config) -> dict[str, str]:
    """What ``ecs.task_definition`` names and the stack must create, so the two cannot drift: the family
    (the services use it), the app container, the two roles and the app container's log group."""
    from conveyor.config import read_yaml

    path = cfg.root / cfg.env.ecs.task_definition
    data: Any = read_yaml(path, allow_empty=True)[0] if path.is_file() else {}
    data = data if isinstance(data, dict) else {}
    family = str(data.get("family") or cfg.project)
    containers = [c for c in data.get("containerDefinitions") or [] if isinstance(c, dict)]
    wanted = cfg.env.ecs.container
    app = next((c for c in containers if c.get("name") == wanted), containers[0] if containers else {})
    options = (app.get("logConfiguration") or {}).get("options") or {}

    def role(key: str, default: str) -> str:
        arn = str(data.get(key) or "")
        return arn.rsplit("/", 1)[-1] if ":role/" in arn else default

    return {
        "TaskFamily": family,
        "ContainerName": wanted or str(app.get("name") or cfg.project),
        "ExecutionRoleName": role("executionRoleArn", f"{family}-execution"),
        "TaskRoleName": role("taskRoleArn", f"{family}-task"),
        "LogGroupName": str(options.get("awslogs-group") or f"/conveyor/{cfg.project}/{cfg.env.name}"),
    }


def computed(cfg: Config, *, region: str, account: str, image: str = "") -> dict[str, str]:
    """Every parameter conveyor derives from the configuration."""
    web = cfg.app.web
    secrets, params = secret_resources(cfg, region, account)
    drain = cfg.env.deploy.drain_seconds + cfg.env.deploy.shutdown_timeout
    return {
        "ProjectName": cfg.project,
        "EnvironmentName": cfg.env.name,
        "HttpProcess": web.name if web else "",
        "HttpPort": str(web.port if web else 8000),
        "HealthPath": (web.health or "/") if web else "/health",
        "OtherProcesses": ",".join(p.name for p in cfg.app.processes if not p.http),
        **taskdef_names(cfg),
        "MinimumHealthyPercent": str(cfg.env.ecs.minimum_healthy_percent),
        "MaximumPercent": str(cfg.env.ecs.maximum_percent),
        "HealthCheckGracePeriod": str(cfg.env.ecs.health_check_grace),
        "DeregistrationDelay": str(drain),
        "SecretArns": ",".join(secrets),
        "ParameterArns": ",".join(params),
        "RepositoryName": cfg.image.name,
        "DeletionProtection": "true" if cfg.env.infra.protected else "false",
        "Image": image,
    }


def parameters(cfg: Config, template: Mapping[str, Any], values: Mapping[str, str]) -> dict[str, str]:
    """The template's parameters: ``values`` (computed) and ``infra.parameters``, only those it declares.

    A parameter given in ``infra.parameters`` that the template does not declare, or that conveyor
    computes, and a required one nobody gives, are refused naming the file and key."""
    declared: Mapping[str, Any] = template.get("Parameters") or {}
    source = cfg.values["infra.parameters"].source if "infra.parameters" in cfg.values else "infra.parameters"
    for name in cfg.env.infra.parameters:
        if name in COMPUTED:
            raise ConfigError(
                f"{source}: infra.parameters.{name} is computed by conveyor from {COMPUTED[name]}; "
                "change that instead"
            )
        if name not in declared:
            known = ", ".join(sorted(set(declared) - set(COMPUTED))) or "none"
            raise ConfigError(
                f"{source}: infra.parameters.{name}: {cfg.env.infra.template} declares no such parameter "
                f"(settable: {known})"
            )
    chosen = {k: v for k, v in values.items() if k in declared}
    chosen.update(cfg.env.infra.parameters)
    for name, spec in declared.items():
        if name not in chosen and not (isinstance(spec, dict) and "Default" in spec):
            raise ConfigError(
                f"{ENV_DIR}/{cfg.env.name}.yaml: {cfg.env.infra.template} needs parameter `{name}`: "
                f"set infra.parameters.{name}"
            )
    return chosen


# --- validation (offline) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    """The expanded template as sent, where it was written, and the parameters it is sent with."""

    template: dict[str, Any]
    body: str
    path: Path
    parameters: Mapping[str, str]


def region_of(cfg: Config) -> str:
    env = cfg.dotenv
    return cfg.env.ecs.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"


def render(cfg: Config, *, account: str = "<account-id>", image: str = "") -> Rendered:
    """Load, check parameters, expand and write ``build/infra/<env>.json``: everything but cfn-lint."""
    if cfg.env.target != "ecs":
        raise ConfigError(
            f"{ENV_DIR}/{cfg.env.name}.yaml: target is {cfg.env.target}; infra.* makes the infrastructure "
            "of an ECS environment (target: ecs)"
        )
    where = cfg.env.infra.template
    source = load_template(cfg.root / where, where)
    values = parameters(cfg, source, computed(cfg, region=region_of(cfg), account=account, image=image))
    template = expand(source, values, where)
    values = {k: v for k, v in values.items() if k in (template.get("Parameters") or {})}
    body = json.dumps(template, separators=(",", ":"), sort_keys=False)
    if len(body.encode()) > MAX_BODY:
        raise ConfigError(
            f"{where}: the expanded template is {len(body.encode())} bytes; the limit is {MAX_BODY}"
        )
    path = cfg.root / BUILD_DIR / f"{cfg.env.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(template, indent=2) + "\n", encoding="utf-8")
    return Rendered(template, body, path, MappingProxyType(values))


def lint(runner: Runner, rendered: Rendered, where: str, region: str) -> None:
    """cfn-lint on the expanded template; any error or warning is one line naming the template."""
    argv = ["cfn-lint", "--format", "json", "--regions", region, "--", str(rendered.path)]
    result = runner.run(argv, capture=True, check=False, mutates=False)
    if result.returncode == 0:
        return
    try:
        found = json.loads(result.stdout or "[]")
    except json.JSONDecodeError:
        found = None
    if not isinstance(found, list) or not found:
        tail = (result.stderr or result.stdout).strip().splitlines()
        raise ConfigError(f"{where}: cfn-lint failed: {tail[-1] if tail else f'exit {result.returncode}'}")
    first = found[0]
    rule = (first.get("Rule") or {}).get("Id", "?")
    path = "/".join(str(p) for p in (first.get("Location") or {}).get("Path") or [])
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    message = " ".join(str(first.get("Message", "")).split())
    raise ConfigError(f"{where}: cfn-lint {rule} at {path}: {message}{more}")


def prepare(cfg: Config, runner: Runner, *, account: str = "<account-id>", image: str = "") -> Rendered:
    """render + lint: the offline half of every infra task."""
    rendered = render(cfg, account=account, image=image)
    lint(runner, rendered, cfg.env.infra.template, region_of(cfg))
    return rendered


# --- the AWS side ----------------------------------------------------------------------------------------


class StackApi:
    """One method per CloudFormation call; botocore errors become AwsError naming the call."""

    def __init__(self, clients: Callable[[str], Any]) -> None:
        self._clients = clients

    def _call(self, op: str, /, **kwargs: Any) -> Any:
        client = self._clients("cloudformation")
        try:
            return getattr(client, op)(**kwargs)
        except Exception as exc:  # botocore's exception classes are generated; translate them here
            if not hasattr(exc, "response"):
                raise AwsError(f"{op}: {type(exc).__name__}: {exc}") from None
            raise translate(op, exc) from exc

    def account_id(self) -> str:
        try:
            return str(self._clients("sts").get_caller_identity()["Account"])
        except Exception as exc:
            raise translate("get_caller_identity", exc) from exc

    def describe(self, name: str) -> dict[str, Any] | None:
        """The stack, or None when there is none (a deleted stack is none)."""
        try:
            out = self._call("describe_stacks", StackName=name)
        except AwsError as exc:
            if "does not exist" in str(exc):
                return None
            raise
        stacks = [s for s in out.get("Stacks") or [] if s.get("StackStatus") != "DELETE_COMPLETE"]
        return dict(stacks[0]) if stacks else None

    def create_change_set(self, name: str, body: str, params: Mapping[str, str], kind: str) -> str:
        out = self._call(
            "create_change_set",
            StackName=name,
            ChangeSetName=f"conveyor-{uuid.uuid4().hex[:12]}",
            ChangeSetType=kind,
            TemplateBody=body,
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
            Capabilities=CAPABILITIES,
            Description="conveyor infra",
        )
        return str(out["Id"])

    def wait_change_set(self, change_set: str, name: str) -> dict[str, Any]:
        """Wait (boto3's change_set_create_complete waiter) and return the described change set."""
        waiter = self._clients("cloudformation").get_waiter("change_set_create_complete")
        try:
            waiter.wait(
                ChangeSetName=change_set, StackName=name, WaiterConfig={"Delay": 2, "MaxAttempts": 120}
            )
        except Exception as exc:
            if type(exc).__name__ != "WaiterError":
                raise translate("describe_change_set", exc) from exc
        return self.describe_change_set(change_set, name)

    def describe_change_set(self, change_set: str, name: str) -> dict[str, Any]:
        out = dict(self._call("describe_change_set", ChangeSetName=change_set, StackName=name))
        changes = list(out.get("Changes") or [])
        while out.get("NextToken"):
            more = self._call(
                "describe_change_set", ChangeSetName=change_set, StackName=name, NextToken=out["NextToken"]
            )
            changes += more.get("Changes") or []
            out["NextToken"] = more.get("NextToken")
        out["Changes"] = changes
        return out

    def delete_change_set(self, change_set: str, name: str) -> None:
        self._call("delete_change_set", ChangeSetName=change_set, StackName=name)

    def execute_change_set(self, change_set: str, name: str) -> None:
        self._call("execute_change_set", ChangeSetName=change_set, StackName=name)

    def events(self, name: str) -> list[dict[str, Any]]:
        """The stack's events, newest first (the first page: what a poll needs)."""
        return list(self._call("describe_stack_events", StackName=name).get("StackEvents") or [])

    def delete_stack(self, name: str) -> None:
        self._call("delete_stack", StackName=name)

    def wait(self, name: str, waiter_name: str) -> None:
        """boto3's stack waiter; a failure names the stack's status and reason."""
        waiter = self._clients("cloudformation").get_waiter(waiter_name)
        try:
            waiter.wait(StackName=name, WaiterConfig={"Delay": 5, "MaxAttempts": 720})
        except Exception as exc:
            if type(exc).__name__ != "WaiterError":
                raise translate(waiter_name, exc) from exc
            stack = self.describe(name) or {}
            status = stack.get("StackStatus", "gone")
            reason = stack.get("StackStatusReason", "")
            raise InfraError(f"stack {name}: {status}{': ' + reason if reason else ''}") from None

    def outputs(self, name: str) -> dict[str, str]:
        stack = self.describe(name)
        if stack is None:
            raise ConfigError(f"ecs.stack `{name}`: no such CloudFormation stack (run `invoke infra.up`)")
        return {str(o["OutputKey"]): str(o.get("OutputValue", "")) for o in stack.get("Outputs") or []}


# --- change sets, printed -------------------------------------------------------------------------------


def format_changes(changes: Sequence[Mapping[str, Any]], *, color: bool) -> list[str]:
    """One line per resource change (DescribeChangeSet ``Changes``); replacements in red and bold."""
    lines: list[str] = []
    for change in changes:
        rc = change.get("ResourceChange") or {}
        action = str(rc.get("Action", "?"))
        replacement = str(rc.get("Replacement", ""))
        mark = {"Add": "+", "Modify": "~", "Remove": "-", "Import": ">", "Dynamic": "?"}.get(action, "?")
        what = f"{rc.get('LogicalResourceId', '?')} ({rc.get('ResourceType', '?')})"
        scope = ", ".join(str(s) for s in rc.get("Scope") or [])
        detail = f": {scope}" if scope else ""
        if action == "Modify" and replacement in ("True", "Conditional"):
            label = "REPLACED" if replacement == "True" else "MAY BE REPLACED"
            text = f"{mark} {what}{detail} {label}"
            lines.append(f"{RED}{BOLD}{text}{RESET}" if color else text)
        else:
            lines.append(f"{mark} {what}{detail}")
    return lines


def summarize(changes: Sequence[Mapping[str, Any]]) -> str:
    counts = {"Add": 0, "Modify": 0, "Remove": 0}
    replaced = 0
    for change in changes:
        rc = change.get("ResourceChange") or {}
        counts[str(rc.get("Action"))] = counts.get(str(rc.get("Action")), 0) + 1
        replaced += rc.get("Replacement") in ("True", "Conditional")
    return (
        f"{counts['Add']} to add, {counts['Modify']} to modify ({replaced} replaced), "
        f"{counts['Remove']} to remove"
    )


@dataclass
class Infra:
    """The infra tasks' core for one environment: config, runner, the CloudFormation API, a clock."""

    cfg: Config
    runner: Runner
    api: StackApi
    color: bool = False
    sleep: Callable[[float], None] = time.sleep
    poll: float = 3.0

    @property
    def name(self) -> str:
        return stack_name(self.cfg)

    def _image(self, stack: Mapping[str, Any] | None) -> str:
        """The stack's first image once set, else the release pushed to this environment, else none."""
        for param in (stack or {}).get("Parameters") or []:
            if param.get("ParameterKey") == "Image" and param.get("ParameterValue"):
                return str(param["ParameterValue"])
        release = self.cfg.root / "build/release.json"
        if release.is_file():
            try:
                pushed = json.loads(release.read_text(encoding="utf-8")).get("pushed") or {}
            except (OSError, ValueError):
                pushed = {}
            return str(pushed.get(self.cfg.env.name, ""))
        return ""

    def _change_set(self) -> tuple[str, str, list[dict[str, Any]] | None]:
        """Create and describe a change set: (id, CREATE|UPDATE, changes or None when nothing changes)."""
        prepare(self.cfg, self.runner)  # the template is checked before any call
        stack = self.api.describe(self.name)
        status = str((stack or {}).get("StackStatus", ""))
        if status in TERMINAL_BAD:
            raise InfraError(f"stack {self.name} is {status}: look at its events, then `invoke infra.down`")
        if status.endswith("_IN_PROGRESS") and status != "REVIEW_IN_PROGRESS":
            raise InfraError(f"stack {self.name} is busy ({status}); try again when it settles")
        kind = "UPDATE" if stack and status != "REVIEW_IN_PROGRESS" else "CREATE"
        rendered = render(self.cfg, account=self.api.account_id(), image=self._image(stack))
        change_set = self.api.create_change_set(self.name, rendered.body, rendered.parameters, kind)
        described = self.api.wait_change_set(change_set, self.name)
        if described.get("Status") == "FAILED":
            reason = str(described.get("StatusReason", ""))
            if any(text in reason for text in NO_CHANGES):
                return change_set, kind, None
            self._discard(change_set, kind)
            raise InfraError(f"stack {self.name}: change set failed: {reason}")
        return change_set, kind, list(described.get("Changes") or [])

    def _discard(self, change_set: str, kind: str) -> None:
        """Delete the change set; a CREATE one leaves an empty REVIEW_IN_PROGRESS stack: delete it too."""
        self.api.delete_change_set(change_set, self.name)
        if kind == "CREATE":
            self.api.delete_stack(self.name)

    def _show(self, kind: str, changes: list[dict[str, Any]] | None) -> None:
        if changes is None:
            self.runner.say(f"stack {self.name}: no changes")
            return
        verb = "create" if kind == "CREATE" else "update"
        self.runner.say(f"stack {self.name} ({verb}): {summarize(changes)}")
        for line in format_changes(changes, color=self.color):
            self.runner.say(f"  {line}")

    def dry(self, action: str) -> None:
        """--dry: render and validate, print what would be sent; no AWS call."""
        rendered = prepare(self.cfg, self.runner)
        self.runner.say(f"[dry] {self.cfg.env.infra.template}: valid (cfn-lint); expanded to {rendered.path}")
        self.runner.say(f"[dry] would {action} stack {self.name} in {region_of(self.cfg)} with parameters:")
        for key, value in rendered.parameters.items():
            self.runner.say(f"[dry]   {key} = {value}")

    def plan(self) -> bool:
        """Print what ``up`` would change; apply nothing, delete the change set. True when it would."""
        change_set, kind, changes = self._change_set()
        try:
            self._show(kind, changes)
        finally:
            self._discard(change_set, kind)
        return changes is not None

    def up(self) -> dict[str, str]:
        """Create or update the stack through a change set; stream its events; the outputs."""
        change_set, kind, changes = self._change_set()
        self._show(kind, changes)
        if changes is None:
            self.api.delete_change_set(change_set, self.name)
            return self.api.outputs(self.name)
        seen = {str(e.get("EventId")) for e in self.api.events(self.name)}
        self.api.execute_change_set(change_set, self.name)
        self._follow(seen)
        self.api.wait(self.name, "stack_create_complete" if kind == "CREATE" else "stack_update_complete")
        outputs = self.api.outputs(self.name)
        for key, value in outputs.items():
            self.runner.say(f"  {key} = {value}")
        if not self.cfg.env.ecs.stack:
            self.runner.say(
                f"set `ecs: {{stack: {self.name}}}` in {ENV_DIR}/{self.cfg.env.name}.yaml so `deploy` reads "
                "these outputs"
            )
        return outputs

    def down(self) -> bool:
        """Delete the stack (the caller has checked infra.protected and the confirmation). False: none."""
        if self.api.describe(self.name) is None:
            self.runner.say(f"stack {self.name} does not exist: nothing to delete")
            return False
        seen = {str(e.get("EventId")) for e in self.api.events(self.name)}
        self.api.delete_stack(self.name)
        self._follow(seen, deleting=True)
        self.api.wait(self.name, "stack_delete_complete")
        self.runner.say(f"stack {self.name} deleted")
        return True

    def _follow(self, seen: set[str], *, deleting: bool = False) -> None:
        """Print the stack's new events (oldest first) until it stops being *_IN_PROGRESS."""
        while True:
            try:
                events = self.api.events(self.name)
            except AwsError as exc:
                if deleting and "does not exist" in str(exc):
                    return
                raise
            for event in reversed(events):
                key = str(event.get("EventId"))
                if key in seen:
                    continue
                seen.add(key)
                self.runner.say(f"  {describe_event(event, color=self.color)}")
            stack = self.api.describe(self.name)
            status = str((stack or {}).get("StackStatus", "DELETE_COMPLETE"))
            if not status.endswith("_IN_PROGRESS"):
                return
            self.sleep(self.poll)


def describe_event(event: Mapping[str, Any], *, color: bool) -> str:
    """``12:00:01 CREATE_COMPLETE AWS::ECS::Cluster Cluster [reason]``; failures in red."""
    when: Any = event.get("Timestamp")
    stamp = when.strftime("%H:%M:%S") if hasattr(when, "strftime") else str(when or "")[:8]
    status = str(event.get("ResourceStatus", ""))
    reason = str(event.get("ResourceStatusReason") or "")
    text = f"{stamp} {status:<20} {event.get('ResourceType', '')} {event.get('LogicalResourceId', '')}" + (
        f" - {reason}" if reason and reason != "None" else ""
    )
    return f"{RED}{text}{RESET}" if color and "FAILED" in status else text


# --- the deploy side --------------------------------------------------------------------------------------


def service_outputs(cfg: Config) -> dict[str, str]:
    """process -> the stack output naming its ECS service."""
    return {p.name: "HttpServiceName" if p.http else f"Service{alnum(p.name)}Name" for p in cfg.app.processes}


def resolve_ecs(cfg: Config, clients: Callable[[str], Any]) -> EcsTarget:
    """``cfg.env.ecs`` with the cluster and every process's service read from the stack's outputs
    (``ecs.stack``); unchanged without a stack. A name set in the configuration that differs from the
    stack's is refused: the two cannot drift."""
    ecs = cfg.env.ecs
    if not ecs.stack:
        return ecs
    outputs = StackApi(clients).outputs(ecs.stack)

    def need(key: str, why: str) -> str:
        if not outputs.get(key):
            raise ConfigError(
                f"ecs.stack `{ecs.stack}` has no output {key} ({why}); "
                f"run `invoke infra.up --env {cfg.env.name}`"
            )
        return outputs[key]

    cluster = need("ClusterName", "the cluster")
    if ecs.cluster and ecs.cluster != cluster:
        source = cfg.values["ecs.cluster"].source if "ecs.cluster" in cfg.values else "ecs.cluster"
        raise ConfigError(
            f"{source}: ecs.cluster `{ecs.cluster}` differs from stack {ecs.stack}'s cluster `{cluster}`; "
            "remove one of them"
        )
    services = {
        process: ecs.services.get(process) or need(key, f"the service of process {process}")
        for process, key in service_outputs(cfg).items()
    }
    anchor = cfg.app.anchor.name
    return replace(ecs, cluster=cluster, service=services[anchor], services=MappingProxyType(services))


def resolved(cfg: Config, clients: Callable[[str], Any]) -> Config:
    """``cfg`` whose ``env.ecs`` is ``resolve_ecs``'s (the ECS target reads cluster and services there)."""
    if not cfg.env.ecs.stack:
        return cfg
    return replace(cfg, env=replace(cfg.env, ecs=resolve_ecs(cfg, clients)))


def iter_templates(root: Path, environ: Mapping[str, str]) -> Iterator[Config]:
    """The config of every ECS environment whose infra.template exists (for the scanners)."""
    from conveyor import config

    for name in config.list_environments(root):
        try:
            cfg = config.load(root, name, environ=environ)
        except ConveyorError:
            continue  # the checkov row reports environments that do not load
        if cfg.env.target == "ecs" and (root / cfg.env.infra.template).is_file():
            yield cfg
