"""The compose target: the deploy model on the local Docker engine.

Revision = the image the `web` service runs. Release step = the one-off `migrate` service with the new
image. Apply = recreate the long-running services with the new image. Rollback = the previous image.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from conveyor import compose
from conveyor.compose import Stack
from conveyor.deploy.model import Change, Lock, Plan, Release, Revision, RolloutFailed
from conveyor.docker_engine import DockerEngine
from conveyor.errors import ConveyorError
from conveyor.runner import Runner

WEB = "web"
MIGRATE = "migrate"


class ComposeDeployTarget:
    kind = "compose"

    def __init__(
        self, runner: Runner, engine: DockerEngine, stack: Stack, lock: Lock, url: str, env: str
    ) -> None:
        self.runner = runner
        self.engine = engine
        self.stack = stack
        self.lock = lock
        self.url = url.rstrip("/")
        self.env = env
        self.sleep = 1.0

    def _with_image(self, image: str) -> Stack:
        return replace(self.stack, variables={**self.stack.variables, "APP_IMAGE": image})

    def _web_container(self) -> dict[str, Any] | None:
        containers = self.engine.client.containers.list(
            all=True,
            filters={
                "label": [
                    f"com.docker.compose.project={self.stack.project}",
                    f"com.docker.compose.service={WEB}",
                ]
            },
        )
        return dict(self.engine.container(containers[0].id)) if containers else None

    def current(self) -> Revision | None:
        info = self._web_container()
        if info is None or not info["State"]["Running"]:
            return None
        env = dict(item.split("=", 1) for item in info["Config"]["Env"] or [])
        return Revision(
            str(info["Image"]), env.get("IMAGE_DIGEST", str(info["Image"])), env.get("GIT_SHA", "unknown")
        )

    def plan(self, release: Release) -> Plan:
        stack = self._with_image(release.image)
        services = compose.validate(self.runner, stack)
        if self.engine.inspect_image(release.image) is None:
            raise ConveyorError(
                f"image {release.image} is not in the engine (run `invoke build`, or push/pull it)"
            )
        current = self.current()
        changes = []
        if current is None or current.image != release.image:
            changes.append(Change(f"service {WEB} image", current.image if current else "", release.image))
            changes.append(
                Change(
                    f"service {WEB} git sha", current.git_sha[:12] if current else "", release.git_sha[:12]
                )
            )
        steps = (f"run one-off `{MIGRATE}`", f"recreate {', '.join(s for s in services if s != MIGRATE)}")
        return Plan(self.env, self.kind, release, current, tuple(changes), steps if changes else ())

    def _services(self, stack: Stack) -> list[str]:
        return [s for s in compose.validate(self.runner, stack) if s != MIGRATE]

    def release_steps(self, plan: Plan) -> None:
        stack = self._with_image(plan.release.image)
        compose.run(
            self.runner, stack, "run", "--rm", "--quiet-pull", MIGRATE, "python", "-m", "app", "migrate"
        )

    def apply(self, plan: Plan) -> None:
        stack = self._with_image(plan.release.image)
        compose.run(
            self.runner, stack, "up", "--detach", "--no-deps", "--remove-orphans", *self._services(stack)
        )

    def rollback(self, plan: Plan, to: Revision) -> None:
        stack = self._with_image(to.image)
        compose.run(self.runner, stack, "up", "--detach", "--no-deps", WEB)

    def stop(self, plan: Plan) -> None:
        compose.run(self.runner, self.stack, "rm", "--stop", "--force", WEB)

    def wait(self, plan: Plan, expected: Release, deadline: float) -> None:
        """Until `web` runs the expected image and is healthy; a restart or an exit fails at once."""
        want = self.engine.inspect_image(expected.image)
        want_id = want.id if want else expected.image
        last = "no container yet"
        while time.monotonic() < deadline:
            info = self._web_container()
            if info is not None:
                state = info["State"]
                if info["Image"] != want_id:
                    last = "the old container is still the one running"
                elif (
                    state["Restarting"]
                    or info["RestartCount"] > 0
                    or (not state["Running"] and state["ExitCode"])
                ):
                    logs = self.engine.logs(str(info["Id"]), tail=5).strip().splitlines()
                    last_line = logs[-1] if logs else "no output"
                    raise RolloutFailed(
                        f"{WEB} is crash-looping (exit code {state['ExitCode']}): {last_line}"
                    )
                else:
                    health = (state.get("Health") or {}).get("Status", "none")
                    if health == "healthy":
                        return
                    if health == "unhealthy":
                        logs = self.engine.logs(str(info["Id"]), tail=3).strip().splitlines()
                        raise RolloutFailed(f"{WEB} is unhealthy: {logs[-1] if logs else 'no output'}")
                    last = f"{WEB} health is {health}"
            time.sleep(self.sleep)
        raise RolloutFailed(f"timed out: {last}")

    def finish(self, plan: Plan) -> None:
        """Nothing to clean up: old images stay in the engine for rollbacks."""

    def live_history(self) -> list[str]:
        """Compose keeps no revisions of its own: the journal is the history."""
        return []

    def version_url(self) -> str:
        return f"{self.url}/version"
