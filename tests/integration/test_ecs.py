"""The ECS target against moto server over HTTP, with tests/ecs_harness.py playing ECS's rollouts.

The project deploys two processes (web: HTTP, worker: a command with a healthcheck) to two services, and
runs a release command first.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from conveyor import config
from conveyor.aws import AwsClients
from conveyor.deploy.ecs import EcsApi, EcsDeployTarget, SsmLock, load_template
from conveyor.deploy.journal import FileJournal
from conveyor.deploy.model import Deployer, DeployFailed, LockHeld, Owner, Release
from conveyor.errors import ConfigError
from conveyor.runner import Runner
from tests.conftest import REPO, Project, engine_missing
from tests.ecs_harness import EcsRollout

pytestmark = pytest.mark.aws
REGION = "eu-west-1"
SENTINEL = f"sentinel-db-password-{uuid.uuid4().hex}"
OLD_SHA, NEW_SHA = "a" * 40, "b" * 40
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


@dataclass
class Ecs:
    project: Project
    cfg: config.Config
    api: EcsApi
    harness: EcsRollout
    boto: Any
    old_arns: dict[str, str]  # process -> the task definition its service ran before the test
    families: dict[str, str]  # process -> task definition family

    @property
    def cluster(self) -> str:
        return self.cfg.env.ecs.cluster

    def reload(self) -> None:
        """Read the project's configuration again (after a test edited a file)."""
        self.cfg = config.load(self.project.root, "staging", environ=os.environ)

    def target(self, **kwargs: Any) -> EcsDeployTarget:
        path = self.project.root / self.cfg.env.ecs.task_definition
        return EcsDeployTarget(
            Runner(out=io.StringIO()),
            self.api,
            self.cfg,
            template=load_template(path),
            deployer="tester",
            sleep=self.harness.sleep,
            clock=self.harness.clock,
            **kwargs,
        )

    def deployer(self, target: EcsDeployTarget) -> Deployer:
        return Deployer(
            target=target,
            runner=target.runner,
            journal=FileJournal(self.project.root, "staging"),
            env="staging",
            timeout=120,
            lock_ttl=600,
            contract=self.cfg.app,
            url=self.cfg.env.url,
            probe=self.harness.probe,
            clock=self.harness.clock,
            sleep=self.harness.sleep,
        )

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


def old_definition(family: str, **container: Any) -> dict[str, Any]:
    return {
        "family": family,
        "containerDefinitions": [{"name": "web", "image": OLD_IMAGE, "memory": 512, **container}],
        "requiresCompatibilities": ["FARGATE"],
        "networkMode": "awsvpc",
        "cpu": "256",
        "memory": "512",
        "tags": [{"key": "conveyor:git-sha", "value": OLD_SHA}],
    }


