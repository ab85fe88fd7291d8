"""Faults in the middle of a deploy, on real engines: nothing is lost, the lock is released, one line says
what happened and what serves.

- The Docker engine goes away during the wait of `invoke deploy --env local`: conveyor talks to dockerd
  through a socket proxy this test controls (``DOCKER_HOST=unix://…``, honoured by the compose CLI and the
  docker SDK alike), cut mid-deploy and restored once conveyor says it waits for the engine.
- Ctrl-C (SIGINT to the `invoke deploy` process) while the release command (migrations) runs.
- moto server (ECS, SSM) stopped mid-rollout, with the journal in SSM: once with the server coming back
  (the rollback is retried and verified, the journal entry kept locally is copied to SSM), once for good.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from app.tests.conftest import free_port
from conveyor.deploy import journal_for
from conveyor.deploy.ecs import SsmLock
from conveyor.deploy.journal import FileJournal, SsmJournal
from conveyor.deploy.model import DeployFailed, Release
from tests.conftest import Project, engine_missing
from tests.ecs_harness import TinyImages
from tests.integration import test_ecs
from tests.integration.conftest import copy_project, own_stack
from tests.integration.test_compose_deploy import commit
from tests.integration.test_ecs import NEW_SHA, OLD_SHA, REGION, Ecs

DOCKER_SOCKET = "/var/run/docker.sock"
# The ECS fixtures (tasks as real containers), over this module's own stoppable moto server.
live = test_ecs.live
tiny = test_ecs.tiny
rehearsal_registry = test_ecs.rehearsal_registry


# --- a socket proxy between conveyor and dockerd ------------------------------------------------------


class SocketProxy:
    """Forwards a unix socket to dockerd's; ``cut()`` drops every connection and refuses new ones, as a
    dead daemon would; ``restore()`` lets them through again."""

    def __init__(self, path: str, upstream: str = DOCKER_SOCKET) -> None:
        self.path, self.upstream = path, upstream
        self.cut_off = threading.Event()
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if self.cut_off.is_set():
                client.close()
                continue
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(self.upstream)
            with self.lock:
                self.open |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.cut_off.set()
        with self.lock:
            for sock in self.open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self.open.clear()

    def restore(self) -> None:
        self.cut_off.clear()

    def close(self) -> None:
        self.cut()
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


# --- the compose environment ----------------------------------------------------------------------


def get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return dict(json.loads(response.read()))


class Local:
    def __init__(self, project: Project, name: str, port: int) -> None:
        self.project, self.name = project, name
        self.url = f"http://127.0.0.1:{port}"
        self.journal = FileJournal(project.root, "local")
        self.lock = project.root / ".conveyor/locks/local.lock"

    def new_release(self, note: str) -> str:
        """Commit a change and build it (not deployed yet); its git sha."""
        self.project.write("app/release_note.py", f"NOTE = {note!r}\n")
        sha = commit(self.project, note)
        built = self.project.invoke("build")
        assert built.returncode == 0, built.stdout[-2000:] + built.stderr
        return sha

    def spawn_deploy(self, docker_host: str = "") -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        if docker_host:
            env["DOCKER_HOST"] = docker_host
        return subprocess.Popen(
            [sys.executable, "-m", "invoke", "deploy"],
            cwd=self.project.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def drive(proc: subprocess.Popen[str], react: Callable[[str], bool]) -> tuple[str, str]:
    """Read the deploy's output line by line, calling ``react`` on each until it returns True; then
    collect the rest. stdout and stderr."""
    assert proc.stdout is not None
    seen: list[str] = []
    for line in proc.stdout:
        seen.append(line)
        if react(line):
            break
    rest, err = proc.communicate(timeout=300)
    return "".join(seen) + rest, err


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def local(base_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    """The reference project deployed once (a good release serving) in its own compose project."""
    project = copy_project(tmp_path_factory.mktemp("faults"), base_image)
    name, port = own_stack(project, "cfault")
    deployed = project.invoke("build", "deploy")
    try:
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr
        yield Local(project, name, port)
    finally:
        subprocess.run(
            ["docker", "compose", "-p", name, "down", "-v", "--remove-orphans"],
            capture_output=True,
            check=False,
        )


@pytest.mark.docker
def test_docker_engine_unreachable_during_wait(local: Local, tmp_path: Path) -> None:
    good = get(f"{local.url}/version")["git_sha"]
    bad = local.new_release("deployed while the engine goes away")
    proxy = SocketProxy(f"/tmp/conveyor-fault-{uuid.uuid4().hex[:8]}.sock")
    try:

        def react(line: str) -> bool:
            if line.startswith("==> wait for"):
                proxy.cut()  # dockerd is gone: every SDK and compose call fails from now on
            if "engine does not answer" in line:
                time.sleep(1)
                proxy.restore()  # and it comes back within the deadline
                return True
            return False

        out, err = drive(local.spawn_deploy(f"unix://{proxy.path}"), react)
    finally:
        proxy.close()
    line = one_line(err)
    assert line.startswith("conveyor: deploy to local failed at wait ("), out + err
    assert "; the Docker engine stopped answering, and answered again " in line, line
    assert line.endswith(f"s later; rolled back: serving {good[:12]} again (verified)"), line
    assert "the Docker engine answers again: rolling back" in out
    failed, rolled_back = local.journal.entries()[-2:]
    assert (failed["action"], failed["result"], failed["git_sha"]) == ("deploy", "failed", bad)
    assert str(failed["error"]).startswith("wait: ")
    assert (rolled_back["action"], rolled_back["result"], rolled_back["git_sha"]) == (
        "rollback",
        "succeeded",
        good,
    )
    assert not local.lock.exists()
    assert get(f"{local.url}/version")["git_sha"] == good  # what serves afterwards


@pytest.mark.docker
def test_ctrl_c_during_the_release_command(local: Local) -> None:
    good = get(f"{local.url}/version")["git_sha"]
    local.new_release("interrupted during migrations")
    proc = local.spawn_deploy()

    def react(line: str) -> bool:
        if line.startswith("==> release command"):
            proc.send_signal(signal.SIGINT)
            return True
        return False

    out, err = drive(proc, react)
    assert proc.returncode == 130, out + err
    assert one_line(err) == (
        f"conveyor: deploy to local failed before apply (interrupted); the services were not touched, "
        f"serving {good[:12]}"
    )
    entry = local.journal.entries()[-1]
    assert (entry["action"], entry["result"], entry["error"]) == (
        "deploy",
        "interrupted",
        "release step: interrupted",
    )
    assert not local.lock.exists()
    assert get(f"{local.url}/version")["git_sha"] == good


# --- ECS: moto server stopped mid-rollout ---------------------------------------------------------


class Moto:
    """A moto server on a fixed port that a test can stop and start again (the state lives in-process)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._make = lambda: ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server: Any = None

    def start(self) -> None:
        self.server = self._make()
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        self.server = None

    @property
    def running(self) -> bool:
        return self.server is not None


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    try:
        from moto.ec2.models.elastic_network_interfaces import NetworkInterface
    except ImportError as exc:
        engine_missing(f"moto server not installed ({exc}): pip install 'moto[server]'")
    if not hasattr(NetworkInterface, "private_dns_name"):  # the moto 5.x RunTask bug (see test_ecs)
        NetworkInterface.private_dns_name = property(  # type: ignore[attr-defined]
            lambda self: "ip-" + self.private_ip_address.replace(".", "-") + f".{REGION}.compute.internal"
        )
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_MAX_ATTEMPTS")
    saved = {k: os.environ.get(k) for k in keys}
    # One attempt per call: a refused connection fails at once instead of after botocore's retries.
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_MAX_ATTEMPTS="1",
    )
    server = Moto()
    server.start()
    try:
        yield server
    finally:
        if server.running:
            server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def moto_endpoint(moto: Moto) -> str:
    return moto.endpoint


