"""The ECS target (boto3): ``api`` wraps the AWS calls and the SSM lock, ``render`` turns the template and
the app contract into one task definition per process (offline checks, diff), ``rollout`` holds the
services' rollout settings (checks, deploymentConfiguration, plan lines), ``target`` is the deploy
model's Target over them. Importing this package imports neither boto3 nor botocore.
"""

from __future__ import annotations

from conveyor.deploy.ecs.api import EcsApi, SsmLock
from conveyor.deploy.ecs.render import (
    FARGATE_SIZES,
    TAG_DEPLOYER,
    TAG_PROCESS,
    TAG_SHA,
    TAG_VERSION,
    Inputs,
    app_container,
    check_fargate,
    check_static,
    diff,
    family_names,
    load_template,
    render,
    render_all,
    service_names,
    template_path,
    validate_definition,
)
from conveyor.deploy.ecs.rollout import (
    check_rollout,
    check_room,
    deployment_configuration,
    describe_rollout,
    failure_threshold,
    rollout_changes,
)
from conveyor.deploy.ecs.target import EcsDeployTarget, EcsPlan, ProcessRollout, run_task_launch

__all__ = [
    "FARGATE_SIZES",
    "TAG_DEPLOYER",
    "TAG_PROCESS",
    "TAG_SHA",
    "TAG_VERSION",
    "EcsApi",
    "EcsDeployTarget",
    "EcsPlan",
    "Inputs",
    "ProcessRollout",
    "SsmLock",
    "app_container",
    "check_fargate",
    "check_rollout",
    "check_room",
    "check_static",
    "deployment_configuration",
    "describe_rollout",
    "diff",
    "failure_threshold",
    "family_names",
    "load_template",
    "render",
    "render_all",
    "rollout_changes",
    "run_task_launch",
    "service_names",
    "template_path",
    "validate_definition",
]
