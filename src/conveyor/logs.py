"""Logs from every target, merged in time order with the process and instance named on each line.

One model (``LogLine``), one reader per target behind ``LogSource``, one merge, one follow loop:

- compose: ``docker compose logs --timestamps --no-color`` of the processes' services; the instance is the
  container (``web-1``);
- ecs: CloudWatch Logs where each process's service's task definitions send it (awslogs group and stream
  prefix, ``<prefix>/<container>/<task id>``), ``FilterLogEvents`` from --since; the instance is the task id;
- k8s: ``kubectl logs -l <the Deployment's selector> --all-containers --prefix --timestamps`` per process
  (every pod of the Deployment, old and new ReplicaSets alike); the instance is the pod.

``--follow`` polls every target the same way instead of holding engine streams open: each poll reads from
shortly before the previous one began (``LogSource.lag`` covers delivery delay), and a cursor per instance
(its newest timestamp shown, and how many lines carried it) drops what was already shown. A poll also sees
containers, tasks and pods that started after the command did (a deploy's new revision), which
``kubectl logs -f -l`` does not.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Protocol

from conveyor.config import AppContract, Config
from conveyor.errors import CommandFailed, ConfigError, ConveyorError, UsageError
from conveyor.runner import Runner

if TYPE_CHECKING:
    from conveyor.compose import Stack
    from conveyor.deploy.ecs import EcsApi

log = logging.getLogger(__name__)

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION = re.compile(r"(\d+)([smhd])")
# RFC 3339 as docker (9 fraction digits) and the kubelet (RFC3339Nano: trailing zeros trimmed) print it.
STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")
ANSI = re.compile(r"^(?:\x1b\[[0-9;?]*[A-Za-z])+")  # compose 2.26 starts lines with ESC[2K, even --no-color
COMPOSE_LINE = re.compile(r"(?P<instance>\S+?)\s*\| (?P<rest>.*)")
KUBECTL_LINE = re.compile(r"\[pod/(?P<pod>[^/\]]+)/(?P<container>[^\]]*)\] (?P<rest>.*)")
POLL = {"compose": 2.0, "ecs": 5.0, "k8s": 3.0}  # seconds between two reads under --follow


@dataclass(frozen=True)
class LogLine:
    """One line one instance of a process wrote, and when (UTC)."""

    timestamp: datetime
    process: str
    instance: str
    text: str

    @property
    def source(self) -> str:
        return f"{self.process}/{self.instance}"


class LogSource(Protocol):
    """A target's reader: its lines since a time (None: from the start), at most ``tail`` per instance."""

    lag: float  # seconds a line may take to become readable after its timestamp

    def read(self, since: datetime | None, tail: int | None) -> list[LogLine]: ...


@dataclass(frozen=True)
class Request:
    """What `invoke logs` asked for, checked before any engine is called."""

    processes: tuple[str, ...]
    since: timedelta | None = None
    tail: int = 100  # 0: every line
    follow: bool = False
    service: str = ""  # compose only: one service of the stack, a process or not


# --- parsing ---------------------------------------------------------------------------------------


def parse_since(value: str) -> timedelta:
    """``30s``, ``10m``, ``2h``, ``1d`` -> a timedelta; anything else is a one-line UsageError."""
    match = DURATION.fullmatch(value.strip())
    if not match or int(match.group(1)) == 0:
        raise UsageError(f"--since {value!r}: expected a duration like 30s, 10m, 2h or 1d")
    return timedelta(seconds=int(match.group(1)) * UNITS[match.group(2)])


def parse_timestamp(text: str) -> tuple[datetime, str] | None:
    """A leading RFC 3339 timestamp -> (aware UTC datetime, the rest after one space), else None."""
    match = STAMP.match(text)
    if not match:
        return None
    base, fraction, zone = match.groups()
    micro = (fraction or "").ljust(6, "0")[:6]  # nanoseconds do not fit a datetime: keep microseconds
    when = datetime.fromisoformat(f"{base}.{micro}{'+00:00' if zone == 'Z' else zone}")
    rest = text[match.end() :]
    return when.astimezone(timezone.utc), rest[1:] if rest.startswith(" ") else rest


