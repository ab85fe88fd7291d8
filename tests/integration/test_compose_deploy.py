"""Compose environments and the deploy model on the real engine: real containers, proxy and rollbacks.

The tests of this module share one copy of the project (one compose project) and run in file order:
each deploy builds on the state the previous test left, as successive deploys do.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.tests.conftest import free_port
from tests.conftest import Project
from tests.integration.conftest import copy_project, own_stack
from tests.load import Load

pytestmark = pytest.mark.docker


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def commit(project: Project, message: str) -> str:
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    subprocess.run(["git", "add", "-A"], cwd=project.root, check=True)
    subprocess.run([*git, "commit", "-q", "-m", message], cwd=project.root, check=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=project.root, capture_output=True, text=True, check=True
    ).stdout.strip()


READY = 'status_code=503 if status == "not ready" else 200)'
NEVER_READY = "status_code=503)  # a test release that never gets ready"


WORKER_OK, WORKER_CRASH = (
    '    if args.command == "worker":\n',
    '    if args.command == "worker":\n        raise SystemExit(3)\n',
)


def set_worker(project: Project, *, broken: bool) -> None:
    """Make the worker process exit 3 at start (a release whose worker crash-loops), or undo that."""
    main = project.root / "app/__main__.py"
    old, new = (WORKER_OK, WORKER_CRASH) if broken else (WORKER_CRASH, WORKER_OK)
    text = main.read_text()
    assert old in text
    main.write_text(text.replace(old, new, 1))


def set_readiness(project: Project, *, broken: bool) -> None:
    """Make the app's /ready always 503 (a release that never becomes healthy), or undo that."""
    main = project.root / "app/main.py"
    old, new = (READY, NEVER_READY) if broken else (NEVER_READY, READY)
    text = main.read_text()
    if new not in text:  # not so already
        assert old in text
        main.write_text(text.replace(old, new, 1))


