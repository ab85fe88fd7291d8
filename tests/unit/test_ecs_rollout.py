"""ECS rollout settings and the template's task-level fields, as pure functions: the deployment
configuration, the circuit breaker's threshold, the plan lines, the checks that refuse bad values."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conveyor import config
from conveyor.config import EcsTarget
from conveyor.deploy.ecs import (
    check_room,
    check_static,
    deployment_configuration,
    describe_rollout,
    diff,
    failure_threshold,
    load_template,
    render,
    rollout_changes,
    template_path,
    validate_definition,
)
from conveyor.deploy.ecs.render import render_offline
from conveyor.errors import ConfigError
from tests.unit.test_ecs_render import INPUTS, WEB, template

TEMPLATE = """
family: demo
requiresCompatibilities: [FARGATE]
networkMode: awsvpc
cpu: "256"
memory: "512"
executionRoleArn: arn:aws:iam::${AWS_ACCOUNT_ID}:role/demo-execution
taskRoleArn: arn:aws:iam::${AWS_ACCOUNT_ID}:role/demo-task
runtimePlatform: {cpuArchitecture: ARM64, operatingSystemFamily: LINUX}
containerDefinitions:
  - name: web
    image: placeholder
    portMappings: [{containerPort: 8000}]
    logConfiguration:
      logDriver: awslogs
      options:
        awslogs-group: /demo
        awslogs-region: ${AWS_REGION}
        awslogs-stream-prefix: ${PROCESS}
        awslogs-create-group: "true"
