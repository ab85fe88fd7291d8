"""conveyor.logs: the parsers on the engines' real output formats, the merge, --since, the follow cursor,
the argv each target gets, and bad input refused before any engine is called.

Samples: compose lines were captured from `docker compose logs --timestamps --no-color` (compose 2.26 on
this machine: it starts every line with ESC[2K, even with --no-color); kubectl's prefix is
`[pod/<pod>/<container>] ` (kubectl's logs.go `addPrefixIfNeeded`,
https://kubernetes.io/docs/reference/kubectl/generated/kubectl_logs/) followed by the kubelet's RFC3339Nano
timestamp, whose trailing zeros are trimmed; CloudWatch events are FilterLogEvents' shape
(https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_FilteredLogEvent.html).
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from conveyor import config
from conveyor import logs as core
from conveyor.errors import ConveyorError, UsageError
from conveyor.logs import LogLine
from conveyor.runner import Result, Runner
from tests.conftest import REPO, Project, engine_missing
from tests.recording import Recorder

UTC = timezone.utc
T0 = datetime(2026, 11, 28, 8, 0, 15, tzinfo=UTC)

COMPOSE_OUT = (
    "\x1b[2Kweb-2  | 2026-11-28T08:00:15.316773648Z {\"i\": 9, \"p\": \"web\"}\n"
    "\x1b[2Kweb-2  | 2026-11-28T08:00:15.617133782Z {\"i\": 10, \"p\": \"web\"}\n"
    "\x1b[2Kweb-1  | 2026-11-28T08:00:15.257499701Z {\"i\": 8, \"p\": \"web\"}\n"
    "\x1b[2Kworker-1  | 2026-11-28T08:00:15.089094798Z worker 5\n"
    "\x1b[2Kworker-1  | 2026-11-28T08:00:15.589374336Z worker 6\n"
)  # fmt: skip

KUBECTL_OUT = (
    "[pod/web-7d9f8b6c5d-x2x9z/web] 2026-11-28T08:00:15.3167Z {\"level\": \"info\", \"msg\": \"started\"}\n"
    "[pod/web-7d9f8b6c5d-x2x9z/proxy] 2026-11-28T08:00:15Z proxy ready\n"
    "[pod/web-7d9f8b6c5d-k4k2p/web] 2026-11-28T08:00:14.999999999Z GET /health 200\n"
    "error: container \"web\" in pod \"web-7d9f8b6c5d-new00\" is waiting to start: ContainerCreating\n"
)  # fmt: skip


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def line(seconds: float, process: str = "web", instance: str = "web-1", text: str = "") -> LogLine:
    return LogLine(at(seconds), process, instance, text or f"{process} {seconds}")


# --- --since ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"), [("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400), (" 5m ", 300)]
)
def test_since_accepts_seconds_minutes_hours_days(value: str, seconds: int) -> None:
    assert core.parse_since(value) == timedelta(seconds=seconds)


@pytest.mark.parametrize("value", ["10", "10x", "0m", "-5m", "1.5h", "m", "10 m", "1w", "10M"])
def test_a_bad_since_is_one_line_naming_the_flag(value: str) -> None:
    with pytest.raises(UsageError) as err:
        core.parse_since(value)
    assert str(err.value) == f"--since {value!r}: expected a duration like 30s, 10m, 2h or 1d"


# --- parsers ---------------------------------------------------------------------------------------


def test_compose_lines_name_the_container_and_its_service() -> None:
    lines = [core.parse_compose_line(raw, ["web", "worker"]) for raw in COMPOSE_OUT.splitlines()]
    assert lines[0] == LogLine(
        datetime(2026, 11, 28, 8, 0, 15, 316773, tzinfo=UTC), "web", "web-2", '{"i": 9, "p": "web"}'
    )  # the app's JSON line exactly as written; nanoseconds kept to the microsecond
    assert [(x.process, x.instance) for x in lines if x] == [
        ("web", "web-2"), ("web", "web-2"), ("web", "web-1"), ("worker", "worker-1"), ("worker", "worker-1")
    ]  # fmt: skip
    assert lines[4] is not None
    assert lines[4].text == "worker 6"


def test_compose_line_edge_cases() -> None:
    services = ["web", "web-api"]
    api = core.parse_compose_line("web-api-1  | 2026-11-28T08:00:15.000000000Z up", services)
    assert api is not None
    assert (api.process, api.instance) == ("web-api", "web-api-1")
    empty = core.parse_compose_line("web-1  | 2026-11-28T08:00:15.000000000Z ", services)
    assert empty is not None
    assert empty.text == ""
    piped = core.parse_compose_line("web-1  | 2026-11-28T08:00:15.000000000Z a | b", services)
    assert piped is not None
    assert piped.text == "a | b"
    assert core.parse_compose_line("web-1  | not a timestamp", services) is None
    assert core.parse_compose_line("no separator at all", services) is None
    own = core.parse_compose_line("my-db  | 2026-11-28T08:00:15.000000000Z ready", ["postgres"])
    assert own is not None
    assert (own.process, own.instance) == ("postgres", "my-db")  # container_name


def test_kubectl_prefix_timestamps_lines() -> None:
    parsed = [core.parse_kubectl_line(raw, "web", "web") for raw in KUBECTL_OUT.splitlines()]
    assert parsed[0] == LogLine(
        datetime(2026, 11, 28, 8, 0, 15, 316700, tzinfo=UTC),
        "web",
        "web-7d9f8b6c5d-x2x9z",
        '{"level": "info", "msg": "started"}',
    )
    assert parsed[1] == LogLine(T0, "web", "web-7d9f8b6c5d-x2x9z/proxy", "proxy ready")  # a sidecar
    assert parsed[2] is not None
    assert parsed[2].timestamp == datetime(2026, 11, 28, 8, 0, 14, 999999, tzinfo=UTC)
    assert parsed[3] is None  # --ignore-errors prints this for a pod not started yet


def test_timestamps_with_an_offset_become_utc() -> None:
    stamped = core.parse_timestamp("2026-11-28T10:00:15.5+02:00 hello")
    assert stamped == (datetime(2026, 11, 28, 8, 0, 15, 500000, tzinfo=UTC), "hello")
    assert core.parse_timestamp("08:00:15 hello") is None


def test_cloudwatch_events_name_the_task() -> None:
    event = {
        "logStreamName": "worker/web/0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "timestamp": 1795766415316,
        "message": '{"job": 7}\n',
        "ingestionTime": 1795766416000,
        "eventId": "1",
    }
    got = core.ecs_event_line(event, "worker", "worker/web/")
    assert got == LogLine(
        datetime.fromtimestamp(1795766415.316, tz=UTC),
        "worker",
        "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        '{"job": 7}',
    )


def test_selector_of_a_deployment() -> None:
    dep = {
        "metadata": {"name": "web"},
        "spec": {
            "selector": {
                "matchLabels": {"app": "shop", "component": "web"},
                "matchExpressions": [
                    {"key": "tier", "operator": "In", "values": ["a", "b"]},
                    {"key": "canary", "operator": "DoesNotExist"},
                ],
            }
        },
    }
    assert core.selector_of(dep) == "app=shop,component=web,tier in (a,b),!canary"
    with pytest.raises(ConveyorError, match="Deployment web: spec.selector is empty"):
        core.selector_of({"metadata": {"name": "web"}, "spec": {}})


# --- merge, tail, follow ---------------------------------------------------------------------------


def test_merge_is_time_order_across_processes_and_stable_for_ties() -> None:
    web = [line(0.1), line(0.5), line(0.9)]
    worker = [
        line(0.2, "worker", "worker-1"),
        line(0.5, "worker", "worker-1"),
        line(1.0, "worker", "worker-1"),
    ]
    merged = core.merge(web, worker)
    assert [(x.timestamp, x.process) for x in merged] == [
        (at(0.1), "web"), (at(0.2), "worker"), (at(0.5), "web"), (at(0.5), "worker"), (at(0.9), "web"),
        (at(1.0), "worker"),
    ]  # fmt: skip


class Scripted:
    """A LogSource whose instances write lines as time passes; it records what each read asked for."""

    lag = 5.0

    def __init__(self, lines: list[LogLine]) -> None:
        self.lines = lines
        self.reads: list[tuple[datetime | None, int | None]] = []

    def read(self, since: datetime | None, tail: int | None) -> list[LogLine]:
        self.reads.append((since, tail))
        out = [x for x in self.lines if since is None or x.timestamp >= since]
        return core._tail_per_instance(out, tail) if tail else out


def test_show_prints_the_merged_tail_with_process_and_instance() -> None:
    source = Scripted([line(s, "web", "web-1") for s in (1, 2, 3)] + [line(2.5, "worker", "worker-1")])
    out: list[str] = []
    shown = core.show(source, core.Request(("web", "worker"), tail=3), out.append, now=lambda: at(10))
    assert shown == 3
    assert out == [
        "2026-11-28T08:00:17.000Z web/web-1       | web 2",
        "2026-11-28T08:00:17.500Z worker/worker-1 | worker 2.5",
        "2026-11-28T08:00:18.000Z web/web-1       | web 3",
    ]
    assert source.reads == [(None, 3)]


def test_since_reaches_the_source_as_a_time() -> None:
    source = Scripted([line(1), line(100)])
    out: list[str] = []
    core.show(
        source, core.Request(("web",), since=timedelta(seconds=30), tail=0), out.append, now=lambda: at(110)
    )
    assert source.reads == [(at(80), None)]
    assert [x.rsplit("| ", 1)[1] for x in out] == ["web 100"]


def test_follow_shows_each_new_line_once_including_late_ones_and_ties() -> None:
    """Polls overlap by the source's lag; the cursor per instance drops what was shown, keeps a second
    line with the same timestamp, and still shows a line another instance delivered late."""
    clock = [at(10)]
    source = Scripted([line(9, "web", "web-1", "a"), line(9.5, "worker", "worker-1", "b")])
    out: list[str] = []

    def sleep(seconds: float) -> None:
        clock[0] += timedelta(seconds=seconds)
        if clock[0] == at(12):  # during the first interval
            source.lines += [line(11, "web", "web-1", "c"), line(11, "web", "web-1", "c")]  # a tie, twice
        if clock[0] == at(14):
            source.lines += [line(10.5, "worker", "worker-1", "late"), line(13, "web", "web-2", "new pod")]

    total = core.show(
        source,
        core.Request(("web", "worker"), tail=0, follow=True),
        out.append,
        now=lambda: clock[0],
        sleep=sleep,
        interval=2.0,
        polls=3,
    )
    texts = [x.rsplit("| ", 1)[1] for x in out]
    assert texts == ["a", "b", "c", "c", "late", "new pod"]
    assert total == 6
    assert source.reads == [(None, None), (at(5), None), (at(7), None), (at(9), None)]  # start - lag


def test_follow_after_a_tail_never_shows_the_lines_the_tail_left_out() -> None:
    clock = [at(10)]
    source = Scripted([line(s) for s in (6, 7, 8, 9)] + [line(5, "worker", "worker-1")])
    out: list[str] = []
    core.show(
        source,
        core.Request(("web", "worker"), tail=2, follow=True),
        out.append,
        now=lambda: clock[0],
        sleep=lambda s: None,
        polls=1,
    )
    assert [x.rsplit("| ", 1)[1] for x in out] == ["web 8", "web 9"]


# --- argv and parsing through the runner -----------------------------------------------------------


def compose_project(root: Path) -> config.Config:
    project = Project(root)
    project.write("tasks.py", "from conveyor.tasks import namespace\n\nns = namespace()\n")
    project.write(
        "invoke.yaml",
        """
        conveyor:
          project: {name: demo}
          image: {name: demo-app}
          processes:
            web: {command: [python3, -m, http.server], port: 8000, version: none}
            worker: {command: [python3, -c, "pass"]}
        """,
    )
    project.write(
        "deploy/environments/local.yaml",
        """
        target: compose
        url: http://127.0.0.1:8080
        compose: {files: [compose.yaml], project: demo-logs}
        """,
    )
    project.write("compose.yaml", "services:\n  web: {image: x}\n  worker: {image: x}\n  db: {image: y}\n")
    return config.load(root, "local", environ={})


def test_compose_reads_the_processes_services_with_timestamps(tmp_path: Path) -> None:
    cfg = compose_project(tmp_path)
    runner = Recorder((0, COMPOSE_OUT), read_only=True)
    req = core.request(cfg.app, "compose", since="10m", tail=50)
    source = core.source_for(cfg, runner, req)
    lines = source.read(at(-600), 50)
    assert runner.argv == [
        ["docker", "compose", "--project-name", "demo-logs", "--file", str(tmp_path / "compose.yaml"),
         "logs", "--timestamps", "--no-color", "--since", "2026-11-28T07:50:15.000000Z", "--tail", "50",
         "web", "worker"]
    ]  # fmt: skip
    assert runner.stdin == [None]  # the project's own files: nothing generated is needed to read logs
    assert [x.instance for x in core.merge(lines)] == ["worker-1", "web-1", "web-2", "worker-1", "web-2"]


def test_compose_service_flag_reads_a_non_process_service(tmp_path: Path) -> None:
    cfg = compose_project(tmp_path)
    runner = Recorder(
        (0, "db\nweb\nworker\n"), (0, "db-1  | 2026-11-28T08:00:15.000000000Z ready\n"), read_only=True
    )
    source = core.source_for(cfg, runner, core.request(cfg.app, "compose", service="db"))
    assert source.read(None, 10) == [LogLine(T0, "db", "db-1", "ready")]
    assert runner.argv[1][-3:] == ["--tail", "10", "db"]


def test_kubectl_logs_by_the_deployments_selector_per_process() -> None:
    if shutil.which("kubectl") is None:
        engine_missing("kubectl not installed (`conveyor setup` installs it)")
    cfg = config.load(REPO, "production", environ={})

    class KustomizeForReal(Recorder):
        def run(self, argv: Sequence[str], **kw: Any) -> Result:  # type: ignore[override]
            if list(argv[:2]) == ["kubectl", "kustomize"]:
                return Runner().run(argv, capture=True, mutates=False)  # offline, the real overlay
            return super().run(argv, **kw)

    runner = KustomizeForReal((0, KUBECTL_OUT), (0, "[pod/wk-1/worker] 2026-11-28T08:00:15.1Z job done\n"))
    source = core.source_for(cfg, runner, core.request(cfg.app, "k8s"))
    lines = core.merge(source.read(at(-60), 100))
    common = ["--all-containers=true", "--prefix=true", "--timestamps=true", "--ignore-errors=true",
              "--tail=100", "--since-time=2026-11-28T07:59:15Z"]  # fmt: skip
    labels = "app.kubernetes.io/component={},app.kubernetes.io/name=conveyor-demo"
    labels += ",app.kubernetes.io/part-of=conveyor-demo"
    assert runner.argv == [
        ["kubectl", "--namespace", "conveyor-production", "logs", "-l", labels.format("web"), *common],
        ["kubectl", "--namespace", "conveyor-production", "logs", "-l", labels.format("worker"), *common],
    ]
    assert [(x.source, x.text) for x in lines] == [
        ("web/web-7d9f8b6c5d-k4k2p", "GET /health 200"),
        ("web/web-7d9f8b6c5d-x2x9z/proxy", "proxy ready"),
        ("worker/wk-1", "job done"),
        ("web/web-7d9f8b6c5d-x2x9z", '{"level": "info", "msg": "started"}'),
    ]


def test_kubectl_every_line_when_no_tail_and_its_failure_is_one_line() -> None:
    source = core.KubeLogs(
        Recorder((1, "error: You must be logged in to the server (Unauthorized)\n"), read_only=True),
        "ns",
        "prod",
        [core.Workload("web", "web", "app=web", "web")],
    )
    assert source.argv(source.workloads[0], None, None) == [
        "kubectl", "--context", "prod", "--namespace", "ns", "logs", "-l", "app=web", "--all-containers=true",
        "--prefix=true", "--timestamps=true", "--ignore-errors=true", "--tail=-1",
    ]  # fmt: skip
    with pytest.raises(ConveyorError) as err:
        source.read(None, None)
    assert str(err.value) == "kubectl logs: error: You must be logged in to the server (Unauthorized)"


# --- bad input: one line, no engine call -----------------------------------------------------------


def test_flags_are_checked_against_the_contract_before_anything_runs(tmp_path: Path) -> None:
    cfg = compose_project(tmp_path)
    cases = {
        "--process nope: unknown process; processes: web, worker": {"process": "nope"},
        "--since '10x': expected a duration like 30s, 10m, 2h or 1d": {"since": "10x"},
        "--tail -1: expected 0 (every line) or more lines": {"tail": -1},
        "--service and --process: name one of them": {"service": "db", "process": "web"},
    }
    for message, flags in cases.items():
        with pytest.raises(UsageError) as err:
            core.request(cfg.app, "compose", **flags)
        assert str(err.value) == message
    with pytest.raises(UsageError, match=r"^--service db: a compose service; on ecs name a --process$"):
        core.request(cfg.app, "ecs", service="db")
    assert core.request(cfg.app, "compose", process="worker").processes == ("worker",)


def spy_engines(folder: Path) -> Path:
    """`docker`, `kubectl` and `aws` that record that they were called, first on PATH."""
    calls = folder / "calls"
    for tool in ("docker", "kubectl"):
        script = folder / "bin" / tool
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(f'#!/bin/sh\necho {tool} "$@" >> {calls}\nexit 1\n')
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return calls


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--process", "nope"], "conveyor: --process nope: unknown process; processes: web, worker"),
        (["--since", "10x"], "conveyor: --since '10x': expected a duration like 30s, 10m, 2h or 1d"),
        (
            ["--since", "10x", "--env", "prod"],
            "conveyor: --since '10x': expected a duration like 30s, 10m, 2h or 1d",
        ),
        (
            ["--process", "db", "--env", "aws"],
            "conveyor: --process db: unknown process; processes: web, worker",
        ),
        (
            ["--process", "db", "--env", "prod", "--follow"],
            "conveyor: --process db: unknown process; processes: web, worker",
        ),
    ],
)
def test_invoke_logs_bad_input_is_one_line_exit_2_and_no_engine_call(
    tmp_path: Path, args: list[str], message: str
) -> None:
    compose_project(tmp_path)
    project = Project(tmp_path)
    project.write(
        "deploy/environments/prod.yaml",
        "target: k8s\nurl: https://x.test\nk8s: {overlay: k8s, namespace: shop}\n",
    )
    project.write(
        "deploy/environments/aws.yaml",
        "target: ecs\nurl: https://x.test\necs: {cluster: c, service: s, region: eu-west-1, "
        "endpoint_url: 'http://127.0.0.1:9'}\n",
    )
    calls = spy_engines(tmp_path / "spy")
    path = f"{tmp_path / 'spy' / 'bin'}{os.pathsep}{os.environ['PATH']}"
    result = project.invoke("logs", *args, env={"PATH": path})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == message
    assert result.stdout == ""
    assert not calls.exists()  # neither docker nor kubectl ran (and the ECS endpoint was never dialled)
