"""infra.plan / infra.up / infra.down against moto server over HTTP, then a deploy on top of the stack.

moto's CloudFormation creates the stack's ECS, IAM, EC2, ELBv2, Logs and ECR resources. Two things it
does not do after ExecuteChangeSet, which AWS documents ("Outputs ... available after the stack is
CREATE_COMPLETE / UPDATE_COMPLETE"; the stack keeps the change set's parameters): recompute the outputs
and store the parameters. ``_outputs_after_execute`` adds exactly that to moto's in-process backend.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import config, infra
from conveyor.aws import AwsClients
from conveyor.deploy import target_for
from conveyor.deploy.ecs import EcsDeployTarget
from conveyor.deploy.journal import FileJournal
from conveyor.deploy.model import Deployer, Release
from conveyor.errors import ConfigError
from conveyor.runner import Runner
from tests.conftest import REPO, Project
from tests.ecs_harness import EcsRollout, TinyImages
from tests.integration.test_ecs import (  # noqa: F401 (fixtures)
    INVOKE_YAML,
    REGION,
    moto_endpoint,
    rehearsal_registry,
    tiny,
)

pytestmark = pytest.mark.aws
NEW = Release("registry.example.test/team/conveyor-demo@sha256:" + "2" * 64, "b" * 40)


@pytest.fixture(scope="module", autouse=True)
def _outputs_after_execute(moto_endpoint: str) -> Iterator[None]:  # noqa: F811
    from moto.cloudformation.models import CloudFormationBackend

    original = CloudFormationBackend.execute_change_set

    def execute(self: Any, change_set_name: str, stack_name: str | None = None) -> None:
        original(self, change_set_name, stack_name)
        change_set = next(
            c for c in self.change_sets.values() if change_set_name in (c.change_set_id, c.change_set_name)
        )
        stack = self.stacks[change_set.stack_id]
        stack.parameters = change_set.parameters
        stack._parse_template()
        stack.output_map = stack._create_output_map()
        _complete_services(stack)

    CloudFormationBackend.execute_change_set = execute  # type: ignore[method-assign]
    yield
    CloudFormationBackend.execute_change_set = original  # type: ignore[method-assign]


def _complete_services(stack: Any) -> None:
    """What CloudFormation passes to CreateService and moto's AWS::ECS::Service drops (it keeps cluster,
    name, task definition and desired count): launch type, network and deployment configuration."""
    from moto.cloudformation.parsing import clean_json
    from moto.ecs.models import Service

    for name, resource in (stack.template_dict.get("Resources") or {}).items():
        model = stack.resource_map._parsed_resources.get(name)
        if resource.get("Type") != "AWS::ECS::Service" or not isinstance(model, Service):
            continue
        props = clean_json(resource.get("Properties") or {}, stack.resource_map)
        net = props["NetworkConfiguration"]["AwsvpcConfiguration"]
        conf = props["DeploymentConfiguration"]
        breaker = conf["DeploymentCircuitBreaker"]
        model.launch_type = props["LaunchType"]
        model.network_configuration = {
            "awsvpcConfiguration": {
                "subnets": list(net["Subnets"]),
                "securityGroups": list(net["SecurityGroups"]),
                "assignPublicIp": net["AssignPublicIp"],
            }
        }
        model.deployment_configuration = {
            "minimumHealthyPercent": int(conf["MinimumHealthyPercent"]),
            "maximumPercent": int(conf["MaximumPercent"]),
            "deploymentCircuitBreaker": {"enable": breaker["Enable"], "rollback": breaker["Rollback"]},
        }
        for deployment in model.deployments:
            deployment.update(launchType=model.launch_type, networkConfiguration=model.network_configuration)


def env_yaml(endpoint: str, stack: str, extra: str = "") -> str:
    return f"""
target: ecs
url: https://staging.example.test
registry: registry.example.test/team
ecs:
  stack: {stack}
  region: {REGION}
  endpoint_url: {endpoint}
secrets:
  DATABASE_URL: aws-sm:conveyor/staging/db#url
  REDIS_URL: ssm:/conveyor/staging/redis-url
