"""The `monitoring` compose profile on the real engine: Prometheus scrapes the app's web AND worker
processes (the image `invoke build` made), loads the rules of monitoring/rules, and an alert fired by a
forced 5xx burst reaches the webhook receiver through Alertmanager."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.tests.conftest import free_port
from conveyor import config, images
from tests.conftest import REPO, Project, engine_missing

pytestmark = pytest.mark.docker

IMAGE_VARS = {"POSTGRES_IMAGE": "postgres", "REDIS_IMAGE": "redis", "PROMETHEUS_IMAGE": "prometheus"}
IMAGE_VARS |= {"ALERTMANAGER_IMAGE": "alertmanager", "WEBHOOK_IMAGE": "webhook"}
# Fires as soon as the web process has answered one 5xx: the real HighErrorRate waits 2 minutes.
BURST_RULE = """\
groups:
  - name: conveyor-test.error-burst
    rules:
      - alert: ErrorBurst
        expr: sum by (job) (http_requests_total{job="web", status=~"5.."}) > 0
        labels:
          severity: test
"""

PROCESSES = """\
services:
  web:
    command: [python, -m, app, serve]
  worker:
    command: [python, -m, app, worker]
    healthcheck:
      test: [CMD, python, -m, app, worker, --check]
      interval: 2s
"""


def _image_present(ref: str) -> bool:
    return (
        subprocess.run(["docker", "image", "inspect", ref], capture_output=True, check=False).returncode == 0
    )


def get_json(url: str) -> Any:
    """GET url, decoded."""
    with urllib.request.urlopen(url, timeout=5) as response:  # a loopback URL we built
        return json.loads(response.read())


def until(what: str, check: Callable[[], tuple[bool, Any]], timeout: float) -> Any:
    """Poll check() -> (done, detail) until done; fail naming ``what`` and the last detail."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            done, last = check()
        except OSError as exc:  # not listening yet
            done, last = False, exc
        if done:
            return last
        time.sleep(1)
    pytest.fail(f"{what}: not within {timeout:g}s (last: {str(last)[:2000]})")


