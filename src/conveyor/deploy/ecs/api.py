"""Thin AWS wrappers for the ECS target: one method per ECS/SSM/Secrets Manager/STS call, and the SSM lock.

botocore errors become ``AwsError`` naming the call (``conveyor.aws.translate``); nothing here decides
anything about a deploy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from conveyor.aws import AwsError, error_code, translate
from conveyor.deploy.locks import StoredLock
from conveyor.deploy.model import Owner

STARTED_BY = "conveyor-release"  # startedBy of the release command's task (ECS allows 36 characters)
DESCRIBE_BATCH = 10  # DescribeServices takes at most 10 services a call


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

    # -- services --------------------------------------------------------------------------------------

    def describe_services(self, cluster: str, services: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The ACTIVE services among ``services``, by name; a missing or deleted one is simply absent."""
        found: dict[str, dict[str, Any]] = {}
        names = list(dict.fromkeys(services))
        for start in range(0, len(names), DESCRIBE_BATCH):
            out = self._call(
                "ecs", "describe_services", cluster=cluster, services=names[start : start + DESCRIBE_BATCH]
            )
            for service in out.get("services") or []:
                if service.get("status") != "INACTIVE":
                    found[str(service["serviceName"])] = dict(service)
        return found

    def describe_service(self, cluster: str, service: str) -> dict[str, Any]:
        found = self.describe_services(cluster, [service])
        if service not in found:
            raise AwsError(f"describe_services: service {service} not found in cluster {cluster}")
        return found[service]

    def update_service(
        self,
        cluster: str,
        service: str,
        task_definition: str | None,
        desired: int | None = None,
        *,
        deployment: Mapping[str, Any],
        grace: int | None = None,
    ) -> None:
        """Point ``service`` at ``task_definition`` (None: keep it) with ``deployment`` as its
        deploymentConfiguration; ``grace`` (healthCheckGracePeriodSeconds) only for a load-balanced one."""
        extra: dict[str, Any] = {}
        if task_definition is not None:
            extra["taskDefinition"] = task_definition
        if desired is not None:
            extra["desiredCount"] = desired
        if grace is not None:
            extra["healthCheckGracePeriodSeconds"] = grace
        self._call(
            "ecs",
            "update_service",
            cluster=cluster,
            service=service,
            deploymentConfiguration=dict(deployment),
            **extra,
        )

    # -- task definitions ------------------------------------------------------------------------------

    def describe_task_definition(self, arn: str) -> tuple[dict[str, Any], dict[str, str]]:
        out = self._call("ecs", "describe_task_definition", taskDefinition=arn, include=["TAGS"])
        return dict(out["taskDefinition"]), {t["key"]: t["value"] for t in out.get("tags") or []}

    def register_task_definition(self, definition: Mapping[str, Any]) -> str:
        out = self._call("ecs", "register_task_definition", **definition)
        return str(out["taskDefinition"]["taskDefinitionArn"])

    def list_task_definitions(self, family: str) -> list[str]:
        """ACTIVE revisions of exactly ``family``, oldest first (the API matches a family *prefix*)."""
        arns: list[str] = []
        token: dict[str, str] = {}
        while True:
            out = self._call(
                "ecs", "list_task_definitions", familyPrefix=family, status="ACTIVE", sort="ASC", **token
            )
            arns += [str(a) for a in out.get("taskDefinitionArns") or [] if family_of(str(a)) == family]
            if not out.get("nextToken"):
                return arns
            token = {"nextToken": str(out["nextToken"])}

    def deregister_task_definition(self, arn: str) -> None:
        self._call("ecs", "deregister_task_definition", taskDefinition=arn)

    # -- one-off tasks ---------------------------------------------------------------------------------

    def run_task(
        self,
        cluster: str,
        task_definition: str,
        *,
        container: str,
        command: Sequence[str],
        launch: Mapping[str, Any],
    ) -> str:
        """Start one task of ``task_definition`` with ``container``'s command overridden; its ARN."""
        out = self._call(
            "ecs",
            "run_task",
            cluster=cluster,
            taskDefinition=task_definition,
            count=1,
            overrides={"containerOverrides": [{"name": container, "command": list(command)}]},
            startedBy=STARTED_BY,
            **launch,
        )
        if out.get("failures") or not out.get("tasks"):
            failure = (out.get("failures") or [{}])[0]
            raise AwsError(f"run_task: {failure.get('reason', 'no task was started')}")
        return str(out["tasks"][0]["taskArn"])

    def describe_task(self, cluster: str, task: str) -> dict[str, Any]:
        out = self._call("ecs", "describe_tasks", cluster=cluster, tasks=[task])
        if not out.get("tasks"):
            raise AwsError(f"describe_tasks: task {task} not found in cluster {cluster}")
        return dict(out["tasks"][0])

    def stop_task(self, cluster: str, task: str, reason: str) -> None:
        self._call("ecs", "stop_task", cluster=cluster, task=task, reason=reason)

    # -- logs ------------------------------------------------------------------------------------------

    def log_tail(self, group: str, stream: str, lines: int) -> list[str]:
        """The last ``lines`` messages of a CloudWatch Logs stream, oldest first ([] when it is absent)."""
        try:
            out = self._call(
                "logs", "get_log_events", logGroupName=group, logStreamName=stream, limit=lines,
                startFromHead=False,
            )  # fmt: skip
        except AwsError as exc:
            if "ResourceNotFoundException" in str(exc):
                return []
            raise
        return [str(e.get("message", "")).rstrip("\n") for e in out.get("events") or []]

    def log_events(self, group: str, stream_prefix: str, start_ms: int | None) -> list[dict[str, Any]]:
        """FilterLogEvents of ``group``, streams named ``stream_prefix``..., from ``start_ms``: every page
        ([] when the group is absent). Streams are also checked here: moto ignores logStreamNamePrefix."""
        events: list[dict[str, Any]] = []
        args: dict[str, Any] = {"logGroupName": group}
        if stream_prefix:
            args["logStreamNamePrefix"] = stream_prefix
        if start_ms is not None:
            args["startTime"] = start_ms
        while True:
            try:
                out = self._call("logs", "filter_log_events", **args)
            except AwsError as exc:
                if "ResourceNotFoundException" in str(exc):
                    return events
                raise
            events += [
                dict(e)
                for e in out.get("events") or []
                if str(e.get("logStreamName", "")).startswith(stream_prefix)
            ]
            token = out.get("nextToken")
            if not token or token == args.get("nextToken"):
                return events
            args["nextToken"] = token

    # -- account, secrets, parameters ------------------------------------------------------------------

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
    """The environment's deploy lock as an SSM parameter holding owner, git sha and start time; named by
    project and environment, so two projects sharing an account never block each other."""

    def __init__(self, api: EcsApi, env: str, project: str) -> None:
        self.api = api
        self.env = env
        self.name = f"/conveyor/locks/{project}/{env}"

    def _create(self, owner_json: str, owner: Owner, ttl: int) -> bool:
        return self.api.put_parameter(self.name, owner_json)

    def _read(self) -> str | None:
        return self.api.get_parameter(self.name)

    def _delete(self) -> None:
        self.api.delete_parameter(self.name)


def family_of(arn: str) -> str:
    """``arn:…:task-definition/web:7`` -> ``web``."""
    return arn.rsplit("/", 1)[-1].rsplit(":", 1)[0]


def short(arn: str) -> str:
    """``arn:…:task-definition/web:7`` -> ``web:7`` (also for task and service ARNs: the last part)."""
    return arn.rsplit("/", 1)[-1]
