"""The ECS target: the deploy model on AWS ECS with boto3.

Revision = a task definition. Release step = `run_task` of the NEW task definition with the migrate
command; a non-zero exit fails the deploy before the service is touched. Apply = `update_service` with
the deployment circuit breaker on. Wait = the PRIMARY deployment is OUR task definition, rolloutState
COMPLETED, running == desired, no other deployment left (the "services stable" waiter also reports
success after ECS rolled back, which is why it is not used). Lock = an SSM parameter created with
Overwrite=False (atomic).
"""

from __future__ import annotations

import difflib
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from conveyor import __version__
from conveyor.aws import AwsError, error_code, translate
from conveyor.config import Config, read_yaml
from conveyor.deploy.locks import StoredLock
from conveyor.deploy.model import Change, Lock, Owner, Plan, Release, Revision, RolloutFailed
from conveyor.errors import ConfigError
from conveyor.runner import Runner
from conveyor.secrets import SecretRef

TEMPLATE = Path("deploy/ecs/taskdef.yaml")
TAG_SHA, TAG_DEPLOYER, TAG_VERSION = "conveyor:git-sha", "conveyor:deployer", "conveyor:version"
MIGRATE = ["python", "-m", "app", "migrate"]
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


class EcsApi:
    """One method per ECS/SSM/Secrets Manager call; botocore errors become AwsError naming the call."""

    def __init__(self, clients: Callable[[str], Any]) -> None:
        self._clients = clients

    def _call(self, api: str, op: str, /, **kwargs: Any) -> Any:
        client = self._clients(api)
        try:
            return getattr(client, op)(**kwargs)
        except Exception as exc:  # botocore's exception classes are generated; translate them here
            if error_code(exc) == "" and not hasattr(exc, "response"):
                raise AwsError(f"{op}: {type(exc).__name__}: {exc}") from None
            raise translate(op, exc) from exc

    def describe_service(self, cluster: str, service: str) -> dict[str, Any]:
        out = self._call("ecs", "describe_services", cluster=cluster, services=[service])
        if not out.get("services") or out["services"][0].get("status") == "INACTIVE":
            raise AwsError(f"describe_services: service {service} not found in cluster {cluster}")
        return dict(out["services"][0])

    def describe_task_definition(self, arn: str) -> tuple[dict[str, Any], dict[str, str]]:
        out = self._call("ecs", "describe_task_definition", taskDefinition=arn, include=["TAGS"])
        return dict(out["taskDefinition"]), {t["key"]: t["value"] for t in out.get("tags") or []}

    def register_task_definition(self, definition: Mapping[str, Any]) -> str:
        out = self._call("ecs", "register_task_definition", **definition)
        return str(out["taskDefinition"]["taskDefinitionArn"])

    def update_service(
        self, cluster: str, service: str, task_definition: str, desired: int | None = None
    ) -> None:
        extra = {} if desired is None else {"desiredCount": desired}
        self._call(
            "ecs",
            "update_service",
            cluster=cluster,
            service=service,
            taskDefinition=task_definition,
            deploymentConfiguration={"deploymentCircuitBreaker": {"enable": True, "rollback": True}},
            **extra,
        )

    def run_task(
        self, cluster: str, task_definition: str, container: str, command: list[str], network: Any
    ) -> str:
        kwargs: dict[str, Any] = {
            "cluster": cluster,
            "taskDefinition": task_definition,
            "launchType": "FARGATE",
            "overrides": {"containerOverrides": [{"name": container, "command": command}]},
            "startedBy": "conveyor-migrate",
        }
        if network:
            kwargs["networkConfiguration"] = network
        out = self._call("ecs", "run_task", **kwargs)
        if out.get("failures"):
            raise AwsError(f"run_task: {out['failures'][0].get('reason', 'failed')}")
        return str(out["tasks"][0]["taskArn"])

    def describe_task(self, cluster: str, task: str) -> dict[str, Any]:
        return dict(self._call("ecs", "describe_tasks", cluster=cluster, tasks=[task])["tasks"][0])

    def list_task_definitions(self, family: str) -> list[str]:
        out = self._call("ecs", "list_task_definitions", familyPrefix=family, status="ACTIVE", sort="ASC")
        return [str(a) for a in out["taskDefinitionArns"]]

    def deregister_task_definition(self, arn: str) -> None:
        self._call("ecs", "deregister_task_definition", taskDefinition=arn)

    def secret_arn(self, secret_id: str) -> str:
        return str(self._call("secretsmanager", "describe_secret", SecretId=secret_id)["ARN"])

    def account_id(self) -> str:
        return str(self._call("sts", "get_caller_identity")["Account"])

    def put_parameter(self, name: str, value: str) -> bool:
        """Create ``name`` only if absent (Overwrite=False is atomic); False when it already exists."""
        try:
            self._call("ssm", "put_parameter", Name=name, Value=value, Type="String", Overwrite=False)
        except AwsError as exc:
            if "ParameterAlreadyExists" in str(exc):
                return False
            raise
        return True

    def get_parameter(self, name: str) -> str | None:
        try:
            return str(self._call("ssm", "get_parameter", Name=name)["Parameter"]["Value"])
        except AwsError as exc:
            if "ParameterNotFound" in str(exc):
                return None
            raise

    def delete_parameter(self, name: str) -> None:
        try:
            self._call("ssm", "delete_parameter", Name=name)
        except AwsError as exc:
            if "ParameterNotFound" not in str(exc):
                raise