@pytest.fixture
def ecs(moto_endpoint: str, tmp_path: Path) -> Iterator[Ecs]:
    cluster = f"c-{uuid.uuid4().hex[:8]}"
    project = Project(tmp_path)
    project.write("tasks.py", "from conveyor.tasks import namespace\n\nns = namespace()\n")
    project.write("invoke.yaml", INVOKE_YAML)
    project.write("deploy/environments/staging.yaml", env_yaml(moto_endpoint, cluster))
    family = f"conveyor-demo-{cluster}"  # one family per test: revision numbers start at 1
    families = {"web": family, "worker": f"{family}-worker"}
    template = (
        (REPO / "deploy/ecs/taskdef.yaml").read_text().replace("family: conveyor-demo", f"family: {family}")
    )
    project.write("deploy/ecs/taskdef.yaml", template)
    cfg = config.load(tmp_path, "staging", environ=os.environ)
    clients = AwsClients(cfg.env.ecs, os.environ)
    boto = clients
    ec2 = boto("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=cluster, Description="web", VpcId=vpc)["GroupId"]
    secret_name = "conveyor/staging/db"
    with contextlib.suppress(Exception):  # created by an earlier test of this module (same server)
        boto("secretsmanager").create_secret(Name=secret_name, SecretString=json.dumps({"url": SENTINEL}))
    boto("ssm").put_parameter(
        Name="/conveyor/staging/redis-url", Value="redis://cache:6379/0", Type="SecureString", Overwrite=True
    )
    boto("ecs").create_cluster(clusterName=cluster)
    # The web revision has a variable the new one drops (a removal the plan must show).
    old = {
        "web": old_definition(family, environment=[{"name": "OLD_ONLY", "value": "1"}]),
        "worker": old_definition(families["worker"]),
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
    harness = EcsRollout(REGION, cluster, [SERVICES["web"], SERVICES["worker"]])
    harness.settle()
    try:
        yield Ecs(project, cfg, EcsApi(clients), harness, boto, old_arns, families)
    finally:
        harness.close()


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
        assert f"~ {process}: service deploymentCircuitBreaker" in text
    assert "~ web: command: (the image CMD) -> python -m app serve" in text
    assert "~ worker: command: (the image CMD) -> python -m app worker" in text
    assert "~ web: env OLD_ONLY: 1 -> (removed)" in text
    assert "~ worker: healthCheck: - -> CMD python -m app healthcheck-worker" in text
    assert "~ worker: ports" not in text
    assert ":url::" in text
    assert f"step: register task definitions {ecs.families['web']}, {ecs.families['worker']}" in text
    assert (
        f"step: run_task {ecs.families['web']} (FARGATE 1.4.0), container web: python -m app migrate" in text
    )
    assert f"step: update_service {ecs.cluster}/web-worker (worker)" in text
    assert SENTINEL not in text
    assert SENTINEL not in json.dumps([r.definition for r in plan.detail.processes])
    ecs.unchanged()


def test_deploy_runs_the_release_command_then_moves_every_service_to_its_new_revision(ecs: Ecs) -> None:
    target = ecs.target()
    ecs.deployer(target).deploy(NEW)
    web, worker = ecs.definition("web"), ecs.definition("worker")
    assert web["family"] == ecs.families["web"]
    assert worker["family"] == ecs.families["worker"]
    for process in ("web", "worker"):
        assert ecs.primary_td(process) != ecs.old_arns[process]
        definition, tags = ecs.api.describe_task_definition(ecs.primary_td(process))
        app = definition["containerDefinitions"][0]
        assert app["image"] == NEW.image
        assert tags["conveyor:git-sha"] == NEW_SHA
        assert tags["conveyor:deployer"] == "tester"
        assert tags["conveyor:process"] == process
        assert SENTINEL not in json.dumps(definition, default=str)
        secrets = {s["name"]: s["valueFrom"] for s in app["secrets"]}
        assert secrets["REDIS_URL"] == "/conveyor/staging/redis-url"
        env = {e["name"]: e["value"] for e in app["environment"]}
        assert env["IMAGE_DIGEST"] == NEW.image
        assert app["logConfiguration"]["options"]["awslogs-stream-prefix"] == process
        assert ecs.service(process)["deploymentConfiguration"]["deploymentCircuitBreaker"] == {
            "enable": True,
            "rollback": True,
        }
    web_app, worker_app = web["containerDefinitions"][0], worker["containerDefinitions"][0]
    assert web_app["command"] == ["python", "-m", "app", "serve"]
    assert web_app["portMappings"][0]["containerPort"] == 8000
    assert "urlopen" in " ".join(web_app["healthCheck"]["command"])
    assert worker_app["command"] == ["python", "-m", "app", "worker"]
    assert not worker_app.get("portMappings")
    assert worker_app["healthCheck"]["command"] == ["CMD", "python", "-m", "app", "healthcheck-worker"]
    # The release command: one task of web's NEW revision, launched like the web service.
    (release,) = ecs.harness.release_tasks()
    assert release.task_definition_arn == ecs.primary_td("web")
    assert release.overrides["containerOverrides"] == [
        {"name": "web", "command": ["python", "-m", "app", "migrate"]}
    ]
    assert release.launch_type == "FARGATE"
    assert release.platform_version == "1.4.0"
    subnets = ecs.service("web")["networkConfiguration"]["awsvpcConfiguration"]["subnets"]
    assert release.network_configuration["awsvpcConfiguration"]["subnets"] == subnets
    journal = FileJournal(ecs.project.root, "staging").entries()
    assert [(e["action"], e["result"], e["git_sha"]) for e in journal] == [("deploy", "succeeded", NEW_SHA)]
    current = target.current()
    assert current is not None
    assert (current.ref, current.git_sha) == (ecs.primary_td("web"), NEW_SHA)


def test_live_history_lists_each_family_with_its_tags(ecs: Ecs) -> None:
    target = ecs.target()
    ecs.deployer(target).deploy(NEW)
    lines = target.live_history()
    web, worker = ecs.families["web"], ecs.families["worker"]
    assert lines[0] == f"web (service web, family {web}):"
    assert lines[1].startswith(f"  * {web}:2")
    assert NEW_SHA[:12] in lines[1]
    assert "tester" in lines[1]
    assert lines[2].startswith(f"    {web}:1")
    assert OLD_SHA[:12] in lines[2]
    assert lines[3] == f"worker (service web-worker, family {worker}):"
    assert lines[4].startswith(f"  * {worker}:2")
    assert lines[5].startswith(f"    {worker}:1")
    assert len(lines) == 6  # the prefix-matching family list did not mix the two families


def test_a_failing_worker_rolls_every_service_back(ecs: Ecs) -> None:
    ecs.harness.scenarios["web"].extend(["succeed", "succeed"])
    ecs.harness.scenarios["web-worker"].extend(["fail", "succeed"])
    with pytest.raises(DeployFailed) as exc:
        ecs.deployer(ecs.target()).deploy(NEW)
    worker = ecs.families["worker"]
    assert f"failed at wait (worker: 3 tasks of {worker}:2 failed to start (limit 3))" in str(exc.value)
    assert str(exc.value).endswith(f"rolled back: serving {OLD_SHA[:12]} again (verified)")
    assert ecs.primary_td("web") == ecs.old_arns["web"]
    assert ecs.primary_td("worker") == ecs.old_arns["worker"]
    for process in ("web", "worker"):
        assert len(ecs.service(process)["deployments"]) == 1
    journal = FileJournal(ecs.project.root, "staging").entries()
    assert [(e["action"], e["result"]) for e in journal] == [("deploy", "failed"), ("rollback", "succeeded")]


def test_ecs_circuit_breaker_rollback_is_a_failure_not_a_success(ecs: Ecs) -> None:
    ecs.harness.scenarios["web"].extend(["ecs-rollback"])
    with pytest.raises(DeployFailed) as exc:
        ecs.deployer(ecs.target(max_failed_tasks=50)).deploy(NEW)
    assert f"web: ECS rolled the deployment back to {ecs.families['web']}:1 (circuit breaker)" in str(
        exc.value
    )
    # What the "services stable" waiter would have accepted: one deployment, all running. Still a failure.
    assert ecs.service("web")["deployments"][0]["taskDefinition"] == ecs.old_arns["web"]
    assert ecs.primary_td("web") == ecs.old_arns["web"]
    assert ecs.primary_td("worker") == ecs.old_arns["worker"]  # ours rolled the worker back too


def test_timeout_rolls_back(ecs: Ecs) -> None:
    ecs.harness.scenarios["web-worker"].extend(["stuck", "succeed"])
    with pytest.raises(DeployFailed) as exc:
        ecs.deployer(ecs.target()).deploy(NEW)
    worker = ecs.families["worker"]
    assert f"failed at wait (timed out: worker: {worker}:2 rollout IN_PROGRESS, 0/1 running" in str(exc.value)
    assert str(exc.value).endswith(f"rolled back: serving {OLD_SHA[:12]} again (verified)")
    assert ecs.primary_td("web") == ecs.old_arns["web"]
    assert ecs.primary_td("worker") == ecs.old_arns["worker"]


def test_a_failing_release_command_leaves_every_service_untouched(ecs: Ecs) -> None:
    ecs.harness.fail_release = True
    with pytest.raises(DeployFailed) as exc:
        ecs.deployer(ecs.target()).deploy(NEW)
    assert "failed before apply (release command exited with 1 (Essential container in task exited))" in str(
        exc.value
    )
    ecs.unchanged()  # update_service was never called
    journal = FileJournal(ecs.project.root, "staging").entries()
    assert [(e["action"], e["result"]) for e in journal] == [("deploy", "failed")]


def test_a_release_command_that_outlives_the_timeout_is_stopped(ecs: Ecs) -> None:
    # moto's task needs four DescribeTasks to reach STOPPED; with timeout 0 the second one is too late.
    ecs.cfg = replace(ecs.cfg, env=replace(ecs.cfg.env, deploy=replace(ecs.cfg.env.deploy, timeout=0)))
    with pytest.raises(DeployFailed) as exc:
        ecs.deployer(ecs.target()).deploy(NEW)
    (release,) = ecs.harness.release_tasks()
    assert f"release task {release.id} did not stop within 0s (stopped it)" in str(exc.value)
    assert release.stopped_reason == "conveyor: did not finish within 0s"
    ecs.unchanged()


def test_nothing_serving_before_stops_what_ran_nothing_and_restores_the_rest(ecs: Ecs) -> None:
    ecs.harness.svc("web").deployments[:] = []  # the web service has run nothing yet
    ecs.harness.scenarios["web-worker"].extend(["fail", "succeed"])
    with pytest.raises(DeployFailed) as exc:
        ecs.deployer(ecs.target()).deploy(NEW)
    assert str(exc.value).endswith("nothing was serving before, and the failed revision was stopped")
    assert ecs.harness.svc("web").desired_count == 0
    assert ecs.primary_td("worker") == ecs.old_arns["worker"]
    assert len(ecs.service("worker")["deployments"]) == 1


def test_lock_is_atomic_and_a_second_deploy_is_refused(ecs: Ecs) -> None:
    first, second = SsmLock(ecs.api, "staging", ecs.cfg.project), SsmLock(ecs.api, "staging", ecs.cfg.project)
    assert (
        first.name == f"/conveyor/locks/{ecs.cfg.project}/staging"
    )  # two projects in one account: two locks
    alice = Owner("alice", "ci-7", 11, "c" * 40)
    first.acquire(alice, ttl=600)
    with pytest.raises(LockHeld, match=r"staging is being deployed by alice@ci-7 \(pid 11"):
        second.acquire(Owner("bob", "laptop", 12, "d" * 40), ttl=600)
    target = ecs.target()
    with pytest.raises(LockHeld):
        ecs.deployer(target).deploy(NEW)
    ecs.unchanged()
    first.release(alice)
    assert first.holder() is None


def test_old_revisions_are_deregistered_per_family_keeping_the_newest(ecs: Ecs) -> None:
    for i in range(6):
        ecs.deployer(ecs.target()).deploy(Release(NEW.image[:-1] + str(i), f"{i}" * 40))
    for process, family in ecs.families.items():
        active = ecs.api.list_task_definitions(family)
        assert len(active) == ecs.cfg.env.deploy.keep_revisions, process
        assert active[-1] == ecs.primary_td(process)


def test_housekeeping_never_deregisters_a_revision_a_service_runs(ecs: Ecs) -> None:
    ecs.cfg = replace(ecs.cfg, env=replace(ecs.cfg.env, deploy=replace(ecs.cfg.env.deploy, keep_revisions=2)))
    target = ecs.target()
    plan = target.plan(NEW)
    for family in ecs.families.values():
        for _ in range(3):  # revisions 2..4 that no service runs
            ecs.boto("ecs").register_task_definition(**{**old_definition(family), "tags": []})
    target.finish(plan)
    for process, family in ecs.families.items():
        kept = [arn.rsplit(":", 1)[1] for arn in ecs.api.list_task_definitions(family)]
        assert kept == ["1", "3", "4"], process  # 1 is what the service runs


def test_a_sidecar_keeps_its_image_and_only_the_app_container_gets_env_and_secrets(ecs: Ecs) -> None:
    family = ecs.families["web"]
    ecs.project.write(
        "deploy/ecs/taskdef.yaml",
        f"""
        family: {family}
        requiresCompatibilities: [FARGATE]
        networkMode: awsvpc
        cpu: "256"
        memory: "512"
        containerDefinitions:
          - name: proxy
            image: envoyproxy/envoy:v1.30.1
            essential: true
            memory: 128
            environment:
              - {{name: ENVOY_LOG_LEVEL, value: warn}}
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
    path = ecs.project.root / "deploy/environments/staging.yaml"
    path.write_text(path.read_text().replace("  service: web\n", "  service: web\n  container: app\n"))
    ecs.reload()
    ecs.deployer(ecs.target()).deploy(NEW)
    for process in ("web", "worker"):
        proxy, app = ecs.definition(process)["containerDefinitions"]
        assert proxy["name"] == "proxy"
        assert proxy["image"] == "envoyproxy/envoy:v1.30.1"
        assert proxy["environment"] == [{"name": "ENVOY_LOG_LEVEL", "value": "warn"}]
        assert not proxy.get("secrets")
        assert app["image"] == NEW.image
        env = {e["name"]: e["value"] for e in app["environment"]}
        assert env == {"LOG_LEVEL": "info", "FROM_TEMPLATE": "yes", "IMAGE_DIGEST": NEW.image}
        assert sorted(s["name"] for s in app["secrets"]) == ["DATABASE_URL", "REDIS_URL", "SENTRY_DSN"]
    (release,) = ecs.harness.release_tasks()
    assert release.overrides["containerOverrides"][0]["name"] == "app"


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


def test_cli_plan_and_dry_deploy_print_a_truthful_plan_and_change_nothing(ecs: Ecs) -> None:
    write_release(ecs.project)
    before = registered(ecs)
    for args in (["plan", "--env", "staging"], ["--dry", "deploy", "--env", "staging"]):
        result = ecs.project.invoke(*args)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "plan for staging (target ecs)" in result.stdout
        assert f"deploying   : {NEW_SHA[:12]} ({NEW.image})" in result.stdout
        assert f"serving now : {OLD_SHA[:12]}" in result.stdout
        assert "~ worker: image:" in result.stdout
        assert SENTINEL not in result.stdout + result.stderr
    assert registered(ecs) == before
    ecs.unchanged()


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
