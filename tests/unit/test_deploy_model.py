"""The deploy algorithm against a fake of OUR Target protocol: success, failure and rollback branches."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conveyor.config import AppContract, Process
from conveyor.deploy.journal import FileJournal
from conveyor.deploy.locks import FileLock
from conveyor.deploy.model import (
    Change,
    Deployer,
    DeployFailed,
    DeployInterrupted,
    LockHeld,
    Owner,
    Plan,
    Release,
    Revision,
    RolloutFailed,
)
from conveyor.errors import ConfigError
from conveyor.runner import Runner

OLD = Revision("img-old", "img-old", "a" * 40)
NEW = Release("img-new", "b" * 40)
WEB = Process("web", port=8000, version="/version")
CONTRACT = AppContract((WEB, Process("worker")), release=("migrate",))


@dataclass
class FakeTarget:
    """Serves one image; each method can be told to fail. Records the calls it saw, in order."""

    lock: FileLock
    serving: Revision | None = OLD
    fail: dict[str, BaseException] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    kind: str = "fake"

    def _maybe_fail(self, name: str) -> None:
        self.calls.append(name)
        if name in self.fail:
            raise self.fail.pop(name)

    def current(self) -> Revision | None:
        return self.serving

    def plan(self, release: Release) -> Plan:
        self.calls.append("plan")
        return Plan("test", self.kind, release, self.serving, (Change("image", "old", release.image),))

    def release_steps(self, plan: Plan) -> None:
        self._maybe_fail("release_steps")

    def apply(self, plan: Plan) -> None:
        self._maybe_fail("apply")
        self.serving = Revision(plan.release.image, plan.release.image, plan.release.git_sha)

    def wait(self, plan: Plan, expected: Release, deadline: float) -> None:
        self._maybe_fail(f"wait:{expected.image}")

    def rollback(self, plan: Plan, to: Revision) -> None:
        self._maybe_fail("rollback")
        self.serving = to

    def stop(self, plan: Plan) -> None:
        self.calls.append("stop")
        self.serving = None

    def finish(self, plan: Plan) -> None:
        self.calls.append("finish")

    def live_history(self) -> list[str]:
        return []


def make(
    tmp_path: Path, target: FakeTarget | None = None
) -> tuple[Deployer, FakeTarget, FileJournal, io.StringIO]:
    out = io.StringIO()
    target = target or FakeTarget(FileLock(tmp_path, "test"))
    journal = FileJournal(tmp_path, "test")
    ticks = iter(range(0, 10_000))
    deployer = Deployer(
        target=target,  # type: ignore[arg-type]
        runner=Runner(out=out),
        journal=journal,
        env="test",
        timeout=30,
        lock_ttl=60,
        contract=CONTRACT,
        url="http://app.test",
        probe=lambda url: {"git_sha": target.serving.git_sha if target.serving else None},
        clock=lambda: float(next(ticks)),
        sleep=lambda s: None,
    )
    return deployer, target, journal, out


def test_success_path_records_and_releases_the_lock(tmp_path: Path) -> None:
    deployer, target, journal, out = make(tmp_path)
    deployer.deploy(NEW)
    assert target.calls == ["plan", "release_steps", "apply", "wait:img-new", "finish"]
    assert [(e["action"], e["result"]) for e in journal.entries()] == [("deploy", "succeeded")]
    assert journal.entries()[0]["previous_sha"] == OLD.git_sha
    assert target.lock.holder() is None
    assert "deploy to test succeeded" in out.getvalue()


def test_dry_prints_the_plan_and_changes_nothing(tmp_path: Path) -> None:
    deployer, target, journal, out = make(tmp_path)
    deployer.deploy(NEW, dry=True)
    assert target.calls == ["plan"]
    assert journal.entries() == []
    assert "~ image: old -> img-new" in out.getvalue()
    assert not target.lock.path.exists()


def test_failed_release_step_touches_nothing(tmp_path: Path) -> None:
    deployer, target, journal, _ = make(tmp_path)
    target.fail["release_steps"] = RolloutFailed("migration exited 1")
    with pytest.raises(
        DeployFailed,
        match="failed before apply .migration exited 1.; the services were not touched, serving aaaa",
    ):
        deployer.deploy(NEW)
    assert "apply" not in target.calls
    assert target.serving == OLD
    assert journal.entries()[-1]["result"] == "failed"


def test_failed_wait_rolls_back_and_verifies(tmp_path: Path) -> None:
    deployer, target, journal, _ = make(tmp_path)
    target.fail["wait:img-new"] = RolloutFailed("web is crash-looping")
    with pytest.raises(DeployFailed) as exc:
        deployer.deploy(NEW)
    assert str(exc.value) == (
        "deploy to test failed at wait (web is crash-looping); "
        "rolled back: serving aaaaaaaaaaaa again (verified)"
    )
    assert target.calls[-2:] == ["rollback", "wait:img-old"]
    assert target.serving == OLD
    assert [(e["action"], e["result"]) for e in journal.entries()] == [
        ("deploy", "failed"),
        ("rollback", "succeeded"),
    ]
    assert target.lock.holder() is None


def test_wrong_sha_in_smoke_probe_rolls_back(tmp_path: Path) -> None:
    deployer, target, _journal, _ = make(tmp_path)
    deployer.probe = lambda url: (
        {"git_sha": "c" * 40} if target.serving is not OLD else {"git_sha": OLD.git_sha}
    )
    with pytest.raises(
        DeployFailed,
        match="failed at smoke probe .http://app.test/version reports git_sha=cccccccccccc, expected bbbb",
    ):
        deployer.deploy(NEW)
    assert target.serving == OLD


def test_interrupt_during_wait_rolls_back_and_releases_the_lock(tmp_path: Path) -> None:
    deployer, target, _journal, _ = make(tmp_path)
    target.fail["wait:img-new"] = KeyboardInterrupt()
    with pytest.raises(DeployFailed, match="failed at wait .interrupted.; rolled back"):
        deployer.deploy(NEW)
    assert target.serving == OLD
    assert target.lock.holder() is None


def test_first_deploy_failing_stops_the_failed_revision(tmp_path: Path) -> None:
    deployer, target, _journal, _ = make(tmp_path)
    target.serving = None
    target.fail["wait:img-new"] = RolloutFailed("unhealthy")
    with pytest.raises(DeployFailed, match="nothing was serving before, and the failed revision was stopped"):
        deployer.deploy(NEW)
    assert target.calls[-1] == "stop"


def test_failed_rollback_says_so_loudly(tmp_path: Path) -> None:
    deployer, target, journal, _ = make(tmp_path)
    target.fail["wait:img-new"] = RolloutFailed("unhealthy")
    target.fail["wait:img-old"] = RolloutFailed("old one broke too")
    with pytest.raises(
        DeployFailed, match="the rollback to aaaaaaaaaaaa ALSO failed .old one broke too.: check"
    ):
        deployer.deploy(NEW)
    assert [e["result"] for e in journal.entries()] == ["failed", "failed"]


def test_held_lock_refuses_a_second_deploy_naming_the_holder(tmp_path: Path) -> None:
    deployer, target, _journal, _ = make(tmp_path)
    other = Owner("alice", "ci-runner-7", 4242, "d" * 40)
    target.lock.acquire(other, ttl=60)
    with pytest.raises(
        LockHeld, match=r"test is being deployed by alice@ci-runner-7 \(pid 4242, sha dddddddddddd"
    ):
        deployer.deploy(NEW)
    assert target.calls == []
    assert target.lock.holder() == other


def test_stale_lock_needs_force(tmp_path: Path) -> None:
    lock = FileLock(tmp_path, "test")
    lock.acquire(Owner("bob", "h", 1, "e" * 40, since=0.0), ttl=60)
    with pytest.raises(LockHeld, match="stale .older than 60s.: `invoke lock.release --env test --force`"):
        lock.acquire(Owner.here("f" * 40), ttl=60)
    lock.release(None, force=True)
    lock.acquire(Owner.here("f" * 40), ttl=60)


def test_journal_rollback_target_is_the_previous_good_sha(tmp_path: Path) -> None:
    journal = FileJournal(tmp_path, "test")
    for sha, result in [("1", "succeeded"), ("2", "succeeded"), ("3", "failed"), ("2", "succeeded")]:
        journal.record({"action": "deploy", "git_sha": sha * 40, "image": f"img{sha}", "result": result})
    assert journal.last_good_before_current()["git_sha"] == "1" * 40
    assert journal.find(2)["image"] == "img2"


def test_no_release_command_skips_the_step(tmp_path: Path) -> None:
    deployer, target, _journal, _ = make(tmp_path)
    deployer.contract = AppContract((WEB,))
    deployer.deploy(NEW)
    assert "release_steps" not in target.calls


def test_without_a_version_route_the_health_route_is_probed(tmp_path: Path) -> None:
    deployer, _target, _journal, _ = make(tmp_path)
    deployer.contract = AppContract((Process("web", port=8000, health="/healthz", version=""),))
    probed: list[str] = []
    deployer.health = probed.append
    deployer.probe = lambda url: pytest.fail(f"no version route, yet {url} was read")
    deployer.deploy(NEW)
    assert probed == ["http://app.test/healthz"]


def test_a_failing_health_route_rolls_back(tmp_path: Path) -> None:
    deployer, target, journal, _ = make(tmp_path)
    deployer.contract = AppContract((Process("web", port=8000, version=""),))

    def health(url: str) -> None:
        if target.serving is not OLD:
            raise RolloutFailed(f"GET {url}: HTTP Error 500")

    deployer.health = health
    with pytest.raises(
        DeployFailed, match="failed at smoke probe .GET http://app.test/health: HTTP Error 500"
    ):
        deployer.deploy(NEW)
    assert target.serving == OLD
    assert [e["action"] for e in journal.entries()] == ["deploy", "rollback"]


def test_without_an_http_process_the_target_wait_is_the_proof(tmp_path: Path) -> None:
    deployer, target, _journal, out = make(tmp_path)
    deployer.contract = AppContract((Process("worker"),))
    deployer.probe = lambda url: pytest.fail("no HTTP process, yet a URL was probed")
    deployer.deploy(NEW)
    assert "no HTTP process" in out.getvalue()
    assert "wait:img-new" in target.calls


def test_any_exception_during_wait_is_journaled_rolled_back_and_unlocked(tmp_path: Path) -> None:
    deployer, target, journal, _ = make(tmp_path)
    target.fail["wait:img-new"] = ConnectionError("('Connection aborted.', FileNotFoundError(2))")
    with pytest.raises(DeployFailed, match=r"failed at wait \(ConnectionError: \('Connection aborted"):
        deployer.deploy(NEW)
    assert [(e["action"], e["result"]) for e in journal.entries()] == [
        ("deploy", "failed"),
        ("rollback", "succeeded"),
    ]
    assert str(journal.entries()[0]["error"]).startswith("wait: ConnectionError")
    assert target.lock.holder() is None


def test_any_exception_in_the_release_step_is_journaled(tmp_path: Path) -> None:
    deployer, target, journal, _ = make(tmp_path)
    target.fail["release_steps"] = ValueError("bad JSON from the engine")
    with pytest.raises(DeployFailed, match=r"failed before apply \(ValueError: bad JSON from the engine\)"):
        deployer.deploy(NEW)
    assert journal.entries()[-1]["error"] == "release step: ValueError: bad JSON from the engine"
    assert target.lock.holder() is None


def test_a_failing_stop_of_a_first_deploy_is_journaled_too(tmp_path: Path) -> None:
    deployer, target, journal, _ = make(tmp_path)
    target.serving = None
    target.fail["wait:img-new"] = RolloutFailed("unhealthy")
    target.stop = lambda plan: (_ for _ in ()).throw(OSError("engine gone"))  # type: ignore[method-assign]
    with pytest.raises(
        DeployFailed, match=r"stopping the failed revision ALSO failed \(OSError: engine gone\)"
    ):
        deployer.deploy(NEW)
    assert [(e["action"], e["result"]) for e in journal.entries()] == [
        ("deploy", "failed"),
        ("rollback", "failed"),
    ]
    assert target.lock.holder() is None


class Outage:
    """The target's engine stops answering: current() and rollback fail until ``back_after`` polls."""

    def __init__(self, target: FakeTarget, back_after: int) -> None:
        self.target, self.left = target, back_after
        self.current = target.current
        target.current = self.answer  # type: ignore[method-assign]

    def answer(self) -> Revision | None:
        if self.left > 0:
            self.left -= 1
            raise ConnectionError("('Connection aborted.', ConnectionRefusedError(111))")
        return self.current()


