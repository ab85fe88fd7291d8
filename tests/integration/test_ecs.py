"""The ECS target against moto server over HTTP; tests/ecs_harness.py runs ECS's side on the local Docker
engine (real containers of the images the task definitions name, from a real local registry).

The project deploys two processes (web: HTTP, worker: a command with a healthcheck) to two services, and
runs a release command first. Tests that deploy use `live` (real containers, a load balancer in front of
the web service, the smoke probe over HTTP through it); plan, lock and bad-input tests use `ecs` (moto
only: nothing runs).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from app.tests.conftest import _wait_port, free_port
from conveyor import config
from conveyor.aws import AwsClients
from conveyor.deploy.ecs import EcsApi, EcsDeployTarget, SsmLock, load_template
from conveyor.deploy.journal import FileJournal
from conveyor.deploy.model import Deployer, DeployFailed, LockHeld, Owner, Plan, Release
from conveyor.errors import ConfigError
from conveyor.runner import Runner
from tests.conftest import REPO, Project, engine_missing
from tests.ecs_harness import EcsRollout, TinyImages

pytestmark = pytest.mark.aws
REGION = "eu-west-1"
SENTINEL = f"sentinel-db-password-{uuid.uuid4().hex}"
OLD_SHA, NEW_SHA, OTHER_SHA = "a" * 40, "b" * 40, "c" * 40
OLD_IMAGE = "registry.example.test/team/conveyor-demo@sha256:" + "1" * 64
SERVICES = {"web": "web", "worker": "web-worker"}  # process -> service (the worker's is the default name)
INVOKE_YAML = """
conveyor:
  project:
    name: conveyor-demo
  image:
    name: conveyor-demo
  processes:
    web:
      command: [python, -m, app, serve]
      port: 8000
    worker:
      command: [python, -m, app, worker]
      healthcheck: [python, -m, app, healthcheck-worker]
  release:
    command: [python, -m, app, migrate]
