"""The compose target: the deploy model on the local Docker engine.

Revision = the image the processes run. Release command = a one-off `docker compose run` of the HTTP
process's service (else the first process's) with the new image: its dependencies start first.

Apply = a rolling switch per process (the first deploy just starts the stack). The new instance starts
beside the old one (`up --no-recreate --scale`) and must become healthy (else it is removed: the old one
never stopped serving). For the HTTP process conveyor then gives the proxy `deploy.drain_seconds` to route
to it: a proxy that finds instances by DNS and health-checks them (the reference project's HAProxy). The
old instance then gets SIGTERM: it fails its readiness while it still serves for `deploy.drain_seconds`
(CONVEYOR_DRAIN_SECONDS), so the proxy takes it out of rotation, and has `deploy.shutdown_timeout` to
finish what it holds; then it is removed. Nothing about the proxy is conveyor's: it is never reloaded or
recreated for an app change. A plain `up` at the end recreates only the other services whose own
configuration changed. A process that cannot run twice (a fixed host port, a container_name) is replaced
in place, and the plan says so.

Wait = every process's containers run the new image, none restarting, healthy where a healthcheck exists.
Rollback = the same switch back to the previous image.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from conveyor import compose
from conveyor.compose import LABEL_IMAGE, LABEL_SHA, Stack
from conveyor.config import AppContract, Process
from conveyor.deploy.model import Change, Lock, Plan, Release, Revision, RolloutFailed
from conveyor.docker_engine import DockerEngine
from conveyor.errors import ConveyorError
from conveyor.runner import Runner

OCI_REVISION = "org.opencontainers.image.revision"
STEADY = 3.0  # seconds a process without a healthcheck must keep running, unrestarted, to count as up


def _in_place(service: str, model: dict[str, Any]) -> str:
    """Why ``service`` cannot run a second instance beside the first ('' when it can)."""
    spec = model.get("services", {}).get(service, {})
    if spec.get("container_name"):
        return f"container_name {spec['container_name']} is fixed"
    for port in spec.get("ports") or []:
        if isinstance(port, dict) and port.get("published"):
            return f"it publishes host port {port['published']}"
    return ""


def _size(key: str, value: object) -> str:
    """A compose resource limit for people: memory in MiB (compose reports bytes), cpus as given."""
    if key == "memory" and str(value).isdigit():
        return f"{int(str(value)) // (1024 * 1024)}M"
    return str(value)


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
        timeout: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.runner = runner
        self.engine = engine
        self.stack = stack
        self.lock = lock
        self.env = env
        self.contract = contract
        self.timeout = timeout
        self.clock = clock
        self.sleep = sleep
        self.poll = 1.0

    def _with(self, release: Release) -> Stack:
        """The stack deploying ``release``: APP_IMAGE and the generated process file follow it."""
        override = compose.process_override(
            self.contract,
            release.image,
            release.git_sha,
            self.stack.app_env,
            self.stack.shutdown,
            self.stack.drain,
        )
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
        model = compose.model(self.runner, self._with(release))
        steps: list[str] = []
        if changes:
            if self.contract.release:
                steps.append(f"one-off `{self.contract.anchor.name}`: {' '.join(self.contract.release)}")
            if current is None:
                steps.append(f"up {', '.join(services)} (first start)")
            else:
                steps += [self._switch_step(proc, model) for proc in self._ordered()]
                others = [name for name in services if name not in self.contract.names()]
                if others:
                    steps.append(f"up {', '.join(others)} (recreated only if their own config changed)")
        return Plan(self.env, self.kind, release, current, tuple(changes), tuple(steps), detail=model)

    def _ordered(self) -> list[Process]:
        """The HTTP process first: it is what users wait on."""
        return sorted(self.contract.processes, key=lambda proc: not proc.http)

    def _switch_step(self, proc: Process, model: dict[str, Any]) -> str:
        """What the plan says the switch does to ``proc`` (and what the extra instance costs)."""
        reason = _in_place(proc.name, model)
        if reason:
            return f"replace {proc.name} in place ({reason}): it is down until the new one starts"
        limits = ((model["services"][proc.name].get("deploy") or {}).get("resources") or {}).get(
            "limits"
        ) or {}
        extra = ", ".join(f"{k} {_size(k, v)}" for k, v in sorted(limits.items())) or "no limits set"
        route = f", give the proxy {self.stack.drain}s to route to it" if proc.http else ""
        return (
            f"start {proc.name} beside the running one (+1 container while both run: {extra}), wait until "
            f"healthy{route}, then SIGTERM the old one ({self.stack.drain}s draining, "
            f"{self.stack.shutdown}s to finish)"
        )

    def release_steps(self, plan: Plan) -> None:
        compose.run_release(self.runner, self._with(plan.release), self.contract)

    def apply(self, plan: Plan) -> None:
        stack = self._with(plan.release)
        if not any(self._containers(proc.name) for proc in self.contract.processes):
            compose.run(self.runner, stack, "up", "--detach", "--remove-orphans")
            return
        # Compose labels each container with a hash of its service (dependencies included: `--no-deps`
        # would change it and make the next plain `up` recreate the container). So: create what is
        # missing, switch the processes, then one plain `up`, which recreates only what changed (the proxy
        # only when its own configuration did) and finds the processes already current.
        compose.run(self.runner, stack, "up", "--detach", "--no-recreate", "--remove-orphans")
        self._switch(stack, plan.detail or compose.model(self.runner, stack), plan.release.image)
        compose.run(self.runner, stack, "up", "--detach", "--remove-orphans")

    def rollback(self, plan: Plan, to: Revision) -> None:
        stack = self._with(Release(to.image, to.git_sha))
        self._switch(stack, compose.model(self.runner, stack), to.image)

    def stop(self, plan: Plan) -> None:
        compose.run(self.runner, self._with(plan.release), "rm", "--stop", "--force", *self.contract.names())

    def _switch(self, stack: Stack, model: dict[str, Any], image: str) -> None:
        """Each process over to ``image``, one instance beside the other (module docstring)."""
        if self.runner.dry:
            self.runner.say(f"[dry] rolling switch of {', '.join(self.contract.names())} to {image}")
            return
        want = self.engine.inspect_image(image)
        want_id = want.id if want else image
        deadline = self.clock() + self.timeout
        for proc in self._ordered():
            live = self._containers(proc.name)
            fresh = [c for c in live if c["Image"] == want_id and c["State"]["Running"]]
            old = [c for c in live if c not in fresh]
            if fresh and not old:
                continue
            if _in_place(proc.name, model):
                compose.run(self.runner, stack, "up", "--detach", proc.name)
                continue
            if not fresh:
                fresh = self._start_beside(stack, proc, live, want_id, deadline)
            if proc.http and old:
                self.sleep(self.stack.drain)  # the proxy finds the new instance and checks it
            for container in old:
                self.runner.say(f"stopping the old {proc.name} ({container['Name'].lstrip('/')})")
                self.engine.stop(str(container["Id"]), self.stack.shutdown + self.stack.drain)
                self.engine.remove(str(container["Id"]))

    def _start_beside(
        self, stack: Stack, proc: Process, live: list[dict[str, Any]], want_id: str, deadline: float
    ) -> list[dict[str, Any]]:
        """New instances of ``proc`` beside the live ones, healthy; on any failure they are removed."""
        before = {str(c["Id"]) for c in live}
        count = max(sum(1 for c in live if c["State"]["Running"]), 1)
        scale = f"{proc.name}={len(live) + count}"
        self.runner.say(f"starting the new {proc.name} beside the running one")
        fresh: list[dict[str, Any]] = []
        try:
            compose.run(self.runner, stack, "up", "--detach", "--no-recreate", "--scale", scale, proc.name)
            fresh = [c for c in self._containers(proc.name) if str(c["Id"]) not in before]
            new_ids = {str(c["Id"]) for c in fresh}
            steady_since: dict[str, float] = {}
            while status := self._status(proc.name, want_id, steady_since, only=new_ids):
                if self.clock() >= deadline:
                    raise RolloutFailed(f"timed out: {status}")
                self.sleep(self.poll)
            return [self.engine.container(cid) for cid in new_ids]
        except BaseException:
            for container in fresh or [c for c in self._containers(proc.name) if str(c["Id"]) not in before]:
                self.engine.remove(str(container["Id"]))
            raise

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

    def _status(
        self, name: str, want_id: str, steady_since: dict[str, float], only: set[str] | None = None
    ) -> str:
        """'' when process ``name`` (its containers in ``only``, default all) has won; else what it waits
        for. Raises when it is failing."""
        containers = [c for c in self._containers(name) if only is None or str(c["Id"]) in only]
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