class SsmLock(StoredLock):
    """The environment's deploy lock as an SSM parameter holding owner, git sha and start time."""

    def __init__(self, api: EcsApi, env: str) -> None:
        self.api = api
        self.env = env
        self.name = f"/conveyor/locks/{env}"

    def _create(self, owner_json: str, owner: Owner, ttl: int) -> bool:
        return self.api.put_parameter(self.name, owner_json)

    def _read(self) -> str | None:
        return self.api.get_parameter(self.name)

    def _delete(self) -> None:
        self.api.delete_parameter(self.name)


# --- the task definition ---------------------------------------------------------------------------


def _members(operation: str, shape: str | None = None) -> set[str]:
    """Known keys from botocore's own ECS model (offline): RegisterTaskDefinition or one of its shapes."""
    from botocore.loaders import create_loader
    from botocore.model import ServiceModel

    model = ServiceModel(create_loader().load_service_model("ecs", "service-2"), "ecs")
    op = model.operation_model(operation).input_shape
    if shape is None:
        return set(op.members)
    return set(model.shape_for(shape).members)


def _check_keys(data: Mapping[str, Any], known: set[str], where: str) -> None:
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            raise ConfigError(f"{where}: unknown key `{key}`{hint}")


def load_template(path: Path) -> dict[str, Any]:
    """Parse and check the template against ECS's RegisterTaskDefinition model (no API call)."""
    data, _ = read_yaml(path, allow_empty=True)
    if not isinstance(data, dict) or not data.get("containerDefinitions"):
        raise ConfigError(f"{path}: expected a task definition with containerDefinitions")
    _check_keys(data, _members("RegisterTaskDefinition"), str(path))
    container_keys = _members("RegisterTaskDefinition", "ContainerDefinition")
    for i, container in enumerate(data["containerDefinitions"]):
        _check_keys(container, container_keys, f"{path}: containerDefinitions[{i}]")
    return data


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
    """Everything checkable without AWS: Fargate sizes and networking, secret reference schemes."""
    check_fargate(template, str(TEMPLATE))
    for name, ref in cfg.env.secrets.items():
        if ref.scheme not in ("aws-sm", "ssm"):
            raise ConfigError(
                f"secrets.{name}: `{ref}`: ECS reads secrets by reference from Secrets Manager or SSM only"
            )


def render(
    template: Mapping[str, Any],
    *,
    image: str,
    git_sha: str,
    deployer: str,
    variables: Mapping[str, str],
    secrets: Mapping[str, str],
    substitutions: Mapping[str, str],
) -> dict[str, Any]:
    """The task definition to register: a pure function of the template and the release."""
    text = json.dumps(template)
    for key, value in substitutions.items():
        text = text.replace("${" + key + "}", value)
    definition: dict[str, Any] = json.loads(text)
    containers = definition["containerDefinitions"]
    containers[0]["image"] = image
    for container in containers:
        env = {e["name"]: e["value"] for e in container.get("environment", [])}
        env.update(variables)
        env["IMAGE_DIGEST"] = image
        container["environment"] = [{"name": k, "value": v} for k, v in sorted(env.items())]
        if secrets:
            container["secrets"] = [{"name": k, "valueFrom": v} for k, v in sorted(secrets.items())]
    definition["tags"] = [
        {"key": TAG_SHA, "value": git_sha},
        {"key": TAG_DEPLOYER, "value": deployer},
        {"key": TAG_VERSION, "value": __version__},
    ]
    return definition