deploy:
  drain_seconds: 5
  shutdown_timeout: 25
{extra}"""


class Env:
    def __init__(self, root: Path, endpoint: str) -> None:
        self.project = Project(root)
        self.endpoint = endpoint
        self.stack = f"s-{uuid.uuid4().hex[:8]}"
        self.name = f"p{uuid.uuid4().hex[:6]}"  # project name: every test its own roles and cluster
        self.project.write("tasks.py", "from conveyor.tasks import namespace\n\nns = namespace()\n")
        self.project.write("invoke.yaml", INVOKE_YAML.replace("name: conveyor-demo", f"name: {self.name}"))
        self.project.write("deploy/environments/staging.yaml", env_yaml(endpoint, self.stack))
        template = (REPO / "deploy/ecs/taskdef.yaml").read_text().replace("conveyor-demo", self.name)
        self.project.write("deploy/ecs/taskdef.yaml", template)
        self.project.write(
            "deploy/cloudformation/stack.yaml", (REPO / "deploy/cloudformation/stack.yaml").read_text()
        )
        self.out = io.StringIO()

    @property
    def cfg(self) -> config.Config:
        return config.load(self.project.root, "staging", environ=os.environ)

    @property
    def clients(self) -> AwsClients:
        return AwsClients(self.cfg.env.ecs, os.environ)

    def core(self) -> infra.Infra:
        self.out = io.StringIO()
        return infra.Infra(
            self.cfg, Runner(out=self.out), infra.StackApi(self.clients), sleep=lambda _s: None
        )

    def stacks(self) -> list[str]:
        summaries = self.clients("cloudformation").list_stacks()["StackSummaries"]
        return [s["StackStatus"] for s in summaries if s["StackName"] == self.stack]


@pytest.fixture
def env(moto_endpoint: str, tmp_path: Path) -> Env:  # noqa: F811
    return Env(tmp_path, moto_endpoint)


def test_plan_on_an_empty_account_shows_every_resource_and_applies_nothing(env: Env) -> None:
    assert env.core().plan() is True
    text = env.out.getvalue()
    assert f"stack {env.stack} (create):" in text
    for line in ("+ Cluster (AWS::ECS::Cluster)", "+ HttpService (AWS::ECS::Service)",
                 "+ Serviceworker (AWS::ECS::Service)", "+ Repository (AWS::ECR::Repository)",
                 "+ TargetGroup (AWS::ElasticLoadBalancingV2::TargetGroup)",
                 "+ LogGroup (AWS::Logs::LogGroup)"):  # fmt: skip
        assert line in text
    assert set(env.stacks()) <= {"DELETE_COMPLETE"}  # the review stack of the change set is gone
    clusters = env.clients("ecs").list_clusters()["clusterArns"]
    assert not [c for c in clusters if c.endswith(f"/{env.name}-staging")]


def test_up_on_an_empty_account_then_deploy_reads_names_from_the_outputs(env: Env) -> None:
    outputs = env.core().up()
    text = env.out.getvalue()
    assert "CREATE_COMPLETE" in text  # the stack's events, as they came
    assert outputs["ClusterName"] == f"{env.name}-staging"
    assert outputs["HttpServiceName"] == f"{env.name}-web"
    assert outputs["ServiceworkerName"] == f"{env.name}-worker"
    assert outputs["LockParameterName"] == f"/conveyor/locks/{env.name}/staging"
    boto = env.clients
    # What moto models of the resources: health check path, retention, lifecycle policy, least privilege.
    groups = boto("elbv2").describe_target_groups(Names=[f"{env.name}-staging"])["TargetGroups"]
    assert groups[0]["HealthCheckPath"] == "/health"
    logs = boto("logs").describe_log_groups(logGroupNamePrefix=f"/conveyor/{env.name}")["logGroups"]
    assert [g["logGroupName"] for g in logs] == [f"/conveyor/{env.name}"]  # what taskdef.yaml names
    assert logs[0]["retentionInDays"] == 30
    assert boto("ecr").describe_repositories(repositoryNames=[env.name])["repositories"]
    role = f"{env.name}-execution"  # the executionRoleArn of taskdef.yaml
    inline = {n: boto("iam").get_role_policy(RoleName=role, PolicyName=n)["PolicyDocument"]
              for n in boto("iam").list_role_policies(RoleName=role)["PolicyNames"]}  # fmt: skip
    assert set(inline) == {"pull-and-log", "read-secrets", "read-parameters"}
    assert inline["read-secrets"]["Statement"][0]["Resource"] == [
        f"arn:aws:secretsmanager:{REGION}:123456789012:secret:conveyor/staging/db-??????"
    ]
    assert inline["read-parameters"]["Statement"][0]["Resource"] == [
        f"arn:aws:ssm:{REGION}:123456789012:parameter/conveyor/staging/redis-url"
    ]
    # deploy: the target's cluster and services come from the stack's outputs.
    cfg = env.cfg
    assert (cfg.env.ecs.cluster, cfg.env.ecs.service) == ("", "")
    target = target_for(cfg, Runner(out=io.StringIO()), NEW.image)
    assert isinstance(target, EcsDeployTarget)
    assert target.cluster == f"{env.name}-staging"
    assert target.services == {"web": f"{env.name}-web", "worker": f"{env.name}-worker"}
    with contextlib.suppress(Exception):  # another test of this module may have made it
        boto("secretsmanager").create_secret(Name="conveyor/staging/db", SecretString='{"url": "x"}')
    # The deploy's plan and apply reach the stack's services by the names its outputs gave (the rollout
    # itself, which moto does not model, is tests/integration/test_ecs.py's rehearsal).
    plan = target.plan(NEW)
    assert f"step: update_service {env.name}-staging/{env.name}-worker (worker)" in "\n".join(plan.render())
    target.apply(plan)
    for process, service in target.services.items():
        described = boto("ecs").describe_services(cluster=outputs["ClusterName"], services=[service])
        arn = described["services"][0]["taskDefinition"]
        definition = boto("ecs").describe_task_definition(taskDefinition=arn)["taskDefinition"]
        assert definition["family"] == (env.name if process == "web" else f"{env.name}-{process}")
        assert definition["containerDefinitions"][0]["image"] == NEW.image


def test_plan_after_a_template_change_shows_it_and_unchanged_says_no_changes(env: Env) -> None:
    env.core().up()
    assert env.core().plan() is False
    assert f"stack {env.stack}: no changes" in env.out.getvalue()
    path = env.project.root / "deploy/cloudformation/stack.yaml"
    path.write_text(path.read_text().replace("HealthyThresholdCount: 2", "HealthyThresholdCount: 3"))
    assert env.core().plan() is True
    assert "~ TargetGroup (AWS::ElasticLoadBalancingV2::TargetGroup)" in env.out.getvalue()
    groups = env.clients("elbv2").describe_target_groups(Names=[f"{env.name}-staging"])["TargetGroups"]
    assert groups[0]["HealthyThresholdCount"] == 2  # nothing applied
    assert env.stacks()[0] in ("CREATE_COMPLETE", "UPDATE_COMPLETE")
    cfn = env.clients("cloudformation")
    pending = [s for s in cfn.list_change_sets(StackName=env.stack)["Summaries"]
               if s.get("ExecutionStatus") != "EXECUTE_COMPLETE"]  # fmt: skip
    assert pending == []  # the plans' change sets were deleted again


def existing_vpc(env: Env) -> str:
    """infra.parameters pointing the stack at a VPC made elsewhere (moto cannot delete a stack's own VPC:
    its CloudFormation deletes the VPC before what lives in it)."""
    ec2 = env.clients("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{i}.0/24", AvailabilityZone=f"{REGION}{z}")
               ["Subnet"]["SubnetId"] for i, z in ((1, "a"), (2, "b"))]  # fmt: skip
    return f"infra:\n  parameters:\n    VpcId: {vpc}\n    SubnetIds: {','.join(subnets)}\n"


def test_down_deletes_the_stack_and_a_protected_environment_is_refused(env: Env) -> None:
    path = env.project.root / "deploy/environments/staging.yaml"
    infra_keys = existing_vpc(env)
    path.write_text(env_yaml(env.endpoint, env.stack, infra_keys))
    env.core().up()
    path.write_text(env_yaml(env.endpoint, env.stack, infra_keys + "  protected: true\n"))
    result = env.project.invoke("infra.down", "--env", "staging", "--yes")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "conveyor: deploy/environments/staging.yaml:19: infra.protected is true: "
        f"infra.down refuses to delete stack {env.stack}"
    )
    assert env.stacks()[0] == "CREATE_COMPLETE"
    path.write_text(env_yaml(env.endpoint, env.stack, infra_keys))
    result = env.project.invoke("infra.down", "--env", "staging")  # no tty, no --yes
    assert result.returncode == 2
    assert "pass --yes to confirm" in result.stderr
    result = env.project.invoke("infra.down", "--env", "staging", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"stack {env.stack} deleted" in result.stdout
    assert env.stacks()[0] == "DELETE_COMPLETE"


def test_cli_up_and_plan_then_the_deploy_plan_names_the_stacks_services(env: Env) -> None:
    result = env.project.invoke("infra.up", "--env", "staging")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ClusterName = {env.name}-staging" in result.stdout
    result = env.project.invoke("infra.plan", "--env", "staging")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"stack {env.stack}: no changes" in result.stdout
    with contextlib.suppress(Exception):  # another test of this module may have made it
        env.clients("secretsmanager").create_secret(Name="conveyor/staging/db", SecretString='{"url": "x"}')
    env.project.write(
        "build/release.json",
        json.dumps(
            {
                "refs": [f"{env.name}:{NEW.git_sha[:12]}"],
                "image_id": "sha256:" + "9" * 64,
                "git_sha": NEW.git_sha,
                "pushed": {"staging": NEW.image},
            }
        ),
    )
    result = env.project.invoke("plan", "--env", "staging")  # the deploy's plan: nothing changes
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"update_service {env.name}-staging/{env.name}-web (web)" in result.stdout
    assert f"update_service {env.name}-staging/{env.name}-worker (worker)" in result.stdout


def test_a_cluster_named_in_the_config_must_be_the_stacks(env: Env) -> None:
    env.core().up()
    path = env.project.root / "deploy/environments/staging.yaml"
    path.write_text(path.read_text().replace("  stack:", "  cluster: elsewhere\n  stack:"))
    with pytest.raises(ConfigError) as exc:
        infra.resolve_ecs(env.cfg, env.clients)
    assert str(exc.value) == (
        f"deploy/environments/staging.yaml:5: ecs.cluster `elsewhere` differs from stack {env.stack}'s "
        f"cluster `{env.name}-staging`; remove one of them"
    )


@pytest.mark.docker
def test_a_rehearsed_deploy_on_top_of_the_stack_serves_the_new_release(
    env: Env,
    tiny: TinyImages,  # noqa: F811 (the fixture)
) -> None:
    """tests/ecs_harness.py runs the tasks as real containers: a deploy onto the services infra.up made,
    release command first, both processes rolled out, the smoke probe answered by the new image."""
    # An image for the first revision: the services start with DesiredCount tasks of it (placeholders
    # nobody can pull, as the harness treats what ran before it).
    bootstrap = "registry.example.test/nobody/app@sha256:" + "1" * 64
    env.project.write("build/release.json", json.dumps({"pushed": {"staging": bootstrap}}))
    outputs = env.core().up()
    cfg = infra.resolved(env.cfg, env.clients)
    services = [outputs["HttpServiceName"], outputs["ServiceworkerName"]]
    harness = EcsRollout(REGION, outputs["ClusterName"], services, endpoint=env.endpoint)
    with contextlib.suppress(Exception):  # another test of this module may have made them
        env.clients("secretsmanager").create_secret(Name="conveyor/staging/db", SecretString='{"url": "x"}')
    env.clients("ssm").put_parameter(
        Name="/conveyor/staging/redis-url", Value="redis://cache:6379/0", Type="SecureString", Overwrite=True
    )
    try:
        harness.settle(run=False)
        release = Release(tiny.image(NEW.git_sha), NEW.git_sha)
        with harness.balancer() as url:
            runner = Runner(out=io.StringIO())
            from conveyor.deploy.ecs import EcsApi, load_template

            target = EcsDeployTarget(runner, EcsApi(env.clients), cfg,
                                     template=load_template(env.project.root / "deploy/ecs/taskdef.yaml"),
                                     deployer="tester", sleep=harness.sleep, clock=harness.clock)  # fmt: skip
            Deployer(target=target, runner=runner, journal=FileJournal(env.project.root, "staging"),
                     env="staging", timeout=120, lock_ttl=600, contract=cfg.app, url=url,
                     clock=harness.clock, sleep=harness.sleep).deploy(release)  # fmt: skip
            direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with direct.open(f"{url}/version", timeout=5) as response:  # the balancer: real containers
                assert json.loads(response.read())["git_sha"] == NEW.git_sha
            served = {t.task_definition.rsplit("/", 1)[-1].rsplit(":", 1)[0] for t in harness.targets()}
            assert served == {env.name}  # the web service's tasks run the family the stack made
    finally:
        harness.close()
    journal = FileJournal(env.project.root, "staging").entries()
    assert [(e["action"], e["result"]) for e in journal] == [("deploy", "succeeded")]
    assert len(harness.release_tasks()) == 1
