"""conveyor.infra offline: expansion, parameters from the configuration, cfn-lint, change set output, the
CLI's refusals before any AWS call (the endpoint is a closed port: a call would be a connection error)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conveyor import config, infra
from conveyor.errors import ConfigError, ConveyorError
from conveyor.runner import Runner
from tests.conftest import REPO, Project, engine_missing

CLOSED = "http://127.0.0.1:9"
INVOKE_YAML = """
conveyor:
  project: {name: shop}
  image: {name: shop}
  processes:
    web: {port: 8080, health: /healthz}
    worker: {command: [python, -m, shop.worker]}
    beat-2: {command: [python, -m, shop.beat]}
"""
STAGING = f"""
target: ecs
url: https://staging.example.test
ecs:
  stack: shop-staging
  region: eu-west-1
  endpoint_url: {CLOSED}
  minimum_healthy_percent: 50
  maximum_percent: 150
  health_check_grace: 40
secrets:
  DB: aws-sm:shop/staging/db#url
  KEY: ssm:/shop/staging/key
deploy:
  drain_seconds: 4
  shutdown_timeout: 26
"""


@pytest.fixture
def shop(tmp_path: Path) -> Project:
    proj = Project(tmp_path)
    proj.write("tasks.py", "from conveyor.tasks import namespace\n\nns = namespace()\n")
    proj.write("invoke.yaml", INVOKE_YAML)
    proj.write("deploy/environments/staging.yaml", STAGING)
    for folder in ("deploy/ecs", "deploy/cloudformation"):
        (tmp_path / folder).mkdir(parents=True)
    shutil.copy(REPO / "deploy/ecs/taskdef.yaml", tmp_path / "deploy/ecs/taskdef.yaml")
    shutil.copy(REPO / "deploy/cloudformation/stack.yaml", tmp_path / "deploy/cloudformation/stack.yaml")
    return proj


def load(proj: Project) -> config.Config:
    return config.load(proj.root, "staging", environ={})


def test_the_reference_template_is_the_one_conveyor_init_writes() -> None:
    from conveyor.init.scaffold import template

    assert (REPO / "deploy/cloudformation/stack.yaml").read_text() == template("cloudformation/stack.yaml")


def test_parameters_come_from_the_app_contract_and_the_rollout_settings(shop: Project) -> None:
    rendered = infra.render(load(shop), account="111122223333")
    p = rendered.parameters
    assert (p["ProjectName"], p["EnvironmentName"], p["HttpProcess"]) == ("shop", "staging", "web")
    assert (p["HttpPort"], p["HealthPath"]) == ("8080", "/healthz")
    assert p["DeregistrationDelay"] == "30"  # drain_seconds + shutdown_timeout
    assert (p["MinimumHealthyPercent"], p["MaximumPercent"], p["HealthCheckGracePeriod"]) == (
        "50",
        "150",
        "40",
    )
    assert p["SecretArns"] == "arn:aws:secretsmanager:eu-west-1:111122223333:secret:shop/staging/db-??????"
    assert p["ParameterArns"] == "arn:aws:ssm:eu-west-1:111122223333:parameter/shop/staging/key"
    # What ecs.task_definition names, the stack creates: family, app container, roles, log group.
    assert (p["TaskFamily"], p["ContainerName"]) == ("conveyor-demo", "web")
    assert (p["ExecutionRoleName"], p["TaskRoleName"]) == ("conveyor-demo-execution", "conveyor-demo-task")
    assert p["LogGroupName"] == "/conveyor/conveyor-demo"
    assert "OtherProcesses" not in p  # consumed by the expansion
    assert json.loads(rendered.path.read_text()) == rendered.template


def test_one_service_per_process_with_the_settings_moto_does_not_model(shop: Project) -> None:
    resources = infra.render(load(shop)).template["Resources"]
    assert {"HttpService", "Serviceworker", "Servicebeat2", "TaskDefinitionbeat2"} <= set(resources)
    assert "Fn::ForEach::Processes" not in resources
    beat = resources["Servicebeat2"]
    assert beat["DependsOn"] == "TaskDefinitionbeat2"
    assert beat["Properties"]["ServiceName"] == {"Fn::Sub": "${ProjectName}-beat-2"}
    assert resources["TaskDefinitionbeat2"]["Properties"]["Family"] == {"Fn::Sub": "${TaskFamily}-beat-2"}
    for name in ("HttpService", "Serviceworker"):
        props = resources[name]["Properties"]
        assert props["LaunchType"] == "FARGATE"
        assert props["DeploymentConfiguration"] == {
            "MinimumHealthyPercent": {"Ref": "MinimumHealthyPercent"},
            "MaximumPercent": {"Ref": "MaximumPercent"},
            "DeploymentCircuitBreaker": {"Enable": True, "Rollback": True},
        }
    web = resources["HttpService"]["Properties"]
    assert web["HealthCheckGracePeriodSeconds"] == {"Ref": "HealthCheckGracePeriod"}
    assert web["TaskDefinition"] == {"Ref": "TaskFamily"}  # the family: a later infra.up keeps the deploy's
    group = resources["TargetGroup"]["Properties"]
    assert group["HealthCheckPath"] == {"Ref": "HealthPath"}
    assert {"Key": "deregistration_delay.timeout_seconds", "Value": {"Ref": "DeregistrationDelay"}} in group[
        "TargetGroupAttributes"
    ]
    policy = resources["Repository"]["Properties"]["LifecyclePolicy"]["LifecyclePolicyText"]["Fn::Sub"]
    rules = json.loads(policy.replace("${KeepImages}", "30"))["rules"]
    assert [r["selection"]["tagStatus"] for r in rules] == ["untagged", "any"]
    outputs = infra.render(load(shop)).template["Outputs"]
    assert {"ClusterName", "HttpServiceName", "ServiceworkerName", "Servicebeat2Name", "LogGroupName",
            "ExecutionRoleArn", "TaskRoleArn", "RepositoryUri",
            "LockParameterName"} <= set(outputs)  # fmt: skip
    assert infra.service_outputs(load(shop)) == {
        "web": "HttpServiceName",
        "worker": "ServiceworkerName",
        "beat-2": "Servicebeat2Name",
    }


def test_expansion_of_a_literal_collection_and_a_collision() -> None:
    template = {
        "Resources": {
            "Fn::ForEach::B": ["X", ["a-1", "b"], {"Q&{X}": {"Type": "T", "Properties": {"N": {"Ref": "X"}}}}]
        }
    }
    assert infra.expand(template, {}, "t.yaml")["Resources"] == {
        "Qa1": {"Type": "T", "Properties": {"N": "a-1"}},
        "Qb": {"Type": "T", "Properties": {"N": "b"}},
    }
    template["Resources"]["Fn::ForEach::B"][1] = ["a-1", "a1"]
    with pytest.raises(ConfigError, match="makes `Qa1` twice"):
        infra.expand(template, {}, "t.yaml")


def test_the_kit_template_passes_cfn_lint(shop: Project) -> None:
    if shutil.which("cfn-lint") is None:
        pytest.fail("cfn-lint is a dev dependency: pip install -e '.[dev]'")
    infra.prepare(load(shop), Runner(echo=False))


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (
            "HealthPath: /x",
            "infra.parameters.HealthPath is computed by conveyor from processes.<http>.health",
        ),
        ("Nope: 1", "infra.parameters.Nope: deploy/cloudformation/stack.yaml declares no such parameter"),
    ],
)
def test_bad_infra_parameters_are_one_line(shop: Project, key: str, message: str) -> None:
    shop.write("deploy/environments/staging.yaml", STAGING + f"infra:\n  parameters:\n    {key}\n")
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        infra.render(load(shop))


def test_change_sets_print_replacements_in_red_and_bold() -> None:
    # DescribeChangeSet's Changes as AWS returns them (ResourceChange: Action, Replacement, Scope).
    changes = [
        {"Type": "Resource", "ResourceChange": {"Action": "Add", "LogicalResourceId": "Cluster",
                                                "ResourceType": "AWS::ECS::Cluster"}},
        {"Type": "Resource", "ResourceChange": {"Action": "Modify", "LogicalResourceId": "TargetGroup",
                                                "ResourceType": "AWS::ElasticLoadBalancingV2::TargetGroup",
                                                "Replacement": "True", "Scope": ["Properties"]}},
        {"Type": "Resource", "ResourceChange": {"Action": "Modify", "LogicalResourceId": "LogGroup",
                                                "ResourceType": "AWS::Logs::LogGroup", "Replacement": "False",
                                                "Scope": ["Properties"]}},
        {"Type": "Resource", "ResourceChange": {"Action": "Remove", "LogicalResourceId": "Old",
                                                "ResourceType": "AWS::SSM::Parameter"}},
    ]  # fmt: skip
    plain = infra.format_changes(changes, color=False)
    assert plain == [
        "+ Cluster (AWS::ECS::Cluster)",
        "~ TargetGroup (AWS::ElasticLoadBalancingV2::TargetGroup): Properties REPLACED",
        "~ LogGroup (AWS::Logs::LogGroup): Properties",
        "- Old (AWS::SSM::Parameter)",
    ]
    colored = infra.format_changes(changes, color=True)
    assert colored[1] == f"{infra.RED}{infra.BOLD}{plain[1]}{infra.RESET}"
    assert colored[2] == plain[2]
    assert infra.summarize(changes) == "1 to add, 2 to modify (1 replaced), 1 to remove"


# --- the command line: refused or dry, and never a call to AWS (the endpoint is a closed port) ---------


def test_a_template_with_an_error_is_refused_by_cfn_lint_before_any_call(shop: Project) -> None:
    path = shop.root / "deploy/cloudformation/stack.yaml"
    path.write_text(
        path.read_text().replace("HealthCheckPath: !Ref HealthPath", "HealthCheckPth: !Ref HealthPath")
    )
    for task in ("infra.plan", "infra.up"):
        result = shop.invoke(task, "--env", "staging")
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(
            "conveyor: deploy/cloudformation/stack.yaml: cfn-lint E3002 at Resources/TargetGroup"
        )
        assert "HealthCheckPth" in lines[0]
        assert "127.0.0.1:9" not in result.stderr


def test_dry_renders_and_validates_without_calling_aws(shop: Project) -> None:
    for task in ("infra.plan", "infra.up", "infra.down"):
        result = shop.invoke("--dry", task, "--env", "staging")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "[dry] deploy/cloudformation/stack.yaml: valid (cfn-lint)" in result.stdout
        assert "[dry]   HealthPath = /healthz" in result.stdout
        assert "[dry]   DeregistrationDelay = 30" in result.stdout


def test_a_dry_deploy_plan_with_a_stack_makes_no_aws_call(shop: Project) -> None:
    """The endpoint is a closed port: reading the stack's outputs would fail; --dry names them instead."""
    from conveyor.deploy import target_for

    taskdef = shop.root / "deploy/ecs/taskdef.yaml"
    taskdef.write_text(taskdef.read_text().replace("8000", "8080"))  # the shop's web serves on 8080
    cfg = load(shop)
    target = target_for(cfg, Runner(echo=False, dry=True), "registry.example.test/shop:abc")
    assert target.cfg.env.ecs.cluster == target.cfg.env.ecs.service == "<from stack shop-staging>"  # type: ignore[attr-defined]
    with pytest.raises(ConveyorError):  # while a real run does read the stack (and finds no endpoint)
        target_for(cfg, Runner(echo=False), "registry.example.test/shop:abc")