def instance_process(instance: str, services: Sequence[str]) -> str:
    """``web-2`` -> ``web`` (compose names a service's containers ``<service>-<n>``)."""
    service, _, number = instance.rpartition("-")
    if number.isdigit() and service in services:
        return service
    return services[0] if len(services) == 1 else instance  # a `container_name` of its own


def parse_compose_line(line: str, services: Sequence[str]) -> LogLine | None:
    """``web-1  | 2026-11-28T08:00:15.316773648Z text`` (compose logs --timestamps --no-color)."""
    match = COMPOSE_LINE.fullmatch(ANSI.sub("", line.rstrip("\r\n")))
    if not match:
        return None
    stamped = parse_timestamp(match.group("rest"))
    if stamped is None:
        return None
    instance = match.group("instance")
    return LogLine(stamped[0], instance_process(instance, services), instance, stamped[1])


def parse_kubectl_line(line: str, process: str, app_container: str) -> LogLine | None:
    """``[pod/web-7d9f-x2x9z/web] 2026-11-28T08:00:15.3167Z text`` (kubectl logs --prefix --timestamps).

    The instance is the pod, and ``pod/container`` for a container other than the app's (a sidecar)."""
    match = KUBECTL_LINE.fullmatch(line.rstrip("\r\n"))
    if not match:
        return None
    stamped = parse_timestamp(match.group("rest"))
    if stamped is None:
        return None
    pod, container = match.group("pod"), match.group("container")
    instance = pod if container in ("", app_container) else f"{pod}/{container}"
    return LogLine(stamped[0], process, instance, stamped[1])


def ecs_event_line(event: Mapping[str, Any], process: str, stream_prefix: str) -> LogLine:
    """A FilterLogEvents event of ``<prefix>/<container>/<task id>`` -> its line; the instance is the task
    id (``stream_prefix`` already names the container)."""
    stream = str(event.get("logStreamName", ""))
    instance = stream[len(stream_prefix) :] if stream.startswith(stream_prefix) else stream
    when = datetime.fromtimestamp(int(event["timestamp"]) / 1000, tz=timezone.utc)
    return LogLine(when, process, instance or stream, str(event.get("message", "")).rstrip("\n"))


def selector_of(deployment: Mapping[str, Any]) -> str:
    """A Deployment's ``spec.selector`` as a ``kubectl -l`` label query."""
    selector = deployment.get("spec", {}).get("selector") or {}
    terms = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), ",".join(expr.get("values") or [])
        terms.append(
            {"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})", "Exists": str(key)}.get(
                str(op), f"!{key}"
            )
        )
    if not terms:
        name = deployment.get("metadata", {}).get("name")
        raise ConfigError(f"Deployment {name}: spec.selector is empty; its pods cannot be found")
    return ",".join(terms)


# --- merging and following -------------------------------------------------------------------------


def merge(*batches: Iterable[LogLine]) -> list[LogLine]:
    """Every line in time order; lines with the same timestamp keep the order they were read in."""
    return sorted((line for batch in batches for line in batch), key=lambda line: line.timestamp)


class Cursor:
    """What was shown, per instance: its newest timestamp and how many shown lines carried it.

    An instance writes its lines in time order, so a line older than its cursor was shown (or left out
    on purpose by --tail) and one at the cursor is new only beyond the count already shown. ``floor``
    stands for instances not seen yet when --tail cut the first read."""

    def __init__(self, floor: datetime | None = None) -> None:
        self.floor = floor
        self.seen: dict[tuple[str, str], tuple[datetime | None, int]] = {}

    def fresh(self, lines: Iterable[LogLine]) -> list[LogLine]:
        """The lines not shown yet, in the order given; they count as shown from now on."""
        new: list[LogLine] = []
        at_cursor: dict[tuple[str, str], int] = {}
        for line in lines:
            key = (line.process, line.instance)
            last, count = self.seen.get(key, (self.floor, 0))
            if last is not None and line.timestamp < last:
                continue
            if last is not None and line.timestamp == last:
                at_cursor[key] = at_cursor.get(key, 0) + 1
                if at_cursor[key] <= count:
                    continue
                self.seen[key] = (last, count + 1)
            else:
                self.seen[key] = (line.timestamp, 1)
                at_cursor[key] = 1
            new.append(line)
        return new


