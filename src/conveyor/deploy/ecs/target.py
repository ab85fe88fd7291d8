"""The ECS target: the deploy model on AWS ECS, every process of the app contract as its own service.

Revision = a task definition per process (one family each). Release command = `run_task` of the anchor
process's NEW task definition with the app container's command overridden, launched like the anchor
service (launch type or capacity providers, platform version, network); a non-zero exit fails the deploy
before any service is touched; on failure the last lines of its log (awslogs) are shown. Apply =
`update_service` of every process's service with the environment's rollout settings (min/max percent,
circuit breaker with rollback, alarms, the grace period where a load balancer is). Wait = for every
service, the PRIMARY deployment is OUR task definition, rolloutState COMPLETED, running == desired, no
other deployment left (the "services stable" waiter also reports success after ECS rolled back, which is
why it is not used); failed tasks count against ECS's own threshold. Rollback = every service back to the
task definition it ran before. Lock = an SSM parameter created with Overwrite=False (atomic).

Under invoke's ``--dry`` the plan is offline: the task definitions are rendered and validated against
ECS's model without credentials or any API call, and the live part says NOT CONNECTED.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor.aws import AwsError
from conveyor.config import Config
from conveyor.deploy.ecs.api import EcsApi, SsmLock, short
from conveyor.deploy.ecs.render import (
    TAG_DEPLOYER,
    TAG_SHA,
    Inputs,
    app_container,
    check_fargate,
    diff,
    family_names,
    find_container,
    render_all,
    render_offline,
    service_names,
    validate_definition,
)
from conveyor.deploy.ecs.rollout import (
    check_room,
    deployment_configuration,
    describe_rollout,
    failure_threshold,
    rollout_changes,
)
from conveyor.deploy.model import Change, Lock, Plan, Release, Revision, RolloutFailed
from conveyor.errors import ConfigError, ConveyorError
from conveyor.runner import Runner
from conveyor.secrets import SecretRef


@dataclass(frozen=True)
class ProcessRollout:
    """One process in an ECS plan: its service, the task definition to register, what the service ran."""

    process: str
    service: str
    definition: Mapping[str, Any]
    previous: str  # the task definition of the service's PRIMARY deployment before the deploy ("": none)
    grace: int | None = None  # healthCheckGracePeriodSeconds to set (None: the service has no load balancer)

    @property
    def family(self) -> str:
        return str(self.definition["family"])


@dataclass(frozen=True)
class EcsPlan:
    """``Plan.detail`` of the ECS target."""

    container: str  # the app container's name
    anchor: str  # the process the release command runs as
    processes: tuple[ProcessRollout, ...]
    launch: Mapping[str, Any]  # run_task parameters taken from the anchor's service
    deployment: Mapping[str, Any] = field(default_factory=dict)  # update_service deploymentConfiguration

    def of(self, process: str) -> ProcessRollout:
        return next(p for p in self.processes if p.process == process)


def run_task_launch(service: Mapping[str, Any]) -> dict[str, Any]:
    """How a one-off task must be launched to run where ``service`` runs (from DescribeServices)."""
    launch: dict[str, Any] = {}
    strategy = list(service.get("capacityProviderStrategy") or [])
    launch_type = str(service.get("launchType") or "")
    if strategy:
        launch["capacityProviderStrategy"] = strategy
    elif launch_type:
        launch["launchType"] = launch_type
    fargate = launch_type == "FARGATE" or any(
        str(s.get("capacityProvider", "")).startswith("FARGATE") for s in strategy
    )
    if fargate and service.get("platformVersion"):
        launch["platformVersion"] = service["platformVersion"]
    if service.get("networkConfiguration"):
        launch["networkConfiguration"] = service["networkConfiguration"]
    return launch


def describe_launch(launch: Mapping[str, Any]) -> str:
    """``FARGATE 1.4.0`` / ``capacity providers FARGATE_SPOT`` / ``cluster default``: for plan lines."""
    if launch.get("capacityProviderStrategy"):
        how = "capacity providers " + ",".join(
            str(s.get("capacityProvider")) for s in launch["capacityProviderStrategy"]
        )
    else:
        how = str(launch.get("launchType") or "the cluster's default capacity")
    return f"{how} {launch['platformVersion']}" if launch.get("platformVersion") else how


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
    ) -> None:
        self.runner = runner
        self.api = api
        self.cfg = cfg
        self.cluster = cfg.env.ecs.cluster
        self.template = template
        self.deployer = deployer
        self.lock: Lock = SsmLock(api, cfg.env.name, cfg.project)
        self.sleep = sleep
        self.clock = clock
        self.offline = runner.dry  # invoke --dry: plan without credentials or any AWS call
        self.log_lines = 20  # lines of the release command's log shown when it fails
        self.poll = 5.0  # seconds between DescribeServices while waiting for rollouts
        self.task_poll = 2.0  # seconds between DescribeTasks while the release command runs
        self.where = cfg.env.ecs.task_definition
        self.container = app_container(template, cfg.env.ecs.container, self.where)
        self.anchor = cfg.app.anchor.name
        self.services = service_names(cfg.env.ecs, cfg.app)
        self.families = family_names(str(template["family"]), cfg.app)
        self._registered: tuple[Plan, dict[str, str]] | None = None  # the plan's new ARNs, per process
        self._goals: dict[Release, dict[str, str]] = {}  # what wait(expected) waits for, per process

    # -- reading ---------------------------------------------------------------------------------------

    def _describe(self, processes: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """process -> its service's description; a process whose service does not exist is an error."""
        names = list(self.services) if processes is None else list(processes)
        found = self.api.describe_services(self.cluster, [self.services[p] for p in names])
        for process in names:
            if self.services[process] not in found:
                raise ConfigError(
                    f"process {process}: ECS service {self.services[process]} does not exist in cluster "
                    f"{self.cluster} (create it, or map the process in `ecs.services`)"
                )
        return {p: found[self.services[p]] for p in names}

    def _revision(self, arn: str) -> Revision:
        definition, tags = self.api.describe_task_definition(arn)
        image = str(find_container(definition, self.container).get("image", ""))
        return Revision(arn, image, tags.get(TAG_SHA, "unknown"))

    def current(self) -> Revision | None:
        """The anchor process's revision: its service's PRIMARY task definition."""
        service = self.api.describe_service(self.cluster, self.services[self.anchor])
        arn = _primary_task_definition(service)
        return self._revision(arn) if arn else None

    def _secret_arns(self) -> dict[str, str]:
        return {name: self._value_from(ref) for name, ref in self.cfg.env.secrets.items()}

    def _value_from(self, ref: SecretRef) -> str:
        if ref.scheme == "aws-sm":
            arn = self.api.secret_arn(ref.target)
            return f"{arn}:{ref.key}::" if ref.key else arn
        if ref.scheme == "ssm":
            return ref.target
        raise ConfigError(
            f"secrets: `{ref}`: ECS reads secrets by reference from Secrets Manager or SSM only"
        )

    def _inputs(self, release: Release, secrets: Mapping[str, str], account: str) -> Inputs:
        return Inputs(
            image=release.image,
            git_sha=release.git_sha,
            deployer=self.deployer,
            variables=self.cfg.env.process_env(),
            secrets=secrets,
            substitutions={"AWS_REGION": self.cfg.env.ecs.region, "AWS_ACCOUNT_ID": account},
            stop_timeout=self.cfg.env.deploy.shutdown_timeout,
        )

    def _render(self, inputs: Inputs) -> dict[str, dict[str, Any]]:
        """process -> its task definition, checked as Fargate and RegisterTaskDefinition would."""
        definitions = render_all(self.template, self.cfg.app, container=self.container, inputs=inputs)
        for process, definition in definitions.items():
            where = f"{self.where} (process {process})"
            check_fargate(definition, where)
            validate_definition(definition, where)
        return definitions

    def _steps(self, detail: EcsPlan) -> list[str]:
        steps = [f"register task definitions {', '.join(r.family for r in detail.processes)}"]
        if self.cfg.app.release:
            steps.append(
                f"run_task {detail.of(self.anchor).family} ({describe_launch(detail.launch)}), "
                f"container {self.container}: {shlex.join(self.cfg.app.release)}"
            )
        steps += [
            f"update_service {self.cluster}/{r.service} ({r.process}): "
            + describe_rollout(detail.deployment, r.grace)
            for r in detail.processes
        ]
        return steps

    def plan(self, release: Release) -> Plan:
        if self.offline:
            return self._offline_plan(release)
        described = self._describe()  # every service must exist before anything is registered
        inputs = self._inputs(release, self._secret_arns(), self.api.account_id())
        definitions = self._render(inputs)
        deployment = deployment_configuration(self.cfg.env.ecs)
        changes: list[Change] = []
        rollouts: list[ProcessRollout] = []
        notes: list[str] = []
        current: Revision | None = None
        for process, definition in definitions.items():
            service = described[process]
            previous = _primary_task_definition(service) or ""
            live = self.api.describe_task_definition(previous) if previous else None
            if live is not None and process == self.anchor:
                image = str(find_container(live[0], self.container).get("image", ""))
                current = Revision(previous, image, live[1].get(TAG_SHA, "unknown"))
            check_room(self.cfg, self.services[process], int(service.get("desiredCount", 0)))
            grace = self._grace(service, notes)
            for change in [
                *diff(live[0] if live else None, definition, container=self.container),
                *rollout_changes(service, deployment, grace),
            ]:
                changes.append(Change(f"{process}: {change.what}", change.old, change.new))
            rollouts.append(ProcessRollout(process, self.services[process], definition, previous, grace))
        launch = run_task_launch(described[self.anchor])
        detail = EcsPlan(self.container, self.anchor, tuple(rollouts), launch, deployment)
        env = self.cfg.env.name
        steps = [*notes, *self._steps(detail)]
        return Plan(env, self.kind, release, current, tuple(changes), tuple(steps), detail=detail)

    def _grace(self, service: Mapping[str, Any], notes: list[str]) -> int | None:
        """ecs.health_check_grace for a load-balanced service; AWS takes it only with a load balancer."""
        if service.get("loadBalancers"):
            return self.cfg.env.ecs.health_check_grace
        if self.cfg.env.ecs.health_check_grace:
            notes.append(
                f"note: ecs.health_check_grace is not applied to {service.get('serviceName')}: "
                "the service has no load balancer (the container healthCheck's startPeriod applies)"
            )
        return None

    def _offline_plan(self, release: Release) -> Plan:
        """The plan without AWS: render and validate every task definition; the live part is unknown."""
        definitions = render_offline(
            self.cfg, self.template, image=release.image, git_sha=release.git_sha, deployer=self.deployer
        )
        for process, definition in definitions.items():
            check_fargate(definition, f"{self.where} (process {process})")
            validate_definition(definition, f"{self.where} (process {process})")
        deployment = deployment_configuration(self.cfg.env.ecs)
        changes: list[Change] = []
        rollouts = []
        for process, definition in definitions.items():
            changes += [
                Change(f"{process}: {c.what}", "unknown" if c.new != "(removed)" else c.old, c.new)
                for c in diff(None, definition, container=self.container)
            ]
            changes += [
                Change(f"{process}: {c.what}", c.old, c.new) for c in rollout_changes(None, deployment, None)
            ]
            rollouts.append(ProcessRollout(process, self.services[process], definition, ""))
        detail = EcsPlan(self.container, self.anchor, tuple(rollouts), {}, deployment)
        grace = self.cfg.env.ecs.health_check_grace
        steps = [
            "NOT CONNECTED (--dry: no credentials used, no AWS call): the task definitions were rendered and "
            "validated offline; what the services run now and their settings are unknown "
            "(`invoke plan` without --dry shows the live diff)",
            *self._steps(detail),
        ]
        if grace:
            steps.append(f"healthCheckGracePeriodSeconds {grace} for each service that has a load balancer")
        preview = json.dumps({r.process: r.definition for r in rollouts}, indent=2, default=str)
        unknown = Revision("", "NOT CONNECTED: no AWS call under --dry", "unknown")
        env = self.cfg.env.name
        return Plan(env, self.kind, release, unknown, tuple(changes), tuple(steps), detail, preview)

    # -- acting ----------------------------------------------------------------------------------------

    def _register(self, plan: Plan) -> dict[str, str]:
        """Register the plan's task definitions once; process -> new ARN."""
        if self._registered is not None and self._registered[0] is plan:
            return self._registered[1]
        arns: dict[str, str] = {}
        for rollout in _detail(plan).processes:
            arns[rollout.process] = self.api.register_task_definition(rollout.definition)
            self.runner.say(f"registered {short(arns[rollout.process])} ({rollout.process})")
        self._registered = (plan, arns)
        return arns

    def release_steps(self, plan: Plan) -> None:
        """The release command in the anchor's NEW task definition; its app container must exit 0. A
        failure says which task definitions were registered (the one change made before it)."""
        detail = _detail(plan)
        registered = self._register(plan)
        arn = registered[detail.anchor]
        try:
            task = self.api.run_task(
                self.cluster,
                arn,
                container=detail.container,
                command=self.cfg.app.release,
                launch=detail.launch,
            )
            self.runner.say(f"release task {short(task)} started ({short(arn)})")
            info = self._until_stopped(task)
            containers: list[dict[str, Any]] = info.get("containers") or []
            app = next((c for c in containers if c.get("name") == detail.container), {})
            code = app.get("exitCode")
            if code != 0:
                reason = app.get("reason") or info.get("stoppedReason") or "no reason given"
                self._show_log(detail.of(detail.anchor).definition, task)
                raise RolloutFailed(
                    f"release command exited with {'no exit code' if code is None else code} ({reason})"
                )
        except ConveyorError as exc:
            made = ", ".join(short(a) for a in registered.values())
            raise type(exc)(f"{exc}; registered {made}, which no service runs") from None

    def _show_log(self, definition: Mapping[str, Any], task: str) -> None:
        """The last lines the release task's app container wrote to CloudWatch Logs (awslogs: the stream
        is ``<awslogs-stream-prefix>/<container>/<task id>``), or why there is nothing to show."""
        logs = find_container(definition, self.container).get("logConfiguration") or {}
        options = logs.get("options") or {}
        if logs.get("logDriver") != "awslogs" or not options.get("awslogs-group"):
            self.runner.say(f"  (no awslogs logConfiguration on container {self.container}: no log to show)")
            return
        group, prefix = str(options["awslogs-group"]), options.get("awslogs-stream-prefix")
        stream = f"{prefix}/{self.container}/{short(task)}" if prefix else short(task)
        try:
            lines = self.api.log_tail(group, stream, self.log_lines)
        except AwsError as exc:
            self.runner.say(f"  (could not read the release log {group} {stream}: {exc})")
            return
        if not lines:
            self.runner.say(f"  (the release log {group} {stream} is empty or absent)")
            return
        self.runner.say(f"  last {len(lines)} lines of {group} {stream}:")
        for line in lines:
            self.runner.say(f"  | {self.runner.redact(line)}")

    def _until_stopped(self, task: str) -> dict[str, Any]:
        """Poll a one-off task until STOPPED; stop it when the wait times out or is interrupted."""
        timeout = self.cfg.env.deploy.timeout
        deadline = self.clock() + timeout
        try:
            while True:
                info = self.api.describe_task(self.cluster, task)
                if info.get("lastStatus") == "STOPPED":
                    return info
                if self.clock() > deadline:
                    self._stop_task(task, f"conveyor: did not finish within {timeout}s")
                    raise RolloutFailed(
                        f"release task {short(task)} did not stop within {timeout}s (stopped it)"
                    )
                self.sleep(self.task_poll)
        except KeyboardInterrupt:
            self._stop_task(task, "conveyor: deploy interrupted")
            raise

    def _stop_task(self, task: str, reason: str) -> None:
        try:
            self.api.stop_task(self.cluster, task, reason)
            self.runner.say(f"stopped release task {short(task)}")
        except AwsError as exc:  # the original failure matters more; say what is left running
            self.runner.say(f"warning: could not stop release task {short(task)}: {exc}")

    def apply(self, plan: Plan) -> None:
        arns = self._register(plan)
        self._goals[plan.release] = dict(arns)
        detail = _detail(plan)
        for rollout in detail.processes:
            self.api.update_service(
                self.cluster,
                rollout.service,
                arns[rollout.process],
                deployment=detail.deployment,
                grace=rollout.grace,
            )
            self.runner.say(f"update_service {rollout.service} -> {short(arns[rollout.process])}")

    def _restore(self, plan: Plan) -> dict[str, str]:
        """Every service back to what it ran before; desired 0 where it ran nothing. What to wait for."""
        back: dict[str, str] = {}
        detail = _detail(plan)
        for rollout in detail.processes:
            if rollout.previous:
                self.api.update_service(
                    self.cluster,
                    rollout.service,
                    rollout.previous,
                    deployment=detail.deployment,
                    grace=rollout.grace,
                )
                self.runner.say(f"update_service {rollout.service} -> {short(rollout.previous)}")
                back[rollout.process] = rollout.previous
            else:
                self.api.update_service(
                    self.cluster,
                    rollout.service,
                    None,
                    desired=0,
                    deployment=detail.deployment,
                    grace=rollout.grace,
                )
                self.runner.say(f"update_service {rollout.service}: desired 0 (it ran nothing before)")
        return back

    def rollback(self, plan: Plan, to: Revision) -> None:
        self._goals[Release(to.image, to.git_sha)] = self._restore(plan)

    def stop(self, plan: Plan) -> None:
        """The anchor ran nothing before: stop what ran nothing, put back (and verify) what ran."""
        back = self._restore(plan)
        if not back:
            return
        try:
            self._watch(back, self.clock() + self.cfg.env.deploy.timeout)
        except RolloutFailed as exc:  # the deploy has failed already; say this loudly, do not mask it
            self.runner.say(f"WARNING: putting back {', '.join(back)} failed too: {exc}")

    def wait(self, plan: Plan, expected: Release, deadline: float) -> None:
        """For every process: PRIMARY is our task definition, COMPLETED, running == desired, alone."""
        if expected not in self._goals:
            raise RolloutFailed(f"nothing was deployed for {expected.git_sha[:12]} by this target")
        self._watch(self._goals[expected], deadline)

    def _watch(self, goal: Mapping[str, str], deadline: float) -> None:
        pending = dict(goal)  # process -> the task definition it must run
        seen: set[str] = set()  # processes whose service showed our deployment as PRIMARY
        while pending:
            described = self._describe(list(pending))
            waiting = []
            for process, ours in list(pending.items()):
                status = self._status(process, described[process], ours, seen)
                if status:
                    waiting.append(f"{process}: {status}")
                else:
                    del pending[process]
            if not pending:
                return
            if self.clock() > deadline:
                raise RolloutFailed(f"timed out: {'; '.join(waiting)}")
            self.runner.say(f"    waiting: {'; '.join(waiting)}")
            self.sleep(self.poll)

    def _status(self, process: str, service: Mapping[str, Any], ours: str, seen: set[str]) -> str:
        """'' when ``process`` runs ``ours`` alone and complete; else what it waits for. Raises on failure."""
        deployments = service.get("deployments") or []
        primary = _primary(service)
        if primary is None:
            return "no PRIMARY deployment yet"
        if primary["taskDefinition"] != ours:
            mine = [d for d in deployments if d.get("taskDefinition") == ours]
            if mine or process in seen:
                # Ours exists but is not PRIMARY (or is gone after being seen): the circuit breaker
                # rolled it back. A "services stable" check would call this a success.
                reason = next((d.get("rolloutStateReason", "") for d in mine if d.get("rolloutState")), "")
                raise RolloutFailed(
                    f"{process}: ECS rolled the deployment back by itself (circuit breaker or alarm); "
                    f"{self._serves(primary)} {reason}".strip()
                )
            return f"PRIMARY is still {short(primary['taskDefinition'])}"
        seen.add(process)
        state = primary.get("rolloutState")
        failed = int(primary.get("failedTasks", 0))
        running, desired = int(primary.get("runningCount", 0)), int(primary.get("desiredCount", 0))
        if state == "FAILED":
            raise RolloutFailed(f"{process}: rollout FAILED: {primary.get('rolloutStateReason', '')}".strip())
        limit = failure_threshold(desired)
        if failed >= limit:
            raise RolloutFailed(
                f"{process}: {failed} tasks of {short(ours)} failed to start "
                f"(ECS's circuit breaker threshold for {desired} desired: {limit})"
            )
        if state == "COMPLETED" and running == desired and len(deployments) == 1:
            return ""
        return f"{short(ours)} rollout {state}, {running}/{desired} running, {len(deployments)} deployments"

    def _serves(self, primary: Mapping[str, Any]) -> str:
        """'serving web:1 (sha abc123def456)': what the service's PRIMARY deployment runs now."""
        arn = str(primary["taskDefinition"])
        try:
            sha = self.api.describe_task_definition(arn)[1].get(TAG_SHA, "unknown")
        except AwsError:
            sha = "unknown"
        return f"serving {short(arn)} (sha {sha[:12]})"

    def finish(self, plan: Plan) -> None:
        """Per family, deregister old revisions beyond deploy.keep_revisions (>= 1, checked with the
        configuration), never one a service runs."""
        keep = self.cfg.env.deploy.keep_revisions
        in_use = {
            str(d.get("taskDefinition"))
            for service in self._describe().values()
            for d in [*(service.get("deployments") or []), service]
        }
        for rollout in _detail(plan).processes:
            arns = self.api.list_task_definitions(rollout.family)
            for arn in arns[: max(len(arns) - keep, 0)]:
                if arn in in_use:
                    continue
                self.api.deregister_task_definition(arn)
                self.runner.say(f"deregistered {short(arn)}")

    def live_history(self) -> list[str]:
        """Per process: its family's active revisions with conveyor's tags, newest first (* = running)."""
        described = self._describe()
        lines = []
        for process, family in self.families.items():
            serving = _primary_task_definition(described[process]) or ""
            lines.append(f"{process} (service {self.services[process]}, family {family}):")
            for arn in reversed(self.api.list_task_definitions(family)):
                definition, tags = self.api.describe_task_definition(arn)
                mark = "*" if arn == serving else " "
                sha, who = tags.get(TAG_SHA, "?")[:12], tags.get(TAG_DEPLOYER, "?")
                image = find_container(definition, self.container).get("image", "")
                lines.append(f"  {mark} {short(arn):<28} {sha:<13} {who:<12} {image}")
        return lines


def _detail(plan: Plan) -> EcsPlan:
    if not isinstance(plan.detail, EcsPlan):
        raise TypeError(f"not an ECS plan: {type(plan.detail).__name__}")
    return plan.detail


def _primary(service: Mapping[str, Any]) -> dict[str, Any] | None:
    for deployment in service.get("deployments") or []:
        if deployment.get("status") == "PRIMARY":
            return dict(deployment)
    return None


def _primary_task_definition(service: Mapping[str, Any]) -> str | None:
    primary = _primary(service)
    return str(primary["taskDefinition"]) if primary else None
