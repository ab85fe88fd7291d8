"""The compose contract: the generated per-process file, and a process without a service refused."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from conveyor import compose
from conveyor.config import AppContract, Process
from conveyor.deploy.compose import _in_place
from conveyor.errors import ConfigError
from conveyor.runner import Runner

CONTRACT = AppContract(
    (
        Process("web", command=("gunicorn", "shop:app"), port=8000),
        Process(
            "worker", command=("python", "-m", "shop.worker"), healthcheck=("python", "-m", "shop.check")
        ),
        Process("clock"),
    ),
    release=("flask", "db", "upgrade"),
)


def test_every_process_gets_the_image_command_environment_and_labels() -> None:
    text = compose.process_override(CONTRACT, "sha256:abc", "1" * 40, {"LOG_LEVEL": "info", "TOKEN": "p$ss"})
    services = yaml.safe_load(text)["services"]
    assert list(services) == ["web", "worker", "clock"]
    web, worker, clock = services["web"], services["worker"], services["clock"]
    assert web["image"] == "sha256:abc"
    assert web["command"] == ["gunicorn", "shop:app"]
    # `$` is not interpolated; every process learns its stop budget (deploy.drain_seconds, shutdown_timeout)
    assert web["environment"] == {
        "CONVEYOR_DRAIN_SECONDS": "0",
        "CONVEYOR_SHUTDOWN_TIMEOUT": "20",
        "LOG_LEVEL": "info",
        "TOKEN": "p$$ss",
    }
    assert web["stop_grace_period"] == worker["stop_grace_period"] == "20s"
    assert web["labels"] == {
        compose.LABEL_SHA: "1" * 40,
        compose.LABEL_IMAGE: "sha256:abc",
        compose.LABEL_PROCESS: "web",
    }
    assert "healthcheck" not in web  # the HTTP process keeps the compose file's (or the image's)
    assert worker["healthcheck"]["test"] == ["CMD", "python", "-m", "shop.check"]
    assert "command" not in clock  # no command in the contract: the image's CMD


def test_the_generated_file_travels_on_stdin_after_the_project_files() -> None:
    stack = compose.Stack("p", (Path("/p/compose.yaml"),), {}, override="services: {}\n")
    assert stack.argv("ps")[-4:] == ["/p/compose.yaml", "--file", "-", "ps"]
    assert "-" not in stack.project_files().argv("ps")


@pytest.mark.docker  # `docker compose config` (the compose CLI; no engine needed)
def test_a_process_without_a_compose_service_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "compose.yaml").write_text("services:\n  web:\n    image: x\n  db:\n    image: y\n")
    stack = compose.Stack("p", (tmp_path / "compose.yaml",), {}, override="services: {}\n")
    with pytest.raises(
        ConfigError, match=r"process `worker` has no service of that name \(services: db, web\)"
    ):
        compose.validate(Runner(out=io.StringIO()), stack, ["web", "worker"])


def test_drain_and_shutdown_make_each_process_grace_period_and_variables() -> None:
    text = compose.process_override(CONTRACT, "sha256:abc", "1" * 40, {}, shutdown=45, drain=3)
    for service in yaml.safe_load(text)["services"].values():
        assert service["stop_grace_period"] == "48s"  # draining (still serving), then finishing
        assert service["environment"]["CONVEYOR_SHUTDOWN_TIMEOUT"] == "45"
        assert service["environment"]["CONVEYOR_DRAIN_SECONDS"] == "3"


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({}, ""),
        ({"ports": [{"target": 8000}]}, ""),  # an ephemeral host port: two instances can run
        ({"ports": [{"target": 8000, "published": "8000"}]}, "it publishes host port 8000"),
        ({"container_name": "shop"}, "container_name shop is fixed"),
    ],
)
def test_a_process_runs_beside_its_successor_unless_it_cannot(spec: dict[str, object], reason: str) -> None:
    assert _in_place("web", {"services": {"web": spec}}) == reason
