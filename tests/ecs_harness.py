"""ECS played on the local Docker engine: moto keeps the API state, this harness runs the tasks for real.

moto keeps `deployments[0]` on the first task definition forever, never starts a service's tasks and
never runs a one-off task's container, so on its own it cannot show a rollout. This harness, called
wherever conveyor sleeps (its injected `sleep`) and on every UpdateService, runs each task as REAL
containers on the local Docker engine: the image the task definition names (pulled from the local
registry by digest), the task definition's `command`/`entryPoint`, its `environment`, its `secrets`
resolved from moto's Secrets Manager and SSM, its `healthCheck` as the container's Docker health check,
every container of the task in one network namespace (awsvpc). What `/version` and `/health` answer
therefore comes from the image that was built, never from tags conveyor wrote.

Sources, AWS ECS Developer Guide and API reference:
- "Deploy Amazon ECS services by replacing tasks" (rolling update): UpdateService with a new task
  definition creates a PRIMARY deployment; the previous one becomes ACTIVE and drains. The scheduler
  keeps at least minimumHealthyPercent of desiredCount (rounded UP) healthy and at most maximumPercent
  (rounded DOWN) RUNNING or PENDING; rolloutState IN_PROGRESS -> COMPLETED (or FAILED).
- "How the Amazon ECS deployment circuit breaker detects failures" and ServiceDeploymentCircuitBreaker:
  failed tasks (that stop before becoming healthy, or fail their health checks) count towards a
  threshold of 0.5 x desiredCount (at least 3, at most 200); at the threshold the deployment is FAILED
  and, with rollback on, ECS starts a new PRIMARY deployment of the last COMPLETED task definition.
- "Specifying sensitive data" (secrets): `valueFrom` is a Secrets Manager ARN, optionally
  `arn:...:secret:NAME:json-key:version-stage:version-id`, or an SSM parameter name/ARN; a secret that
  cannot be read fails the task before it starts (ResourceInitializationError).
- "Using the awslogs log driver": stream `<awslogs-stream-prefix>/<container>/<task id>`; a missing log
  group fails the task unless `awslogs-create-group` is "true". The harness copies each container's real
  output into moto's CloudWatch Logs there, as the driver would.
- "Task lifecycle": a task stops when an essential container exits; DescribeTasks lists one container
  per container definition, each with its own exitCode.

Tasks that existed before the harness (`settle(run=False)`, e.g. a bootstrap image nobody can pull) are
placeholders: counted as running, never routed to. Everything conveyor deploys runs for real.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import itertools
import json
import math
import os
import shlex
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ACCOUNT = "123456789012"
# "If a task has no essential containers with a health check defined, the service scheduler will wait
# for 40 seconds after a task reaches a RUNNING state before the task is counted towards the minimum
# healthy percent total" (DeploymentConfiguration.minimumHealthyPercent). Harness time (conveyor's clock).
UNCHECKED_SETTLE = 40.0
RELEASE_STARTED_BY = "conveyor-release"
LABEL = "dev.conveyor.ecs-harness"

# --- the one tiny image of a test session ----------------------------------------------------------

TINY_APP = '''
"""The rehearsal's service: python -m app serve | worker | healthcheck-worker | migrate | sidecar."""
import hashlib, http.server, json, os, signal, sys, time

def serve():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/health":
                body = {"ok": True}
            elif self.path == "/version":
                body = {"git_sha": os.environ.get("GIT_SHA", "unknown")}
            elif self.path == "/secrets":  # digests only: proves which values arrived, shows none
                body = {k: hashlib.sha256(os.environ[k].encode()).hexdigest()
                        for k in sorted(os.environ) if k.isupper()}
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        def log_message(self, *args):
            pass
    port = int(os.environ.get("PORT", "8000"))
    print(f"serving {os.environ.get('GIT_SHA', 'unknown')[:12]} on {port}", flush=True)
    http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()