class Printer:
    """Writes lines as ``<time> <process>/<instance> | <text>``, the source column as wide as seen."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write
        self.width = 0

    def __call__(self, lines: Sequence[LogLine]) -> None:
        self.width = max([self.width, *(len(line.source) for line in lines)])
        for line in lines:
            stamp = line.timestamp.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            self.write(f"{stamp} {line.source:<{self.width}} | {line.text}")


def show(
    source: LogSource,
    request: Request,
    write: Callable[[str], None],
    *,
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    sleep: Callable[[float], None] = time.sleep,
    interval: float = 2.0,
    polls: int | None = None,
) -> int:
    """Print the merged lines (the last ``tail``), then with ``follow`` poll for new ones (``polls``
    times, None: until interrupted). Returns how many lines were shown."""
    started = now()
    since = started - request.since if request.since else None
    lines = merge(source.read(since, request.tail or None))
    shown = lines[-request.tail :] if request.tail else lines
    cut = len(shown) < len(lines)
    cursor = Cursor(floor=shown[0].timestamp if cut and shown else None)
    cursor.fresh(shown)
    printer = Printer(write)
    printer(shown)
    total, done = len(shown), 0
    while request.follow and (polls is None or done < polls):
        sleep(interval)
        window = started - timedelta(seconds=source.lag)
        if since is not None and since > window:
            window = since
        started = now()
        new = cursor.fresh(merge(source.read(window, None)))
        printer(new)
        total, done = total + len(new), done + 1
    return total


# --- the readers -----------------------------------------------------------------------------------


def utc_text(when: datetime, *, fraction: bool = True) -> str:
    """RFC 3339 in UTC (``Z``), with microseconds or floored to the second."""
    stamp = when.astimezone(timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%f" if fraction else "%Y-%m-%dT%H:%M:%S"
    )
    return stamp + "Z"


class ComposeLogs:
    """``docker compose logs`` of some services of the environment's stack, through the runner."""

    lag = 2.0

    def __init__(self, runner: Runner, stack: Stack, services: Sequence[str]) -> None:
        self.runner = runner
        self.stack = stack
        self.services = list(services)

    def argv_args(self, since: datetime | None, tail: int | None) -> list[str]:
        args = ["logs", "--timestamps", "--no-color"]
        if since is not None:
            args += ["--since", utc_text(since)]
        if tail:
            args += ["--tail", str(tail)]
        return [*args, *self.services]

    def read(self, since: datetime | None, tail: int | None) -> list[LogLine]:
        from conveyor import compose

        out = compose.run(self.runner, self.stack, *self.argv_args(since, tail), capture=True, mutates=False)
        lines = []
        for raw in out.splitlines():
            parsed = parse_compose_line(raw, self.services)
            if parsed is not None:
                lines.append(parsed)
            elif raw.strip():
                log.warning("docker compose logs: unparsed line %r", raw[:200])
        return lines


@dataclass(frozen=True)
class Workload:
    """Where a process's pods are: its Deployment's selector, and the app container's name."""

    process: str
    deployment: str
    selector: str
    container: str


