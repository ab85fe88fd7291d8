"""The deploy model: one algorithm, and the small protocol each target (compose, ecs, k8s) implements.

acquire lock -> resolve release -> plan -> [--dry: print plan, stop] -> release command (migrations)
-> apply (every process) -> wait until the NEW revision of every process runs and is healthy
-> smoke probe (the app contract's version route reports our sha, or its health route answers)
-> record -> release lock
on failure after apply: roll back to the previous revision -> verify it -> record both -> exit 1
"""

from __future__ import annotations

import getpass
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from conveyor.config import AppContract
from conveyor.errors import ConveyorError
from conveyor.http import get_json, get_ok
from conveyor.runner import Runner


class RolloutFailed(ConveyorError):
    """The new revision did not become the one serving and healthy."""


class DeployFailed(ConveyorError):
    """A deploy failed; the message says what failed and what is serving now."""


class LockHeld(ConveyorError):
    """Another deploy holds the environment's lock."""


@dataclass(frozen=True)
class Release:
    """What to deploy: an immutable image reference (digest or image id) and the git sha it was built from."""

    image: str
    git_sha: str


@dataclass(frozen=True)
class Revision:
    """What a target serves: its own id for the revision (image id, task definition, rollout revision)."""

    ref: str
    image: str
    git_sha: str


@dataclass(frozen=True)
class Change:
    what: str
    old: str
    new: str


@dataclass(frozen=True)
class Plan:
    env: str
    target: str
    release: Release
    current: Revision | None
    changes: tuple[Change, ...]
    steps: tuple[str, ...] = ()
    detail: Any = field(default=None, compare=False, repr=False)  # the target's own payload (task definition)
    preview: str = field(default="", compare=False, repr=False)  # shown by plan/--dry: what would be applied

    def render(self) -> list[str]:
        serving = f"{self.current.git_sha[:12]} ({self.current.image})" if self.current else "nothing"
        pinned = "@sha256:" in self.release.image or self.release.image.startswith("sha256:")
        note = "" if pinned else " - a tag: pushed and pinned to its digest by `invoke deploy`"
        lines = [
            f"plan for {self.env} (target {self.target})",
            f"  serving now : {serving}",
            f"  deploying   : {self.release.git_sha[:12]} ({self.release.image}){note}",
        ]
        if not self.changes:
            lines.append("  changes     : none (the release is already serving)")
        for change in self.changes:
            lines.append(f"  ~ {change.what}: {change.old or '-'} -> {change.new}")
        lines += [f"  step: {step}" for step in self.steps]
        return lines


@dataclass(frozen=True)
class Owner:
    """Who holds a lock: shown to the deploy that is refused."""

    who: str
    host: str
    pid: int
    git_sha: str
    since: float = field(default_factory=time.time)

    @classmethod
    def here(cls, git_sha: str) -> Owner:
        return cls(_user(), socket.gethostname(), os.getpid(), git_sha)

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"{self.who}@{self.host} (pid {self.pid}, sha {self.git_sha[:12]}, since {started})"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"


class Lock(Protocol):
    def acquire(self, owner: Owner, ttl: int) -> None: ...
    def release(self, owner: Owner | None, *, force: bool = False) -> None: ...
    def holder(self) -> Owner | None: ...


class Target(Protocol):
    """What a deploy target implements. Side effects only in release_steps/apply/rollback/stop."""

    kind: str
    lock: Lock

    def current(self) -> Revision | None: ...
    def plan(self, release: Release) -> Plan: ...
    def release_steps(self, plan: Plan) -> None: ...
    def apply(self, plan: Plan) -> None: ...
    def wait(self, plan: Plan, expected: Release, deadline: float) -> None: ...
    def rollback(self, plan: Plan, to: Revision) -> None: ...
    def stop(self, plan: Plan) -> None: ...
    def finish(self, plan: Plan) -> None: ...
    def live_history(self) -> list[str]: ...


class Journal(Protocol):
    def record(self, entry: dict[str, object]) -> dict[str, object]: ...


Probe = Callable[[str], dict[str, object]]


def http_probe(url: str) -> dict[str, object]:
    """GET ``url`` as JSON; any failure is a RolloutFailed naming the URL."""
    try:
        return get_json(url)
    except ConveyorError as exc:
        raise RolloutFailed(str(exc)) from None


def http_health(url: str) -> None:
    """GET ``url`` must answer 2xx (any body); any failure is a RolloutFailed naming the URL."""
    try:
        get_ok(url)
    except ConveyorError as exc:
        raise RolloutFailed(str(exc)) from None


