"""Adoption tests: small foreign projects go through `conveyor init` and then the whole kit, for real.

Reuses the real-engine fixtures (Docker engine, the machine's base image) and the `Project` helper.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from app.tests.conftest import free_port
from tests.conftest import Project
from tests.integration.conftest import base_image, docker_engine

__all__ = ["Adopted", "adopt", "base_image", "docker_engine"]

GIT = ["git", "-c", "user.name=conveyor-tests", "-c", "user.email=tests@conveyor.invalid"]


@dataclass
class Adopted(Project):
    """A foreign project after `conveyor init`, deployed to its own compose project and port."""

    port: int = 0
    init_output: str = ""
    started: float = 0.0  # when `conveyor init` began
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def files(self, files: dict[str, str]) -> None:
        for rel, text in files.items():
            self.write(rel, text)

    def git(self, *args: str) -> str:
        result = subprocess.run([*GIT, *args], cwd=self.root, capture_output=True, text=True, check=True)
        return result.stdout.strip()

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD")

    def conveyor(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "conveyor", *args],
            cwd=self.root, env=self._env(None), capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    def ok(self, *args: str) -> str:
        """`invoke ARGS` must pass; returns its output. Records how long it took."""
        start = time.monotonic()
        result = self.invoke(*args)
        self.timings[" ".join(args)] = time.monotonic() - start
        assert result.returncode == 0, f"invoke {' '.join(args)}:\n{result.stdout[-4000:]}\n{result.stderr}"
        return result.stdout + result.stderr

    def get(self, route: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + route, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_ok(self, route: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        last: tuple[int, str] | str = "no answer"
        while time.monotonic() < deadline:
            try:
                status, body = self.get(route)
            except OSError as exc:
                last = str(exc)
            else:
                if status == 200:
                    return body
                last = (status, body[:200])
            time.sleep(0.5)
        raise AssertionError(f"{self.url}{route} did not answer 200 within {timeout}s: {last}")

    def version(self) -> str:
        return str(json.loads(self.wait_ok("/version"))["git_sha"])

    def serving_sha(self, process: str = "web") -> str:
        """The git sha label of the running container of ``process`` (what compose runs, not what we hope)."""
        out = subprocess.run(
            ["docker", "ps", "--filter", f"label=com.docker.compose.project={self.compose_project}",
             "--filter", f"label=com.docker.compose.service={process}", "--format",
             '{{.Label "dev.conveyor.git-sha"}}'],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert len(out) == 1, out
        return out[0]

    @property
    def compose_project(self) -> str:
        return f"adopt-{self.root.name.lower()}-{self.port}"


@pytest.fixture
def adopt(base_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Adopted]]:
    """adopt(name, files) -> Adopted: the files committed, `conveyor init` run, a .env for this machine.

    Teardown removes each project's compose stack and volumes.
    """
    made: list[Adopted] = []

    def make(name: str, files: dict[str, str]) -> Adopted:
        project = Adopted(tmp_path_factory.mktemp(name), port=free_port())
        made.append(project)
        project.files(files)
        subprocess.run(["git", "init", "-q", "-b", "main"], cwd=project.root, check=True)
        project.commit("the app, before conveyor")
        project.started = time.monotonic()
        result = project.conveyor("init")
        project.timings["conveyor init"] = time.monotonic() - project.started
        assert result.returncode == 0, result.stdout + result.stderr
        project.init_output = result.stdout
        (project.root / ".env").write_text(
            textwrap.dedent(
                f"""\
                CONVEYOR_IMAGE__BASE_IMAGE={base_image}
                CONVEYOR_COMPOSE__PROJECT={project.compose_project}
                CONVEYOR_URL={project.url}
                HTTP_PORT={project.port}
                """
            )
        )
        project.ok("env.init", "--env", "local")
        return project

    yield make
    for project in made:
        project.invoke("down", "--env", "local", "--volumes")
