"""Drives moto's ECS service state the way AWS documents ECS rolling deployments.

moto keeps `deployments[0]` on the first task definition forever and never moves counts, so on its own it
cannot show a rollout. This harness, called wherever conveyor sleeps (its injected `sleep`), edits moto's
in-process backend as ECS would, for every service it is given. Sources, AWS ECS Developer Guide:
- "Deployment types / rolling update": update_service creates a new PRIMARY deployment with the new task
  definition; the previous one becomes ACTIVE and drains as the new one reaches desiredCount; a
  deployment's rolloutState goes IN_PROGRESS -> COMPLETED (or FAILED).
- "Deployment circuit breaker": failedTasks counts tasks that failed to reach RUNNING; at the failure
  threshold (0.5 x desiredCount, at least 3, at most 200) the deployment is FAILED and, with rollback on,
  ECS starts a new PRIMARY deployment of the last COMPLETED task definition.
- "Services stable" waiter (DescribeServices): only checks deployments == 1 and running == desired,
  so it reports success after such a rollback (the reason conveyor checks PRIMARY's task definition).
- "Task lifecycle" / DescribeTasks: a task lists one container per container definition, each with its
  own exitCode (moto lists only the first definition's): the harness lists them all for one-off tasks.
The fake smoke probe answers what a task of the PRIMARY, completed deployment of the first service would
answer on /version.
"""

from __future__ import annotations

import copy
import datetime
import itertools
from collections import deque
from collections.abc import Sequence
from typing import Any

ACCOUNT = "123456789012"
RELEASE_STARTED_BY = "conveyor-release"


class EcsRollout:
    """Per service, scenarios, one per deployment that appears (in order): succeed | fail | stuck |
    ecs-rollback (a service without scenarios left succeeds)."""

    def __init__(self, region: str, cluster: str, services: Sequence[str]) -> None:
        from moto.backends import get_backend

        self.backend = get_backend("ecs")[ACCOUNT][region]
        self.cluster = cluster
        self.services = list(services)
        self.scenarios: dict[str, deque[str]] = {name: deque() for name in self.services}
        self.active: dict[str, str] = {}  # deployment id -> scenario
        self.now = 0.0
        self.ids = itertools.count(1)
        self.fail_release = False  # the release command's app container exits 1
        self.modeled: set[str] = set()  # one-off tasks whose containers the harness listed
        self.deployed: dict[str, str] = {}  # service -> task definition of its newest deployment
        # AWS creates the new PRIMARY deployment inside UpdateService (its response already shows it);
        # moto does not, so the harness hooks the backend's update_service to do the same.
        original = self.backend.update_service

        def update_service(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            self.tick()
            return result

        self.backend.update_service = update_service

    def close(self) -> None:
        """Remove the hook (the backend outlives this test)."""
        self.backend.__dict__.pop("update_service", None)

    # -- the fake clock and sleep injected into conveyor --------------------------------------------

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.tick()

    # -- ECS behaviour -------------------------------------------------------------------------------

    def svc(self, name: str) -> Any:
        return self.backend.services[f"{self.cluster}:{name}"]

    def settle(self) -> None:
        """Mark every service's current deployment COMPLETED with all tasks running (initial state)."""
        for name in self.services:
            svc = self.svc(name)
            dep = svc.deployments[0]
            dep.update(
                rolloutState="COMPLETED", runningCount=dep["desiredCount"], pendingCount=0, failedTasks=0
            )
            svc.deployments[:] = [dep]
            self.deployed[name] = svc.task_definition

    def release_tasks(self) -> list[Any]:
        return [
            t for t in self.backend.tasks.get(self.cluster, {}).values() if t.started_by == RELEASE_STARTED_BY
        ]

    @staticmethod
    def _primary(svc: Any) -> dict[str, Any] | None:
        return next((d for d in svc.deployments if d["status"] == "PRIMARY"), None)

    def _new_deployment(self, svc: Any, task_definition: str, scenario: str) -> None:
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
            pendingCount=svc.desired_count,
            failedTasks=0,
            rolloutState="IN_PROGRESS",
            rolloutStateReason="ECS deployment in progress.",
            createdAt=now,
            updatedAt=now,
        )
        svc.deployments.insert(0, template)
        self.active[template["id"]] = scenario
        self.deployed[svc.name] = task_definition

    def _model_release_tasks(self) -> None:
        """List every container of a one-off task; the overridden (app) container exits as configured."""
        for task in self.release_tasks():
            if task.id in self.modeled:
                continue
            self.modeled.add(task.id)
            definition = self.backend.describe_task_definition(task.task_definition_arn)
            app = task.overrides["containerOverrides"][0]["name"]
            first = task.containers[0]
            task.containers = []
            for spec in definition.container_definitions:
                container = copy.copy(first)
                container.name, container.image = spec["name"], spec.get("image")
                container.exitCode = 1 if self.fail_release and spec["name"] == app else 0
                task.containers.append(container)
            if self.fail_release:
                task.stopped_reason = "Essential container in task exited"

    def tick(self) -> None:
        self._model_release_tasks()
        for name in self.services:
            self._tick(name)

    def _tick(self, name: str) -> None:
        svc = self.svc(name)
        if svc.task_definition != self.deployed.get(name):
            # update_service changed the task definition: a new PRIMARY deployment of it.
            queue = self.scenarios[name]
            self._new_deployment(svc, svc.task_definition, queue.popleft() if queue else "succeed")
            return
        primary = self._primary(svc)
        if primary is None:
            return
        scenario = self.active.get(primary["id"])
        if scenario is None or primary["rolloutState"] != "IN_PROGRESS":
            return
        desired = primary["desiredCount"]
        if scenario == "succeed":
            primary["runningCount"] = min(desired, primary["runningCount"] + 1)
            primary["pendingCount"] = desired - primary["runningCount"]
            if primary["runningCount"] == desired:
                primary.update(rolloutState="COMPLETED", rolloutStateReason="ECS deployment completed.")
                svc.deployments[:] = [primary]  # the old deployment has drained
        elif scenario in ("fail", "ecs-rollback"):
            primary["failedTasks"] += 1
            threshold = min(200, max(3, desired // 2))
            if scenario == "ecs-rollback" and primary["failedTasks"] >= threshold:
                primary.update(
                    status="ACTIVE",
                    rolloutState="FAILED",
                    rolloutStateReason="ECS deployment circuit breaker: tasks failed to start.",
                )
                last_good = next(d for d in svc.deployments[1:] if d["rolloutState"] == "COMPLETED")
                svc.task_definition = last_good["taskDefinition"]
                self._new_deployment(svc, last_good["taskDefinition"], "succeed")
        # "stuck": stays IN_PROGRESS with nothing running.

    def probe(self, url: str) -> dict[str, object]:
        """/version as the HTTP service answers it: tasks of its PRIMARY deployment."""
        primary = self._primary(self.svc(self.services[0]))
        if primary is None:
            return {}
        definition = self.backend.describe_task_definition(primary["taskDefinition"])
        tags = {t["key"]: t["value"] for t in (definition.tags or [])}
        return {"git_sha": tags.get("conveyor:git-sha", "unknown")}
