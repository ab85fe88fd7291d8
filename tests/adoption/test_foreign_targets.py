"""A Django project that is not this repository's app, made ready by `conveyor init`, goes through the ECS
and the Kubernetes flows with its two processes (web: gunicorn, worker: a management command) and its
release command (migrate), using the files init generated as they are.

- ECS (`--env staging`): moto server over HTTP, played by tests/ecs_harness.py, which runs every task
  conveyor deploys as real containers of the pushed images. The command line runs in another process, so
  ECS time passes when it polls: each DescribeServices / DescribeTasks that moto answers is one tick of the
  harness (the harness already ticks on UpdateService, RunTask and StopTask). The smoke probe reaches the
  harness's load balancer in front of the web service's healthy tasks: the real Django containers.
- Kubernetes (`--env production`): `invoke --dry plan` renders offline (NOT CONNECTED), the rendering is
  validated independently, then K8sDeployTarget + Deployer drive tests/k8s_fake.py (OUR KubeApi).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor import config
from conveyor.deploy import resolver_for
from conveyor.deploy.journal import FileJournal
from conveyor.deploy.k8s import K8sDeployTarget
from conveyor.deploy.model import Deployer, DeployFailed, Release
from conveyor.runner import Runner
from tests.adoption.conftest import Adopted
from tests.adoption.test_adoption import DJANGO
from tests.conftest import Clock, engine_missing
from tests.ecs_harness import EcsRollout
from tests.integration.conftest import registry
from tests.integration.test_ecs import REGION, moto_endpoint
from tests.k8s_fake import FakeKube

__all__ = ["moto_endpoint", "registry"]  # fixtures

WEB_COMMAND = ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "--access-logfile", "-",
               "bookshelf.wsgi:application"]  # fmt: skip
WORKER_COMMAND = ["python", "manage.py", "heartbeat"]
MIGRATE = ["python", "manage.py", "migrate", "--noinput"]
BOOTSTRAP_IMAGE = "bootstrap.example.test/placeholder:1"  # what the services ran before conveyor
BREAK_THE_WORKER = ("while True:", "raise SystemExit(3)\n        while True:")


# --- the foreign project --------------------------------------------------------------------------------


def scaffold(parent: Path) -> Adopted:
    """The Django project (test_adoption's) committed, `conveyor init` run, its contract checked, the
    generated files committed. Its name (hence cluster, services, families, namespace) is unique."""
    project = Adopted(parent / f"bookshelf-{uuid.uuid4().hex[:6]}")
    project.files(DJANGO)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=project.root, check=True)
    project.commit("the app, before conveyor")
    result = project.conveyor("init")
    assert result.returncode == 0, result.stdout + result.stderr
    project.init_output = result.stdout
    assert "process worker (Procfile): python manage.py heartbeat" in project.init_output
    assert "release command: python manage.py migrate --noinput" in project.init_output
    contract = yaml.safe_load((project.root / "invoke.yaml").read_text())["conveyor"]
    assert contract["project"]["name"] == project.root.name
    assert contract["processes"] == {
        "web": {"command": WEB_COMMAND, "port": 8000, "health": "/health", "version": "/version",
                "version_field": "git_sha"},
        "worker": {"command": WORKER_COMMAND},
    }  # fmt: skip
    assert contract["release"] == {"command": MIGRATE}
    project.commit("adopt conveyor")
    return project


def generated(project: Adopted, rel: str) -> dict[str, Any]:
    data = yaml.safe_load((project.root / rel).read_text())
    assert isinstance(data, dict), rel
    return data


def aws_clients(endpoint: str) -> Callable[[str], Any]:
    """service -> a boto3 client of moto server (the test's own view of AWS)."""
    import boto3

    return functools.cache(lambda service: boto3.client(service, endpoint_url=endpoint, region_name=REGION))


def store_secrets(aws: Callable[[str], Any], secrets: dict[str, str]) -> dict[str, str]:
    """Create what each `aws-sm:ID#key` / `ssm:/path` reference of a generated environment names, so the
    references resolve as committed. Returns NAME -> the value stored."""
    values: dict[str, str] = {}
    documents: dict[str, dict[str, str]] = {}
    for name, ref in secrets.items():
        values[name] = f"{name.lower()}-sentinel-{uuid.uuid4().hex}"
        scheme, _, target = ref.partition(":")
        if scheme == "aws-sm":
            secret_id, _, key = target.partition("#")
            assert key, f"{name}: {ref}: a whole-secret reference (no #key)"
            documents.setdefault(secret_id, {})[key] = values[name]
        elif scheme == "ssm":
            aws("ssm").put_parameter(Name=target, Value=values[name], Type="SecureString", Overwrite=True)
        else:
            raise AssertionError(f"secrets.{name}: {ref} is neither aws-sm: nor ssm:")
    for secret_id, document in documents.items():
        aws("secretsmanager").create_secret(Name=secret_id, SecretString=json.dumps(document))
    return values


# --- ECS (--env staging) --------------------------------------------------------------------------------


def provision_ecs(project: Adopted, aws: Callable[[str], Any]) -> tuple[dict[str, str], dict[str, str]]:
    """What the operator creates before the first deploy, named as the generated files imply: the
    cluster and one service per process, each running a bootstrap revision of its family; the secrets.
    Returns (process -> service, process -> family)."""
    staging = generated(project, "deploy/environments/staging.yaml")
    family = generated(project, "deploy/ecs/taskdef.yaml")["family"]
    assert "services" not in staging["ecs"]  # so: ecs.service, and <ecs.service>-<process> for the worker
    cluster, service = staging["ecs"]["cluster"], staging["ecs"]["service"]
    assert staging["ecs"]["region"] == REGION
    assert set(staging["secrets"]) == {"SECRET_KEY"}
    store_secrets(aws, staging["secrets"])
    services = {"web": service, "worker": f"{service}-worker"}
    families = {"web": family, "worker": f"{family}-worker"}
    ec2 = aws("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=cluster, Description=cluster, VpcId=vpc)["GroupId"]
    aws("ecs").create_cluster(clusterName=cluster)
    # The awslogs group the generated template names (infra.up's stack creates it; ECS needs it to exist).
    options = generated(project, "deploy/ecs/taskdef.yaml")["containerDefinitions"][0]["logConfiguration"]
    aws("logs").create_log_group(logGroupName=options["options"]["awslogs-group"])
    for process in ("web", "worker"):
        bootstrap = aws("ecs").register_task_definition(
            family=families[process],
            containerDefinitions=[{"name": "app", "image": BOOTSTRAP_IMAGE, "memory": 512}],
            requiresCompatibilities=["FARGATE"], networkMode="awsvpc", cpu="256", memory="512",
        )["taskDefinition"]["taskDefinitionArn"]  # fmt: skip
        aws("ecs").create_service(
            cluster=cluster, serviceName=services[process], taskDefinition=bootstrap,
            desiredCount=2 if process == "web" else 1, launchType="FARGATE", platformVersion="1.4.0",
            networkConfiguration={"awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group]}},
        )  # fmt: skip
    return services, families


@contextlib.contextmanager
def ecs_time_follows_polls(harness: EcsRollout) -> Iterator[None]:
    """One harness tick per DescribeServices / DescribeTasks moto answers (the deploying process polls
    with real sleeps; moto alone would never move a deployment)."""
    backend = harness.backend
    for method in ("describe_services", "describe_tasks"):
        original = getattr(backend, method)

        def polled(
            *args: Any, __original: Callable[..., Any] = original, __method: str = method, **kwargs: Any
        ) -> Any:
            if __method == "describe_services":
                harness.now += 5  # the deploying process polls DescribeServices every 5 s
            harness.tick()
            return __original(*args, **kwargs)

        setattr(backend, method, polled)
    try:
        yield
    finally:
        for method in ("describe_services", "describe_tasks"):
            backend.__dict__.pop(method, None)
        harness.close()


def in_registry(image: str) -> bool:
    """The manifest ``registry/name@sha256:...`` exists in the (local, plain HTTP) registry."""
    host, _, rest = image.partition("/")
    name, _, digest = rest.partition("@")
    request = urllib.request.Request(f"http://{host}/v2/{name}/manifests/{digest}", method="HEAD")
    request.add_header(
        "Accept",
        ", ".join([
            "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ]),
    )  # fmt: skip
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    with direct.open(request, timeout=5) as response:
        return bool(response.status == 200)


@pytest.mark.docker
@pytest.mark.aws
def test_ecs_staging_runs_migrate_deploys_web_and_worker_and_rolls_back_a_failing_worker(
    base_image: str, registry: str, moto_endpoint: str, tmp_path: Path
) -> None:
    project = scaffold(tmp_path)
    aws = aws_clients(moto_endpoint)
    services, families = provision_ecs(project, aws)
    cluster = generated(project, "deploy/environments/staging.yaml")["ecs"]["cluster"]
    harness = EcsRollout(REGION, cluster, [services["web"], services["worker"]], endpoint=moto_endpoint)
    harness.settle(run=False)  # the bootstrap revision's image cannot be pulled: placeholder tasks
    # The app keeps its sqlite file in /srv/data (compose: a named volume): on ECS the operator mounts an
    # EFS file system there, so the release task's migration and the web tasks share it.
    path = project.root / "deploy/ecs/taskdef.yaml"
    taskdef = yaml.safe_load(path.read_text())
    taskdef["volumes"] = [
        {"name": "data", "efsVolumeConfiguration": {"fileSystemId": "fs-0123456789abcdef0"}}
    ]
    taskdef["containerDefinitions"][0]["mountPoints"] = [
        {"sourceVolume": "data", "containerPath": "/srv/data"}
    ]
    path.write_text(yaml.safe_dump(taskdef, sort_keys=False))
    project.commit("an EFS volume for the sqlite file")
    with ecs_time_follows_polls(harness), harness.balancer() as lb:
        # Gitignored by the generated .gitignore: the builds stay clean (no -dirty tag).
        project.write(".env", f"CONVEYOR_IMAGE__BASE_IMAGE={base_image}\n")
        project.write(
            ".env.staging",
            f"CONVEYOR_ECS__ENDPOINT_URL={moto_endpoint}\nCONVEYOR_REGISTRY={registry}\nCONVEYOR_URL={lb}\n"
            "AWS_ACCESS_KEY_ID=testing\nAWS_SECRET_ACCESS_KEY=testing\n",
        )
        first = project.git("rev-parse", "HEAD")
        project.ok("build")
        plan = project.ok("plan", "--env", "staging")
        assert f"~ worker: command: (the image CMD) -> {' '.join(WORKER_COMMAND)}" in plan
        assert "~ web: ports: " in plan
        assert f"run_task {families['web']} (FARGATE 1.4.0), container app: {' '.join(MIGRATE)}" in plan
        assert f"step: update_service {cluster}/{services['worker']} (worker)" in plan

        out = project.ok("deploy", "--env", "staging")
        assert f"deploy to staging succeeded: serving {first[:12]}" in out
        image = json.loads((project.root / "build/release.json").read_text())["pushed"]["staging"]
        assert image.startswith(f"{registry}/{project.root.name}@sha256:")
        assert in_registry(image)
        deployed = {}
        for process in ("web", "worker"):
            svc = aws("ecs").describe_services(cluster=cluster, services=[services[process]])["services"][0]
            assert [d["status"] for d in svc["deployments"]] == ["PRIMARY"], process
            deployed[process] = svc["deployments"][0]["taskDefinition"]
            assert deployed[process].endswith(f":task-definition/{families[process]}:2"), deployed[process]
            described = aws("ecs").describe_task_definition(
                taskDefinition=deployed[process], include=["TAGS"]
            )
            definition = described["taskDefinition"]
            tags = {t["key"]: t["value"] for t in described["tags"]}
            assert (tags["conveyor:git-sha"], tags["conveyor:process"]) == (first, process)
            assert definition["executionRoleArn"] == (
                f"arn:aws:iam::123456789012:role/{project.root.name}-execution"
            )
            [app] = definition["containerDefinitions"]
            assert app["name"] == "app"
            assert app["image"] == image
            assert app["command"] == (WEB_COMMAND if process == "web" else WORKER_COMMAND)
            assert app["logConfiguration"]["options"]["awslogs-region"] == REGION
            assert {e["name"]: e["value"] for e in app["environment"]} == {
                "LOG_LEVEL": "info",
                "IMAGE_DIGEST": image,
                "CONVEYOR_SHUTDOWN_TIMEOUT": "20",  # deploy.shutdown_timeout, on every target
            }
            [secret] = app["secrets"]
            assert secret["name"] == "SECRET_KEY"
            assert secret["valueFrom"].startswith(
                f"arn:aws:secretsmanager:{REGION}:123456789012:secret:{project.root.name}/staging"
            )
            assert secret["valueFrom"].endswith(":secret_key::")
            if process == "web":
                assert [m["containerPort"] for m in app["portMappings"]] == [8000]
            else:
                assert not app.get("portMappings")
                assert not app.get("healthCheck")
        [migrate] = harness.release_tasks()
        assert migrate.task_definition_arn == deployed["web"]
        assert migrate.overrides["containerOverrides"] == [{"name": "app", "command": MIGRATE}]
        assert (migrate.launch_type, migrate.platform_version) == ("FARGATE", "1.4.0")

        # The next release's worker cannot start: the whole release goes back, web included.
        command = project.root / "shelving/management/commands/heartbeat.py"
        command.write_text(command.read_text().replace(*BREAK_THE_WORKER))
        second = project.commit("the worker crashes")
        project.ok("build")
        start = time.monotonic()
        result = project.invoke("deploy", "--env", "staging")
        project.timings["deploy --env staging (worker fails)"] = time.monotonic() - start
        out = result.stdout + result.stderr
        assert result.returncode == 1, out[-4000:]
        # The broken worker really exits 3: ECS's circuit breaker rolls the worker back by itself.
        assert (
            "failed at wait (worker: ECS rolled the deployment back by itself (circuit breaker or alarm); "
            f"serving {families['worker']}:2 (sha {first[:12]})"
        ) in out
        assert f"rolled back: serving {first[:12]} again (verified)" in out
        for process in ("web", "worker"):
            svc = aws("ecs").describe_services(cluster=cluster, services=[services[process]])["services"][0]
            assert [(d["status"], d["taskDefinition"]) for d in svc["deployments"]] == [
                ("PRIMARY", deployed[process])
            ], process
        assert [t.task_definition_arn.rsplit("/", 1)[1] for t in harness.release_tasks()] == [
            f"{families['web']}:2",
            f"{families['web']}:3",
        ]  # the second release's migrate ran too, before its services were touched

        history = project.ok("history", "--env", "staging")
        assert f"worker (service {services['worker']}, family {families['worker']}):" in history
        name = generated(project, "invoke.yaml")["conveyor"]["project"]["name"]
        # The journal lives with the environment (SSM), read here through the test's own AWS client.
        stored = aws("ssm").get_parameters_by_path(Path=f"/conveyor/journal/{name}/staging")["Parameters"]
        journal = [json.loads(p["Value"]) for p in sorted(stored, key=lambda p: p["Name"])]
        assert [(e["action"], e["result"], e["git_sha"]) for e in journal] == [
            ("deploy", "succeeded", first),
            ("deploy", "failed", second),
            ("rollback", "succeeded", first),
        ]
        assert not (project.root / ".conveyor/history/staging.jsonl").exists()  # nothing fell back
        assert aws("ssm").get_parameters(Names=[f"/conveyor/locks/{name}/staging"])["Parameters"] == []
    print(
        f"{project.root.name}: ECS staging, steps: { {k: round(v, 1) for k, v in project.timings.items()} }"
    )


@pytest.mark.aws
def test_aws_credentials_kept_in_env_staging_reach_aws(moto_endpoint: str, tmp_path: Path) -> None:
    """The README: set CONVEYOR_REGISTRY and AWS credentials, e.g. in .env.staging."""
    project = scaffold(tmp_path)
    provision_ecs(project, aws_clients(moto_endpoint))
    sha = project.git("rev-parse", "HEAD")
    project.write(
        "build/release.json",
        json.dumps({"refs": [f"{project.root.name}:{sha[:12]}"], "image_id": "sha256:" + "9" * 64,
                    "git_sha": sha, "pushed": {}}),
    )  # fmt: skip
    project.write(
        ".env.staging",
        f"CONVEYOR_ECS__ENDPOINT_URL={moto_endpoint}\nCONVEYOR_REGISTRY=registry.example.test/team\n"
        "AWS_ACCESS_KEY_ID=testing\nAWS_SECRET_ACCESS_KEY=testing\n",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CONVEYOR_"))}
    env.update(HOME=str(tmp_path), AWS_EC2_METADATA_DISABLED="true")  # no other credential source
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "plan", "--env", "staging"],
        cwd=project.root, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


# --- Kubernetes (--env production) -----------------------------------------------------------------------


@pytest.fixture
def kube_tools() -> None:
    for tool, fix in (
        ("kubectl", "`conveyor setup` installs it"),
        ("kubernetes-validate", "pip install -e '.[dev]'"),
    ):
        if shutil.which(tool) is None:
            engine_missing(f"{tool} not installed ({fix})")


def production_release(project: Adopted, digit: str, git_sha: str) -> Release:
    registry_ = generated(project, "deploy/environments/production.yaml")["registry"]
    return Release(f"{registry_}/{project.root.name}@sha256:" + digit * 64, git_sha)


def test_k8s_dry_plan_renders_both_processes_and_the_release_job_offline(
    kube_tools: None, tmp_path: Path
) -> None:
    project = scaffold(tmp_path)
    name = project.root.name
    release = production_release(project, "2", project.git("rev-parse", "HEAD"))
    project.write(
        "build/release.json",
        json.dumps({"refs": [f"{name}:{release.git_sha[:12]}"], "image_id": "sha256:" + "9" * 64,
                    "git_sha": release.git_sha, "pushed": {"production": release.image}}),
    )  # fmt: skip
    result = project.invoke(
        "--dry", "plan", "--env", "production", env={"KUBECONFIG": str(tmp_path / "no-such-kubeconfig")}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "NOT CONNECTED (no kube context" in out
    assert f"~ process web image: unknown (no cluster) -> {release.image}" in out
    assert f"~ process worker image: unknown (no cluster) -> {release.image}" in out
    assert f"step: release Job from deployment/{name}-web: {' '.join(MIGRATE)}" in out
    assert f"step: wait for deployment/{name}-web (web), deployment/{name}-worker (worker)" in out

    # --dry leaves nothing behind: no build/k8s folder, no scratch folder in the project.
    assert not (project.root / "build/k8s").exists()
    assert not list(project.root.glob(".conveyor-render-*"))
    # A plan without --dry keeps the wrapper kustomization in build/: render it ourselves and compare.
    kept = project.invoke(
        "plan", "--env", "production", env={"KUBECONFIG": str(tmp_path / "no-such-kubeconfig")}
    )
    assert kept.returncode == 0, kept.stdout + kept.stderr
    out = kept.stdout
    folder = project.root / "build/k8s/production"
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, check=True
    )
    objects = [o for o in yaml.safe_load_all(rendered.stdout) if o]
    # What the plan prints is that rendering plus the fields conveyor sets from configuration (rollout
    # strategy, grace period, preStop; no `replicas` under an HPA): equal once those are left out.
    preview = out[out.index("apiVersion:") : out.index("[dry] stopping after the plan")]
    printed = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(preview) if o}
    assert [_without_settings(printed[(o["kind"], o["metadata"]["name"])]) for o in objects] == [
        _without_settings(o) for o in objects
    ]
    validated = subprocess.run(
        ["kubernetes-validate", "--strict", "-k", "1.32.0", "-"],
        input=rendered.stdout, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == [
        ("Deployment", f"{name}-web"),
        ("Deployment", f"{name}-worker"),
        ("Service", name),
    ]  # kubernetes-validate only warns on a kind it does not know
    assert {o["metadata"]["namespace"] for o in objects} == {f"{name}-production"}
    for process, args in (("web", WEB_COMMAND), ("worker", WORKER_COMMAND)):
        dep = next(o for o in objects if o["metadata"]["name"] == f"{name}-{process}")
        assert dep["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == process
        [app] = dep["spec"]["template"]["spec"]["containers"]
        assert (app["image"], app["args"]) == (release.image, args)
        assert "command" not in app  # the image's ENTRYPOINT stays
        assert bool(app.get("ports")) == (process == "web")
    assert project.git("status", "--porcelain") == ""  # the committed files were not touched


def _without_settings(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` without the Deployment fields conveyor sets from `k8s.*` and `deploy.*`."""
    obj = json.loads(json.dumps(obj))
    if obj["kind"] == "Deployment":
        for key in ("strategy", "minReadySeconds", "progressDeadlineSeconds", "replicas"):
            obj["spec"].pop(key, None)
        pod = obj["spec"]["template"]["spec"]
        pod.pop("terminationGracePeriodSeconds", None)
        for container in pod["containers"]:
            container.pop("lifecycle", None)
    return dict(obj)


@pytest.fixture
def k8s_project(kube_tools: None, moto_endpoint: str, tmp_path: Path) -> tuple[Adopted, Callable[[str], Any]]:
    """The project, with the secrets its generated production environment references stored in moto."""
    project = scaffold(tmp_path)
    aws = aws_clients(moto_endpoint)
    store_secrets(aws, generated(project, "deploy/environments/production.yaml")["secrets"])
    # Where the README says AWS access goes: the environment's .env file (not the process environment).
    project.write(
        ".env.production",
        f"CONVEYOR_ECS__ENDPOINT_URL={moto_endpoint}\nAWS_REGION={REGION}\n"
        "AWS_ACCESS_KEY_ID=testing\nAWS_SECRET_ACCESS_KEY=testing\n",
    )
    return project, aws


def k8s_deployer(
    project: Adopted, kube: FakeKube, aws: Callable[[str], Any]
) -> tuple[Deployer, K8sDeployTarget, io.StringIO]:
    """As tests/unit/test_k8s.py builds them, with the kit's own resolver: the generated `aws-sm:`
    references reach AWS (moto) through the environment's .env.production."""
    cfg = config.load(project.root, "production", environ={})
    clock = Clock()
    out = io.StringIO()
    runner = Runner(out=out)
    resolver = resolver_for(cfg, runner)
    target = K8sDeployTarget(
        runner, kube, cfg, deployer="tester", resolver=resolver, sleep=clock.sleep, clock=clock
    )
    deployer = Deployer(
        target=target, runner=runner, journal=FileJournal(project.root, "production"), env="production",
        timeout=cfg.env.deploy.timeout, lock_ttl=600, contract=cfg.app, url=cfg.env.url,
        probe=kube.probe_for(f"{project.root.name}-web"), clock=clock, sleep=clock.sleep,
    )  # fmt: skip
    return deployer, target, out


def seeded(project: Adopted, aws: Callable[[str], Any]) -> tuple[FakeKube, Release, Release]:
    """A cluster already running an older release as revision 1 of both Deployments."""
    old = production_release(project, "1", "a" * 40)
    new = production_release(project, "2", project.git("rev-parse", "HEAD"))
    kube = FakeKube(f"{project.root.name}-production")
    k8s_deployer(project, kube, aws)[0].deploy(old)
    kube.calls.clear()
    kube.stdin.clear()
    return kube, old, new


@pytest.mark.aws
def test_k8s_deploy_runs_migrate_as_a_job_then_both_deployments_by_digest(
    k8s_project: tuple[Adopted, Callable[[str], Any]],
) -> None:
    project, aws = k8s_project
    name = project.root.name
    kube, _, new = seeded(project, aws)
    deployer, target, out = k8s_deployer(project, kube, aws)
    deployer.deploy(new)
    steps = [c for c in kube.calls if c.startswith(("apply", "rollout"))]
    job_name = next(c.split("/", 1)[1] for c in steps if c.startswith("apply job/"))
    secret = steps[0].split("/", 1)[1]  # named by the hash of its values: a new value is a new Secret
    assert secret.startswith(f"{name}-")
    assert steps == [
        f"apply secret/{secret}",
        f"apply job/{job_name}",
        f"apply service/{name}",
        f"apply deployment/{name}-web",
        f"apply deployment/{name}-worker",
        f"rollout status {name}-web",
        f"rollout status {name}-worker",
    ]
    job = kube.objects[("job", job_name)]
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert (container["image"], container["args"]) == (new.image, MIGRATE)
    assert "command" not in container
    assert pod["restartPolicy"] == "Never"
    assert not {"ports", "readinessProbe", "livenessProbe"} & set(container)
    assert container["envFrom"] == [{"secretRef": {"name": secret, "optional": True}}]
    assert job["status"]["succeeded"] == 1
    for process, args in (("web", WEB_COMMAND), ("worker", WORKER_COMMAND)):
        app = kube.container(f"{name}-{process}", "app")
        assert (app["image"], app["args"]) == (new.image, args)
        assert kube.revision(f"{name}-{process}") == 2
        ready, wanted = kube.ready(f"{name}-{process}")
        assert ready == wanted == (2 if process == "web" else 1)
    # The generated environment's secret, resolved from Secrets Manager, went on stdin only.
    secret_key = json.loads(
        aws("secretsmanager").get_secret_value(SecretId=f"{name}/production")["SecretString"]
    )["secret_key"]
    secret = yaml.safe_load(kube.stdin[0])  # the versioned config, before the Job
    assert base64.b64decode(secret["data"]["SECRET_KEY"]).decode() == secret_key
    assert secret_key not in out.getvalue()
    assert secret_key not in " ".join(kube.calls)
    current = target.current()
    assert current is not None
    assert (current.ref, current.git_sha, current.image) == ("2", new.git_sha, new.image)


@pytest.mark.aws
def test_k8s_a_worker_that_never_gets_ready_rolls_both_deployments_back(
    k8s_project: tuple[Adopted, Callable[[str], Any]],
) -> None:
    project, aws = k8s_project
    name = project.root.name
    kube, old, new = seeded(project, aws)
    kube.rollouts[f"{name}-worker"].append("timeout")
    deployer, target, _ = k8s_deployer(project, kube, aws)
    with pytest.raises(DeployFailed) as exc:
        deployer.deploy(new)
    # the stalled rollout's progress deadline (k8s.progress_deadline, 600 s) comes before deploy.timeout
    assert (
        f'failed at wait (kubectl rollout: error: deployment "{name}-worker" exceeded its progress deadline)'
        in str(exc.value)
    )
    assert str(exc.value).endswith(f"rolled back: serving {old.git_sha[:12]} again (verified)")
    for process in ("web", "worker"):
        assert f"rollout undo {name}-{process} --to-revision=1" in kube.calls
        assert kube.container(f"{name}-{process}", "app")["image"] == old.image
        assert kube.revision(f"{name}-{process}") == 3  # the old template, as a new revision
        ready, wanted = kube.ready(f"{name}-{process}")
        assert ready == wanted > 0
    current = target.current()
    assert current is not None
    assert current.git_sha == old.git_sha
    entries = FileJournal(project.root, "production").entries()
    assert [(e["action"], e["result"], e["git_sha"]) for e in entries[-2:]] == [
        ("deploy", "failed", new.git_sha),
        ("rollback", "succeeded", old.git_sha),
    ]
