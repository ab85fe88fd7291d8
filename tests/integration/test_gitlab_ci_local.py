"""The generated .gitlab-ci.yml, executed: gitlab-ci-local runs it with the docker executor on a fresh
clone of the committed tree, `build` then `deploy-staging` with the real `needs` and artifacts between
them, and the deploy goes to staging's ECS on moto (tests/ecs_harness.py runs the tasks as real
containers of the image the build job pushed to a real local registry).

What runs, and what does not: only `build` and `deploy-staging` (about 45 s together here). The jobs
before them (lint, typecheck, the four-Python tests, security) are nox sessions pinned to Python 3.12
or run on python:3.10/3.11/3.12/3.13: no registry here serves those images and Debian bookworm cannot
stand in for them (it has Python 3.11 only; nox fails "Python interpreter 3.12 not found" in the 3.11
stand-in, measured: the lint job reached nox in 3.7 s and stopped there). They would also add seven
full nox sessions (a virtualenv and `.[dev]` each) to `.ci/run`, which already runs the same sessions
directly. `build` takes no artifact from them (`needs: ... artifacts: false`), so nothing on the path
to the staging deploy is left out.

The machine's side (ci/setup-gitlab-ci-local.sh): gitlab-ci-local 4.53.0, rsync, and local stand-ins
for the images: the jobs' image (Python + pip in a venv, git, Docker CLI + buildx, the project's
dependencies) given to the pipeline through its image variables, and gitlab-ci-local's helper image
under the name gitlab-ci-local uses. Jobs run with host networking (they reach moto, the registry and
the load balancer on 127.0.0.1) and the host's Docker socket (the build job builds and pushes on the
host engine: CONVEYOR_CI__DOCKER_SERVICE=none drops the docker:dind include, and the registry cache is
off since a docker-container builder cannot see the local base image); the host's CA bundle is
mounted read-only, as a runner's `volumes` would be, for the intercepting proxy in front of PyPI.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conveyor import config
from conveyor.aws import AwsClients
from tests.conftest import IN_CI, REPO, engine_missing
from tests.ecs_harness import EcsRollout
from tests.integration.conftest import serve_registry
from tests.integration.test_ecs import REGION, old_definition
from tests.integration.test_ecs import moto_endpoint as moto_endpoint  # the fixture

pytestmark = [pytest.mark.docker, pytest.mark.aws]

GCL_VERSION = "4.53.0"
SETUP = "bash ci/setup-gitlab-ci-local.sh"
JOB_IMAGE = os.environ.get("GITLAB_CI_LOCAL_JOB_IMAGE", "conveyor-local/ci-job:1")
UTIL_IMAGE = "firecow/gitlab-ci-local-util:latest"  # docker.io/firecow/gitlab-ci-local-util, as it names it
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# The pipeline's image variables (the ci.gitlab_* keys, rendered into .gitlab-ci.yml with the official
# images as defaults), each pointed at the stand-in.
IMAGE_VARIABLES = ("CONVEYOR_CI__GITLAB_IMAGE", "CONVEYOR_CI__GITLAB_DOCKER_IMAGE")
# ci/gitlab/dind.yml (the docker:dind service and its DOCKER_HOST) is included unless this says "none";
# the registry cache needs a docker-container builder, which cannot see the local base image: off.
HOST_DOCKER = {
    "CONVEYOR_CI__DOCKER_SERVICE": "none",
    "CONVEYOR_IMAGE__CACHE_FROM": "",
    "CONVEYOR_IMAGE__CACHE_TO": "",
    "DOCKER_HOST": "unix:///var/run/docker.sock",
}
BOOTSTRAP_IMAGE = "registry.example.test/nobody/conveyor-demo@sha256:" + "1" * 64
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


def _image_present(ref: str) -> bool:
    return (
        subprocess.run(["docker", "image", "inspect", ref], capture_output=True, check=False).returncode == 0
    )


@pytest.fixture(scope="module")
def gitlab_ci_local(docker_engine: None) -> str:
    """gitlab-ci-local 4.53.0, rsync and the stand-in images, as ci/setup-gitlab-ci-local.sh leaves them."""
    binary = shutil.which("gitlab-ci-local")
    if binary is None:
        engine_missing(f"gitlab-ci-local not installed ({SETUP})")
    found = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    if found != GCL_VERSION:
        engine_missing(f"gitlab-ci-local {found or '?'} found, {GCL_VERSION} expected ({SETUP})")
    if shutil.which("rsync") is None:
        engine_missing(f"rsync not installed ({SETUP})")
    for ref in (JOB_IMAGE, UTIL_IMAGE):
        if not _image_present(ref):
            engine_missing(f"stand-in image {ref} is not in the engine ({SETUP})")
    return binary


def fresh_clone(dest: Path) -> str:
    """A clone of the committed HEAD on branch main (the pipeline's default branch); returns its sha.

    CONVEYOR_GCL_WORKTREE=1 (development only) commits the working tree's pipeline files on top."""
    subprocess.run(["git", "clone", "-q", "--no-local", str(REPO), str(dest)], check=True)
    git = ["git", "-c", "user.name=conveyor-tests", "-c", "user.email=tests@conveyor.invalid"]
    subprocess.run([*git, "switch", "-q", "-C", "main"], cwd=dest, check=True)
    if os.environ.get("CONVEYOR_GCL_WORKTREE") == "1" and not IN_CI:
        for rel in (".gitlab-ci.yml", "ci/pipeline.yaml", "src/conveyor", ".gitignore"):
            src = REPO / rel
            if src.is_dir():
                shutil.copytree(
                    src, dest / rel, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy2(src, dest / rel)
        subprocess.run([*git, "commit", "-q", "-am", "working tree pipeline files"], cwd=dest, check=False)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=dest, capture_output=True, text=True, check=True)
    return sha.stdout.strip()


@contextlib.contextmanager
def app_backends(prefix: str) -> Iterator[tuple[str, str]]:
    """The reference app's Postgres and Redis (stand-in images) on the engine's default bridge, where the
    harness runs the tasks; yields (DATABASE_URL, REDIS_URL) by container address."""
    cfg = config.load(REPO, environ=os.environ)
    images = {k: cfg.dotenv.get(k, os.environ.get(k, "")) for k in ("POSTGRES_IMAGE", "REDIS_IMAGE")}
    postgres = images["POSTGRES_IMAGE"] or "postgres:15"
    redis = images["REDIS_IMAGE"] or "redis:7"
    for ref in (postgres, redis):
        if not _image_present(ref):
            engine_missing(f"image {ref} is not in the engine (invoke image.standins --save)")
    password = uuid.uuid4().hex
    names = {"pg": f"{prefix}-pg", "redis": f"{prefix}-redis"}
    try:
        subprocess.run(
            ["docker", "run", "-d", "--name", names["pg"], "-e", "POSTGRES_USER=app", "-e",
             f"POSTGRES_PASSWORD={password}", "-e", "POSTGRES_DB=notes", postgres],
            capture_output=True, check=True,
        )  # fmt: skip
        subprocess.run(
            ["docker", "run", "-d", "--name", names["redis"], redis], capture_output=True, check=True
        )
        ips = {}
        for key, name in names.items():
            out = subprocess.run(
                ["docker", "inspect", "--format", "{{.NetworkSettings.IPAddress}}", name],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            ips[key] = out.stdout.strip()
        deadline = time.monotonic() + 60
        while subprocess.run(
            ["docker", "exec", names["pg"], "pg_isready", "-h", "127.0.0.1", "-U", "app"],
            capture_output=True, check=False,
        ).returncode != 0:  # fmt: skip
            assert time.monotonic() < deadline, "the Postgres stand-in did not become ready"
            time.sleep(0.5)
        yield f"postgresql://app:{password}@{ips['pg']}:5432/notes", f"redis://{ips['redis']}:6379/0"
    finally:
        subprocess.run(["docker", "rm", "-f", *names.values()], capture_output=True, check=False)


@dataclass
class Staging:
    """Staging's ECS account on moto: the cluster, its two services on a bootstrap revision."""

    cluster: str
    boto: Any
    harness: EcsRollout
    services: dict[str, str]  # process -> service

    def image_of(self, process: str) -> str:
        """The app container's image in the task definition the service's PRIMARY deployment runs."""
        svc = self.boto("ecs").describe_services(cluster=self.cluster, services=[self.services[process]])
        deployments = svc["services"][0]["deployments"]
        arn = next(d["taskDefinition"] for d in deployments if d["status"] == "PRIMARY")
        definition = self.boto("ecs").describe_task_definition(taskDefinition=arn)["taskDefinition"]
        return str(definition["containerDefinitions"][0]["image"])


@contextlib.contextmanager
def staging_on_moto(endpoint: str, database_url: str, redis_url: str) -> Iterator[Staging]:
    """deploy/environments/staging.yaml's cluster (a unique name) and services, as an account would have
    them before the first deploy: running a bootstrap image the harness keeps as placeholders."""
    cluster = f"conveyor-staging-{uuid.uuid4().hex[:8]}"
    cfg = config.load(REPO, "staging", environ={**os.environ, "CONVEYOR_ECS__ENDPOINT_URL": endpoint})
    boto = AwsClients(cfg.env.ecs, os.environ)
    ec2 = boto("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=cluster, Description="web", VpcId=vpc)["GroupId"]
    document = json.dumps({"url": database_url})
    try:
        boto("secretsmanager").create_secret(Name="conveyor/staging/db", SecretString=document)
    except Exception:  # made by another test on the same moto backend: make it ours
        boto("secretsmanager").put_secret_value(SecretId="conveyor/staging/db", SecretString=document)
    boto("ssm").put_parameter(
        Name="/conveyor/staging/redis-url", Value=redis_url, Type="SecureString", Overwrite=True
    )
    boto("ecs").create_cluster(clusterName=cluster)
    web = cfg.env.ecs.service
    services = {"web": web, "worker": f"{web}-worker"}
    for process, service in services.items():
        family = "conveyor-demo" if process == "web" else "conveyor-demo-worker"
        arn = boto("ecs").register_task_definition(**old_definition(family, BOOTSTRAP_IMAGE))[
            "taskDefinition"
        ]["taskDefinitionArn"]
        boto("ecs").create_service(
            cluster=cluster,
            serviceName=service,
            taskDefinition=arn,
            desiredCount=1,
            launchType="FARGATE",
            platformVersion="1.4.0",
            networkConfiguration={"awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group]}},
        )
    harness = EcsRollout(REGION, cluster, list(services.values()), endpoint=endpoint)
    try:
        harness.settle(run=False)
        yield Staging(cluster, boto, harness, services)
    finally:
        harness.close()


@contextlib.contextmanager
def ticking(harness: EcsRollout, every: float = 1.0) -> Iterator[None]:
    """ECS's scheduler in the background: the deploy runs in a job container with real sleeps, so the
    harness advances on its own (its clock is real seconds) instead of inside conveyor's sleep."""
    stop, errors, start = threading.Event(), [], time.monotonic()

    def run() -> None:
        while not stop.wait(every):
            try:
                harness.now = time.monotonic() - start
                harness.tick()
            except Exception as exc:  # reported after the pipeline, never swallowed
                errors.append(exc)
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
    if errors:
        raise errors[0]


def outcomes(stdout: str) -> dict[str, str]:
    """gitlab-ci-local's closing table: job -> PASS | FAIL | WARN (`` PASS  [  18 s] build``)."""
    found = {}
    for line in stdout.splitlines():
        match = re.match(r"^ (PASS|FAIL|WARN) +(?:\[[^]]*\] )?(\S+)\s*$", line)
        if match:
            found[match.group(2)] = match.group(1)
    return found


def registry_digest(registry: str, repository: str, digest: str) -> str:
    """The digest the registry serves for ``repository@digest`` (HEAD on its manifest)."""
    request = urllib.request.Request(
        f"http://{registry}/v2/{repository}/manifests/{digest}",
        method="HEAD",
        headers={"Accept": MANIFEST_TYPES},
    )
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with direct.open(request, timeout=10) as response:
        return str(response.headers["Docker-Content-Digest"])


@contextlib.contextmanager
def untagged_after(registry: str) -> Iterator[None]:
    """Untag what the pipeline tagged for this run's registry (never an image ID: others share them)."""
    try:
        yield
    finally:
        argv = ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"]
        argv += ["--filter", f"reference={registry}/*"]
        listed = subprocess.run(argv, capture_output=True, text=True, check=False).stdout.split()
        refs = [ref for ref in listed if not ref.endswith(":<none>")]
        if refs:
            subprocess.run(["docker", "image", "rm", *refs], capture_output=True, check=False)


def test_the_generated_gitlab_pipeline_builds_once_and_deploys_that_digest_to_staging(
    gitlab_ci_local: str, base_image: str, moto_endpoint: str, tmp_path: Path
) -> None:
    clone = tmp_path / "clone"
    sha = fresh_clone(clone)
    prefix = f"gcl-{uuid.uuid4().hex[:8]}"
    with (
        serve_registry() as registry,
        untagged_after(registry),
        app_backends(prefix) as (database_url, redis_url),
        staging_on_moto(moto_endpoint, database_url, redis_url) as staging,
        staging.harness.balancer() as url,
    ):
        variables = {
            **dict.fromkeys(IMAGE_VARIABLES, JOB_IMAGE),
            **HOST_DOCKER,
            "CONVEYOR_IMAGE__BASE_IMAGE": base_image,
            "PIP_CERT": CA_BUNDLE,
            "SSL_CERT_FILE": CA_BUNDLE,
            "CONVEYOR_REGISTRY": registry,
            "AWS_ENDPOINT_URL": moto_endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "CONVEYOR_ECS__CLUSTER": staging.cluster,
            "CONVEYOR_URL": url,  # the smoke probe: the load balancer in front of web's real tasks
            "CONVEYOR_DEPLOY__TIMEOUT": "240",
        }
        argv = [gitlab_ci_local, "build", "deploy-staging", "--pull-policy", "if-not-present"]
        argv += ["--home", str(tmp_path / "home")]  # no variables file of this machine's user
        argv += ["--network", "host", "--volume", "/var/run/docker.sock:/var/run/docker.sock"]
        argv += [
            "--volume",
            f"{CA_BUNDLE}:{CA_BUNDLE}:ro",
            "--cleanup",
            "--timestamps",
            "--no-artifacts-to-source",
        ]
        for key, value in variables.items():
            argv += ["--variable", f"{key}={value}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "CI_", "GITLAB_"))}
        with ticking(staging.harness):
            result = subprocess.run(
                argv, cwd=clone, env=env, capture_output=True, text=True, timeout=900, check=False
            )
        log = result.stdout[-6000:] + result.stderr[-3000:]
        assert result.returncode == 0, log
        (clone / "gitlab-ci-local.log").write_text(result.stdout + result.stderr)
        assert outcomes(result.stdout) == {"build": "PASS", "deploy-staging": "PASS"}, log
        # The build job's record, as the deploy job received it (the artifact of `build`).
        record = json.loads((clone / ".gitlab-ci-local/artifacts/build/build/release.json").read_text())
        pushed = record["pushed"]["staging"]
        repository, _, digest = pushed.partition("@")
        assert repository == f"{registry}/conveyor-demo", record
        assert record["git_sha"] == sha
        assert digest.startswith("sha256:")
        assert registry_digest(registry, "conveyor-demo", digest) == digest  # in the registry, by digest
        sbom = (
            clone / ".gitlab-ci-local/artifacts/build/reports/sbom" / f"{digest.replace(':', '-')}.cdx.json"
        )
        assert json.loads(sbom.read_text())["bomFormat"] == "CycloneDX"  # the other artifact of `build`
        # Exactly that digest is what both staging services run now (moto's task definitions) ...
        assert staging.image_of("web") == pushed
        assert staging.image_of("worker") == pushed
        # ... and what answers through the load balancer: the real container of the built image.
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with direct.open(url + "/version", timeout=5) as response:
            version = json.loads(response.read())
        assert version["git_sha"] == sha
        assert version["image_digest"] == pushed
        assert "deploy-staging imported artifacts" in result.stdout, log  # `needs: [build]`, no rebuild
        deploy_lines = [line for line in result.stdout.splitlines() if "deploy-staging >" in line]
        assert not [line for line in deploy_lines if "==> push" in line], log  # deployed, never re-pushed
        assert any(f"deploying   : {sha[:12]} ({pushed})" in line for line in deploy_lines), log
        assert len(staging.harness.release_tasks()) == 1  # the release command ran once, in the new image