"""


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    try:
        from moto.ec2.models.elastic_network_interfaces import NetworkInterface
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        engine_missing(f"moto server not installed ({exc}): pip install 'moto[server]'")
    # moto 5.x bug: RunTask with awsvpc reads eni.private_dns_name, which moto's ENI lacks.
    if not hasattr(NetworkInterface, "private_dns_name"):
        NetworkInterface.private_dns_name = property(  # type: ignore[attr-defined]
            lambda self: "ip-" + self.private_ip_address.replace(".", "-") + f".{REGION}.compute.internal"
        )
    saved = {
        k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=REGION)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def rehearsal_registry(docker_engine: None) -> Iterator[str]:
    """A real registry (Debian's docker-registry) on 127.0.0.1 for the whole session."""
    if shutil.which("docker-registry") is None:
        engine_missing("docker-registry not installed (apt-get install docker-registry)")
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="conveyor-ecs-registry-"))
    (work / "config.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {work / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\nlog:\n  level: warn\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(work / "config.yml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny(
    base_image: str, rehearsal_registry: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TinyImages]:
    """The session's one tiny image (built once), and its variants pushed by digest."""
    images = TinyImages(base_image, rehearsal_registry, tmp_path_factory.mktemp("tiny-image"))
    images.build()
    try:
        yield images
    finally:
        images.close()


@dataclass
class Ecs:
    project: Project
    cfg: config.Config
    api: EcsApi
    harness: EcsRollout
    boto: Any
    old_arns: dict[str, str]  # process -> the task definition its service ran before the test
    families: dict[str, str]  # process -> task definition family
    url: str = ""  # the load balancer in front of the web service ("" without containers)
    out: io.StringIO | None = None  # what the last target's runner printed

    @property
    def cluster(self) -> str:
        return self.cfg.env.ecs.cluster

    def reload(self) -> None:
        """Read the project's configuration again (after a test edited a file)."""
        self.cfg = config.load(self.project.root, "staging", environ=os.environ)

    def setting(self, **deploy: Any) -> None:
        """Override deploy.* settings of the loaded configuration."""
        self.cfg = replace(self.cfg, env=replace(self.cfg.env, deploy=replace(self.cfg.env.deploy, **deploy)))

    def target(self) -> EcsDeployTarget:
        path = self.project.root / self.cfg.env.ecs.task_definition
        self.out = io.StringIO()
        return EcsDeployTarget(
            Runner(out=self.out),
            self.api,
            self.cfg,
            template=load_template(path),
            deployer="tester",
            sleep=self.harness.sleep,
            clock=self.harness.clock,
        )

    def deployer(self, target: EcsDeployTarget, timeout: int = 120) -> Deployer:
        return Deployer(
            target=target,
            runner=target.runner,
            journal=FileJournal(self.project.root, "staging"),
            env="staging",
            timeout=timeout,
            lock_ttl=600,
            contract=self.cfg.app,
            url=self.url or self.cfg.env.url,
            clock=self.harness.clock,
            sleep=self.harness.sleep,
        )

    def deploy(self, release: Release, timeout: int = 120) -> Plan:
        return self.deployer(self.target(), timeout).deploy(release)

    def service(self, process: str) -> dict[str, Any]:
        out = self.boto("ecs").describe_services(cluster=self.cluster, services=[SERVICES[process]])
        return dict(out["services"][0])

    def primary_td(self, process: str) -> str:
        deployments = self.service(process)["deployments"]
        return str(next(d["taskDefinition"] for d in deployments if d["status"] == "PRIMARY"))

    def definition(self, process: str) -> dict[str, Any]:
        """The task definition the process's PRIMARY deployment runs."""
        return self.api.describe_task_definition(self.primary_td(process))[0]

    def unchanged(self) -> None:
        """Every service still runs what it ran, alone, and no deployment was started."""
        for process, arn in self.old_arns.items():
            svc = self.harness.svc(SERVICES[process])
            assert svc.task_definition == arn, process
            assert len(svc.deployments) == 1, process

    def serving(self) -> str:
        """What the web service answers on /version through its load balancer: the real containers."""
        with urllib_direct().open(self.url + "/version", timeout=5) as response:
            return str(json.loads(response.read())["git_sha"])

    def journal(self) -> list[tuple[object, object]]:
        return [(e["action"], e["result"]) for e in FileJournal(self.project.root, "staging").entries()]


def urllib_direct() -> Any:
    import urllib.request

    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def env_yaml(endpoint: str, cluster: str) -> str:
    return f"""
target: ecs
url: https://staging.example.test
registry: registry.example.test/team
ecs:
  cluster: {cluster}
  service: web
  region: {REGION}
  endpoint_url: {endpoint}
vars:
  LOG_LEVEL: info
secrets:
  DATABASE_URL: aws-sm:conveyor/staging/db#url
  REDIS_URL: ssm:/conveyor/staging/redis-url
"""


def old_definition(family: str, image: str = OLD_IMAGE, **container: Any) -> dict[str, Any]:
    return {
        "family": family,
        "containerDefinitions": [{"name": "web", "image": image, "memory": 512, **container}],
        "requiresCompatibilities": ["FARGATE"],
        "networkMode": "awsvpc",
        "cpu": "256",
        "memory": "512",
        "tags": [{"key": "conveyor:git-sha", "value": OLD_SHA}],
    }


@contextlib.contextmanager
def provisioned(endpoint: str, root: Path, images: TinyImages | None) -> Iterator[Ecs]:
    """A project and its ECS account: two services running an old revision (real containers of an image
    baked with OLD_SHA when ``images``, else placeholders nothing can run), the secrets in moto."""
    cluster = f"c-{uuid.uuid4().hex[:8]}"
    project = Project(root)
    project.write("tasks.py", "from conveyor.tasks import namespace\n\nns = namespace()\n")
    project.write("invoke.yaml", INVOKE_YAML)
    project.write("deploy/environments/staging.yaml", env_yaml(endpoint, cluster))
    family = f"conveyor-demo-{cluster}"  # one family per test: revision numbers start at 1
    families = {"web": family, "worker": f"{family}-worker"}
    template = (REPO / "deploy/ecs/taskdef.yaml").read_text()
    template = template.replace("family: conveyor-demo", f"family: {family}")
    project.write(
        "deploy/ecs/taskdef.yaml", template.replace("/conveyor/conveyor-demo", f"/conveyor/{cluster}")
    )
    cfg = config.load(root, "staging", environ=os.environ)
    boto = AwsClients(cfg.env.ecs, os.environ)
    ec2 = boto("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=cluster, Description="web", VpcId=vpc)["GroupId"]
    document = json.dumps({"url": SENTINEL})
    try:
        boto("secretsmanager").create_secret(Name="conveyor/staging/db", SecretString=document)
    except Exception:  # created by an earlier test on the same server: make it ours again
        boto("secretsmanager").put_secret_value(SecretId="conveyor/staging/db", SecretString=document)
    boto("ssm").put_parameter(
        Name="/conveyor/staging/redis-url", Value="redis://cache:6379/0", Type="SecureString", Overwrite=True
    )
    boto("ecs").create_cluster(clusterName=cluster)
    old_image = images.image(OLD_SHA) if images else OLD_IMAGE
    # The web revision has a variable the new one drops (a removal the plan must show).
    old = {
        "web": old_definition(
            family,
            old_image,
            environment=[{"name": "OLD_ONLY", "value": "1"}],
            portMappings=[{"containerPort": 8000, "protocol": "tcp"}],
            healthCheck={
                "command": [
                    "CMD-SHELL",
                    "python -c \"import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health')\"",
                ]
            },
        ),
        "worker": old_definition(
            families["worker"],
            old_image,
            command=["python", "-m", "app", "worker"],
            healthCheck={"command": ["CMD", "python", "-m", "app", "healthcheck-worker"]},
        ),
    }
    old_arns = {}
    for process, definition in old.items():
        old_arns[process] = boto("ecs").register_task_definition(**definition)["taskDefinition"][
            "taskDefinitionArn"
        ]
        boto("ecs").create_service(
            cluster=cluster,
            serviceName=SERVICES[process],
            taskDefinition=old_arns[process],
            desiredCount=2 if process == "web" else 1,
            launchType="FARGATE",
            platformVersion="1.4.0",
            networkConfiguration={"awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group]}},
        )
    harness = EcsRollout(REGION, cluster, [SERVICES["web"], SERVICES["worker"]], endpoint=endpoint)
    try:
        harness.settle(run=images is not None)
        ecs = Ecs(project, cfg, EcsApi(boto), harness, boto, old_arns, families)
        if images is None:
            yield ecs
            return
        with harness.balancer() as url:
            ecs.url = url
            yield ecs
    finally:
        harness.close()


@pytest.fixture
def ecs(moto_endpoint: str, tmp_path: Path) -> Iterator[Ecs]:
    """moto only: the services exist, nothing runs (plan, lock, bad input)."""
    with provisioned(moto_endpoint, tmp_path, None) as made:
        yield made


@pytest.fixture
def live(moto_endpoint: str, tmp_path: Path, tiny: TinyImages) -> Iterator[Ecs]:
    """The services' tasks run as real containers; ``live.url`` is the web service's load balancer."""
    with provisioned(moto_endpoint, tmp_path, tiny) as made:
        yield made


NEW = Release("registry.example.test/team/conveyor-demo@sha256:" + "2" * 64, NEW_SHA)


def test_plan_shows_the_diff_of_every_process_and_never_a_secret_value(ecs: Ecs) -> None:
    plan = ecs.target().plan(NEW)
    text = "\n".join(plan.render())
    assert plan.current is not None
    assert plan.current.git_sha == OLD_SHA
    assert plan.current.ref == ecs.old_arns["web"]
    for process in ("web", "worker"):
        assert f"~ {process}: image: {OLD_IMAGE} -> {NEW.image}" in text
        assert f"~ {process}: secret DATABASE_URL (valueFrom): - -> arn:aws:secretsmanager:" in text
        assert f"~ {process}: service deploymentCircuitBreaker: - -> enable+rollback" in text
        assert f"~ {process}: service minimumHealthyPercent: - -> 100" in text
        assert f"~ {process}: service maximumPercent: - -> 200" in text
        assert f"~ {process}: container stopTimeout: - -> 20" in text  # deploy.shutdown_timeout
        assert f"~ {process}: taskRoleArn: - -> arn:aws:iam::123456789012:role/conveyor-demo-task" in text
        assert f'~ {process}: runtimePlatform: - -> {{"cpuArchitecture":"X86_64"' in text
        assert '"awslogs-create-group":"true"' in text
    assert "~ web: command: (the image CMD) -> python -m app serve" in text
    assert "~ worker: command" not in text  # the old worker revision ran the same command
    assert "~ web: env OLD_ONLY: 1 -> (removed)" in text
    assert "~ worker: healthCheck" not in text  # the old worker revision had the same check
    assert "~ web: healthCheck: CMD-SHELL python -c" in text
    assert "~ worker: ports" not in text
    assert "healthCheckGracePeriodSeconds" not in text  # no load balancer, no grace configured
    assert ":url::" in text
    assert f"step: register task definitions {ecs.families['web']}, {ecs.families['worker']}" in text
    assert (
        f"step: run_task {ecs.families['web']} (FARGATE 1.4.0), container web: python -m app migrate" in text
    )
    assert (
        f"step: update_service {ecs.cluster}/web-worker (worker): "
        "min 100%, max 200%, circuit breaker +rollback" in text
    )
    assert SENTINEL not in text
    assert SENTINEL not in json.dumps([r.definition for r in plan.detail.processes])
    ecs.unchanged()


def test_the_rollout_settings_are_planned_and_applied_the_grace_period_only_with_a_load_balancer(
    ecs: Ecs,
) -> None:
    path = ecs.project.root / "deploy/environments/staging.yaml"
    settings = (
        "  minimum_healthy_percent: 50\n  maximum_percent: 250\n  health_check_grace: 45\n"
        "  alarms: [staging-5xx, staging-latency]\n"
    )
    path.write_text(path.read_text().replace("  service: web\n", "  service: web\n" + settings))
    ecs.reload()
    # The web service sits behind a target group (as infra.up creates it): the grace period applies.
    ecs.harness.svc("web").load_balancers = [
        {"targetGroupArn": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web/1",
         "containerName": "web", "containerPort": 8000}
    ]  # fmt: skip
    target = ecs.target()
    plan = target.plan(NEW)
    text = "\n".join(plan.render())
    assert "~ web: service minimumHealthyPercent: - -> 50" in text
    assert "~ web: service maximumPercent: - -> 250" in text
    assert "~ web: service alarms: - -> staging-5xx,staging-latency +rollback" in text
    assert "~ web: service healthCheckGracePeriodSeconds: - -> 45" in text
    assert "~ worker: service healthCheckGracePeriodSeconds" not in text
    assert (
        "step: note: ecs.health_check_grace is not applied to web-worker: the service has no load balancer"
        in text
    )
    target.apply(plan)
    for process, grace in (("web", 45), ("worker", None)):
        service = ecs.service(process)
        assert service["deploymentConfiguration"] == {
            "minimumHealthyPercent": 50,
            "maximumPercent": 250,
            "deploymentCircuitBreaker": {"enable": True, "rollback": True},
            "alarms": {"alarmNames": ["staging-5xx", "staging-latency"], "enable": True, "rollback": True},
        }
        assert service.get("healthCheckGracePeriodSeconds") == grace, process
    # Applied, the next plan shows no rollout change left.
    again = "\n".join(ecs.target().plan(NEW).render())
    assert "service minimumHealthyPercent" not in again
    assert "service alarms" not in again
    assert "service healthCheckGracePeriodSeconds" not in again


def test_deploy_runs_the_release_command_then_moves_every_service_to_its_new_revision(
    live: Ecs, tiny: TinyImages
) -> None:
    new = Release(tiny.image(NEW_SHA), NEW_SHA)
    assert live.serving() == OLD_SHA  # the old image's real container answers
    target = live.target()
    live.deployer(target).deploy(new)
    assert live.serving() == NEW_SHA  # and now the new image's
    web, worker = live.definition("web"), live.definition("worker")
    assert web["family"] == live.families["web"]
    assert worker["family"] == live.families["worker"]
    for process in ("web", "worker"):
        assert live.primary_td(process) != live.old_arns[process]
        definition, tags = live.api.describe_task_definition(live.primary_td(process))
        app = definition["containerDefinitions"][0]
        assert app["image"] == new.image
        assert app["stopTimeout"] == 20
        assert tags["conveyor:git-sha"] == NEW_SHA
        assert tags["conveyor:process"] == process
        assert SENTINEL not in json.dumps(definition, default=str)
        secrets = {s["name"]: s["valueFrom"] for s in app["secrets"]}
        assert secrets["REDIS_URL"] == "/conveyor/staging/redis-url"
        env = {e["name"]: e["value"] for e in app["environment"]}
        assert env["IMAGE_DIGEST"] == new.image
        assert app["logConfiguration"]["options"]["awslogs-stream-prefix"] == process
        assert live.service(process)["deploymentConfiguration"]["deploymentCircuitBreaker"] == {
            "enable": True,
            "rollback": True,
        }
    # The secret reached the real container from moto's Secrets Manager (its digest, never the value).
    with urllib_direct().open(live.url + "/secrets", timeout=5) as response:
        digests = json.loads(response.read())
    assert digests["DATABASE_URL"] == hashlib.sha256(SENTINEL.encode()).hexdigest()
    # The rollout kept 100% of web's 2 tasks healthy and never ran more than 200% (the defaults).
    web_trace = [(n, h) for name, n, h in live.harness.trace if name == "web"]
    assert max(n for n, _ in web_trace) <= 4
    assert min(h for _, h in web_trace) >= 2
    # The release command: one task of web's NEW revision, launched like the web service; its real
    # output is in CloudWatch Logs where awslogs puts it.
    (release,) = live.harness.release_tasks()
    assert release.task_definition_arn == live.primary_td("web")
    assert release.overrides["containerOverrides"] == [
        {"name": "web", "command": ["python", "-m", "app", "migrate"]}
    ]
    assert (release.launch_type, release.platform_version) == ("FARGATE", "1.4.0")
    group = web["containerDefinitions"][0]["logConfiguration"]["options"]["awslogs-group"]
    events = live.boto("logs").get_log_events(logGroupName=group, logStreamName=f"web/web/{release.id}")
    messages = [e["message"] for e in events["events"]]
    assert "applying migration 0001_notes" in messages
    assert "DATABASE_URL set" in messages
    assert live.journal() == [("deploy", "succeeded")]
    current = target.current()
    assert current is not None
    assert (current.ref, current.git_sha) == (live.primary_td("web"), NEW_SHA)


def test_an_image_whose_baked_sha_is_not_the_release_fails_the_smoke_probe_and_rolls_back(
    live: Ecs, tiny: TinyImages
) -> None:
    # The tag and the task definition say NEW_SHA; the image was built from another commit.
    wrong = Release(tiny.image(OTHER_SHA), NEW_SHA)
    with pytest.raises(DeployFailed) as exc:
        live.deploy(wrong, timeout=40)
    message = str(exc.value)
    assert "failed at smoke probe" in message
    assert f"reports git_sha={OTHER_SHA[:12]}, expected {NEW_SHA[:12]}" in message
    assert message.endswith(f"rolled back: serving {OLD_SHA[:12]} again (verified)")
    assert live.serving() == OLD_SHA
    assert live.primary_td("web") == live.old_arns["web"]
    assert live.journal() == [("deploy", "failed"), ("rollback", "succeeded")]


def test_a_crash_looping_worker_is_rolled_back_by_ecs_and_conveyor_rolls_web_back(
    live: Ecs, tiny: TinyImages
) -> None:
    crashing = Release(tiny.image(NEW_SHA, CRASH="worker"), NEW_SHA)
    with pytest.raises(DeployFailed) as exc:
        live.deploy(crashing)
    message = str(exc.value)
    worker = live.families["worker"]
    assert (
        f"failed at wait (worker: ECS rolled the deployment back by itself (circuit breaker or alarm); "
        f"serving {worker}:1 (sha {OLD_SHA[:12]}) ECS deployment circuit breaker: 3 tasks failed to start"
    ) in message
    assert message.endswith(f"rolled back: serving {OLD_SHA[:12]} again (verified)")
    assert live.primary_td("web") == live.old_arns["web"]
    assert live.primary_td("worker") == live.old_arns["worker"]
    for process in ("web", "worker"):
        assert len(live.service(process)["deployments"]) == 1
    assert live.serving() == OLD_SHA
    failures = [e for e in live.harness.events if "web-worker: task" in e and "failed" in e]
    assert len(failures) >= 3
    assert sum("exit 3" in e for e in failures) >= 3, failures  # the real container's exit code
    assert live.journal() == [("deploy", "failed"), ("rollback", "succeeded")]


def test_ecs_rolling_web_back_by_itself_is_a_failure_and_the_old_tasks_kept_serving(
    live: Ecs, tiny: TinyImages
) -> None:
    crashing = Release(tiny.image(NEW_SHA, CRASH="serve"), NEW_SHA)
    with pytest.raises(DeployFailed) as exc:
        live.deploy(crashing)
    message = str(exc.value)
    assert (
        f"web: ECS rolled the deployment back by itself (circuit breaker or alarm); serving "
        f"{live.families['web']}:1 (sha {OLD_SHA[:12]})"
    ) in message
    # What the "services stable" waiter would have accepted: one deployment, all running. Still a failure.
    assert [d["taskDefinition"] for d in live.service("web")["deployments"]] == [live.old_arns["web"]]
    assert live.primary_td("worker") == live.old_arns["worker"]  # conveyor rolled the worker back too
    # minimumHealthyPercent 100: web's two old tasks served throughout; maximumPercent 200: at most 4.
    web_trace = [(n, h) for name, n, h in live.harness.trace if name == "web"]
    assert min(h for _, h in web_trace) >= 2
    assert max(n for n, _ in web_trace) <= 4
    assert live.serving() == OLD_SHA


def test_min_and_max_percent_reach_ecs_and_shape_the_rollout(live: Ecs, tiny: TinyImages) -> None:
    path = live.project.root / "deploy/environments/staging.yaml"
    text = path.read_text()
    # 50%/100% of the worker's one task: ECS could neither stop the old task nor start a new one.
    settings = "  minimum_healthy_percent: 50\n  maximum_percent: 100\n"
    path.write_text(text.replace("  service: web\n", "  service: web\n" + settings))
    live.reload()
    with pytest.raises(ConfigError) as exc:
        live.deploy(Release(tiny.image(NEW_SHA), NEW_SHA))
    assert str(exc.value) == (
        "deploy/environments/staging.yaml:8: ecs.minimum_healthy_percent 50 and ecs.maximum_percent 100 "
        "leave no room to replace the 1 task(s) of service web-worker (at least 1 must stay healthy, at "
        "most 1 may run): raise maximum_percent or lower minimum_healthy_percent"
    )
    live.unchanged()
    assert live.journal() == []  # refused as bad input before anything changed
    # 0%/100%: old tasks are stopped before new ones start, never more than desired at once.
    settings = "  minimum_healthy_percent: 0\n  maximum_percent: 100\n"
    path.write_text(text.replace("  service: web\n", "  service: web\n" + settings))
    live.reload()
    live.deploy(Release(tiny.image(NEW_SHA), NEW_SHA))
    web_trace = [(n, h) for name, n, h in live.harness.trace if name == "web"]
    assert max(n for n, _ in web_trace) <= 2  # maximumPercent 100 of 2: never a third task
    assert min(h for _, h in web_trace) == 0  # minimumHealthyPercent 0: the old ones went first
    assert live.serving() == NEW_SHA


def test_timeout_rolls_back(live: Ecs, tiny: TinyImages) -> None:
    never_ready = Release(tiny.image(NEW_SHA, WORKER_NEVER_READY="1"), NEW_SHA)
    with pytest.raises(DeployFailed) as exc:
        live.deploy(never_ready, timeout=40)
    worker = live.families["worker"]
    assert f"failed at wait (timed out: worker: {worker}:2 rollout IN_PROGRESS, 1/1 running" in str(exc.value)
    assert str(exc.value).endswith(f"rolled back: serving {OLD_SHA[:12]} again (verified)")
    assert live.primary_td("web") == live.old_arns["web"]
    assert live.primary_td("worker") == live.old_arns["worker"]


def test_a_failing_release_command_shows_its_log_and_leaves_every_service_untouched(
    live: Ecs, tiny: TinyImages
) -> None:
    failing = Release(tiny.image(NEW_SHA, MIGRATE_FAILS="1"), NEW_SHA)
    with pytest.raises(DeployFailed) as exc:
        live.deploy(failing)
    assert "failed before apply (release command exited with 1 (Essential container in task exited" in str(
        exc.value
    )
    web, worker = live.families["web"], live.families["worker"]
    assert f"; registered {web}:2, {worker}:2, which no service runs)" in str(exc.value)
    (release,) = live.harness.release_tasks()
    out = live.out.getvalue() if live.out else ""
    assert f"last 3 lines of /conveyor/{live.cluster} web/web/{release.id}:" in out
    assert '  | psycopg.errors.DuplicateTable: relation "notes" already exists' in out
    assert "  | applying migration 0001_notes" in out
    live.unchanged()  # update_service was never called
    assert live.serving() == OLD_SHA
    assert live.journal() == [("deploy", "failed")]


def test_a_release_command_that_outlives_the_timeout_is_stopped(live: Ecs, tiny: TinyImages) -> None:
    slow = Release(tiny.image(NEW_SHA, MIGRATE_SECONDS="120"), NEW_SHA)
    live.setting(timeout=3)
    with pytest.raises(DeployFailed) as exc:
        live.deploy(slow)
    (release,) = live.harness.release_tasks()
    assert f"release task {release.id} did not stop within 3s (stopped it)" in str(exc.value)
    assert release.stopped_reason == "conveyor: did not finish within 3s"
    task = live.harness.tasks[release.id]
    assert task.state == "STOPPED"
    running = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"id={task.containers['web']}"], capture_output=True, text=True
    )
    assert running.stdout.strip() == ""  # the real container is gone
    live.unchanged()


def test_nothing_serving_before_stops_what_ran_nothing_and_restores_the_rest(
    live: Ecs, tiny: TinyImages
) -> None:
    for task in list(live.harness.tasks.values()):  # the web service has run nothing yet
        if task.service == "web":
            live.harness._stop(task, "before the test")
    live.harness.svc("web").deployments[:] = []
    with pytest.raises(DeployFailed) as exc:
        live.deploy(Release(tiny.image(NEW_SHA, CRASH="worker"), NEW_SHA))
    assert str(exc.value).endswith("nothing was serving before, and the failed revision was stopped")
    assert live.harness.svc("web").desired_count == 0
    assert live.primary_td("worker") == live.old_arns["worker"]
    assert len(live.service("worker")["deployments"]) == 1


def test_lock_is_atomic_and_a_second_deploy_is_refused(ecs: Ecs) -> None:
    first, second = SsmLock(ecs.api, "staging", ecs.cfg.project), SsmLock(ecs.api, "staging", ecs.cfg.project)
    assert first.name == f"/conveyor/locks/{ecs.cfg.project}/staging"  # two projects in one account: two
    alice = Owner("alice", "ci-7", 11, "c" * 40)
    first.acquire(alice, ttl=600)
    with pytest.raises(LockHeld, match=r"staging is being deployed by alice@ci-7 \(pid 11"):
        second.acquire(Owner("bob", "laptop", 12, "d" * 40), ttl=600)
    with pytest.raises(LockHeld):
        ecs.deploy(NEW)
    ecs.unchanged()
    first.release(alice)
    assert first.holder() is None


def test_housekeeping_keeps_the_newest_revisions_and_never_one_a_service_runs(ecs: Ecs) -> None:
    ecs.setting(keep_revisions=2)
    target = ecs.target()
    plan = target.plan(NEW)
    for family in ecs.families.values():
        for _ in range(3):  # revisions 2..4 that no service runs
            ecs.boto("ecs").register_task_definition(**{**old_definition(family), "tags": []})
    target.finish(plan)
    for process, family in ecs.families.items():
        kept = [arn.rsplit(":", 1)[1] for arn in ecs.api.list_task_definitions(family)]
        assert kept == ["1", "3", "4"], process  # 1 is what the service runs
    ecs.setting(keep_revisions=1)
    ecs.target().finish(plan)
    for process, family in ecs.families.items():
        kept = [arn.rsplit(":", 1)[1] for arn in ecs.api.list_task_definitions(family)]
        assert kept == ["1", "4"], process


def test_a_sidecar_stays_as_the_template_has_it_and_runs_next_to_the_app(live: Ecs, tiny: TinyImages) -> None:
    family = live.families["web"]
    sidecar_image = tiny.image("sidecar")
    sidecar = {
        "name": "proxy",
        "image": sidecar_image,
        "essential": True,
        "memory": 128,
        "command": ["python", "-m", "app", "sidecar"],
        "environment": [{"name": "ENVOY_LOG_LEVEL", "value": "warn"}],
    }
    live.project.write(
        "deploy/ecs/taskdef.yaml",
        f"""
        family: {family}
        requiresCompatibilities: [FARGATE]
        networkMode: awsvpc
        cpu: "256"
        memory: "512"
        executionRoleArn: arn:aws:iam::${{AWS_ACCOUNT_ID}}:role/demo-execution
        containerDefinitions:
          - {json.dumps(sidecar)}
          - name: app
            essential: true
            memory: 384
            portMappings:
              - {{containerPort: 8000}}
            environment:
              - {{name: LOG_LEVEL, value: debug}}
              - {{name: FROM_TEMPLATE, value: "yes"}}
            secrets:
              - {{name: SENTRY_DSN, valueFrom: "arn:aws:ssm:{REGION}:123456789012:parameter/sentry"}}
        """,
    )
    live.boto("ssm").put_parameter(Name="/sentry", Value="https://sentry.example.test/1", Type="SecureString")
    path = live.project.root / "deploy/environments/staging.yaml"
    path.write_text(path.read_text().replace("  service: web\n", "  service: web\n  container: app\n"))
    live.reload()
    new = Release(tiny.image(NEW_SHA), NEW_SHA)
    live.deploy(new)
    for process in ("web", "worker"):
        proxy, app = live.definition(process)["containerDefinitions"]
        assert {k: v for k, v in proxy.items() if k in sidecar} == sidecar
        assert not proxy.get("secrets")
        assert "stopTimeout" not in proxy
        assert app["image"] == new.image
        env = {e["name"]: e["value"] for e in app["environment"]}
        assert env == {
            "LOG_LEVEL": "info",
            "FROM_TEMPLATE": "yes",
            "IMAGE_DIGEST": new.image,
            "CONVEYOR_SHUTDOWN_TIMEOUT": "20",  # deploy.shutdown_timeout, on every target
        }
        assert sorted(s["name"] for s in app["secrets"]) == ["DATABASE_URL", "REDIS_URL", "SENTRY_DSN"]
    (release,) = live.harness.release_tasks()
    assert release.overrides["containerOverrides"][0]["name"] == "app"
    assert [c.name for c in release.containers] == ["proxy", "app"]
    assert [c.exitCode for c in release.containers] == [0, 0]
    running = [t for t in live.harness.targets() if "proxy" in t.containers]
    assert len(running) == 2  # web's tasks run the sidecar next to the app, for real
    assert live.serving() == NEW_SHA


# --- the command line ----------------------------------------------------------------------------


def write_release(project: Project) -> None:
    project.write(
        "build/release.json",
        json.dumps(
            {
                "refs": ["conveyor-demo:" + NEW_SHA[:12]],
                "image_id": "sha256:" + "9" * 64,
                "git_sha": NEW_SHA,
                "dirty": False,
                "target": "runtime",
                "pushed": {"staging": NEW.image},
            }
        ),
    )


def registered(ecs: Ecs) -> dict[str, list[str]]:
    return {family: ecs.api.list_task_definitions(family) for family in ecs.families.values()}


def test_cli_plan_is_the_live_diff_and_change_nothing(ecs: Ecs) -> None:
    write_release(ecs.project)
    before = registered(ecs)
    result = ecs.project.invoke("plan", "--env", "staging")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "plan for staging (target ecs)" in result.stdout
    assert f"deploying   : {NEW_SHA[:12]} ({NEW.image})" in result.stdout
    assert f"serving now : {OLD_SHA[:12]}" in result.stdout
    assert "~ worker: image:" in result.stdout
    assert SENTINEL not in result.stdout + result.stderr
    assert registered(ecs) == before
    ecs.unchanged()


def offline(project: Project) -> dict[str, str]:
    """No credentials anywhere, and the endpoint a closed port: any AWS call would fail loudly."""
    path = project.root / "deploy/environments/staging.yaml"
    text = path.read_text()
    path.write_text(text.replace(text.split("endpoint_url: ", 1)[1].split("\n", 1)[0], "http://127.0.0.1:9"))
    home = project.root / "home"
    home.mkdir(exist_ok=True)
    return {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_PROFILE": "", "HOME": str(home)}


def test_a_dry_plan_renders_and_validates_offline_and_says_not_connected(ecs: Ecs) -> None:
    write_release(ecs.project)
    before = registered(ecs)
    env = offline(ecs.project)
    for args in (["plan", "--env", "staging", "--dry"], ["--dry", "deploy", "--env", "staging"]):
        result = ecs.project.invoke(*args, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        assert "serving now : unknown (NOT CONNECTED: no AWS call under --dry)" in out
        assert "step: NOT CONNECTED (--dry: no credentials used, no AWS call)" in out
        assert f"~ web: image: unknown -> {NEW.image}" in out
        assert "~ worker: command: unknown -> python -m app worker" in out
        assert "~ web: service deploymentCircuitBreaker: unknown -> enable+rollback" in out
        # The rendered task definitions, as they would be registered (secrets as references).
        assert '"stopTimeout": 20' in out
        assert (
            '"valueFrom": "arn:aws:secretsmanager:eu-west-1:${AWS_ACCOUNT_ID}:secret:'
            'conveyor/staging/db:url::"' in out
        )
        assert '"valueFrom": "/conveyor/staging/redis-url"' in out
        assert "[dry] stopping after the plan: nothing was changed" in out
        assert SENTINEL not in out + result.stderr
    assert registered(ecs) == before
    ecs.unchanged()


def test_a_dry_plan_still_refuses_a_definition_ecs_would_refuse(ecs: Ecs) -> None:
    write_release(ecs.project)
    env = offline(ecs.project)
    path = ecs.project.root / "deploy/ecs/taskdef.yaml"
    path.write_text(path.read_text().replace('cpu: "256"', "cpu: 256"))
    result = ecs.project.invoke("plan", "--env", "staging", "--dry", env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == (
        "conveyor: deploy/ecs/taskdef.yaml (process web): the rendered task definition is refused by the ECS "
        "model: Invalid type for parameter cpu, value: 256, type: <class 'int'>, valid types: <class 'str'>"
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("secrets:\n  DATABASE_URL: aws-sm:conveyor/staging/db#url", "secrets:\n  DATABASE_URL: env:DB"),
            "ECS reads secrets by reference from Secrets Manager or SSM only",
        ),
        (('cpu: "256"', 'cpu: "256"\nmemmory: "512"'), "unknown key `memmory`; did you mean `memory`?"),
        (('memory: "512"', 'memory: "4096"'), "Fargate cpu 256 allows memory 512-2048 MiB"),
        (("service: web", "service: ''"), "target ecs needs key `ecs.service`"),
        (
            ("service: web", "service: web\n  container: nope"),
            "deploy/ecs/taskdef.yaml: ecs.container `nope` names no container of the template "
            "(containers: web)",
        ),
        (
            ("service: web", "service: web\n  task_definition: deploy/ecs/missing.yaml"),
            "deploy/ecs/missing.yaml: no such task definition template",
        ),
        (
            ("service: web", "service: web\n  minimum_healthy_percent: 150"),
            "deploy/environments/staging.yaml:7: `ecs.minimum_healthy_percent` must be 0-100 "
            "(% of desired tasks kept running), got 150",
        ),
        (
            ("service: web", "service: web\n  maximum_percent: 100"),
            "`ecs.maximum_percent` must be above ecs.minimum_healthy_percent (100), or no task can ever "
            "be replaced, got 100",
        ),
        (
            ("service: web", "service: web\n  health_check_grace: -5"),
            "deploy/environments/staging.yaml:7: `ecs.health_check_grace` must be 0 or more, got -5",
        ),
        (
            ("target: ecs", "target: ecs\ndeploy:\n  keep_revisions: 0"),
            "deploy/environments/staging.yaml:3: `deploy.keep_revisions` must be 1 or more, got 0",
        ),
        (
            ("target: ecs", "target: ecs\ndeploy:\n  shutdown_timeout: 300"),
            "`deploy.shutdown_timeout` is the app container's stopTimeout, which Fargate allows up to "
            "120 s, got 300",
        ),
        (
            ("taskRoleArn: arn:aws:iam::${AWS_ACCOUNT_ID}:role/", "taskRoleArn: arn:aws:iam::role/"),
            "deploy/ecs/taskdef.yaml: `taskRoleArn` must be an IAM role ARN",
        ),
        (
            ("cpuArchitecture: X86_64", "cpuArchitecture: ARM"),
            "runtimePlatform.cpuArchitecture must be one of X86_64, ARM64, got 'ARM'",
        ),
        (
            ('awslogs-create-group: "true"', "awslogs-create-group: true"),
            "containerDefinitions[0] (web): logConfiguration.options.awslogs-create-group must be a string "
            '(quote it: "True"), got a boolean',
        ),
        (
            ("awslogs-group: /conveyor/", "awslogs-grup: /conveyor/"),
            "the awslogs driver needs logConfiguration.options.awslogs-group",
        ),
        (
            ("essential: true", "essential: true\n    stopTimeout: 60"),
            "container web: `stopTimeout` of the app container comes from deploy.shutdown_timeout",
        ),
        (
            ("executionRoleArn: arn:aws:iam::${AWS_ACCOUNT_ID}:role/conveyor-demo-execution", ""),
            "container web uses awslogs or secrets, which Fargate reaches with the task execution role",
        ),
    ],
)
def test_bad_input_is_refused_before_any_api_call(ecs: Ecs, edit: tuple[str, str], message: str) -> None:
    write_release(ecs.project)
    # Point at a closed port: if anything reached AWS, the error would be a connection failure instead.
    for rel in ("deploy/environments/staging.yaml", "deploy/ecs/taskdef.yaml"):
        path = ecs.project.root / rel
        text = path.read_text().replace(ecs.cfg.env.ecs.endpoint_url, "http://127.0.0.1:9")
        path.write_text(text.replace(*edit))
    result = ecs.project.invoke("deploy", "--env", "staging")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]


def test_an_unknown_app_container_changes_nothing_in_aws(ecs: Ecs) -> None:
    write_release(ecs.project)
    path = ecs.project.root / "deploy/environments/staging.yaml"
    path.write_text(path.read_text().replace("  service: web\n", "  service: web\n  container: nope\n"))
    before = registered(ecs)
    result = ecs.project.invoke("deploy", "--env", "staging")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "conveyor: deploy/ecs/taskdef.yaml: ecs.container `nope` names no container of the template "
        "(containers: web)"
    )
    assert registered(ecs) == before
    assert ecs.harness.release_tasks() == []
    assert SsmLock(ecs.api, "staging", ecs.cfg.project).holder() is None
    ecs.unchanged()


