"""The ECS target against moto server over HTTP, with tests/ecs_harness.py playing ECS's rollouts."""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conveyor import config
from conveyor.aws import AwsClients
from conveyor.deploy.ecs import EcsApi, EcsDeployTarget, SsmLock, load_template
from conveyor.deploy.journal import FileJournal
from conveyor.deploy.model import Deployer, DeployFailed, LockHeld, Owner, Release
from conveyor.runner import Runner
from tests.conftest import REPO, Project, engine_missing
from tests.ecs_harness import EcsRollout

pytestmark = pytest.mark.aws
REGION = "eu-west-1"
SENTINEL = f"sentinel-db-password-{uuid.uuid4().hex}"
OLD_SHA, NEW_SHA = "a" * 40, "b" * 40


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
    old_arn: str
    family: str

    def target(self, **kwargs: Any) -> EcsDeployTarget:
        template = load_template(self.project.root / "deploy/ecs/taskdef.yaml")
        return EcsDeployTarget(
            Runner(out=io.StringIO()),
            self.api,
            self.cfg,
            template=template,
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
            probe=self.harness.probe,
            clock=self.harness.clock,
            sleep=self.harness.sleep,
        )

    def primary_td(self) -> str:
        service = self.boto("ecs").describe_services(cluster=self.cfg.env.ecs.cluster, services=["web"])[
            "services"
        ][0]
        return next(d["taskDefinition"] for d in service["deployments"] if d["status"] == "PRIMARY")


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


