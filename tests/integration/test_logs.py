"""`invoke logs` against real engines: a compose stack on the Docker engine (two web containers, a worker,
a database) and CloudWatch Logs on moto server over HTTP, read from where the ECS services' task
definitions send their logs. (Kubernetes: tests/unit/test_logs.py, no API server can run here.)"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor import config
from conveyor.aws import AwsClients
from tests.conftest import Project
from tests.integration.test_ecs import REGION, moto_endpoint

__all__ = ["moto_endpoint"]  # the fixture

LINE = re.compile(r"(?P<ts>\S+Z) (?P<source>\S+)\s+\| (?P<text>.*)")
INVOKE_YAML = """
conveyor:
  project:
    name: logs-demo
  image:
    name: logs-demo
  processes:
    web:
      command: [python3, -m, http.server]
      port: 8000
      version: none
    worker:
      command: [python3, -c, pass]
"""
# web: two containers writing the app's JSON lines; worker: plain text; db: a service that is no process.
WEB = (
    "import json, socket, time\n"
    "for n in range(100000):\n"
    "    print(json.dumps({'msg': 'tick', 'n': n, 'host': socket.gethostname()})); time.sleep(0.2)"
)
WORKER = "import time\nfor n in range(100000):\n    print('job', n); time.sleep(0.3)"
DB = "import time\nprint('db ready')\ntime.sleep(100000)"


def compose_yaml(image: str) -> str:
    """The stack: every service runs ``image`` (the local base image) with a script."""
    services: dict[str, Any] = {
        name: {"image": image, "init": True, "command": ["python3", "-u", "-c", script]}
        for name, script in (("web", WEB), ("worker", WORKER), ("db", DB))
    }
    services["web"]["scale"] = 2
    return yaml.safe_dump({"services": services})


@dataclass(frozen=True)
class Shown:
    when: datetime
    process: str
    instance: str
    text: str


def shown(stdout: str) -> list[Shown]:
    """Every line `invoke logs` printed, parsed; any other line fails the test."""
    lines = []
    for raw in stdout.splitlines():
        match = LINE.fullmatch(raw)
        assert match, f"not a log line: {raw!r}"
        process, _, instance = match.group("source").partition("/")
        when = datetime.strptime(match.group("ts"), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        lines.append(Shown(when, process, instance, match.group("text")))
    return lines


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# --- compose ---------------------------------------------------------------------------------------


@dataclass
class ComposeEnv:
    project: Project
    name: str


def logs_project(root: Path, env: str, environment: str) -> Project:
    """The logs demo project in ``root`` with one environment file."""
    project = Project(root)
    project.write("tasks.py", "from conveyor.tasks import namespace\n\nns = namespace()\n")
    project.write("invoke.yaml", INVOKE_YAML)
    project.write(f"deploy/environments/{env}.yaml", environment)
    return project


@pytest.fixture(scope="module")
def stack(base_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeEnv]:
    root = tmp_path_factory.mktemp("logs-compose")
    name = f"clogs-{uuid.uuid4().hex[:8]}"
    project = logs_project(
        root,
        "local",
        f"target: compose\nurl: http://127.0.0.1:9\ncompose:\n  files: [compose.yaml]\n  project: {name}\n",
    )
    (root / "compose.yaml").write_text(compose_yaml(base_image))
    compose = ["docker", "compose", "--project-name", name, "--file", str(root / "compose.yaml")]
    up = subprocess.run([*compose, "up", "--detach"], capture_output=True, text=True, check=False)
    try:
        assert up.returncode == 0, up.stderr
        time.sleep(3)  # a few seconds of output from every container
        yield ComposeEnv(project, name)
    finally:
        subprocess.run(
            [*compose, "down", "--timeout", "1", "--remove-orphans"], capture_output=True, check=False
        )


@pytest.mark.docker
def test_compose_lines_of_web_and_worker_merged_in_time_order_with_instances(stack: ComposeEnv) -> None:
    result = stack.project.invoke("logs", "--tail", "0")
    assert result.returncode == 0, result.stderr
    lines = shown(result.stdout)
    assert {(x.process, x.instance) for x in lines} == {
        ("web", "web-1"),
        ("web", "web-2"),
        ("worker", "worker-1"),
    }
    assert [x.when for x in lines] == sorted(x.when for x in lines)  # one time order across containers
    processes = [x.process for x in lines]
    assert any(a != b for a, b in itertools.pairwise(processes))  # interleaved
    for instance in ("web-1", "web-2"):
        ticks = [json.loads(x.text) for x in lines if x.instance == instance]  # the app's JSON, as written
        assert [t["n"] for t in ticks] == list(range(len(ticks)))  # every line, once, in order
        assert len({t["host"] for t in ticks}) == 1
    jobs = [x.text for x in lines if x.process == "worker"]
    assert jobs == [f"job {n}" for n in range(len(jobs))]
    assert "db ready" not in result.stdout  # not a process


@pytest.mark.docker
def test_compose_one_process_tail_and_since(stack: ComposeEnv) -> None:
    result = stack.project.invoke("logs", "--process", "worker", "--tail", "3")
    assert result.returncode == 0, result.stderr
    lines = shown(result.stdout)
    assert len(lines) == 3
    assert {x.process for x in lines} == {"worker"}
    time.sleep(2)
    before = datetime.now(timezone.utc)
    time.sleep(1.5)
    recent = shown(stack.project.invoke("logs", "--since", "1s", "--tail", "0").stdout)
    assert recent
    assert all(x.when >= before for x in recent)
    assert {x.process for x in recent} == {"web", "worker"}


@pytest.mark.docker
def test_compose_service_flag_reads_a_service_that_is_no_process(stack: ComposeEnv) -> None:
    result = stack.project.invoke("logs", "--service", "db")
    assert result.returncode == 0, result.stderr
    assert [(x.process, x.instance, x.text) for x in shown(result.stdout)] == [("db", "db-1", "db ready")]
    bad = stack.project.invoke("logs", "--service", "nope")
    assert bad.returncode == 2
    assert one_error_line(bad) == "conveyor: unknown service `nope`; services: db, web, worker"


@pytest.mark.docker
def test_compose_follow_shows_new_lines_once_until_interrupted(stack: ComposeEnv) -> None:
    started = datetime.now(timezone.utc)
    proc = stack.project.spawn("logs", "--follow", "--tail", "1")
    try:
        time.sleep(7)  # the first read, then a few polls
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    lines = shown(out)
    later = [x for x in lines if x.when > started + timedelta(seconds=1)]
    assert {x.instance for x in later} == {"web-1", "web-2", "worker-1"}  # polls picked up new lines
    seen = [(x.instance, x.text) for x in lines]
    assert len(seen) == len(set(seen))  # nothing shown twice (each line carries its own counter)
    for instance in ("web-1", "web-2", "worker-1"):
        numbers = [int(re.findall(r"\d+", x.text)[0]) for x in lines if x.instance == instance]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), instance  # no gap


# --- ECS: CloudWatch Logs on moto ------------------------------------------------------------------


CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


@dataclass
class EcsEnv:
    project: Project
    logs: Any  # a boto3 CloudWatch Logs client on moto
    group: str
    tasks: dict[str, str]  # instance name -> task id
    t0: int  # ms: "now" when the events were written

    def put(self, stream: str, *events: tuple[int, str]) -> None:
        self.logs.put_log_events(
            logGroupName=self.group,
            logStreamName=stream,
            logEvents=[{"timestamp": self.t0 + at, "message": text} for at, text in events],
        )

    def invoke(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.project.invoke("logs", "--env", "staging", *args)


def taskdef(family: str, process: str, group: str, sidecar: bool = False) -> dict[str, Any]:
    options = {"awslogs-group": group, "awslogs-region": REGION, "awslogs-stream-prefix": process}
    containers = [
        {
            "name": "app",
            "image": "x",
            "memory": 512,
            "logConfiguration": {"logDriver": "awslogs", "options": options},
        }
    ]
    if sidecar:
        containers.append(
            {
                "name": "proxy",
                "image": "y",
                "memory": 64,
                "logConfiguration": {"logDriver": "awslogs", "options": options},
            }
        )
    return {"family": family, "containerDefinitions": containers, "requiresCompatibilities": ["EC2"]}


@pytest.fixture
def ecs(moto_endpoint: str, tmp_path: Path) -> EcsEnv:
    """Two services whose task definitions send logs to one group, web's with a sidecar; their task
    streams hold interleaved events, and a stream of another prefix (another app) holds events too."""
    cluster = f"c-{uuid.uuid4().hex[:8]}"
    group = f"/conveyor/{cluster}"
    project = logs_project(
        tmp_path,
        "staging",
        f"target: ecs\nurl: https://staging.example.test\necs:\n  cluster: {cluster}\n  service: web\n"
        f"  container: app\n  region: {REGION}\n  endpoint_url: {moto_endpoint}\n",
    )
    project.write(".env", "".join(f"{k}={v}\n" for k, v in CREDENTIALS.items()))  # what `invoke logs` uses
    cfg = config.load(tmp_path, "staging", environ={**os.environ, **CREDENTIALS})
    aws = AwsClients(cfg.env.ecs, CREDENTIALS)
    aws("ecs").create_cluster(clusterName=cluster)
    for process, service in (("web", "web"), ("worker", "web-worker")):
        arn = aws("ecs").register_task_definition(
            **taskdef(f"{cluster}-{process}", process, group, process == "web")
        )
        aws("ecs").create_service(
            cluster=cluster,
            serviceName=service,
            taskDefinition=arn["taskDefinition"]["taskDefinitionArn"],
            desiredCount=1,
        )
    logs = aws("logs")
    logs.create_log_group(logGroupName=group)
    tasks = {"web-a": uuid.uuid4().hex, "web-b": uuid.uuid4().hex, "worker": uuid.uuid4().hex}
    streams = {
        "web-a": f"web/app/{tasks['web-a']}",
        "web-b": f"web/app/{tasks['web-b']}",
        "proxy": f"web/proxy/{tasks['web-a']}",
        "worker": f"worker/app/{tasks['worker']}",
        "other": f"other-app/app/{uuid.uuid4().hex}",
    }
    for stream in streams.values():
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
    env = EcsEnv(project, logs, group, tasks, int(time.time() * 1000) - 60_000)
    env.put(streams["web-a"], (-3_600_000, "an hour ago"), (100, '{"msg": "GET / 200"}'), (400, "web-a 2"))
    env.put(streams["web-b"], (200, "web-b 1"), (500, "web-b 2"))
    env.put(streams["proxy"], (250, "proxy up"))
    env.put(streams["worker"], (300, "job 1"), (450, "job 2"))
    env.put(streams["other"], (350, "not ours"))
    return env


@pytest.mark.aws
def test_ecs_logs_from_the_task_definitions_groups_in_time_order_with_task_ids(ecs: EcsEnv) -> None:
    result = ecs.invoke("--tail", "0")
    assert result.returncode == 0, result.stderr
    lines = shown(result.stdout)
    web_a, web_b, worker = ecs.tasks["web-a"], ecs.tasks["web-b"], ecs.tasks["worker"]
    assert [(x.process, x.instance, x.text) for x in lines] == [
        ("web", web_a, "an hour ago"),
        ("web", web_a, '{"msg": "GET / 200"}'),
        ("web", web_b, "web-b 1"),
        ("web", f"{web_a}/proxy", "proxy up"),
        ("worker", worker, "job 1"),
        ("web", web_a, "web-a 2"),
        ("worker", worker, "job 2"),
        ("web", web_b, "web-b 2"),
    ]  # "not ours" (another stream prefix in the same group) is left out
    assert lines[1].when == datetime.fromtimestamp((ecs.t0 + 100) / 1000, tz=timezone.utc)


@pytest.mark.aws
def test_ecs_one_process_since_and_tail(ecs: EcsEnv) -> None:
    worker = shown(ecs.invoke("--process", "worker").stdout)
    assert [(x.process, x.text) for x in worker] == [("worker", "job 1"), ("worker", "job 2")]
    recent = shown(ecs.invoke("--since", "10m", "--tail", "0").stdout)
    assert "an hour ago" not in [x.text for x in recent]
    assert len(recent) == 7
    last = shown(ecs.invoke("--tail", "2").stdout)
    assert [x.text for x in last] == ["job 2", "web-b 2"]


@pytest.mark.aws
def test_ecs_follow_polls_new_events_without_duplicates(ecs: EcsEnv) -> None:
    proc = ecs.project.spawn("logs", "--env", "staging", "--follow", "--since", "1h")
    try:
        time.sleep(3)
        ecs.put(f"worker/app/{ecs.tasks['worker']}", (50_000, "job 3"))
        time.sleep(9)  # the ECS poll interval is 5 s
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    texts = [x.text for x in shown(out)]
    assert texts[-1] == "job 3"
    assert len(texts) == len(set(texts)) == 8


@pytest.mark.aws
def test_ecs_a_service_that_does_not_exist_is_one_line(ecs: EcsEnv) -> None:
    edited = (
        ecs.project.root / "deploy/environments/staging.yaml"
    ).read_text() + "  services: {worker: gone}\n"
    (ecs.project.root / "deploy/environments/staging.yaml").write_text(edited)
    result = ecs.invoke()
    assert result.returncode == 2
    assert one_error_line(result).startswith(
        "conveyor: process worker: ECS service gone does not exist in cluster"
    )