def test_a_process_without_a_service_is_refused_before_anything_is_registered(ecs: Ecs) -> None:
    ecs.project.write("invoke.yaml", INVOKE_YAML.replace("  release:", "    beat: {}\n  release:"))
    ecs.reload()
    before = registered(ecs)
    message = (
        f"process beat: ECS service web-beat does not exist in cluster {ecs.cluster} "
        "(create it, or map the process in `ecs.services`)"
    )
    with pytest.raises(ConfigError) as exc:
        ecs.deployer(ecs.target()).deploy(NEW)
    assert str(exc.value) == message
    assert SsmLock(ecs.api, "staging", ecs.cfg.project).holder() is None  # the lock was released
    write_release(ecs.project)
    result = ecs.project.invoke("plan", "--env", "staging")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"conveyor: {message}"
    assert registered(ecs) == before
    assert ecs.api.list_task_definitions(f"{ecs.families['web']}-beat") == []
    assert ecs.harness.release_tasks() == []
    ecs.unchanged()


def test_no_credentials_and_no_endpoint(ecs: Ecs, tmp_path: Path) -> None:
    write_release(ecs.project)
    path = ecs.project.root / "deploy/environments/staging.yaml"
    path.write_text(path.read_text().replace(f"endpoint_url: {ecs.cfg.env.ecs.endpoint_url}", ""))
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "HOME": str(tmp_path), "AWS_PROFILE": ""}
    result = ecs.project.invoke("deploy", "--env", "staging", env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "conveyor: no AWS credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID, ~/.aws/credentials) "
        "and no endpoint_url"
    )


