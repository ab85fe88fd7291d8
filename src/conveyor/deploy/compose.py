"""The compose target: the deploy model on the local Docker engine.

Revision = the image the processes run. Release command = a one-off `docker compose run` of the HTTP
process's service (else the first process's) with the new image: its dependencies start first. Apply =
`up` of the stack with the new image (compose recreates what changed). Wait = every process's containers
run the new image, none restarting, healthy where a healthcheck exists. Rollback = the previous image.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from conveyor import compose
from conveyor.compose import LABEL_IMAGE, LABEL_SHA, Stack
from conveyor.config import AppContract
from conveyor.deploy.model import Change, Lock, Plan, Release, Revision, RolloutFailed
from conveyor.docker_engine import DockerEngine
from conveyor.errors import ConveyorError
from conveyor.runner import Runner

OCI_REVISION = "org.opencontainers.image.revision"
STEADY = 3.0  # seconds a process without a healthcheck must keep running, unrestarted, to count as up


class ComposeDeployTarget:
    kind = "compose"

    def __init__(
        self,
        runner: Runner,
        engine: DockerEngine,
        stack: Stack,
        lock: Lock,
        env: str,
        contract: AppContract,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.runner = runner
        self.engine = engine
        self.stack = stack
        self.lock = lock
        self.env = env
        self.contract = contract
        self.clock = clock
        self.sleep = sleep
        self.poll = 1.0

    def _with(self, release: Release) -> Stack:
        """The stack deploying ``release``: APP_IMAGE and the generated process file follow it."""
        override = compose.process_override(self.contract, release.image, release.git_sha, self.stack.app_env)
        return replace(
            self.stack, variables={**self.stack.variables, "APP_IMAGE": release.image}, override=override
        )

    def _containers(self, service: str) -> list[dict[str, Any]]:
        """The service's long-running containers (one-off `run` containers excluded), inspected."""
        listed = self.engine.containers(
            [
                f"com.docker.compose.project={self.stack.project}",
                f"com.docker.compose.service={service}",
                "com.docker.compose.oneoff=False",
            ]
        )
        return [self.engine.container(container) for container in listed]

    def current(self) -> Revision | None:
        running = [c for c in self._containers(self.contract.anchor.name) if c["State"]["Running"]]
        if not running:
            return None
        info = running[0]
        labels = info["Config"].get("Labels") or {}
        sha = labels.get(LABEL_SHA) or labels.get(OCI_REVISION) or "unknown"
        return Revision(str(info["Image"]), labels.get(LABEL_IMAGE) or str(info["Image"]), sha)

    def plan(self, release: Release) -> Plan:
        services = compose.validate(self.runner, self.stack, self.contract.names())
        if self.engine.inspect_image(release.image) is None:
            raise ConveyorError(
                f"image {release.image} is not in the engine (run `invoke build`, or push/pull it)"
            )
        current = self.current()
        changes = []
        if current is None or current.image != release.image:
            for proc in self.contract.processes:
                changes.append(
                    Change(f"process {proc.name} image", current.image if current else "", release.image)
                )
            changes.append(Change("git sha", current.git_sha[:12] if current else "", release.git_sha[:12]))
        steps: list[str] = []
        if changes:
            if self.contract.release:
                steps.append(f"one-off `{self.contract.anchor.name}`: {' '.join(self.contract.release)}")
            steps.append(f"up {', '.join(services)} (recreates what changed)")
        return Plan(self.env, self.kind, release, current, tuple(changes), tuple(steps))

    def release_steps(self, plan: Plan) -> None:
        compose.run_release(self.runner, self._with(plan.release), self.contract)

    def apply(self, plan: Plan) -> None:
        compose.run(self.runner, self._with(plan.release), "up", "--detach", "--remove-orphans")

    def rollback(self, plan: Plan, to: Revision) -> None:
        stack = self._with(Release(to.image, to.git_sha))
        compose.run(self.runner, stack, "up", "--detach", "--no-deps", *self.contract.names())

    def stop(self, plan: Plan) -> None:
        compose.run(self.runner, self._with(plan.release), "rm", "--stop", "--force", *self.contract.names())

    def wait(self, plan: Plan, expected: Release, deadline: float) -> None:
        """Until every process runs the expected image and is healthy (or steadily up without a
        healthcheck); a restart or an exit fails at once, naming the process and its last log line."""
        want = self.engine.inspect_image(expected.image)
        want_id = want.id if want else expected.image
        steady_since: dict[str, float] = {}
        last = "no container yet"
        while self.clock() < deadline:
            pending = []
            for proc in self.contract.processes:
                status = self._status(proc.name, want_id, steady_since)
                if status:
                    pending.append(status)
            if not pending:
                return
            last = "; ".join(pending)
            self.sleep(self.poll)
        raise RolloutFailed(f"timed out: {last}")

    def _status(self, name: str, want_id: str, steady_since: dict[str, float]) -> str:
        """'' when process ``name`` has won; else what it waits for. Raises when it is failing."""
        containers = self._containers(name)
        if not containers:
            return f"{name}: no container yet"
        for info in containers:
            state = info["State"]
            if info["Image"] != want_id:
                return f"{name}: the old container is still the one running"
            restarts = int(info["RestartCount"])
            if state["Restarting"] or restarts > 0:
                raise RolloutFailed(
                    f"{name} is crash-looping (restarted {max(restarts, 1)}x): {self._last_log(info)}"
                )
            if not state["Running"]:
                raise RolloutFailed(
                    f"{name} exited with code {state['ExitCode']} instead of running: {self._last_log(info)}"
                )
            health = (state.get("Health") or {}).get("Status", "none")
            if health == "unhealthy":
                raise RolloutFailed(f"{name} is unhealthy: {self._last_log(info)}")
            if health == "starting":
                return f"{name} health is starting"
            if health == "none":
                first = steady_since.setdefault(str(info["Id"]), self.clock())
                if self.clock() - first < STEADY:
                    return f"{name} running, no healthcheck: watching it for {STEADY:.0f}s"
        return ""

    def _last_log(self, info: dict[str, Any]) -> str:
        lines = self.engine.logs(str(info["Id"]), tail=5).strip().splitlines()
        return lines[-1] if lines else "no output"

    def finish(self, plan: Plan) -> None:
        """Nothing to clean up: old images stay in the engine for rollbacks."""

    def live_history(self) -> list[str]:
        """Compose keeps no revisions of its own: the journal is the history."""
        return []
