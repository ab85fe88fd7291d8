"""The reference project's environment files deploy their secrets as committed: every `aws-sm:` and `ssm:`
reference of staging.yaml (ECS) and production.yaml (Kubernetes) resolves from AWS (moto server over HTTP)
with only what the README tells a user to put in `.env.<env>`: credentials, region, endpoint."""

from __future__ import annotations

import io
from pathlib import Path

import boto3
import pytest

from conveyor import config
from conveyor.deploy import resolver_for
from conveyor.runner import Runner
from tests.adoption.test_foreign_targets import store_secrets
from tests.integration.conftest import copy_project
from tests.integration.test_ecs import REGION, moto_endpoint

__all__ = ["moto_endpoint"]  # fixture
pytestmark = pytest.mark.aws


@pytest.mark.parametrize("env", ["staging", "production"])
def test_the_committed_references_resolve_from_aws(env: str, moto_endpoint: str, tmp_path: Path) -> None:
    project = copy_project(tmp_path, "unused-base-image")
    committed = (project.root / f"deploy/environments/{env}.yaml").read_text()
    (project.root / f".env.{env}").write_text(
        "AWS_ACCESS_KEY_ID=testing\nAWS_SECRET_ACCESS_KEY=testing\n"
        f"AWS_REGION={REGION}\nCONVEYOR_ECS__ENDPOINT_URL={moto_endpoint}\n"
    )
    cfg = config.load(project.root, env, environ={})
    assert cfg.env.secrets, f"{env}.yaml has no secrets to test"
    references = {name: str(ref) for name, ref in cfg.env.secrets.items()}
    for ref in references.values():
        assert ref in committed  # the references as the file has them, nothing swapped

    def aws(service: str) -> object:
        return boto3.client(
            service,
            endpoint_url=moto_endpoint,
            region_name=cfg.env.ecs.region or REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    stored = store_secrets(aws, references)
    resolver = resolver_for(cfg, Runner(out=io.StringIO()))
    assert {name: resolver.resolve(ref) for name, ref in cfg.env.secrets.items()} == stored
