"""The deploy model: one algorithm, and the small protocol each target (compose, ecs, k8s) implements.

acquire lock -> resolve release -> plan -> [--dry: print plan, stop] -> release command (migrations)
-> apply (every process) -> wait until the NEW revision of every process runs and is healthy
-> smoke probe (the app contract's version route reports our sha, or its health route answers)
-> bake (optional: the new revision's error rate and p95 through Prometheus) -> record -> release lock
on failure after apply: roll back to the previous revision -> verify it -> record both -> exit 1
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from conveyor.config import AppContract
from conveyor.deploy.bake import Bake, Report
from conveyor.errors import ConfigError, ConveyorError, UsageError
from conveyor.http import get_json, get_ok
from conveyor.runner import Runner


class RolloutFailed(ConveyorError):
    """The new revision did not become the one serving and healthy."""


class DeployFailed(ConveyorError):
    """A deploy failed; the message says what failed and what is serving now."""


class DeployInterrupted(DeployFailed):
    """A deploy stopped by Ctrl-C (SIGINT): recorded and rolled back like a failure, exit code 130."""

    exit_code = 130


class LockHeld(ConveyorError):
    """Another deploy holds the environment's lock."""


@dataclass(frozen=True)
class Release:
    """What to deploy: an immutable image reference (digest or image id) and the git sha it was built from."""

    image: str
    git_sha: str
    # A rollback: a target that keeps each revision's config (k8s) brings that config back with the image.
    restore: bool = field(default=False, compare=False)


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
    bake: Bake | None = None  # `deploy.bake`: watch the new revision after the smoke probe
    _outage: str = field(default="", init=False, repr=False)  # what the rollback knows of an engine outage

    def deploy(self, release: Release, *, dry: bool = False, action: str = "deploy") -> Plan:
        say = self.runner.say
        owner = Owner.here(release.git_sha)
        if action == "rollback":
            release = replace(release, restore=True)
        if dry:
            plan = self.target.plan(release)
            for line in plan.render():
                say(line)
            self._show_bake(release, action)
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
                say(
                    f"warning: the lock of {self.env} was NOT released ({describe(exc)}); "
                    f"`invoke lock.release --env {self.env} --force` breaks it"
                )

    def _deploy_locked(self, release: Release, action: str) -> Plan:
        start = self.clock()
        entry: dict[str, object] = {
            "action": action,
            "env": self.env,
            "git_sha": release.git_sha,
            "image": release.image,
        }
        try:
            with self.runner.step("plan"):
                plan = self.target.plan(release)
                for line in plan.render():
                    self.runner.say(line)
                self._show_bake(release, action)
        except (ConfigError, UsageError):
            raise  # bad input found by the plan: refused with no side effect, no journal entry either
        except (Exception, KeyboardInterrupt) as exc:  # nothing changed yet; still journaled
            self._record(entry, _result(exc), start, f"plan: {describe(exc)}")
            if isinstance(exc, ConveyorError):
                raise
            message = f"{action} to {self.env} failed at plan ({describe(exc)}); nothing was changed"
            raise _failure(exc, message) from None
        previous = plan.current
        entry.update(
            previous_sha=previous.git_sha if previous else None,
            previous_image=previous.image if previous else None,
        )
        try:
            if self.contract.release:
                with self.runner.step(f"release command: {' '.join(self.contract.release)}"):
                    self.target.release_steps(plan)
        except (Exception, KeyboardInterrupt) as exc:
            reason = describe(exc)
            self._record(entry, _result(exc), start, f"release step: {reason}")
            raise _failure(
                exc,
                f"{action} to {self.env} failed before apply ({reason}); the services were not "
                f"touched, serving {_serving(previous)}",
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
            failed_at = "bake"
            self._bake(plan, action, entry)
        except (Exception, KeyboardInterrupt) as exc:  # whatever failed, the journal hears of it
            reason = describe(exc)
            self._record(entry, _result(exc), start, f"{failed_at}: {reason}")
            serving = self._roll_back(plan, previous)
            raise _failure(
                exc, f"{action} to {self.env} failed at {failed_at} ({reason}); {serving}"
            ) from None
        self._record(entry, "succeeded", start, None)
        try:
            with self.runner.step("housekeeping"):
                self.target.finish(plan)
        except Exception as exc:  # the new revision serves; a cleanup failure is only a warning
            self.runner.say(f"warning: housekeeping failed: {describe(exc)}")
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

    def _show_bake(self, release: Release, action: str) -> None:
        """The plan's bake lines (a rollback to a known revision is not baked)."""
        if self.bake is None:
            return
        if action == "rollback":
            self.runner.say("  bake        : none for a rollback (the revision served before)")
            return
        for line in self.bake.describe(release.git_sha):
            self.runner.say(line)

    def _bake(self, plan: Plan, action: str, entry: dict[str, object]) -> None:
        """Watch the new revision through Prometheus; what was measured goes into the journal entry,
        passed or failed. A BakeFailed is handled like a failed smoke probe (rolled back, verified)."""
        if self.bake is None or action == "rollback":
            return
        if not plan.changes:  # the revision was already serving: nothing new to watch, nothing to roll back
            self.runner.say("bake: skipped, the release was already serving")
            return
        git_sha = plan.release.git_sha
        report = Report()
        try:
            with self.runner.step(f"bake {git_sha[:12]} for {self.bake.seconds}s"):
                self.bake.run(git_sha, report, say=self.runner.say, clock=self.clock, sleep=self.sleep)
        finally:
            entry["bake"] = report.measured()

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

            def stop() -> None:
                with self.runner.step("no previous revision: stopping the failed one"):
                    self.target.stop(plan)

            failure = self._attempt(stop)
            if failure is not None:
                self._record(entry, _result(failure), start, describe(failure))
                return (
                    f"stopping the failed revision ALSO failed ({describe(failure)}): check the environment"
                )
            self._record(entry, "succeeded", start, None)
            return "nothing was serving before, and the failed revision was stopped"
        entry.update(git_sha=previous.git_sha, image=previous.image)
        back = Release(previous.image, previous.git_sha)

        def roll_back() -> None:
            with self.runner.step(f"roll back to {previous.git_sha[:12]}"):
                self.target.rollback(plan, previous)
                deadline = self.clock() + self.timeout
                self.target.wait(plan, back, deadline)
                self.verify(previous.git_sha, deadline)

        failure = self._attempt(roll_back)
        if failure is not None:
            self._record(entry, _result(failure), start, describe(failure))
            gone = f"; {self._outage}, so {plan.release.git_sha[:12]} may be applied, unverified"
            return (
                f"the rollback to {previous.git_sha[:12]} ALSO failed ({describe(failure)})"
                f"{gone if self._outage else ''}: check the environment now"
            )
        self._record(entry, "succeeded", start, None)
        back_again = f"{self._outage}; " if self._outage else ""
        return f"{back_again}rolled back: serving {previous.git_sha[:12]} again (verified)"

    def _attempt(self, action: Callable[[], None]) -> BaseException | None:
        """Run a rollback step; when it failed because the engine stopped answering, wait for the engine
        (up to the deploy timeout) and try once more. The failure that remains, or None."""
        try:
            action()
            return None
        except KeyboardInterrupt as exc:
            return exc
        except Exception as exc:
            first: BaseException = exc
        try:
            if not self._engine_came_back():
                return first
            action()
            return None
        except (Exception, KeyboardInterrupt) as exc:
            return exc

    def _engine_came_back(self) -> bool:
        """False when the target answers (the failure was the target's own); else poll it until it answers
        again (True) or the deploy timeout passes (False)."""
        engine = ENGINES.get(self.target.kind, f"{self.target.kind} engine")
        try:
            self.target.current()
            return False
        except Exception as exc:
            self.runner.say(
                f"the {engine} does not answer ({describe(exc)}): waiting up to {self.timeout}s for it, "
                "to roll back"
            )
        start = self.clock()
        while self.clock() < start + self.timeout:
            self.sleep(2)
            if self._answers():
                self._outage = (
                    f"the {engine} stopped answering, and answered again {self.clock() - start:.0f}s later"
                )
                self.runner.say(f"the {engine} answers again: rolling back")
                return True
        self._outage = f"the {engine} did not answer for {self.timeout}s"
        return False

    def _answers(self) -> bool:
        try:
            self.target.current()
        except Exception:
            return False
        return True

    def _record(self, entry: dict[str, object], result: str, start: float, error: str | None) -> None:
        """Journal one entry; if even that fails, print the entry (the record is never lost silently)."""
        full = {
            **entry,
            "result": result,
            "error": self.runner.redact(error) if error else None,
            "duration": round(self.clock() - start, 1),
            "who": _user(),
            "host": socket.gethostname(),
        }
        try:
            self.journal.record(full)
        except Exception as exc:
            self.runner.say(
                f"warning: the journal entry was NOT written ({describe(exc)}): {json.dumps(full)}"
            )


ENGINES = {"compose": "Docker engine", "ecs": "AWS endpoint", "k8s": "Kubernetes API server"}


def _result(exc: BaseException) -> str:
    return "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"


def _failure(exc: BaseException, message: str) -> DeployFailed:
    return DeployInterrupted(message) if isinstance(exc, KeyboardInterrupt) else DeployFailed(message)


def describe(exc: BaseException) -> str:
    """One line for any failure: our own errors as they are, anything else with its type."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, ConveyorError):
        return " | ".join(line.strip() for line in str(exc).strip().splitlines())
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _serving(revision: Revision | None) -> str:
    return f"{revision.git_sha[:12]}" if revision else "nothing"
