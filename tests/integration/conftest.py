"""Real-engine fixtures: Docker engine, local base image, a clean git copy of this project, a registry."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.tests.conftest import _wait_port, free_port
from conveyor import config
from tests.conftest import REPO, Project, engine_missing


def _docker_ok() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, check=False
    )
    return probe.returncode == 0


@pytest.fixture(scope="session")
def docker_engine() -> None:
    if not _docker_ok():
        engine_missing("no Docker engine answering `docker info` (`conveyor setup` starts one)")
    for plugin in ("compose", "buildx"):
        if subprocess.run(["docker", plugin, "version"], capture_output=True, check=False).returncode != 0:
            engine_missing(f"docker {plugin} plugin missing (`conveyor setup` installs it)")


@pytest.fixture(scope="session")
def base_image(docker_engine: None) -> str:
    """The base image this machine builds on (official image, or the local one from `invoke image.base`)."""
    ref = config.load(REPO, environ=os.environ).image.base_image
    found = (
        subprocess.run(["docker", "image", "inspect", ref], capture_output=True, check=False).returncode == 0
    )
    if not found:
        engine_missing(f"base image {ref} is not in the engine (run `invoke image.base --save`)")
    return ref


def copy_project(dest: Path, base: str) -> Project:
    """A clean git repo holding this project's files (tracked and new, minus ignored), committed once."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    (dest / ".env").write_text(f"CONVEYOR_IMAGE__BASE_IMAGE={base}\n" + _standin_lines())
    git = ["git", "-c", "user.name=conveyor-tests", "-c", "user.email=tests@conveyor.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "snapshot"], cwd=dest, check=True)
    return Project(dest)


def own_stack(project: Project, prefix: str, *, dev_ports: bool = False) -> tuple[str, int]:
    """Give a copy of the project its own compose project, HTTP port and database password (in its
    .env), so it runs beside any other; returns (compose project name, HTTP port)."""
    name, port = f"{prefix}-{uuid.uuid4().hex[:8]}", free_port()
    lines = [
        f"POSTGRES_PASSWORD=pw-{uuid.uuid4().hex}",
        f"HTTP_PORT={port}",
        f"CONVEYOR_URL=http://127.0.0.1:{port}",
        f"CONVEYOR_COMPOSE__PROJECT={name}",
        "CONVEYOR_DEPLOY__TIMEOUT=90",
    ]
    if dev_ports:
        lines += [f"DEV_{kind}_PORT={free_port()}" for kind in ("HTTP", "POSTGRES", "REDIS")]
    with (project.root / ".env").open("a") as dotenv:
        dotenv.write("".join(f"{line}\n" for line in lines))
    return name, port


def _standin_lines() -> str:
    """Carry the machine's stand-in image choices (from the repo's .env or environment) into the copy."""
    cfg = config.load(REPO, environ=os.environ)
    return "".join(f"{k}={v}\n" for k, v in cfg.dotenv.items() if k.endswith("_IMAGE") and k.isupper())


@pytest.fixture(scope="session")
def built_project(base_image: str, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """One copy of the project, built once for the session (`invoke build`)."""
    project = copy_project(tmp_path_factory.mktemp("project"), base_image)
    result = project.invoke("build")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    return project


@contextlib.contextmanager
def serve_registry() -> Iterator[str]:
    """A real registry (Debian's docker-registry) on 127.0.0.1, for as long as the block runs."""
    if shutil.which("docker-registry") is None:
        engine_missing("docker-registry not installed (apt-get install docker-registry)")
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="conveyor-registry-"))
    cfg = work / "config.yml"
    cfg.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {work / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\nlog:\n  level: warn\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_port(port)
        time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def registry(docker_engine: None) -> Iterator[str]:
    """A real registry on 127.0.0.1; the engine trusts loopback registries."""
    with serve_registry() as host:
        yield host