class KubeLogs:
    """``kubectl logs -l <selector>`` per process: every pod of the Deployment, every container."""

    lag = 10.0

    def __init__(self, runner: Runner, namespace: str, context: str, workloads: Sequence[Workload]) -> None:
        self.runner = runner
        self.namespace = namespace
        self.context = context
        self.workloads = list(workloads)

    def argv(self, workload: Workload, since: datetime | None, tail: int | None) -> list[str]:
        """With a selector kubectl shows 10 lines per container unless told: --tail=-1 is every line. The
        API keeps sinceTime to the second, so it is floored (the cursor drops what was already shown)."""
        argv = ["kubectl", *(["--context", self.context] if self.context else [])]
        argv += ["--namespace", self.namespace, "logs", "-l", workload.selector, "--all-containers=true"]
        argv += ["--prefix=true", "--timestamps=true", "--ignore-errors=true", f"--tail={tail or -1}"]
        if since is not None:
            argv.append(f"--since-time={utc_text(since, fraction=False)}")
        return argv

    def read(self, since: datetime | None, tail: int | None) -> list[LogLine]:
        lines = []
        for workload in self.workloads:
            try:
                out = self.runner.run(self.argv(workload, since, tail), capture=True, mutates=False).stdout
            except CommandFailed as exc:
                raise ConveyorError(f"kubectl logs: {exc.tail or f'exit {exc.returncode}'}") from None
            for raw in out.splitlines():
                parsed = parse_kubectl_line(raw, workload.process, workload.container)
                if parsed is not None:
                    lines.append(parsed)
                elif raw.strip():  # --ignore-errors prints `error: ...` for a pod not running yet
                    log.warning("kubectl logs (%s): %s", workload.deployment, raw[:200])
        return lines


@dataclass(frozen=True)
class Stream:
    """Where one container of a process's tasks logs: awslogs group and ``<prefix>/<container>/``."""

    process: str
    group: str
    prefix: str
    sidecar: str = ""  # the container's name when it is not the app's: part of the instance


class EcsLogs:
    """CloudWatch Logs of each process's service, from its task definitions' awslogs configuration."""

    lag = 30.0  # the awslogs driver sends in batches; ingestion adds seconds more

    def __init__(
        self, api: EcsApi, cluster: str, services: Mapping[str, str], app_container: str = ""
    ) -> None:
        self.api = api
        self.cluster = cluster
        self.services = dict(services)  # process -> ECS service
        self.app_container = app_container
        self._definitions: dict[str, dict[str, Any]] = {}  # task definitions never change: read once

    def streams(self) -> list[Stream]:
        """Each process's log streams, from every task definition its service runs (a rollout may run
        two): the app container's, and a sidecar's as ``<task id>`` under its own container name."""
        found = self.api.describe_services(self.cluster, list(self.services.values()))
        streams: list[Stream] = []
        for process, name in self.services.items():
            service = found.get(name)
            if service is None:
                raise ConfigError(
                    f"process {process}: ECS service {name} does not exist in cluster {self.cluster} "
                    "(create it, or map the process in `ecs.services`)"
                )
            arns = [
                str(d["taskDefinition"]) for d in service.get("deployments") or [] if d.get("taskDefinition")
            ]
            arns.append(str(service.get("taskDefinition") or ""))
            for arn in dict.fromkeys(a for a in arns if a):
                for stream in self._streams_of(process, arn):
                    if stream not in streams:
                        streams.append(stream)
        return streams

    def _streams_of(self, process: str, arn: str) -> list[Stream]:
        if arn not in self._definitions:
            self._definitions[arn] = self.api.describe_task_definition(arn)[0]
        containers = self._definitions[arn].get("containerDefinitions") or []
        app = self.app_container or (str(containers[0].get("name")) if containers else "")
        streams = []
        for container in containers:
            config = container.get("logConfiguration") or {}
            options = config.get("options") or {}
            if config.get("logDriver") != "awslogs" or not options.get("awslogs-group"):
                continue
            prefix = options.get("awslogs-stream-prefix")
            name = str(container.get("name"))
            # `<prefix>/<container>/<task id>`; without a prefix (EC2 launch type) the stream is the
            # container's id and the whole group is read.
            stream_prefix = f"{prefix}/{name}/" if prefix else ""
            sidecar = "" if name == app else name
            streams.append(Stream(process, str(options["awslogs-group"]), stream_prefix, sidecar))
        if not streams:
            log.warning("%s: no container logs to CloudWatch (awslogs): nothing to read", arn)
        return streams

    def read(self, since: datetime | None, tail: int | None) -> list[LogLine]:
        start = int(since.timestamp() * 1000) if since is not None else None
        lines: list[LogLine] = []
        for stream in self.streams():
            for event in self.api.log_events(stream.group, stream.prefix, start):
                line = ecs_event_line(event, stream.process, stream.prefix)
                if stream.sidecar:
                    line = LogLine(
                        line.timestamp, line.process, f"{line.instance}/{stream.sidecar}", line.text
                    )
                lines.append(line)
        if tail:  # FilterLogEvents has no tail: keep each instance's last `tail` lines
            lines = _tail_per_instance(lines, tail)
        return lines


