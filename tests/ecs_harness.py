"""Drives moto's ECS service state the way AWS documents ECS rolling deployments.

moto keeps `deployments[0]` on the first task definition forever and never moves counts, so on its own it
cannot show a rollout. This harness, called wherever conveyor sleeps (its injected `sleep`), edits moto's
in-process backend as ECS would. Sources, AWS ECS Developer Guide:
- "Deployment types / rolling update": update_service creates a new PRIMARY deployment with the new task
  definition; the previous one becomes ACTIVE and drains as the new one reaches desiredCount; a
  deployment's rolloutState goes IN_PROGRESS -> COMPLETED (or FAILED).
- "Deployment circuit breaker": failedTasks counts tasks that failed to reach RUNNING; at the failure
  threshold (0.5 x desiredCount, at least 3, at most 200) the deployment is FAILED and, with rollback on,
  ECS starts a new PRIMARY deployment of the last COMPLETED task definition.
- "Services stable" waiter (DescribeServices): only checks deployments == 1 and running == desired,
  so it reports success after such a rollback (the reason conveyor checks PRIMARY's task definition).
The fake smoke probe answers what a task of the PRIMARY, completed deployment would answer on /version.
"""

from __future__ import annotations

import copy
import datetime
import itertools
from collections import deque
from typing import Any

ACCOUNT = "123456789012"


class EcsRollout:
    """Scenarios, one per deployment that appears (in order): succeed | fail | stuck | ecs-rollback."""

    def __init__(self, region: str, cluster: str, service: str, scenarios: list[str] | None = None) -> None:
        from moto.backends import get_backend

        self.backend = get_backend("ecs")[ACCOUNT][region]
        self.key = f"{cluster}:{service}"
        self.cluster = cluster
        self.scenarios: deque[str] = deque(scenarios or [])
        self.active: dict[str, str] = {}  # deployment id -> scenario
        self.now = 0.0
        self.ids = itertools.count(1)
        self.fail_migrations = False
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

    @property
    def svc(self) -> Any:
        return self.backend.services[self.key]

    def settle(self) -> None:
        """Mark the service's current deployment COMPLETED with all tasks running (initial state)."""
        dep = self.svc.deployments[0]
        dep.update(rolloutState="COMPLETED", runningCount=dep["desiredCount"], pendingCount=0, failedTasks=0)
        self.svc.deployments[:] = [dep]

    def _primary(self) -> dict[str, Any]:
        return next(d for d in self.svc.deployments if d["status"] == "PRIMARY")

    def _new_deployment(self, task_definition: str, scenario: str) -> None:
        for dep in self.svc.deployments:
            dep["status"] = "ACTIVE"
        template = copy.deepcopy(self.svc.deployments[0])
        now = datetime.datetime.now(datetime.timezone.utc)
        template.update(
            id=f"ecs-svc/{next(self.ids):019d}",
            status="PRIMARY",
            taskDefinition=task_definition,
            desiredCount=self.svc.desired_count,
            runningCount=0,
            pendingCount=self.svc.desired_count,
            failedTasks=0,
            rolloutState="IN_PROGRESS",
            rolloutStateReason="ECS deployment in progress.",
            createdAt=now,
            updatedAt=now,
        )
        self.svc.deployments.insert(0, template)
        self.active[template["id"]] = scenario

    def tick(self) -> None:
        if self.fail_migrations:
            for task in self.backend.tasks.get(self.cluster, {}).values():
                if task.started_by == "conveyor-migrate":
                    for container in task.containers:
                        container.exitCode = 1
                    task.stopped_reason = "Essential container in task exited"
        primary = self._primary()
        if self.svc.task_definition != primary["taskDefinition"]:
            # update_service happened: a new PRIMARY deployment of the service's task definition.
            self._new_deployment(
                self.svc.task_definition, self.scenarios.popleft() if self.scenarios else "succeed"
            )
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
                self.svc.deployments[:] = [primary]  # the old deployment has drained
        elif scenario in ("fail", "ecs-rollback"):
            primary["failedTasks"] += 1
            threshold = min(200, max(3, desired // 2))
            if scenario == "ecs-rollback" and primary["failedTasks"] >= threshold:
                primary.update(
                    status="ACTIVE",
                    rolloutState="FAILED",
                    rolloutStateReason="ECS deployment circuit breaker: tasks failed to start.",
                )
                last_good = next(d for d in self.svc.deployments[1:] if d["rolloutState"] == "COMPLETED")
                self.svc.task_definition = last_good["taskDefinition"]
                self._new_deployment(last_good["taskDefinition"], "succeed")
        # "stuck": stays IN_PROGRESS with nothing running.

    def probe(self, url: str) -> dict[str, object]:
        """/version as the service answers it: tasks of the PRIMARY deployment once it completed."""
        primary = self._primary()
        definition = self.backend.describe_task_definition(primary["taskDefinition"])
        tags = {t["key"]: t["value"] for t in (definition.tags or [])}
        return {"git_sha": tags.get("conveyor:git-sha", "unknown")}