"""


def project(tmp_path: Path, env_extra: str = "", template_text: str = TEMPLATE) -> config.Config:
    files = {
        "invoke.yaml": "conveyor:\n  project: {name: demo}\n",
        "deploy/environments/staging.yaml": f"""
            target: ecs
            url: https://staging.example.test
            ecs:
              cluster: c
              service: demo
              region: eu-west-1
            secrets:
              DATABASE_URL: aws-sm:db#url
            {env_extra}
            """,
        "deploy/ecs/taskdef.yaml": template_text,
    }
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return config.load(tmp_path, "staging", environ={})


def checked(cfg: config.Config) -> None:
    path, name = template_path(cfg)
    check_static(cfg, load_template(path, name=name))


def ecs(**settings: Any) -> EcsTarget:
    return EcsTarget("c", "web", "eu-west-1", "", "", **settings)


# --- the deployment configuration -----------------------------------------------------------------


def test_the_deployment_configuration_carries_every_setting_and_the_breaker_always_rolls_back() -> None:
    assert deployment_configuration(ecs()) == {
        "minimumHealthyPercent": 100,
        "maximumPercent": 200,
        "deploymentCircuitBreaker": {"enable": True, "rollback": True},
        "alarms": {"alarmNames": [], "enable": False, "rollback": False},
    }
    tuned = deployment_configuration(ecs(minimum_healthy_percent=50, maximum_percent=150, alarms=("5xx",)))
    assert tuned["minimumHealthyPercent"] == 50
    assert tuned["maximumPercent"] == 150
    assert tuned["alarms"] == {"alarmNames": ["5xx"], "enable": True, "rollback": True}
    assert (
        describe_rollout(tuned, 30)
        == "min 50%, max 150%, circuit breaker +rollback, alarms 5xx +rollback, grace 30s"
    )


@pytest.mark.parametrize(
    ("desired", "threshold"),
    [(0, 3), (1, 3), (2, 3), (6, 3), (7, 4), (10, 5), (25, 13), (400, 200), (1000, 200)],
)
def test_the_failure_threshold_is_half_the_desired_count_between_3_and_200(
    desired: int, threshold: int
) -> None:
    assert failure_threshold(desired) == threshold


def test_rollout_changes_show_what_update_service_changes_and_nothing_when_it_is_set() -> None:
    wanted = deployment_configuration(ecs(minimum_healthy_percent=50, alarms=("5xx", "latency")))
    bare = {"serviceName": "web"}
    found = {c.what: (c.old, c.new) for c in rollout_changes(bare, wanted, 60)}
    assert found == {
        "service minimumHealthyPercent": ("", "50"),
        "service maximumPercent": ("", "200"),
        "service deploymentCircuitBreaker": ("", "enable+rollback"),
        "service alarms": ("", "5xx,latency +rollback"),
        "service healthCheckGracePeriodSeconds": ("", "60"),
    }
    applied = {"deploymentConfiguration": wanted, "healthCheckGracePeriodSeconds": 60}
    assert rollout_changes(applied, wanted, 60) == []
    # Alarms switched off again, the breaker found without rollback: both are changes.
    live = {
        "deploymentConfiguration": {
            **wanted,
            "deploymentCircuitBreaker": {"enable": True, "rollback": False},
        }
    }
    plain = deployment_configuration(ecs(minimum_healthy_percent=50))
    found = {c.what: (c.old, c.new) for c in rollout_changes(live, plain, None)}
    assert found == {
        "service deploymentCircuitBreaker": ("enable", "enable+rollback"),
        "service alarms": ("5xx,latency +rollback", "none"),
    }
    # Not connected: every setting is a change from "unknown".
    offline = {c.what: c.old for c in rollout_changes(None, plain, None)}
    assert set(offline.values()) == {"unknown"}


def test_a_rollout_that_could_never_replace_a_task_is_refused(tmp_path: Path) -> None:
    project(tmp_path)
    tight = config.load(tmp_path, "staging", environ={"CONVEYOR_ECS__MAXIMUM_PERCENT": "150"})
    check_room(tight, "web", 2)  # at most floor(3) = 3 run, at least ceil(2) = 2 stay healthy: room for 1
    check_room(tight, "idle", 0)
    with pytest.raises(ConfigError) as exc:
        check_room(tight, "worker", 1)  # floor(1.5) = 1 = ceil(1)
    assert str(exc.value) == (
        "env CONVEYOR_ECS__MAXIMUM_PERCENT: ecs.minimum_healthy_percent 100 and ecs.maximum_percent 150 "
        "leave no room to replace the 1 task(s) of service worker (at least 1 must stay healthy, at most 1 "
        "may run): raise maximum_percent or lower minimum_healthy_percent"
    )


# --- the static checks -----------------------------------------------------------------------------


def test_a_good_template_with_task_role_platform_and_log_group_creation_passes(tmp_path: Path) -> None:
    cfg = project(tmp_path)
    checked(cfg)
    path, name = template_path(cfg)
    definition = render_offline(cfg, load_template(path, name=name), image="r/app@sha256:" + "1" * 64)["web"]
    assert definition["taskRoleArn"] == "arn:aws:iam::${AWS_ACCOUNT_ID}:role/demo-task"
    assert definition["runtimePlatform"] == {"cpuArchitecture": "ARM64", "operatingSystemFamily": "LINUX"}
    app = definition["containerDefinitions"][0]
    assert app["logConfiguration"]["options"]["awslogs-create-group"] == "true"
    assert app["logConfiguration"]["options"]["awslogs-stream-prefix"] == "web"
    assert app["stopTimeout"] == 20  # deploy.shutdown_timeout's default
    assert app["secrets"] == [
        {
            "name": "DATABASE_URL",
            "valueFrom": "arn:aws:secretsmanager:eu-west-1:${AWS_ACCOUNT_ID}:secret:db:url::",
        }
    ]


def test_the_app_container_stop_timeout_is_the_shutdown_timeout() -> None:
    inputs = type(INPUTS)(**{**INPUTS.__dict__, "stop_timeout": 45})
    definition = render(template(), WEB, family="demo", container="app", inputs=inputs)
    proxy, app = definition["containerDefinitions"]
    assert app["stopTimeout"] == 45
    assert "stopTimeout" not in proxy  # a sidecar keeps what the template says


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            "deploy:\n  shutdown_timeout: 121",
            "deploy/environments/staging.yaml:11: `deploy.shutdown_timeout` is the app container's "
            "stopTimeout, which Fargate allows up to 120 s, got 121",
        ),
        ("  minimum_healthy_percent: 101", "`ecs.minimum_healthy_percent` must be 0-100"),
        ("  maximum_percent: 90", "`ecs.maximum_percent` must be at least 100"),
        ("  alarms: ['']", "`ecs.alarms` must list CloudWatch alarm names (1-255 characters), got ''"),
    ],
)
def test_rollout_settings_are_refused_naming_the_file_and_key(
    tmp_path: Path, setting: str, message: str
) -> None:
    project(tmp_path)
    path = tmp_path / "deploy/environments/staging.yaml"
    text = path.read_text()
    if setting.startswith("  "):  # a key of the ecs section
        path.write_text(text.replace("  region: eu-west-1\n", f"  region: eu-west-1\n{setting}\n"))
    else:
        path.write_text(text + setting + "\n")
    with pytest.raises(ConfigError) as exc:  # from loading (config's own checks) or the ECS checks
        checked(config.load(tmp_path, "staging", environ={}))
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("arn:aws:iam::${AWS_ACCOUNT_ID}:role/demo-task", "demo-task"),
            "deploy/ecs/taskdef.yaml: `taskRoleArn` must be an IAM role ARN "
            "(arn:aws:iam::${AWS_ACCOUNT_ID}:role/NAME), got 'demo-task'",
        ),
        (
            ("cpuArchitecture: ARM64", "cpuArchitecture: arm64"),
            "deploy/ecs/taskdef.yaml: runtimePlatform.cpuArchitecture must be one of X86_64, ARM64, "
            "got 'arm64'",
        ),
        (
            ("operatingSystemFamily: LINUX", "operatingSystemFamily: LINUX, kernel: 6"),
            "deploy/ecs/taskdef.yaml: runtimePlatform: unknown key `kernel`",
        ),
        (
            ('awslogs-create-group: "true"', "awslogs-create-group: yes"),
            "deploy/ecs/taskdef.yaml: containerDefinitions[0] (web): "
            "logConfiguration.options.awslogs-create-group "
            'must be a string (quote it: "True"), got a boolean',
        ),
        (
            ('awslogs-create-group: "true"', 'awslogs-create-group: "always"'),
            'logConfiguration.options.awslogs-create-group must be "true" or "false", got \'always\'',
        ),
        (
            ("logDriver: awslogs", "logDriver: cloudwatch"),
            "logConfiguration.logDriver must be one of json-file",
        ),
        (
            ("        awslogs-stream-prefix: ${PROCESS}\n", ""),
            "the awslogs driver needs logConfiguration.options.awslogs-stream-prefix",
        ),
        (
            ("executionRoleArn: arn:aws:iam::${AWS_ACCOUNT_ID}:role/demo-execution\n", ""),
            "container web uses awslogs or secrets, which Fargate reaches with the task execution role: "
            "set `executionRoleArn`",
        ),
        (
            ("image: placeholder\n", "image: placeholder\n    stopTimeout: 30\n"),
            "container web: `stopTimeout` of the app container comes from deploy.shutdown_timeout",
        ),
        (
            ('cpu: "256"', "cpu: 256"),
            "deploy/ecs/taskdef.yaml (process web): the rendered task definition is refused by the "
            "ECS model: Invalid type for parameter cpu, value: 256",
        ),
    ],
)
def test_a_bad_task_level_field_is_one_line_naming_the_template(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    assert edit[0] in TEMPLATE
    cfg = project(tmp_path, template_text=TEMPLATE.replace(*edit))
    with pytest.raises(ConfigError) as exc:
        checked(cfg)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_the_ecs_model_validates_a_rendered_definition() -> None:
    good = render(template(), WEB, family="demo", container="app", inputs=INPUTS)
    validate_definition(good, "t")
    with pytest.raises(ConfigError, match=r"^t: the rendered task definition is refused by the ECS model: "):
        validate_definition({**good, "memory": 512}, "t")


def test_the_diff_covers_every_field_and_ignores_what_ecs_fills_in() -> None:
    new = render(template(), WEB, family="demo", container="app", inputs=INPUTS)
    live = copy.deepcopy(new)
    # What DescribeTaskDefinition adds to a registered definition is no change.
    live.update(revision=3, status="ACTIVE", volumes=[], placementConstraints=[], compatibilities=["FARGATE"])
    for spec in live["containerDefinitions"]:
        spec.update(cpu=0, essential=True, mountPoints=[], volumesFrom=[])
    assert diff(live, new, container="app") == []
    # A task role added, the log group changed, a stop timeout dropped, a sidecar's command changed.
    new = copy.deepcopy(new)
    new["taskRoleArn"] = "arn:aws:iam::123456789012:role/demo-task"
    app = new["containerDefinitions"][1]
    app["logConfiguration"]["options"]["awslogs-group"] = "/demo/v2"
    live["containerDefinitions"][1]["stopTimeout"] = 30
    new["containerDefinitions"][0]["command"] = ["envoy", "-c", "/etc/envoy.yaml"]
    found = {c.what: (c.old, c.new) for c in diff(live, new, container="app")}
    assert found["taskRoleArn"] == ("", "arn:aws:iam::123456789012:role/demo-task")
    assert found["container stopTimeout"] == ("30", "(removed)")
    assert '"awslogs-group":"/demo/v2"' in found["container logConfiguration"][1]
    assert found["sidecar proxy command"] == ("", '["envoy","-c","/etc/envoy.yaml"]')
    assert set(found) == {
        "taskRoleArn",
        "container stopTimeout",
        "container logConfiguration",
        "sidecar proxy command",
    }