class RecordingEngine:
    """A fake of OUR DockerEngine interface: records what the login received."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.logins: list[tuple[str, str, str]] = []

    def login(self, registry: str, username: str, password: str) -> None:
        self.runner.redact.register(password)
        self.logins.append((registry, username, password))


def test_ecr_repository_created_and_login_through_the_sdk(ecs: Ecs) -> None:
    from conveyor.images import ecr_prepare, is_ecr

    registry = f"123456789012.dkr.ecr.{REGION}.amazonaws.com"
    assert is_ecr(registry)
    assert not is_ecr("127.0.0.1:5000")
    out = io.StringIO()
    runner = Runner(out=out)
    engine = RecordingEngine(runner)
    name = f"app-{uuid.uuid4().hex[:6]}"
    ecr_prepare(runner, engine, ecs.boto, registry, name)  # type: ignore[arg-type]
    repos = ecs.boto("ecr").describe_repositories(repositoryNames=[name])["repositories"]
    assert repos[0]["repositoryName"] == name
    assert engine.logins[0][:2] == (registry, "AWS")
    password = engine.logins[0][2]
    assert password
    assert f"created ECR repository {name}" in out.getvalue()
    assert password not in out.getvalue()
    assert runner.redact(f"token {password}") == "token ***"
    ecr_prepare(runner, engine, ecs.boto, registry, name)  # exists now: no second create
    assert out.getvalue().count("created ECR repository") == 1


def test_promote_refuses_a_digest_without_sbom_before_touching_the_target(ecs: Ecs) -> None:
    text = (ecs.project.root / "deploy/environments/staging.yaml").read_text()
    ecs.project.write(
        "deploy/environments/production.yaml", text.replace(ecs.cfg.env.ecs.cluster, "prod-cluster")
    )
    result = ecs.project.invoke("promote", "--from", "staging", "--to", "production")
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == "conveyor: sha256:111111111111... has no SBOM in reports/sbom/: build and push it with conveyor"
    )
    assert ecs.boto("ecs").list_clusters()["clusterArns"].count("prod-cluster") == 0