def outage(ecs: Ecs, moto: Moto, *, back_after: int | None) -> Callable[[float], None]:
    """ECS's sleep, stopping moto once the web service's rollout has started, and starting it again after
    ``back_after`` sleeps (None: never)."""
    down_for, stopped = 0, False

    def sleep(seconds: float) -> None:
        nonlocal down_for, stopped
        rolling = ecs.harness.svc("web").task_definition != ecs.old_arns["web"]
        if rolling and not stopped:
            moto.stop()
            stopped = True
        elif not moto.running and back_after is not None:
            down_for += 1
            if down_for >= back_after:
                moto.start()
        if moto.running:
            ecs.harness.sleep(seconds)
        else:  # the API is gone (the harness reaches moto over HTTP too): only time passes
            ecs.harness.now += seconds
            time.sleep(0.05)

    return sleep


def fault_deploy(
    ecs: Ecs, moto: Moto, back_after: int | None, release: Release
) -> tuple[DeployFailed, str, Any]:
    """A deploy whose AWS endpoint goes away mid-rollout; the failure and what the deploy printed."""
    # A project name of its own: this test's SSM journal and lock are its alone.
    text = (ecs.project.root / "invoke.yaml").read_text()
    ecs.project.write(
        "invoke.yaml", text.replace("name: conveyor-demo", f"name: f-{uuid.uuid4().hex[:8]}", 1)
    )
    ecs.reload()
    target = ecs.target()
    sleep = outage(ecs, moto, back_after=back_after)
    target.sleep = sleep
    journal = journal_for(ecs.cfg, target.runner)
    deployer = replace(ecs.deployer(target), journal=journal, sleep=sleep)
    with pytest.raises(DeployFailed) as exc:
        deployer.deploy(release)
    out = target.runner.out.getvalue()  # type: ignore[attr-defined]
    return exc.value, out, journal


