"""Shared fixtures: a throwaway project tree and a way to run invoke in it as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
REPO = Path(__file__).resolve().parents[1]
_TAGS_BEFORE = pytest.StashKey[set[str] | None]()


def pytest_configure(config: pytest.Config) -> None:
    """tests/shims first on PATH: deterministic slow tools whose answers are kept (tests/tool_cache.py)."""
    shims = str(REPO / "tests" / "shims")
    os.environ["PATH"] = os.pathsep.join([shims, *os.environ.get("PATH", "").split(os.pathsep)])


# Images the machine's setup builds (bootstrap): kept whatever a test session does.
SETUP_IMAGES = ("conveyor-local/", "firecow/")


def _image_tags() -> set[str] | None:
    """Every repository:tag in the Docker engine; None when there is no engine to ask."""
    try:
        out = subprocess.run(
            ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {t for t in out.stdout.split() if "<none>" not in t} if out.returncode == 0 else None


def pytest_collection_finish(session: pytest.Session) -> None:
    """A session with Docker tests notes the image tags there are before it builds any."""
    if any(item.get_closest_marker("docker") for item in session.items):
        session.config.stash[_TAGS_BEFORE] = _image_tags()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Untag the images the session's tests built and tagged (each test project has its own names and shas,
    so they piled up by the hundred); an image a container still uses stays."""
    before = session.config.stash.get(_TAGS_BEFORE, None)
    after = _image_tags() if before is not None else None
    if before is None or after is None:
        return
    made = sorted(t for t in after - before if not t.startswith(SETUP_IMAGES))
    if made:
        subprocess.run(["docker", "image", "rm", *made], capture_output=True, timeout=120, check=False)


def engine_missing(reason: str) -> None:
    """A missing engine is a loud skip locally and a failure under CI=true."""
    if IN_CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass
class Project:
    root: Path

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    def _env(self, extra: dict[str, str] | None) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        return {**clean, **(extra or {})}

    def invoke(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "invoke", *args],
            cwd=self.root,
            env=self._env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        """`invoke ARGS` in the background, stdout and stderr piped (concurrency and signal tests)."""
        return subprocess.Popen(
            [sys.executable, "-m", "invoke", *args],
            cwd=self.root,
            env=self._env(None),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A minimal project using conveyor: tasks.py, invoke.yaml and a `local` environment."""
    proj = Project(tmp_path)
    proj.write("tasks.py", "from conveyor.tasks import namespace\n\nns = namespace()\n")
    proj.write(
        "invoke.yaml",
        """
        conveyor:
          project:
            name: demo
          image:
            name: demo-app
        """,
    )
    proj.write(
        "deploy/environments/local.yaml",
        """
        target: compose
        url: http://127.0.0.1:8080
        compose:
          files: [compose.yaml]
        vars:
          LOG_LEVEL: info
          API_TOKEN: not-for-your-eyes
        secrets:
          DB_PASSWORD: env:DB_PASSWORD
        """,
    )
    return proj


class Clock:
    """Time that passes only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