def test_the_rollback_waits_for_an_engine_that_comes_back(tmp_path: Path) -> None:
    deployer, target, journal, out = make(tmp_path)
    target.fail["wait:img-new"] = ConnectionError("engine gone")
    target.fail["rollback"] = ConnectionError("engine gone")
    Outage(target, back_after=3)
    with pytest.raises(DeployFailed) as exc:
        deployer.deploy(NEW)
    assert re.search(
        r"; the fake engine stopped answering, and answered again \d+s later; "
        r"rolled back: serving aaaaaaaaaaaa again \(verified\)$",
        str(exc.value),
    )
    assert target.calls.count("rollback") == 2  # tried, waited for the engine, tried again
    assert "the fake engine does not answer (ConnectionError: ('Connection aborted.'" in out.getvalue()
    assert "the fake engine answers again: rolling back" in out.getvalue()
    assert [(e["action"], e["result"]) for e in journal.entries()] == [
        ("deploy", "failed"),
        ("rollback", "succeeded"),
    ]
    assert target.lock.holder() is None


def test_an_engine_that_never_comes_back_is_recorded_and_the_lock_released(tmp_path: Path) -> None:
    deployer, target, journal, _ = make(tmp_path)
    target.fail["wait:img-new"] = ConnectionError("engine gone")
    target.fail["rollback"] = ConnectionError("engine gone")
    Outage(target, back_after=10_000)
    with pytest.raises(
        DeployFailed, match=r"rollback to aaaaaaaaaaaa ALSO failed \(ConnectionError: engine"
    ) as exc:
        deployer.deploy(NEW)
    assert str(exc.value).endswith(
        "the fake engine did not answer for 30s, so bbbbbbbbbbbb may be applied, unverified: "
        "check the environment now"
    )
    assert target.calls.count("rollback") == 1  # the engine never answered within the timeout
    assert [(e["action"], e["result"]) for e in journal.entries()] == [
        ("deploy", "failed"),
        ("rollback", "failed"),
    ]
    assert target.lock.holder() is None