@dataclass
class Deployer:
    """Runs the one algorithm against any Target. Clock, sleep and probes are injected for tests."""

    target: Target
    runner: Runner
    journal: Journal
    env: str
    timeout: int
    lock_ttl: int
    contract: AppContract
    url: str = ""
    probe: Probe = http_probe
    health: Callable[[str], None] = http_health
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def deploy(self, release: Release, *, dry: bool = False, action: str = "deploy") -> Plan:
        say = self.runner.say
        owner = Owner.here(release.git_sha)
        if dry:
            plan = self.target.plan(release)
            for line in plan.render():
                say(line)
            if plan.preview:
                say(plan.preview.rstrip("\n"))
            say("[dry] stopping after the plan: nothing was changed")
            return plan
        with self.runner.step(f"lock {self.env}"):
            self.target.lock.acquire(owner, self.lock_ttl)
        try:
            return self._deploy_locked(release, action)
        finally:
            try:
                self.target.lock.release(owner)
                say(f"lock {self.env} released")
            except Exception as exc:  # the outcome above is what matters; say the lock is left
                say(f"warning: the lock of {self.env} was NOT released ({_describe(exc)})")

    def _deploy_locked(self, release: Release, action: str) -> Plan:
        start = self.clock()
        with self.runner.step("plan"):
            plan = self.target.plan(release)
            for line in plan.render():
                self.runner.say(line)
        previous = plan.current
        entry: dict[str, object] = {
            "action": action,
            "env": self.env,
            "git_sha": release.git_sha,
            "image": release.image,
            "previous_sha": previous.git_sha if previous else None,
            "previous_image": previous.image if previous else None,
        }
        try:
            if self.contract.release:
                with self.runner.step(f"release command: {' '.join(self.contract.release)}"):
                    self.target.release_steps(plan)
        except (Exception, KeyboardInterrupt) as exc:
            reason = _describe(exc)
            self._record(entry, "failed", start, f"release step: {reason}")
            raise DeployFailed(
                f"{action} to {self.env} failed before apply ({reason}); the services were not "
                f"touched, serving {_serving(previous)}"
            ) from None
        failed_at = "apply"
        try:
            with self.runner.step(f"apply {release.git_sha[:12]}"):
                self.target.apply(plan)
            failed_at = "wait"
            deadline = self.clock() + self.timeout
            with self.runner.step(
                f"wait for {release.git_sha[:12]} to serve and be healthy (<= {self.timeout}s)"
            ):
                self.target.wait(plan, release, deadline)
            failed_at = "smoke probe"
            self.verify(release.git_sha, deadline)
        except (Exception, KeyboardInterrupt) as exc:  # whatever failed, the journal hears of it
            reason = _describe(exc)
            self._record(entry, "failed", start, f"{failed_at}: {reason}")
            serving = self._roll_back(plan, previous)
            raise DeployFailed(
                f"{action} to {self.env} failed at {failed_at} ({reason}); {serving}"
            ) from None
        self._record(entry, "succeeded", start, None)
        try:
            with self.runner.step("housekeeping"):
                self.target.finish(plan)
        except ConveyorError as exc:  # the new revision serves; a cleanup failure is only a warning
            self.runner.say(f"warning: housekeeping failed: {exc}")
        self.runner.say(
            f"{action} to {self.env} succeeded: serving {release.git_sha[:12]} in {self.clock() - start:.1f}s"
        )
        return plan

    def verify(self, git_sha: str, deadline: float) -> None:
        """The smoke probe of the app contract, retried until the deadline (proxies may lag a moment).

        With a version route its field must report ``git_sha``; without one the health route must answer
        (the target's wait has already checked the orchestrator runs our image). No HTTP process: the
        target's wait is the whole proof.
        """
        web = self.contract.web
        if web is None:
            self.runner.say("smoke probe: no HTTP process; the orchestrator's report is the proof")
            return
        if not self.url:  # deployer_for refuses this before the lock; never report an unprobed success
            raise RolloutFailed(f"environment {self.env} has no `url` to probe the HTTP process at")
        route = web.version or web.health or "/"
        url = self.url.rstrip("/") + route
        with self.runner.step(f"smoke probe {url}"):
            self._poll(url, web.version_field if web.version else "", git_sha, deadline)

    def _poll(self, url: str, field: str, git_sha: str, deadline: float) -> None:
        last = ""
        while True:
            try:
                if not field:
                    self.health(url)
                    return
                reported = str(self.probe(url).get(field))
                if reported == git_sha:
                    return
                last = f"{url} reports {field}={reported[:12]}, expected {git_sha[:12]}"
            except RolloutFailed as exc:
                last = str(exc)
            if self.clock() >= deadline:
                raise RolloutFailed(last)
            self.sleep(1)

    def _roll_back(self, plan: Plan, previous: Revision | None) -> str:
        start = self.clock()
        entry: dict[str, object] = {
            "action": "rollback",
            "env": self.env,
            "rollback_of": plan.release.git_sha,
        }
        if previous is None:
            entry.update(git_sha=None, image=None)
            try:
                with self.runner.step("no previous revision: stopping the failed one"):
                    self.target.stop(plan)
            except (Exception, KeyboardInterrupt) as exc:
                self._record(entry, "failed", start, _describe(exc))
                return (
                    f"stopping the failed revision ALSO failed ({_describe(exc)}): check the environment now"
                )
            self._record(entry, "succeeded", start, None)
            return "nothing was serving before, and the failed revision was stopped"
        entry.update(git_sha=previous.git_sha, image=previous.image)
        back = Release(previous.image, previous.git_sha)
        try:
            with self.runner.step(f"roll back to {previous.git_sha[:12]}"):
                self.target.rollback(plan, previous)
                deadline = self.clock() + self.timeout
                self.target.wait(plan, back, deadline)
                self.verify(previous.git_sha, deadline)
        except (Exception, KeyboardInterrupt) as exc:
            self._record(entry, "failed", start, _describe(exc))
            return (
                f"the rollback to {previous.git_sha[:12]} ALSO failed ({_describe(exc)}): "
                "check the environment now"
            )
        self._record(entry, "succeeded", start, None)
        return f"rolled back: serving {previous.git_sha[:12]} again (verified)"

    def _record(self, entry: dict[str, object], result: str, start: float, error: str | None) -> None:
        self.journal.record(
            {
                **entry,
                "result": result,
                "error": self.runner.redact(error) if error else None,
                "duration": round(self.clock() - start, 1),
                "who": _user(),
                "host": socket.gethostname(),
            }
        )


def _describe(exc: BaseException) -> str:
    """One line for any failure: our own errors as they are, anything else with its type."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, ConveyorError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _serving(revision: Revision | None) -> str:
    return f"{revision.git_sha[:12]}" if revision else "nothing"
