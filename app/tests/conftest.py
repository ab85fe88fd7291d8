"""Throwaway PostgreSQL and Redis servers for the app's integration tests (real servers, no stand-ins).

PostgreSQL refuses to run as root, so under root the server runs as `nobody` from a folder it owns.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


def _pg_bin() -> Path:
    """PG_BIN, else the newest /usr/lib/postgresql/<version>/bin (Debian and Ubuntu layout)."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return found[-1] if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()
IN_CI = os.environ.get("CI", "").lower() == "true"


def _missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def _as_service_user() -> dict[str, object]:
    return {"user": "nobody", "group": "nogroup"} if os.geteuid() == 0 else {}


@dataclass
class Postgres:
    port: int
    datadir: Path

    @property
    def url(self) -> str:
        return f"postgresql://app:app-test-pw@127.0.0.1:{self.port}/app"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-w", "-s", *args],
            check=True,
            capture_output=True,
            **_as_service_user(),  # type: ignore[call-overload]
        )

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast")

    def start(self) -> None:
        self._ctl("start", "-l", str(self.datadir / "server.log"), "-o", f"-p {self.port} -k {self.datadir}")
        _wait_port(self.port)


@dataclass
class Redis:
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    if not (PG_BIN / "initdb").exists():
        _missing(f"PostgreSQL server binaries not found in {PG_BIN} (apt-get install postgresql-15)")
    base = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
    base.chmod(0o755)
    datadir = base / "data"
    datadir.mkdir()
    pwfile = base / "pw"
    pwfile.write_text("app-test-pw\n")
    if os.geteuid() == 0:
        shutil.chown(datadir, "nobody", "nogroup")
        shutil.chown(pwfile, "nobody", "nogroup")
    subprocess.run(
        [
            str(PG_BIN / "initdb"),
            "-D",
            str(datadir),
            "-U",
            "app",
            "--pwfile",
            str(pwfile),
            "-A",
            "scram-sha-256",
            "--no-sync",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
        **_as_service_user(),  # type: ignore[call-overload]
    )
    server = Postgres(free_port(), datadir)
    server.start()
    subprocess.run(
        [str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(server.port), "-U", "app", "app"],
        check=True,
        capture_output=True,
        env={**os.environ, "PGPASSWORD": "app-test-pw"},
    )
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    if shutil.which("redis-server") is None:
        _missing("redis-server not found (apt-get install redis-server)")
    server = Redis(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