def diff(live: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[Change]:
    """What changes between the live task definition and the new one. Secrets show their source only."""
    changes: list[Change] = []
    old_c = (live or {}).get("containerDefinitions", [{}])[0]
    new_c = new["containerDefinitions"][0]
    if old_c.get("image") != new_c["image"]:
        changes.append(Change("image", str(old_c.get("image", "")), new_c["image"]))
    for key in ("cpu", "memory"):
        if str((live or {}).get(key, "")) != str(new.get(key, "")):
            changes.append(Change(key, str((live or {}).get(key, "")), str(new.get(key, ""))))
    old_env = {e["name"]: e["value"] for e in old_c.get("environment", [])}
    for item in new_c.get("environment", []):
        if old_env.get(item["name"]) != item["value"]:
            changes.append(Change(f"env {item['name']}", old_env.get(item["name"], ""), item["value"]))
    old_secrets = {s["name"]: s["valueFrom"] for s in old_c.get("secrets", [])}
    for item in new_c.get("secrets", []):
        if old_secrets.get(item["name"]) != item["valueFrom"]:
            changes.append(
                Change(
                    f"secret {item['name']} (valueFrom)", old_secrets.get(item["name"], ""), item["valueFrom"]
                )
            )
    return changes


class EcsDeployTarget:
    kind = "ecs"

    def __init__(
        self,
        runner: Runner,
        api: EcsApi,
        cfg: Config,
        *,
        template: Mapping[str, Any],
        deployer: str,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        max_failed_tasks: int = 3,
    ) -> None:
        self.runner = runner
        self.api = api
        self.cfg = cfg
        self.cluster = cfg.env.ecs.cluster
        self.service = cfg.env.ecs.service
        self.template = template
        self.deployer = deployer
        self.lock: Lock = SsmLock(api, cfg.env.name)
        self.sleep = sleep
        self.clock = clock
        self.max_failed_tasks = max_failed_tasks
        self.registered: dict[str, str] = {}  # release image -> registered task definition ARN

    # -- reading ---------------------------------------------------------------------------------------

    def current(self) -> Revision | None:
        primary = _primary(self.api.describe_service(self.cluster, self.service))
        if primary is None:
            return None
        definition, tags = self.api.describe_task_definition(primary["taskDefinition"])
        return Revision(
            definition["taskDefinitionArn"],
            definition["containerDefinitions"][0]["image"],
            tags.get(TAG_SHA, "unknown"),
        )

    def _secret_arns(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for name, ref in self.cfg.env.secrets.items():
            values[name] = self._value_from(ref)
        return values

    def _value_from(self, ref: SecretRef) -> str:
        if ref.scheme == "aws-sm":
            arn = self.api.secret_arn(ref.target)
            return f"{arn}:{ref.key}::" if ref.key else arn
        if ref.scheme == "ssm":
            return ref.target
        raise ConfigError(
            f"secrets: `{ref}`: ECS reads secrets by reference from Secrets Manager or SSM only"
        )

    def plan(self, release: Release) -> Plan:
        where = str(TEMPLATE)
        service = self.api.describe_service(self.cluster, self.service)
        new = render(
            self.template,
            image=release.image,
            git_sha=release.git_sha,
            deployer=self.deployer,
            variables=self.cfg.env.vars,
            secrets=self._secret_arns(),
            substitutions={"AWS_REGION": self.cfg.env.ecs.region, "AWS_ACCOUNT_ID": self.api.account_id()},
        )
        check_fargate(new, where)
        primary = _primary(service)
        live = self.api.describe_task_definition(primary["taskDefinition"])[0] if primary else None
        changes = diff(live, new)
        breaker = (service.get("deploymentConfiguration") or {}).get("deploymentCircuitBreaker") or {}
        if not (breaker.get("enable") and breaker.get("rollback")):
            changes.append(Change("service deploymentCircuitBreaker", json.dumps(breaker), "enable+rollback"))
        current = self.current() if primary else None
        steps = (
            f"register task definition {new['family']}",
            f"run_task migrate: {' '.join(MIGRATE)}",
            f"update_service {self.cluster}/{self.service}",
        )
        return Plan(self.cfg.env.name, self.kind, release, current, tuple(changes), steps, detail=new)

    # -- acting ----------------------------------------------------------------------------------------

    def release_steps(self, plan: Plan) -> None:
        arn = self.api.register_task_definition(plan.detail)
        self.registered[plan.release.image] = arn
        self.runner.say(f"registered {arn}")
        service = self.api.describe_service(self.cluster, self.service)
        container = plan.detail["containerDefinitions"][0]["name"]
        task = self.api.run_task(self.cluster, arn, container, MIGRATE, service.get("networkConfiguration"))
        deadline = self.clock() + self.cfg.env.deploy.timeout
        while True:
            info = self.api.describe_task(self.cluster, task)
            if info.get("lastStatus") == "STOPPED":
                break
            if self.clock() > deadline:
                raise RolloutFailed(
                    f"migration task {task} did not stop within {self.cfg.env.deploy.timeout}s"
                )
            self.sleep(2)
        exits = [c.get("exitCode") for c in info.get("containers", []) if c.get("name") == container]
        if not exits or exits[0] != 0:
            reason = info.get("stoppedReason") or "no reason given"
            raise RolloutFailed(
                f"migration task exited with {exits[0] if exits else 'no exit code'} ({reason})"
            )

    def apply(self, plan: Plan) -> None:
        self.api.update_service(self.cluster, self.service, self.registered[plan.release.image])

    def rollback(self, plan: Plan, to: Revision) -> None:
        self.registered[to.image] = to.ref
        self.api.update_service(self.cluster, self.service, to.ref)

    def stop(self, plan: Plan) -> None:
        self.api.update_service(self.cluster, self.service, self.registered[plan.release.image], desired=0)

    def wait(self, plan: Plan, expected: Release, deadline: float) -> None:
        """PRIMARY is our task definition, COMPLETED, running == desired, and it is the only deployment."""
        ours = self.registered[expected.image]
        last = "no deployment seen yet"
        seen_ours = False
        while True:
            service = self.api.describe_service(self.cluster, self.service)
            deployments = service.get("deployments") or []
            primary = _primary(service)
            mine = [d for d in deployments if d.get("taskDefinition") == ours]
            if primary is not None and primary["taskDefinition"] != ours:
                if mine or seen_ours:
                    # Ours exists but is not PRIMARY (or is gone after being seen): the circuit breaker
                    # rolled it back. A "services stable" check would call this a success.
                    back = _short(primary["taskDefinition"])
                    reason = next(
                        (d.get("rolloutStateReason", "") for d in mine if d.get("rolloutState")), ""
                    )
                    raise RolloutFailed(
                        f"ECS rolled the deployment back to {back} (circuit breaker) {reason}".strip()
                    )
                last = f"PRIMARY is still {_short(primary['taskDefinition'])}"
            elif primary is not None:
                seen_ours = True
                last = self._progress(primary, ours, len(deployments))
                if not last:
                    return
            if self.clock() > deadline:
                raise RolloutFailed(f"timed out: {last}")
            self.runner.say(f"    waiting: {last}")
            self.sleep(5)

    def _progress(self, primary: Mapping[str, Any], ours: str, deployments: int) -> str:
        """'' when our PRIMARY deployment has won; else what it is waiting for. Fails fast on failure."""
        state = primary.get("rolloutState")
        failed = int(primary.get("failedTasks", 0))
        if state == "FAILED":
            raise RolloutFailed(f"rollout FAILED: {primary.get('rolloutStateReason', '')}".strip())
        if failed >= self.max_failed_tasks:
            raise RolloutFailed(
                f"{failed} tasks of {_short(ours)} failed to start (limit {self.max_failed_tasks})"
            )
        running, desired = int(primary.get("runningCount", 0)), int(primary.get("desiredCount", 0))
        if state == "COMPLETED" and running == desired and deployments == 1:
            return ""
        return f"{_short(ours)}: rollout {state}, {running}/{desired} running, {deployments} deployments"

    def finish(self, plan: Plan) -> None:
        """Deregister old revisions of the family, keeping the newest deploy.keep_revisions."""
        keep = self.cfg.env.deploy.keep_revisions
        arns = self.api.list_task_definitions(plan.detail["family"])
        for arn in arns[:-keep] if len(arns) > keep else []:
            self.api.deregister_task_definition(arn)
            self.runner.say(f"deregistered {_short(arn)}")

    def version_url(self) -> str:
        return f"{self.cfg.env.url.rstrip('/')}/version"

    def live_history(self) -> list[str]:
        """The family's active revisions with conveyor's tags (sha, deployer), newest first."""
        primary = _primary(self.api.describe_service(self.cluster, self.service))
        serving = primary["taskDefinition"] if primary else ""
        lines = []
        for arn in reversed(self.api.list_task_definitions(str(self.template["family"]))):
            definition, tags = self.api.describe_task_definition(arn)
            mark = "*" if arn == serving else " "
            sha, who = tags.get(TAG_SHA, "?")[:12], tags.get(TAG_DEPLOYER, "?")
            image = definition["containerDefinitions"][0]["image"]
            lines.append(f"{mark} {_short(arn):<28} {sha:<13} {who:<12} {image}")
        return lines


def _primary(service: Mapping[str, Any]) -> dict[str, Any] | None:
    for deployment in service.get("deployments") or []:
        if deployment.get("status") == "PRIMARY":
            return dict(deployment)
    return None


def _short(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]