def test_a_failing_rollback_of_a_healthy_engine_is_not_retried(tmp_path: Path) -> None:
    deployer, target, _journal, out = make(tmp_path)
    target.fail["wait:img-new"] = RolloutFailed("unhealthy")
    target.fail["rollback"] = RolloutFailed("old image gone")
    with pytest.raises(DeployFailed, match="ALSO failed .old image gone."):
        deployer.deploy(NEW)
    assert target.calls.count("rollback") == 1
    assert "does not answer" not in out.getvalue()


def test_ctrl_c_in_the_release_step_is_journaled_as_interrupted_with_exit_130(tmp_path: Path) -> None:
    deployer, target, journal, _ = make(tmp_path)
    target.fail["release_steps"] = KeyboardInterrupt()
    with pytest.raises(
        DeployInterrupted, match="failed before apply .interrupted.; the services were not"
    ) as exc:
        deployer.deploy(NEW)
    assert exc.value.exit_code == 130
    (recorded,) = journal.entries()
    assert (recorded["result"], recorded["error"]) == ("interrupted", "release step: interrupted")
    assert "apply" not in target.calls
    assert target.lock.holder() is None


def test_a_failing_plan_is_journaled_and_changes_nothing(tmp_path: Path) -> None:
    deployer, target, journal, _ = make(tmp_path)
    target.plan = lambda release: (_ for _ in ()).throw(OSError("engine gone"))  # type: ignore[method-assign]
    with pytest.raises(DeployFailed, match=r"failed at plan \(OSError: engine gone\); nothing was changed"):
        deployer.deploy(NEW)
    assert [(e["result"], e["error"]) for e in journal.entries()] == [
        ("failed", "plan: OSError: engine gone")
    ]
    assert target.lock.holder() is None


class BrokenJournal:
    def record(self, entry: dict[str, object]) -> dict[str, object]:
        raise OSError("disk full")


def test_a_journal_that_cannot_be_written_prints_the_entry(tmp_path: Path) -> None:
    deployer, target, _journal, out = make(tmp_path)
    deployer.journal = BrokenJournal()
    deployer.deploy(NEW)
    line = next(x for x in out.getvalue().splitlines() if "journal entry was NOT written" in x)
    assert "(OSError: disk full)" in line
    assert '"git_sha": "' + NEW.git_sha in line
    assert target.lock.holder() is None


def test_bad_input_found_by_the_plan_writes_no_journal_entry(tmp_path: Path) -> None:
    deployer, target, journal, _ = make(tmp_path)
    target.plan = lambda release: (_ for _ in ()).throw(ConfigError("process beat: no service"))  # type: ignore[method-assign]
    with pytest.raises(ConfigError, match="process beat: no service"):
        deployer.deploy(NEW)
    assert journal.entries() == []
    assert target.lock.holder() is None