def test_an_environment_that_is_not_ecs_is_refused(shop: Project) -> None:
    shop.write("deploy/environments/local.yaml", "target: compose\ncompose: {files: [compose.yaml]}\n")
    result = shop.invoke("--dry", "infra.plan", "--env", "local")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "conveyor: deploy/environments/local.yaml: target is compose; infra.* makes the infrastructure "
        "of an ECS environment (target: ecs)"
    )


def test_a_protected_environment_refuses_down_before_any_call(shop: Project) -> None:
    shop.write("deploy/environments/staging.yaml", STAGING + "infra:\n  protected: true\n")
    result = shop.invoke("infra.down", "--env", "staging", "--yes")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "conveyor: deploy/environments/staging.yaml:17: infra.protected is true: "
        "infra.down refuses to delete stack shop-staging"
    )


def test_resolve_without_a_stack_is_the_configured_target(tmp_path: Path) -> None:
    cfg = config.load(
        REPO, "staging", environ={k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    )

    def no_aws(service: str) -> None:
        raise AssertionError(service)

    assert infra.resolve_ecs(cfg, no_aws) is cfg.env.ecs


def test_security_scans_each_template_as_infra_up_sends_it(shop: Project) -> None:
    from conveyor import security

    shop.write("deploy/environments/local.yaml", "target: compose\ncompose: {files: [compose.yaml]}\n")
    targets = security.resolve_targets(shop.root, {})
    assert targets.templates == ("build/infra/staging.json",)  # ECS environments only


@pytest.mark.scanners  # runs in `nox -s security`, where checkov is installed
def test_the_kit_template_as_infra_up_sends_it_is_checkov_clean(shop: Project) -> None:
    from conveyor import security

    if shutil.which("checkov") is None:
        engine_missing("checkov not installed (pip install -e '.[scanners]')")
    (shop.root / security.REPORTS).mkdir(parents=True)
    targets = security.resolve_targets(shop.root, {})
    result = security.checkov(shop.root, targets.templates, name="infra")
    assert (result.status, result.report) == ("clean", "reports/security/checkov-infra.json")


def test_conveyor_init_scaffolds_a_template_that_validates_for_the_new_project(tmp_path: Path) -> None:
    import io

    from conveyor import cli

    files = {
        "requirements.txt": "flask>=3\ngunicorn==22.0.0\n",
        "Procfile": "web: gunicorn ledger.web:app\nworker: python -m ledger.worker\n",
        "ledger/__init__.py": "",
        "ledger/web.py": "import flask\n\napp = flask.Flask(__name__)\n\n\n"
        '@app.route("/healthz")\ndef health():\n    return "ok"\n',
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert cli.main(["init", str(tmp_path)], out=io.StringIO(), err=io.StringIO()) == 0
    written = (tmp_path / "deploy/cloudformation/stack.yaml").read_text()
    assert written == (REPO / "deploy/cloudformation/stack.yaml").read_text()
    rendered = infra.prepare(config.load(tmp_path, "staging", environ={}), Runner(echo=False))
    assert rendered.parameters["HealthPath"] == "/healthz"
    assert {"HttpService", "Serviceworker"} <= set(rendered.template["Resources"])