def containers(project_name: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project_name}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def running(env: Env, service: str) -> list[str]:
    """Names of the service's running containers (a deploy's switch renumbers them: web-1, web-2...)."""
    out = subprocess.run(
        [
            "docker", "ps", "--format", "{{.Names}}",
            "--filter", f"label=com.docker.compose.project={env.name}",
            "--filter", f"label=com.docker.compose.service={service}",
            "--filter", "label=com.docker.compose.oneoff=False",
        ],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return sorted(out.split())


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


class Env:
    def __init__(self, project: Project, name: str, port: int) -> None:
        self.project, self.name, self.port = project, name, port
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def env(base_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    project = copy_project(tmp_path_factory.mktemp("deploy"), base_image)
    name, port = own_stack(project, "ctest", dev_ports=True)
    built = project.invoke("build")
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr
    try:
        yield Env(project, name, port)
    finally:
        project.invoke("down", "--volumes")
        subprocess.run(
            ["docker", "compose", "-p", name, "down", "-v", "--remove-orphans"], capture_output=True
        )


def test_dry_deploy_starts_no_container(env: Env) -> None:
    result = env.project.invoke("--dry", "deploy")
    assert result.returncode == 0, result.stderr
    assert "plan for local (target compose)" in result.stdout
    assert "[dry] stopping after the plan" in result.stdout
    assert containers(env.name) == []
    assert not (env.project.root / ".conveyor/history/local.jsonl").exists()


def test_build_test_deploy_end_to_end_through_the_proxy(env: Env) -> None:
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=env.project.root, capture_output=True, text=True
    ).stdout
    result = env.project.invoke(
        "build",
        "test",
        "--python",
        "3.12",
        "--pytest",
        "-q -m 'not services' app/tests",
        "deploy",
        timeout=600,  # the test step creates a virtualenv and installs the project: minutes on a busy machine
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert get(f"{env.url}/version")["git_sha"] == sha.strip()
    request = urllib.request.Request(
        f"{env.url}/notes",
        data=b'{"title": "through the proxy"}',
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 201
        response_body = response.read()
    assert get(f"{env.url}/ready")["status"] == "ready"
    assert "wait for" in result.stdout
    assert "smoke probe" in result.stdout
    # The worker process was deployed from the same image and does its job: the note gets processed.
    note = json.loads(response_body)
    deadline = time.monotonic() + 30
    while get(f"{env.url}/notes/{note['id']}")["processed_at"] is None:
        assert time.monotonic() < deadline, "the worker never processed the note"
        time.sleep(0.5)
    assert get(f"{env.url}/notes/{note['id']}")["summary"] == "through the proxy"
    images = {
        service: subprocess.run(
            ["docker", "inspect", "-f", "{{.Image}} {{.State.Health.Status}}", f"{env.name}-{service}-1"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for service in ("web", "worker")
    }
    assert images["web"][0] == images["worker"][0]
    assert images["worker"][1] == "healthy"  # the contract's healthcheck (python -m app worker --check)


def test_second_build_changes_version(env: Env) -> None:
    env.project.write("app/release_note.py", "NOTE = 'second release'\n")
    sha = commit(env.project, "second release")
    start = time.monotonic()
    result = env.project.invoke("build", "deploy")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    print(f"deploy wall time: {time.monotonic() - start:.1f}s")
    assert get(f"{env.url}/version")["git_sha"] == sha


def test_a_deploy_a_rollback_and_a_failed_release_under_load_drop_no_request(env: Env) -> None:
    """Requests through the proxy all along (tests/load.py): the rolling switch must not fail one of them,
    every note written meanwhile must be readable afterwards, and the proxy must not be recreated."""
    before = get(f"{env.url}/version")["git_sha"]
    (proxy,) = running(env, "proxy")
    proxy_id = subprocess.run(
        ["docker", "inspect", "-f", "{{.Id}}", proxy], capture_output=True, text=True, check=True
    ).stdout
    env.project.write("app/release_note.py", "NOTE = 'deployed under load'\n")
    commit(env.project, "a release deployed under load")
    assert env.project.invoke("build").returncode == 0
    windows = {}
    with Load(env.url) as load:
        time.sleep(2)
        for name, args, code in (("deploy", ("deploy",), 0), ("rollback", ("rollback",), 0)):
            start = time.monotonic()
            result = env.project.invoke(*args)
            assert result.returncode == code, result.stdout[-2000:] + result.stderr
            windows[name] = load.window(start, time.monotonic())
        set_readiness(env.project, broken=True)
        commit(env.project, "a release that never gets ready")
        assert env.project.invoke("build").returncode == 0
        start = time.monotonic()
        result = env.project.invoke("deploy")
        assert result.returncode == 1, result.stdout[-2000:] + result.stderr
        assert "rolled back" in result.stderr
        windows["failed release"] = load.window(start, time.monotonic())
        time.sleep(1)
    set_readiness(env.project, broken=False)
    commit(env.project, "ready again")
    for name, window in windows.items():
        assert window.samples, f"{name}: no request was sent"
        assert not window.failed, f"{name}: {window.summary()}"
    assert get(f"{env.url}/version")["git_sha"] == before
    assert load.written
    for note in load.written:
        assert get(f"{env.url}/notes/{note}")["id"] == note
    assert running(env, "proxy") == [proxy]
    assert (
        subprocess.run(
            ["docker", "inspect", "-f", "{{.Id}}", proxy], capture_output=True, text=True, check=True
        ).stdout
        == proxy_id
    ), "the proxy was recreated although its configuration did not change"


def test_failing_release_is_rolled_back_and_journaled(env: Env) -> None:
    good = get(f"{env.url}/version")["git_sha"]
    set_readiness(env.project, broken=True)
    bad = commit(env.project, "broken readiness")
    start = time.monotonic()
    result = env.project.invoke("build", "deploy")
    print(f"failed deploy + rollback wall time: {time.monotonic() - start:.1f}s")
    assert result.returncode == 1
    line = one_error_line(result)
    # The new web never became healthy beside the old one, so it was removed and never served.
    assert line.startswith("conveyor: deploy to local failed at apply (web is unhealthy")
    assert line.endswith(f"rolled back: serving {good[:12]} again (verified)")
    assert len(running(env, "web")) == 1
    assert get(f"{env.url}/version")["git_sha"] == good
    history = [
        json.loads(x) for x in (env.project.root / ".conveyor/history/local.jsonl").read_text().splitlines()
    ]
    assert [(e["action"], e["result"], e["git_sha"]) for e in history[-2:]] == [
        ("deploy", "failed", bad),
        ("rollback", "succeeded", good),
    ]
    shown = env.project.invoke("history")
    assert "rollback of " + bad[:12] in shown.stdout


def test_a_crash_looping_worker_rolls_back_every_process(env: Env) -> None:
    good = get(f"{env.url}/version")["git_sha"]
    set_readiness(env.project, broken=False)
    set_worker(env.project, broken=True)
    commit(env.project, "worker crashes at start")
    result = env.project.invoke("build", "deploy")
    assert result.returncode == 1
    line = one_error_line(result)
    assert line.startswith("conveyor: deploy to local failed at apply (worker is crash-looping (restarted")
    assert line.endswith(f"rolled back: serving {good[:12]} again (verified)")
    assert get(f"{env.url}/version")["git_sha"] == good
    (worker,) = running(env, "worker")
    labels = subprocess.run(
        ["docker", "inspect", "-f", '{{index .Config.Labels "dev.conveyor.git-sha"}}', worker],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert labels == good  # the worker is back on the good release too (web was switched back)
    set_worker(env.project, broken=False)


def test_two_concurrent_deploys_exactly_one_proceeds(env: Env) -> None:
    set_readiness(env.project, broken=False)
    env.project.write("app/release_note.py", f"NOTE = {uuid.uuid4().hex!r}\n")  # a new revision to deploy
    commit(env.project, "a healthy release")
    assert env.project.invoke("build").returncode == 0
    procs = [env.project.spawn("deploy") for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    for p in procs:
        for stream in (p.stdout, p.stderr):
            if stream:
                stream.close()
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    refused = next(err for code, err in results if code == 1)
    assert "conveyor: local is being deployed by " in refused
    assert "(pid " in refused


def test_sigint_during_wait_releases_lock_and_leaves_a_revision_serving(env: Env) -> None:
    good = get(f"{env.url}/version")["git_sha"]
    set_readiness(env.project, broken=True)
    commit(env.project, "never ready")
    assert env.project.invoke("build").returncode == 0
    proc = env.project.spawn("deploy")
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("starting the new web beside the running one"):
            time.sleep(1)  # the new container exists (and never gets ready)
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=300)
    assert proc.returncode != 0, "".join(seen) + rest
    assert "failed at apply (interrupted)" in err
    assert not (env.project.root / ".conveyor/locks/local.lock").exists()
    assert get(f"{env.url}/version")["git_sha"] == good
    assert len(running(env, "web")) == 1  # the half-started instance was removed
    set_readiness(env.project, broken=False)
    commit(env.project, "ready again")  # later tests mount this source (dev stack) and `up` the last build
    assert env.project.invoke("build").returncode == 0


def test_rollback_task_goes_back_to_the_previous_good_release(env: Env) -> None:
    history = [
        json.loads(x) for x in (env.project.root / ".conveyor/history/local.jsonl").read_text().splitlines()
    ]
    good = [e for e in history if e["result"] == "succeeded" and e.get("image")]
    current = good[-1]["git_sha"]
    previous = next(e["git_sha"] for e in reversed(good) if e["git_sha"] != current)
    start = time.monotonic()
    result = env.project.invoke("rollback")
    print(f"rollback wall time: {time.monotonic() - start:.1f}s")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert get(f"{env.url}/version")["git_sha"] == previous


def test_the_database_password_never_leaks(env: Env) -> None:
    """The secret (POSTGRES_PASSWORD, resolved from .env) is in no output, journal, log, layer or CI file."""
    password = next(
        line.split("=", 1)[1]
        for line in (env.project.root / ".env").read_text().splitlines()
        if line.startswith("POSTGRES_PASSWORD=")
    )
    seen = []
    for args in (["plan"], ["deploy"], ["history"], ["logs", "--tail", "1000"], ["env.show"]):
        result = env.project.invoke(*args)
        assert result.returncode == 0, result.stderr
        seen.append(result.stdout + result.stderr)
    image = json.loads((env.project.root / "build/release.json").read_text())["image_id"]
    seen.append(
        subprocess.run(["docker", "history", "--no-trunc", image], capture_output=True, text=True).stdout
    )
    seen.append(subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True).stdout)
    seen.append((env.project.root / ".conveyor/history/local.jsonl").read_text())
    for ci_file in (".github/workflows/ci.yml", ".gitlab-ci.yml"):
        seen.append((env.project.root / ci_file).read_text())
    assert all(password not in text for text in seen)
    assert "postgresql://app:***@" not in seen[3]  # the app does not even log its URL, masked or not


# --- stacks and bad input -------------------------------------------------------------------------


def test_unknown_service_for_logs_and_exec(env: Env) -> None:
    for args in (["logs", "--service", "nope"], ["exec", "nope", "--cmd", "true"]):
        result = env.project.invoke(*args)
        assert result.returncode == 2
        assert one_error_line(result).startswith("conveyor: unknown service `nope`; services: ")


def test_missing_image_is_refused_before_anything_starts(env: Env, tmp_path: Path) -> None:
    release = env.project.root / "build/release.json"
    saved = release.read_text()
    release.write_text(json.dumps({**json.loads(saved), "image_id": "sha256:" + "0" * 64}))
    try:
        before = containers(env.name)
        result = env.project.invoke("deploy", env={"CONVEYOR_COMPOSE__PROJECT": env.name + "-x"})
        assert result.returncode == 1
        assert "is not in the engine (run `invoke build`" in one_error_line(result)
        assert containers(env.name + "-x") == []
        assert containers(env.name) == before
    finally:
        release.write_text(saved)


def test_compose_syntax_error_names_file_and_line(env: Env) -> None:
    path = env.project.root / "compose/compose.local.yaml"
    saved = path.read_text()
    path.write_text(saved.replace("  proxy:\n", "  proxy:\n  image: [unclosed\n", 1))
    try:
        result = env.project.invoke("up", env={"CONVEYOR_COMPOSE__PROJECT": env.name + "-y"})
        assert result.returncode == 2
        line = one_error_line(result)
        assert re.match(r"conveyor: compose/compose\.local\.yaml:\d+: malformed compose file: ", line), line
        assert containers(env.name + "-y") == []
    finally:
        path.write_text(saved)


def test_port_taken_fails_cleanly_with_nothing_left(env: Env) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        name = env.name + "-z"
        result = env.project.invoke(
            "up", "--timeout", "60", env={"CONVEYOR_COMPOSE__PROJECT": name, "HTTP_PORT": str(taken)}
        )
    assert result.returncode == 1
    assert "address already in use" in one_error_line(result)
    assert containers(name) == []


def test_dev_and_local_stacks_up_and_down(env: Env) -> None:
    for stack, port_var in (("dev", "DEV_HTTP_PORT"), ("local", "HTTP_PORT")):
        # Own project name and port: the deploys above still serve on the module's port.
        name, port = f"{env.name}-{stack}", free_port()
        overrides = {"CONVEYOR_COMPOSE__PROJECT": name, port_var: str(port)}
        result = env.project.invoke("up", "--env", stack, env=overrides)
        try:
            assert result.returncode == 0, result.stdout[-2000:] + result.stderr
            assert get(f"http://127.0.0.1:{port}/ready")["status"] == "ready"
            assert "is up:" in result.stdout
        finally:
            down = env.project.invoke("down", "--env", stack, "--volumes", env=overrides)
        assert down.returncode == 0, down.stderr
        assert containers(name) == []