@pytest.mark.aws
def test_moto_stopped_mid_rollout_and_back_within_the_deadline(
    live: Ecs, tiny: TinyImages, moto: Moto
) -> None:
    ecs = live
    assert live.serving() == OLD_SHA
    failure, out, _ = fault_deploy(live, moto, back_after=3, release=Release(tiny.image(NEW_SHA), NEW_SHA))
    message = str(failure)
    assert "\n" not in message
    assert message.startswith(
        "deploy to staging failed at wait (describe_services: EndpointConnectionError"
    ), message
    assert re.search(
        r"; the AWS endpoint stopped answering, and answered again \d+s later; "
        rf"rolled back: serving {OLD_SHA[:12]} again \(verified\)$",
        message,
    )
    # The failed entry could not reach SSM when it was written: kept locally, said once, copied later.
    warning = next(x for x in out.splitlines() if x.startswith("warning: journal SSM"))
    assert "entry kept in .conveyor/history/staging.jsonl #1" in warning
    (kept,) = FileJournal(ecs.project.root, "staging").entries()
    assert (kept["action"], kept["result"], kept["git_sha"]) == ("deploy", "failed", NEW_SHA)
    assert "EndpointConnectionError" in str(kept["shared_journal_error"])
    shared = SsmJournal(ecs.boto, ecs.cfg.project, "staging").entries()
    assert [(e["action"], e["result"], e["git_sha"]) for e in shared] == [
        ("deploy", "failed", NEW_SHA),
        ("rollback", "succeeded", OLD_SHA),
    ]
    assert str(shared[0]["error"]).startswith("wait: describe_services: EndpointConnectionError")
    assert SsmLock(ecs.api, "staging", ecs.cfg.project).holder() is None
    for process in ("web", "worker"):
        assert ecs.primary_td(process) == ecs.old_arns[process]
    assert live.serving() == OLD_SHA  # what serves afterwards: the old image's real containers


@pytest.mark.aws
def test_moto_stopped_for_good_keeps_the_record_locally_and_says_the_lock_is_left(
    live: Ecs, tiny: TinyImages, moto: Moto
) -> None:
    ecs = live
    try:
        failure, out, _ = fault_deploy(
            live, moto, back_after=None, release=Release(tiny.image(NEW_SHA), NEW_SHA)
        )
    finally:
        if not moto.running:
            moto.start()
    message = str(failure)
    print(message, out, sep="\n")
    assert "\n" not in message
    assert message.startswith("deploy to staging failed at wait (describe_services: EndpointConnectionError")
    assert "the rollback to aaaaaaaaaaaa ALSO failed (update_service: EndpointConnectionError" in message
    assert message.endswith(
        f"the AWS endpoint did not answer for 120s, so {NEW_SHA[:12]} may be applied, unverified: "
        "check the environment now"
    )
    entries = FileJournal(ecs.project.root, "staging").entries()
    assert [(e["action"], e["result"]) for e in entries] == [("deploy", "failed"), ("rollback", "failed")]
    assert "warning: the lock of staging was NOT released (get_parameter: EndpointConnectionError" in out
    assert "`invoke lock.release --env staging --force` breaks it" in out
    # moto is back: the SSM journal never heard of this deploy (its record is the local file), the lock
    # is still there for `invoke lock.release --force`, and ECS still runs the new revision's deployment.
    assert SsmJournal(ecs.boto, ecs.cfg.project, "staging").entries() == []
    holder = SsmLock(ecs.api, "staging", ecs.cfg.project).holder()
    assert holder is not None
    assert holder.git_sha == NEW_SHA
    assert ecs.primary_td("web") != ecs.old_arns["web"]