def main(mode):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if os.environ.get("CRASH") == mode:
        print(f"{mode}: starting", flush=True)
        print(f"{mode}: RuntimeError: cannot start (CRASH={mode})", file=sys.stderr, flush=True)
        sys.exit(3)
    if mode == "serve":
        serve()
    elif mode in ("worker", "sidecar"):
        print(f"{mode} up", flush=True)
        while True:
            time.sleep(1)
    elif mode == "healthcheck-worker":
        sys.exit(1 if os.environ.get("WORKER_NEVER_READY") else 0)
    elif mode == "migrate":
        print("applying migration 0001_notes", flush=True)
        print("DATABASE_URL " + ("set" if os.environ.get("DATABASE_URL") else "MISSING"), flush=True)
        time.sleep(float(os.environ.get("MIGRATE_SECONDS", "0")))
        if os.environ.get("MIGRATE_FAILS"):
            print('psycopg.errors.DuplicateTable: relation "notes" already exists', file=sys.stderr,
                  flush=True)
            sys.exit(1)
        print("migrations applied", flush=True)
    else:
        sys.exit(f"unknown mode {mode}")

main(sys.argv[1] if len(sys.argv) > 1 else "serve")
'''

TINY_DOCKERFILE = """ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN ln -sf /usr/bin/python3 /usr/local/bin/python
COPY app /srv/app
WORKDIR /srv
ENV PYTHONUNBUFFERED=1 PORT=8000
CMD ["python", "-m", "app", "serve"]
"""


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """One docker CLI call (argv list); stdout and stderr captured."""
    result = subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])}: {result.stderr.strip()[-500:]}")
    return result


class TinyImages:
    """One tiny image built per test session on the machine's base image; variants (a baked GIT_SHA,
    a crash, a failing migration) are one ENV layer each, pushed to the local registry by digest."""

    def __init__(self, base: str, registry: str, workdir: Path) -> None:
        self.base = base
        self.registry = registry
        self.workdir = workdir
        self.repo = f"{registry}/ecs-rehearsal"
        self.local = f"conveyor-ecs-rehearsal:{uuid.uuid4().hex[:8]}"
        self.made: dict[tuple[tuple[str, str], ...], str] = {}
        self.tags: list[str] = []

    def build(self) -> None:
        """The session's one real build (the base image, python and the tiny app)."""
        (self.workdir / "app").mkdir(parents=True, exist_ok=True)
        (self.workdir / "app" / "__init__.py").write_text("")
        (self.workdir / "app" / "__main__.py").write_text(TINY_APP)
        (self.workdir / "Dockerfile").write_text(TINY_DOCKERFILE)
        docker("build", "-q", "--build-arg", f"BASE_IMAGE={self.base}", "-t", self.local, str(self.workdir))

    def image(self, git_sha: str, **env: str) -> str:
        """``registry/ecs-rehearsal@sha256:...`` whose baked GIT_SHA is ``git_sha`` (plus ``env``)."""
        key = tuple(sorted({"GIT_SHA": git_sha, **env}.items()))
        if key in self.made:
            return self.made[key]
        variant = self.workdir / f"variant-{len(self.made)}"
        variant.mkdir()
        lines = [f"FROM {self.local}"] + [f"ENV {k}={shlex.quote(v)}" for k, v in key]
        (variant / "Dockerfile").write_text("\n".join(lines) + "\n")
        tag = f"{self.repo}:v{len(self.made)}-{uuid.uuid4().hex[:6]}"
        docker("build", "-q", "-t", tag, str(variant))
        self.tags.append(tag)
        docker("push", "-q", tag)
        digests = json.loads(docker("image", "inspect", "--format", "{{json .RepoDigests}}", tag).stdout)
        ref = next(d for d in digests if d.startswith(self.repo + "@"))
        self.made[key] = ref
        return ref

    def close(self) -> None:
        """Untag what the session made (the layers go with the last tag)."""
        docker("image", "rm", "-f", *self.tags, self.local, check=False)


# --- tasks -------------------------------------------------------------------------------------------


@dataclass
class HTask:
    """One ECS task as the harness runs it: a container per container definition."""

    id: str
    service: str  # "" for a one-off task
    deployment: str
    task_definition: str
    containers: dict[str, str] = field(default_factory=dict)  # container name -> docker id
    essential: set[str] = field(default_factory=set)
    checked: set[str] = field(default_factory=set)  # containers with a healthCheck
    logs: dict[str, dict[str, str]] = field(default_factory=dict)  # container -> awslogs options
    state: str = "PENDING"  # PENDING | RUNNING | STOPPED
    healthy: bool = False
    ever_healthy: bool = False
    placeholder: bool = False  # existed before the harness; no container
    port: int = 0  # host port of the task's first containerPort (127.0.0.1)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    reason: str = ""
    counted: bool = False  # its failure was counted against its deployment
    running_since: float | None = None  # harness time it reached RUNNING
    established: bool = False  # ran before the rollout under test (settle): healthy once RUNNING


class EcsRollout:
    """ECS for the given services of one cluster, on moto's state and the local Docker engine."""

    def __init__(
        self,
        region: str,
        cluster: str,
        services: Sequence[str],
        *,
        endpoint: str,
        real_step: float = 1.0,
        time_scale: float = 0.2,
    ) -> None:
        import boto3
        from moto.backends import get_backend

        self.backend = get_backend("ecs")[ACCOUNT][region]
        self.region = region
        self.cluster = cluster
        self.services = list(services)
        self.aws: Callable[[str], Any] = lambda name: boto3.client(
            name, endpoint_url=endpoint, region_name=region
        )
        # Real seconds the harness lets pass per conveyor sleep: time_scale x the sleep, at most real_step.
        self.real_step, self.time_scale = real_step, time_scale
        self.now = 0.0
        self.ids = itertools.count(1)
        self.run_id = uuid.uuid4().hex[:10]
        self.tasks: dict[str, HTask] = {}
        self.deployed: dict[str, str] = {}  # service -> task definition of its newest deployment
        self.trace: list[tuple[str, int, int]] = []  # (service, tasks RUNNING or PENDING, healthy)
        self.events: list[str] = []
        self._lock = threading.RLock()
        self._settling = False
        # AWS creates the new PRIMARY deployment inside UpdateService (its response already shows it);
        # moto does not, so the harness hooks the backend's update_service to do the same.
        original = self.backend.update_service

        def update_service(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            self.tick()
            return result

        self.backend.update_service = update_service
        # Likewise RunTask (the containers start) and StopTask (they are stopped) as the call returns.
        for method in ("run_task", "stop_task"):
            self._hook(method)

    def _hook(self, method: str) -> None:
        original = getattr(self.backend, method)

        def hooked(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            self.tick()
            return result

        setattr(self.backend, method, hooked)

    def close(self) -> None:
        """Remove the hooks (the backend outlives this test) and every container the harness started."""
        self.backend.__dict__.pop("update_service", None)
        self.backend.__dict__.pop("run_task", None)
        self.backend.__dict__.pop("stop_task", None)
        listed = docker("ps", "-aq", "--filter", f"label={LABEL}={self.run_id}", check=False).stdout.split()
        if listed:
            docker("rm", "-f", *listed, check=False)
        volumes = docker("volume", "ls", "-q", "--filter", f"name=ecsh-{self.run_id}-", check=False)
        if volumes.stdout.split():
            docker("volume", "rm", "-f", *volumes.stdout.split(), check=False)

    # -- the fake clock and sleep injected into conveyor --------------------------------------------

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        time.sleep(min(seconds * self.time_scale, self.real_step))
        self.tick()

    # -- ECS state ------------------------------------------------------------------------------------

    def svc(self, name: str) -> Any:
        return self.backend.services[f"{self.cluster}:{name}"]

    def settle(self, *, run: bool = True, timeout: float = 60) -> None:
        """Each service's current deployment COMPLETED with desiredCount tasks: real containers, healthy
        (``run``), or placeholders for what ran before the harness (an image nobody can pull)."""
        self._settling = True
        for name in self.services:
            svc = self.svc(name)
            dep = svc.deployments[0]
            dep.update(rolloutState="COMPLETED", pendingCount=0, failedTasks=0, runningCount=0)
            svc.deployments[:] = [dep]
            self.deployed[name] = svc.task_definition
            for _ in range(svc.desired_count):
                if run:
                    self._launch(svc.task_definition, name, dep["id"])
                else:
                    task = HTask(f"pre-{next(self.ids)}", name, dep["id"], svc.task_definition)
                    task.state, task.healthy, task.ever_healthy, task.placeholder = (
                        "RUNNING",
                        True,
                        True,
                        True,
                    )
                    self.tasks[task.id] = task
        deadline = time.monotonic() + timeout
        while True:
            self._refresh()
            pending = [t for t in self.tasks.values() if t.service and not t.healthy]
            if not pending:
                break
            if any(t.state == "STOPPED" for t in pending) or time.monotonic() > deadline:
                raise AssertionError(f"the initial tasks did not become healthy: {self._describe(pending)}")
            time.sleep(0.3)
        self._settling = False
        for name in self.services:
            self._count(name)

    def release_tasks(self) -> list[Any]:
        """moto's one-off tasks started by conveyor's release step, in start order."""
        return [
            t for t in self.backend.tasks.get(self.cluster, {}).values() if t.started_by == RELEASE_STARTED_BY
        ]

    @staticmethod
    def _primary(svc: Any) -> dict[str, Any] | None:
        return next((d for d in svc.deployments if d["status"] == "PRIMARY"), None)

    def _new_deployment(self, svc: Any, task_definition: str, reason: str = "") -> dict[str, Any]:
        for dep in svc.deployments:
            dep["status"] = "ACTIVE"
        first = {"launchType": svc.launch_type, "platformVersion": svc.platform_version}
        template = copy.deepcopy(svc.deployments[0]) if svc.deployments else first
        now = datetime.datetime.now(datetime.timezone.utc)
        template.update(
            id=f"ecs-svc/{next(self.ids):019d}",
            status="PRIMARY",
            taskDefinition=task_definition,
            desiredCount=svc.desired_count,
            runningCount=0,
            pendingCount=0,
            failedTasks=0,
            rolloutState="IN_PROGRESS",
            rolloutStateReason=reason or "ECS deployment in progress.",
            createdAt=now,
            updatedAt=now,
        )
        svc.deployments.insert(0, template)
        self.deployed[svc.name] = task_definition
        self.events.append(f"{svc.name}: deployment of {task_definition.rsplit('/', 1)[-1]}")
        return template

    # -- the scheduler ----------------------------------------------------------------------------------

    def tick(self) -> None:
        with self._lock:
            self._refresh()
            self._one_off_tasks()
            for name in self.services:
                self._step(name)
            self._refresh()
            for name in self.services:
                self._count(name)

    def _settings(self, svc: Any) -> tuple[int, int, dict[str, Any]]:
        conf = getattr(svc, "deployment_configuration", None) or {}
        breaker = conf.get("deploymentCircuitBreaker") or {}
        return int(conf.get("minimumHealthyPercent", 100)), int(conf.get("maximumPercent", 200)), breaker

    def _step(self, name: str) -> None:
        svc = self.svc(name)
        if svc.task_definition != self.deployed.get(name):
            self._new_deployment(svc, svc.task_definition)
        primary = self._primary(svc)
        if primary is None:
            return
        desired = primary["desiredCount"] = svc.desired_count
        low, high, breaker = self._settings(svc)
        mine = [t for t in self.tasks.values() if t.service == name]
        ours = [t for t in mine if t.deployment == primary["id"]]
        for task in ours:  # a task of the rollout that stopped: a failure the breaker counts
            if task.state == "STOPPED" and not task.counted and primary["rolloutState"] == "IN_PROGRESS":
                task.counted = True
                primary["failedTasks"] += 1
                self.events.append(f"{name}: task {task.id} failed: {task.reason}")
        threshold = min(200, max(3, math.ceil(desired / 2)))
        if (
            primary["rolloutState"] == "IN_PROGRESS"
            and breaker.get("enable")
            and primary["failedTasks"] >= threshold
        ):
            primary.update(
                rolloutState="FAILED",
                rolloutStateReason=(
                    f"ECS deployment circuit breaker: {primary['failedTasks']} tasks failed to start "
                    f"(threshold {threshold})."
                ),
            )
            self.events.append(f"{name}: circuit breaker tripped on {primary['taskDefinition']}")
            last_good = next(
                (d for d in svc.deployments if d is not primary and d["rolloutState"] == "COMPLETED"), None
            )
            if breaker.get("rollback") and last_good is not None:
                svc.task_definition = last_good["taskDefinition"]
                primary["status"] = "ACTIVE"
                primary = self._new_deployment(
                    svc,
                    last_good["taskDefinition"],
                    "ECS deployment rolling back after a circuit breaker trip.",
                )
                ours = []
        if primary["rolloutState"] == "FAILED":
            return  # a failed deployment without rollback stops launching tasks
        live_new = [t for t in ours if t.state != "STOPPED"]
        live_old = [t for t in mine if t.deployment != primary["id"] and t.state != "STOPPED"]
        floor_healthy = math.ceil(low * desired / 100)
        ceiling = math.floor(high * desired / 100)
        healthy = sum(t.healthy for t in live_new + live_old)
        # Old tasks go as far as minimumHealthyPercent allows (unhealthy ones first), or all of them
        # once the new deployment has desiredCount healthy tasks.
        for task in sorted(live_old, key=lambda t: t.healthy):
            done = sum(t.healthy for t in live_new) >= desired
            if done or healthy - task.healthy >= floor_healthy:
                healthy -= task.healthy
                self._stop(task, "Scaling activity initiated by (deployment)")
                live_old.remove(task)
        room = ceiling - len(live_new) - len(live_old)
        for _ in range(max(0, min(room, desired - len(live_new)))):
            self._launch(primary["taskDefinition"], name, primary["id"])

    def _count(self, name: str) -> None:
        svc = self.svc(name)
        mine = [t for t in self.tasks.values() if t.service == name and t.state != "STOPPED"]
        for dep in svc.deployments:
            tasks = [t for t in mine if t.deployment == dep["id"]]
            dep["runningCount"] = sum(t.state == "RUNNING" for t in tasks)
            dep["pendingCount"] = sum(t.state == "PENDING" for t in tasks)
        primary = self._primary(svc)
        if primary is not None and primary["rolloutState"] == "IN_PROGRESS":
            new_healthy = sum(t.healthy for t in mine if t.deployment == primary["id"])
            others = [t for t in mine if t.deployment != primary["id"]]
            if new_healthy >= primary["desiredCount"] and not others:
                primary.update(rolloutState="COMPLETED", rolloutStateReason="ECS deployment completed.")
                svc.deployments[:] = [primary]
                self.events.append(f"{name}: deployment of {primary['taskDefinition']} completed")
        svc.running_count = sum(t.state == "RUNNING" for t in mine)
        svc.pending_count = sum(t.state == "PENDING" for t in mine)
        self.trace.append((name, len(mine), sum(t.healthy for t in mine)))

    # -- running tasks for real ---------------------------------------------------------------------------

    def _definition(self, arn: str) -> dict[str, Any]:
        """The registered task definition, read from moto's backend (the harness runs inside its calls)."""
        found = self.backend.describe_task_definition(arn)
        return {
            "containerDefinitions": copy.deepcopy(found.container_definitions),
            "volumes": copy.deepcopy(found.volumes or []),
        }

    def _secret(self, value_from: str) -> str:
        """A `secrets` entry's value, read from moto as the ECS agent reads it."""
        if value_from.startswith("arn:aws:secretsmanager:"):
            parts = value_from.split(":")
            secret_id, key = ":".join(parts[:7]), parts[7] if len(parts) > 7 else ""
            text = self.aws("secretsmanager").get_secret_value(SecretId=secret_id)["SecretString"]
            return str(json.loads(text)[key]) if key else str(text)
        name = value_from.split(":parameter", 1)[1] if value_from.startswith("arn:") else value_from
        return str(self.aws("ssm").get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])

    def _launch(
        self,
        arn: str,
        service: str,
        deployment: str,
        *,
        task_id: str = "",
        command: tuple[str, list[str]] | None = None,
    ) -> HTask:
        """Start one task of ``arn``: its containers on the engine, or STOPPED with ECS's reason."""
        task = HTask(task_id or uuid.uuid4().hex[:32], service, deployment, arn, established=self._settling)
        self.tasks[task.id] = task
        definition = self._definition(arn)
        network = ""
        try:
            specs = definition["containerDefinitions"]
            env_files = []
            for spec in specs:
                env = {e["name"]: e["value"] for e in spec.get("environment") or []}
                try:
                    env.update({s["name"]: self._secret(s["valueFrom"]) for s in spec.get("secrets") or []})
                except Exception as exc:
                    raise TaskFailed(
                        f"ResourceInitializationError: unable to pull secrets or registry auth: {exc}"
                    ) from None
                logs = spec.get("logConfiguration") or {}
                if logs.get("logDriver") == "awslogs":
                    self._check_log_group(logs.get("options") or {})
                    task.logs[spec["name"]] = dict(logs.get("options") or {})
                handle, path = tempfile.mkstemp(prefix="ecs-harness-env-")
                with os.fdopen(handle, "w") as out:
                    out.writelines(f"{k}={v}\n" for k, v in env.items())
                env_files.append(path)
                argv = ["run", "-d", "--name", f"ecsh-{self.run_id}-{task.id[:12]}-{spec['name']}"]
                argv += ["--label", f"{LABEL}={self.run_id}", "--env-file", path]
                if network:
                    argv += ["--network", f"container:{network}"]
                else:
                    ports = [m["containerPort"] for s in specs for m in s.get("portMappings") or []]
                    for port in ports[:1]:
                        argv += ["-p", f"127.0.0.1::{port}"]
                check = spec.get("healthCheck")
                if check:
                    cmd = check["command"]
                    text = cmd[1] if cmd[0] == "CMD-SHELL" else shlex.join(cmd[1:])
                    argv += ["--health-cmd", text, "--health-interval", "1s"]
                    argv += ["--health-timeout", f"{check.get('timeout', 5)}s"]
                    argv += ["--health-retries", str(check.get("retries", 3))]
                    argv += ["--health-start-period", f"{check.get('startPeriod', 0)}s"]
                    task.checked.add(spec["name"])
                argv += self._mounts(task, definition, spec)
                if spec.get("entryPoint"):
                    argv += ["--entrypoint", spec["entryPoint"][0]]
                argv.append(spec["image"])
                args = list(spec.get("entryPoint") or [])[1:]
                chosen = command[1] if command and command[0] == spec["name"] else spec.get("command")
                argv += args + list(chosen or [])
                result = docker(*argv, check=False, timeout=300)
                for path in env_files:
                    os.unlink(path)
                env_files.clear()
                if result.returncode != 0:
                    raise TaskFailed(
                        "CannotPullContainerError or CannotStartContainerError: "
                        + result.stderr.strip()[-300:]
                    )
                task.containers[spec["name"]] = result.stdout.strip()
                network = network or result.stdout.strip()
                if spec.get("essential", True):
                    task.essential.add(spec["name"])
        except TaskFailed as exc:
            task.reason = str(exc)
            self._stop(task, task.reason)
        return task

    def _mounts(self, task: HTask, definition: dict[str, Any], spec: dict[str, Any]) -> list[str]:
        """`mountPoints` as Docker volumes: an EFS volume (efsVolumeConfiguration) is one volume shared by
        every task that mounts the file system; any other volume lives as long as its task."""
        volumes = {v["name"]: v for v in definition.get("volumes") or []}
        argv = []
        for mount in spec.get("mountPoints") or []:
            volume = volumes.get(mount.get("sourceVolume", ""))
            if volume is None:
                raise TaskFailed(
                    f"ClientException: unknown volume {mount.get('sourceVolume')!r} in mountPoints"
                )
            efs = volume.get("efsVolumeConfiguration")
            if efs:
                name = f"ecsh-{self.run_id}-efs-{efs['fileSystemId']}"
            else:
                name = f"ecsh-{self.run_id}-{task.id[:12]}-{volume['name']}"
            suffix = ":ro" if mount.get("readOnly") else ""
            argv += ["-v", f"{name}:{mount['containerPath']}{suffix}"]
        return argv

    def _check_log_group(self, options: dict[str, str]) -> None:
        group = options.get("awslogs-group", "")
        found = self.aws("logs").describe_log_groups(logGroupNamePrefix=group)["logGroups"]
        if any(g["logGroupName"] == group for g in found):
            return
        if options.get("awslogs-create-group") == "true":
            self.aws("logs").create_log_group(logGroupName=group)
            return
        raise TaskFailed(
            "ResourceInitializationError: failed to validate logger args: The specified log group does "
            f"not exist: {group}"
        )

    def _refresh(self) -> None:
        """Each running task's state from its containers (one `docker inspect` for all of them)."""
        live = {
            cid: task
            for task in self.tasks.values()
            if task.state != "STOPPED"
            for cid in task.containers.values()
        }
        if not live:
            return
        out = docker("inspect", *live, check=False)
        health: dict[int, list[str]] = {}  # id(task) -> its checked containers' status, one snapshot
        for info in json.loads(out.stdout or "[]"):
            task = live[info["Id"]]
            name = next(n for n, cid in task.containers.items() if cid == info["Id"])
            state = info["State"]
            if state["Status"] in ("exited", "dead"):
                task.exit_codes[name] = int(state["ExitCode"])
                if name in task.essential and task.state != "STOPPED":
                    self._stop(task, f"Essential container in task exited ({name}: exit {state['ExitCode']})")
                continue
            if state["Status"] == "running" and task.state == "PENDING":
                task.state, task.running_since = "RUNNING", self.now
                ports = (info["NetworkSettings"].get("Ports") or {}).values()
                task.port = next((int(p[0]["HostPort"]) for p in ports if p), task.port)
            if name in task.checked:
                health.setdefault(id(task), []).append((state.get("Health") or {}).get("Status", "starting"))
        for task in {id(t): t for t in live.values()}.values():
            if task.state != "RUNNING":
                continue
            statuses = health.get(id(task), [])
            if task.checked:
                task.healthy = len(statuses) == len(task.checked) and all(s == "healthy" for s in statuses)
            else:  # no health check: counted after UNCHECKED_SETTLE seconds RUNNING
                since = task.running_since if task.running_since is not None else self.now
                task.healthy = task.established or self.now - since >= UNCHECKED_SETTLE
            task.ever_healthy |= task.healthy
            if "unhealthy" in statuses and task.service:  # the service scheduler replaces it; a
                self._stop(task, "Task failed container health checks")  # standalone task only reports

    def _stop(self, task: HTask, reason: str) -> None:
        """Stop a task as ECS does (SIGTERM, SIGKILL after stopTimeout), copy its output to its log
        streams, and remove its containers."""
        if task.state == "STOPPED":
            return
        task.state, task.healthy = "STOPPED", False
        task.reason = task.reason or reason
        if not task.containers:
            return
        definition = self._definition(task.task_definition)
        timeouts = {s["name"]: int(s.get("stopTimeout", 30)) for s in definition["containerDefinitions"]}
        for name, cid in task.containers.items():
            docker("stop", "-t", str(timeouts.get(name, 30)), cid, check=False)
            code = docker("inspect", "--format", "{{.State.ExitCode}}", cid, check=False).stdout.strip()
            task.exit_codes.setdefault(name, int(code) if code.lstrip("-").isdigit() else None)
            if name in task.logs:
                self._ship_logs(task, name, cid)
        docker("rm", "-f", *task.containers.values(), check=False)

    def _ship_logs(self, task: HTask, name: str, cid: str) -> None:
        """The container's real output into its awslogs stream, as the driver would have sent it."""
        options = task.logs[name]
        prefix = options.get("awslogs-stream-prefix")
        stream = f"{prefix}/{name}/{task.id}" if prefix else task.id
        out = docker("logs", "-t", cid, check=False)
        lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
        events = []
        for line in sorted(lines):  # `-t` prefixes RFC 3339 times: stdout and stderr in time order
            stamp, _, message = line.partition(" ")
            when = datetime.datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00")
            if message.strip():  # CloudWatch Logs refuses an empty message
                events.append({"timestamp": int(when.timestamp() * 1000), "message": message})
        logs = self.aws("logs")
        group = options["awslogs-group"]
        with contextlib.suppress(Exception):
            logs.create_log_stream(logGroupName=group, logStreamName=stream)
        if events:
            logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)

    # -- one-off tasks (the release command) ------------------------------------------------------------

    def _one_off_tasks(self) -> None:
        for moto_task in self.release_tasks():
            task = self.tasks.get(moto_task.id)
            if task is None:
                moto_task._transitions = []  # the harness sets lastStatus from the real container
                moto_task.containers[0].exitCode = None
                override = moto_task.overrides["containerOverrides"][0]
                task = self._launch(
                    moto_task.task_definition_arn,
                    "",
                    "",
                    task_id=moto_task.id,
                    command=(override["name"], override.get("command") or []),
                )
                self._refresh()
            if moto_task.desired_status == "STOPPED" and task.state != "STOPPED":  # StopTask was called
                self._stop(task, moto_task.stopped_reason or "Task stopped by user")
            moto_task.status = task.state
            if task.state == "STOPPED":
                moto_task.desired_status = "STOPPED"
                moto_task.stopped_reason = moto_task.stopped_reason or task.reason
                self._model_containers(moto_task, task)

    def _model_containers(self, moto_task: Any, task: HTask) -> None:
        """DescribeTasks lists every container of the task with its own exit code (moto: only one)."""
        definition = self._definition(task.task_definition)
        first = moto_task.containers[0]
        listed = []
        for spec in definition["containerDefinitions"]:
            container = copy.copy(first)
            container.name, container.image = spec["name"], spec.get("image")
            container.exitCode = task.exit_codes.get(spec["name"])
            container.last_status = "STOPPED"
            listed.append(container)
        moto_task.containers = listed

    # -- the load balancer in front of the first service -------------------------------------------------

    def targets(self, service: str = "") -> list[HTask]:
        """Healthy, RUNNING tasks with a port: what a target group would route to."""
        name = service or self.services[0]
        with self._lock:
            return [
                t
                for t in self.tasks.values()
                if t.service == name and t.healthy and t.port and not t.placeholder
            ]

    @contextlib.contextmanager
    def balancer(self) -> Iterator[str]:
        """An HTTP load balancer on 127.0.0.1 in front of the first service's healthy tasks (round robin,
        like an ALB target group); 503 when none is healthy. Yields its base URL."""
        turn = itertools.count()
        harness = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                targets = harness.targets()
                if not targets:
                    self.send_error(503, "no healthy targets")
                    return
                target = targets[next(turn) % len(targets)]
                direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                try:
                    with direct.open(f"http://127.0.0.1:{target.port}{self.path}", timeout=5) as response:
                        status, body = response.status, response.read()
                except urllib.error.HTTPError as exc:
                    status, body = exc.code, exc.read()
                except OSError as exc:
                    self.send_error(502, str(exc))
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)

    def probe(self, url: str) -> dict[str, object]:
        """GET ``url``'s path from one healthy task of the first service (for callers without the
        balancer): the real container's answer."""
        targets = self.targets()
        if not targets:
            return {}
        path = "/" + url.split("//", 1)[-1].partition("/")[2]
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with direct.open(f"http://127.0.0.1:{targets[0].port}{path}", timeout=5) as response:
            return dict(json.loads(response.read()))

    @staticmethod
    def _describe(tasks: list[HTask]) -> str:
        return "; ".join(f"{t.service or 'one-off'} {t.id[:8]} {t.state} {t.reason}" for t in tasks)


class TaskFailed(Exception):
    """A task that could not start (ECS's stoppedReason)."""