def _tail_per_instance(lines: Sequence[LogLine], tail: int) -> list[LogLine]:
    counts: dict[tuple[str, str], int] = {}
    kept: list[LogLine] = []
    for line in reversed(merge(lines)):
        key = (line.process, line.instance)
        counts[key] = counts.get(key, 0) + 1
        if counts[key] <= tail:
            kept.append(line)
    return kept[::-1]


# --- from the command line -------------------------------------------------------------------------


def request(
    contract: AppContract,
    target: str,
    *,
    process: str = "",
    since: str = "",
    tail: int = 100,
    follow: bool = False,
    service: str = "",
) -> Request:
    """Check the flags against the app contract (no engine is called): the processes to read."""
    delta = parse_since(since) if since else None
    if tail < 0:
        raise UsageError(f"--tail {tail}: expected 0 (every line) or more lines")
    known = contract.names()
    if process and process not in known:
        raise UsageError(f"--process {process}: unknown process; processes: {', '.join(known)}")
    if service and target != "compose":
        raise UsageError(f"--service {service}: a compose service; on {target} name a --process")
    if service and process:
        raise UsageError("--service and --process: name one of them")
    chosen = (process,) if process else tuple(known)
    return Request(chosen, delta, tail, follow, service)


def source_for(cfg: Config, runner: Runner, req: Request) -> LogSource:
    """The environment's reader for the requested processes (or compose service)."""
    if cfg.env.target == "compose":
        return _compose_source(cfg, runner, req)
    if cfg.env.target == "ecs":
        return _ecs_source(cfg, req)
    if cfg.env.target == "k8s":
        return _kube_source(cfg, runner, req)
    raise ConveyorError(f"environment {cfg.env.name}: unknown target `{cfg.env.target}`")


def _compose_source(cfg: Config, runner: Runner, req: Request) -> ComposeLogs:
    from conveyor import compose
    from conveyor.deploy import resolver_for

    stack = compose.stack_for(cfg, resolver_for(cfg, runner), "none").project_files()
    if req.service:
        services = compose.validate(runner, stack)
        if req.service not in services:
            raise UsageError(f"unknown service `{req.service}`; services: {', '.join(services)}")
        return ComposeLogs(runner, stack, [req.service])
    return ComposeLogs(runner, stack, req.processes)


def _ecs_source(cfg: Config, req: Request) -> EcsLogs:
    from conveyor.aws import AwsClients
    from conveyor.deploy.ecs import EcsApi, service_names

    clients = AwsClients(cfg.env.ecs, cfg.dotenv)
    clients.check()
    if cfg.env.ecs.stack:  # cluster and services from the stack's outputs
        from conveyor.infra import resolved

        cfg = resolved(cfg, clients)
    names = service_names(cfg.env.ecs, cfg.app)
    services = {p: names[p] for p in req.processes}
    return EcsLogs(EcsApi(clients), cfg.env.ecs.cluster, services, cfg.env.ecs.container)


def _kube_source(cfg: Config, runner: Runner, req: Request) -> KubeLogs:
    from conveyor.deploy.k8s import KubeCtl, discover
    from conveyor.deploy.k8s.render import deployment_of, overlay_dir, parse

    k8s = cfg.env.k8s
    objects = parse(KubeCtl(runner, k8s.namespace, k8s.context).kustomize(overlay_dir(cfg)))  # offline
    workloads = []
    for found in discover(objects, cfg.app, k8s.image, k8s.overlay):
        if found.process in req.processes:
            selector = selector_of(deployment_of(objects, found))
            workloads.append(Workload(found.process, found.deployment, selector, found.container))
    return KubeLogs(runner, k8s.namespace, k8s.context, workloads)