class Stack:
    """The reference compose stack + compose.monitoring.yaml as one throwaway compose project."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.name = f"conveyor-mon-{uuid.uuid4().hex[:8]}"
        self.ports = {k: int(env[k]) for k in ("PROMETHEUS_PORT", "ALERTMANAGER_PORT", "ALERT_WEBHOOK_PORT")}

    def compose(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = ["docker", "compose", "-p", self.name, "--profile", "monitoring"]
        argv += ["-f", "compose/compose.yaml", "-f", "compose/compose.monitoring.yaml"]
        argv += ["-f", "compose/processes.yaml", *args]
        result = subprocess.run(
            argv, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        assert result.returncode == 0, f"{' '.join(args)}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
        return result

    def url(self, port: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[port]}{path}"


@pytest.fixture
def stack(built_project: Project, tmp_path: Path) -> Iterator[Stack]:
    cfg = config.load(REPO, environ=os.environ)
    env = {k: v for k, v in os.environ.items() if k != "COMPOSE_PROFILES"}
    for var, standin in IMAGE_VARS.items():
        ref = cfg.dotenv.get(var) or os.environ.get(var) or images.STANDINS[standin]
        if not _image_present(ref):
            engine_missing(f"{var} image {ref} is not in the engine (run `invoke image.standins --save`)")
        env[var] = ref
    release = json.loads((built_project.root / "build/release.json").read_text())
    env |= {
        "APP_IMAGE": release["image_id"],
        "POSTGRES_PASSWORD": uuid.uuid4().hex,
        "GIT_SHA": release["git_sha"],
    }
    env |= {k: str(free_port()) for k in ("PROMETHEUS_PORT", "ALERTMANAGER_PORT", "ALERT_WEBHOOK_PORT")}
    # The project's compose/ and monitoring/ as they are, plus a rule that fires within seconds.
    for folder in ("compose", "monitoring"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    (tmp_path / "monitoring" / "rules" / "zz-test-burst.yaml").write_text(BURST_RULE)
    # What conveyor's generated file sets for a deploy: each process's command and health check.
    (tmp_path / "compose" / "processes.yaml").write_text(PROCESSES)
    created = Stack(tmp_path, env)
    try:
        yield created
    finally:
        created.compose("down", "-v", "--remove-orphans", "--timeout", "3")


def test_prometheus_scrapes_both_processes_loads_the_rules_and_an_alert_reaches_the_webhook(
    stack: Stack,
) -> None:
    started = time.monotonic()
    stack.compose("up", "-d", "--wait", "postgres", "redis")
    stack.compose("run", "--rm", "--no-deps", "web", "python", "-m", "app", "migrate")
    stack.compose("up", "-d", "--wait")  # web healthy; prometheus, alertmanager, webhook running

    def targets() -> tuple[bool, list[dict[str, Any]]]:
        url = stack.url("PROMETHEUS_PORT", "/api/v1/targets?state=active")
        active = [
            {"job": t["labels"]["job"], "health": t["health"], "error": t["lastError"], "url": t["scrapeUrl"]}
            for t in get_json(url)["data"]["activeTargets"]
        ]
        health = {job: [t["health"] for t in active if t["job"] == job] for job in ("web", "worker")}
        return health == {"web": ["up"], "worker": ["up"]}, active

    until("Prometheus reports the web and worker targets up", targets, 60)

    def evaluated() -> tuple[bool, list[dict[str, Any]]]:
        """Every rule has been evaluated once: a rule's health is "unknown" until its group's first run."""
        url = stack.url("PROMETHEUS_PORT", "/api/v1/rules")
        groups: list[dict[str, Any]] = get_json(url)["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return bool(rules) and all(rule["health"] != "unknown" for rule in rules), groups

    groups = until("Prometheus has evaluated every rule once", evaluated, 60)
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    assert {"ServiceDown", "HighErrorRate", "HighLatencyP95", "WorkerBacklog", "Saturation"} <= loaded
    assert "job:http_requests_5xx:ratio_rate5m" in loaded
    unhealthy = [
        (rule["name"], rule["health"], rule.get("lastError", ""))
        for group in groups
        for rule in group["rules"]
        if rule["health"] != "ok"
    ]
    assert not unhealthy, unhealthy
    # The worker's own metric is scraped: the backlog the WorkerBacklog rule reads.
    backlog = get_json(stack.url("PROMETHEUS_PORT", "/api/v1/query?query=worker_backlog"))["data"]["result"]
    assert backlog
    assert backlog[0]["metric"]["job"] == "worker"

    # A 5xx burst: with Postgres gone, the notes API answers 503.
    stack.compose("stop", "--timeout", "3", "postgres")
    burst = (
        "import urllib.request as u, urllib.error as e\n"
        "codes = []\n"
        "for _ in range(5):\n"
        "    try: codes.append(u.urlopen('http://127.0.0.1:8000/notes', timeout=10).status)\n"
        "    except e.HTTPError as err: codes.append(err.code)\n"
        "print(codes)\n"
    )
    answered = stack.compose("exec", "-T", "web", "python", "-c", burst).stdout
    assert "503" in answered, answered

    def delivered() -> tuple[bool, list[dict[str, Any]]]:
        alerts: list[dict[str, Any]] = get_json(stack.url("ALERT_WEBHOOK_PORT", "/alerts"))
        burst = [
            a for a in alerts if a["labels"].get("alertname") == "ErrorBurst" and a["status"] == "firing"
        ]
        return bool(burst), burst or alerts

    got = until("the ErrorBurst alert reaches the webhook receiver", delivered, 60)
    assert got[0]["labels"]["job"] == "web"
    assert got[0]["receiver"] == "webhook"
    logs = stack.compose("logs", "--no-color", "alert-webhook").stdout
    assert '"alertname": "ErrorBurst"' in logs  # the receiver you can see: one JSON line per alert
    print(f"monitoring stack: {time.monotonic() - started:.1f}s from up to the alert delivered")