@pytest.fixture
def ecs(moto_endpoint: str, tmp_path: Path) -> Iterator[Ecs]:
    cluster = f"c-{uuid.uuid4().hex[:8]}"
    project = Project(tmp_path)
    project.write("tasks.py", "from conveyor.tasks import namespace\n\nns = namespace()\n")
    project.write(
        "invoke.yaml", "conveyor:\n  project:\n    name: conveyor-demo\n  image:\n    name: conveyor-demo\n"
    )
    project.write("deploy/environments/staging.yaml", env_yaml(moto_endpoint, cluster))
    family = f"conveyor-demo-{cluster}"  # one family per test: revision numbers start at 1
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
    old = boto("ecs").register_task_definition(
        family=family,
        containerDefinitions=[
            {
                "name": "web",
                "image": "registry.example.test/team/conveyor-demo@sha256:" + "1" * 64,
                "memory": 512,
            }
        ],
        requiresCompatibilities=["FARGATE"],
        networkMode="awsvpc",
        cpu="256",
        memory="512",
        tags=[{"key": "conveyor:git-sha", "value": OLD_SHA}],
    )["taskDefinition"]["taskDefinitionArn"]
    boto("ecs").create_service(
        cluster=cluster,
        serviceName="web",
        taskDefinition=old,
        desiredCount=2,
        launchType="FARGATE",
        networkConfiguration={"awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group]}},
    )
    harness = EcsRollout(REGION, cluster, "web")
    harness.settle()
    try:
        yield Ecs(project, cfg, EcsApi(clients), harness, boto, old, family)
    finally:
        harness.close()


NEW = Release("registry.example.test/team/conveyor-demo@sha256:" + "2" * 64, NEW_SHA)


def test_plan_shows_the_diff_and_never_a_secret_value(ecs: Ecs) -> None:
    plan = ecs.target().plan(NEW)
    text = "\n".join(plan.render())
    assert plan.current is not None
    assert plan.current.git_sha == OLD_SHA
    assert "~ image: registry.example.test/team/conveyor-demo@sha256:1111" in text
    assert "~ secret DATABASE_URL (valueFrom): - -> arn:aws:secretsmanager:" in text
    assert ":url::" in text
    assert "~ service deploymentCircuitBreaker" in text
    assert SENTINEL not in text
    assert SENTINEL not in json.dumps(plan.detail)


def test_deploy_registers_migrates_updates_and_waits_for_our_primary(ecs: Ecs) -> None:
    ecs.harness.scenarios.extend(["succeed"])
    target = ecs.target()
    ecs.deployer(target).deploy(NEW)
    primary = ecs.primary_td()
    definition, tags = ecs.api.describe_task_definition(primary)
    assert definition["containerDefinitions"][0]["image"] == NEW.image
    assert tags["conveyor:git-sha"] == NEW_SHA
    assert tags["conveyor:deployer"] == "tester"
    assert SENTINEL not in json.dumps(definition, default=str)
    secrets = {s["name"]: s["valueFrom"] for s in definition["containerDefinitions"][0]["secrets"]}
    assert secrets["REDIS_URL"] == "/conveyor/staging/redis-url"
    migrations = [
        t
        for t in ecs.harness.backend.tasks[ecs.cfg.env.ecs.cluster].values()
        if t.started_by == "conveyor-migrate"
    ]
    assert len(migrations) == 1
    assert migrations[0].overrides["containerOverrides"][0]["command"] == ["python", "-m", "app", "migrate"]
    journal = FileJournal(ecs.project.root, "staging").entries()
    assert [(e["action"], e["result"], e["git_sha"]) for e in journal] == [("deploy", "succeeded", NEW_SHA)]
    assert target.current() is not None
    assert target.current().git_sha == NEW_SHA  # type: ignore[union-attr]
    svc = ecs.boto("ecs").describe_services(cluster=ecs.cfg.env.ecs.cluster, services=["web"])["services"][0]
    assert svc["deploymentConfiguration"]["deploymentCircuitBreaker"] == {"enable": True, "rollback": True}


def test_live_history_lists_revisions_with_their_tags(ecs: Ecs) -> None:
    ecs.harness.scenarios.extend(["succeed"])
    target = ecs.target()
    ecs.deployer(target).deploy(NEW)
    lines = target.live_history()
    assert lines[0].startswith(f"* {ecs.family}:2")
    assert NEW_SHA[:12] in lines[0]
    assert "tester" in lines[0]
    assert lines[1].startswith(f"  {ecs.family}:1")
    assert OLD_SHA[:12] in lines[1]


def test_failing_tasks_fail_fast_and_our_rollback_wins(ecs: Ecs) -> None:
    ecs.harness.scenarios.extend(["fail", "succeed"])
    with pytest.raises(DeployFailed) as exc:
        ecs.deployer(ecs.target()).deploy(NEW)
    assert f"failed at wait (3 tasks of {ecs.family}:2 failed to start (limit 3))" in str(exc.value)
    assert str(exc.value).endswith(f"rolled back: serving {OLD_SHA[:12]} again (verified)")
    assert ecs.primary_td() == ecs.old_arn
    journal = FileJournal(ecs.project.root, "staging").entries()
    assert [(e["action"], e["result"]) for e in journal] == [("deploy", "failed"), ("rollback", "succeeded")]


def test_ecs_circuit_breaker_rollback_is_a_failure_not_a_success(ecs: Ecs) -> None:
    ecs.harness.scenarios.extend(["ecs-rollback"])
    with pytest.raises(DeployFailed) as exc:
        ecs.deployer(ecs.target(max_failed_tasks=50)).deploy(NEW)
    assert f"ECS rolled the deployment back to {ecs.family}:1 (circuit breaker)" in str(exc.value)
    # What the "services stable" waiter would have accepted: one deployment, all running. Still a failure.
    svc = ecs.boto("ecs").describe_services(cluster=ecs.cfg.env.ecs.cluster, services=["web"])["services"][0]
    assert svc["deployments"][0]["taskDefinition"] == ecs.old_arn
    assert ecs.primary_td() == ecs.old_arn


def test_timeout_rolls_back(ecs: Ecs) -> None:
    ecs.harness.scenarios.extend(["stuck", "succeed"])
    with pytest.raises(DeployFailed) as exc:
        ecs.deployer(ecs.target()).deploy(NEW)
    assert f"failed at wait (timed out: {ecs.family}:2: rollout IN_PROGRESS, 0/2 running" in str(exc.value)
    assert str(exc.value).endswith(f"rolled back: serving {OLD_SHA[:12]} again (verified)")
    assert ecs.primary_td() == ecs.old_arn


def test_failed_migration_leaves_the_service_untouched(ecs: Ecs) -> None:
    ecs.harness.fail_migrations = True
    with pytest.raises(DeployFailed) as exc:
        ecs.deployer(ecs.target()).deploy(NEW)
    assert "failed before apply (migration task exited with 1" in str(exc.value)
    assert ecs.harness.svc.task_definition == ecs.old_arn  # update_service was never called
    assert len(ecs.harness.svc.deployments) == 1


def test_lock_is_atomic_and_a_second_deploy_is_refused(ecs: Ecs) -> None:
    first, second = SsmLock(ecs.api, "staging"), SsmLock(ecs.api, "staging")
    alice = Owner("alice", "ci-7", 11, "c" * 40)
    first.acquire(alice, ttl=600)
    with pytest.raises(LockHeld, match=r"staging is being deployed by alice@ci-7 \(pid 11"):
        second.acquire(Owner("bob", "laptop", 12, "d" * 40), ttl=600)
    target = ecs.target()
    with pytest.raises(LockHeld):
        ecs.deployer(target).deploy(NEW)
    assert ecs.primary_td() == ecs.old_arn
    first.release(alice)
    assert first.holder() is None


def test_old_revisions_are_deregistered_keeping_the_newest(ecs: Ecs) -> None:
    for i in range(6):
        ecs.harness.scenarios.append("succeed")
        ecs.deployer(ecs.target()).deploy(Release(NEW.image[:-1] + str(i), f"{i}" * 40))
    active = ecs.api.list_task_definitions(ecs.family)
    assert len(active) == ecs.cfg.env.deploy.keep_revisions
    assert active[-1] == ecs.primary_td()


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


def test_cli_plan_and_dry_deploy_print_a_truthful_plan_and_change_nothing(ecs: Ecs) -> None:
    write_release(ecs.project)
    before = ecs.api.list_task_definitions(ecs.family)
    for args in (["plan", "--env", "staging"], ["--dry", "deploy", "--env", "staging"]):
        result = ecs.project.invoke(*args)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "plan for staging (target ecs)" in result.stdout
        assert f"deploying   : {NEW_SHA[:12]} ({NEW.image})" in result.stdout
        assert f"serving now : {OLD_SHA[:12]}" in result.stdout
        assert SENTINEL not in result.stdout + result.stderr
    assert ecs.api.list_task_definitions(ecs.family) == before
    assert ecs.primary_td() == ecs.old_arn


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
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]


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
