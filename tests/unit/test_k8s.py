"""The Kubernetes target: real kustomize and schema validation offline; the orchestration against a fake
of OUR kubectl adapter (tests/k8s_fake.py) - no API server can run on our machines.

Most tests use a small project of their own (`shop`: a web and a worker process, a sidecar on the worker,
a release command); the reference project's overlays are checked at the end."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor import config
from conveyor.deploy.journal import FileJournal
from conveyor.deploy.k8s import (
    COMPONENT,
    K8sDeployTarget,
    Rendered,
    schema_validate,
    split_image,
    write_kustomization,
)
from conveyor.deploy.model import Deployer, DeployFailed, LockHeld, Owner, Plan, Release, RolloutFailed
from conveyor.errors import ConfigError, ConveyorError
from conveyor.runner import Runner
from conveyor.secrets import SecretResolver
from tests.conftest import REPO, Clock, Project, engine_missing
from tests.k8s_fake import FOREIGN, FakeKube, schema_validate_once

NS = "shop-production"
OLD = Release("registry.example.com/shop/shop@sha256:" + "1" * 64, "a" * 40)
NEW = Release("registry.example.com/shop/shop@sha256:" + "2" * 64, "b" * 40)
SIDECAR = "registry.example.com/tools/log-shipper@sha256:" + "5" * 64
SENTINEL = "k8s-sentinel-secret-value-7f3a"
SHUTDOWN = {
    "name": "CONVEYOR_SHUTDOWN_TIMEOUT",
    "value": "20",
}  # every app container: deploy.shutdown_timeout
WEB, WORKER = "shop-web", "shop-worker"


@pytest.fixture(autouse=True)
def tools() -> None:
    if shutil.which("kubectl") is None:
        engine_missing("kubectl not installed (`conveyor setup` installs it)")
    if shutil.which("kubernetes-validate") is None:
        engine_missing("kubernetes-validate not installed (pip install -e '.[dev]')")


# --- a small project of our own ------------------------------------------------------------------------

RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
LIMITS = {"limits": {"cpu": "500m", "memory": "256Mi"}}


def deployment(name: str, component: str, containers: list[dict[str, Any]], replicas: int) -> dict[str, Any]:
    labels = {"app.kubernetes.io/component": component}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {**c, "resources": LIMITS, "securityContext": RESTRICTED} for c in containers
                    ],
                },
            },
        },
    }


WEB_APP = {
    "name": "app",
    "image": "shop",
    "ports": [{"name": "http", "containerPort": 8000}],
    "envFrom": [{"secretRef": {"name": "shop-env"}}],
    "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}},
}
WORKER_APP = {
    "name": "app",
    "image": "shop",
    "args": ["from", "the", "manifest"],
    "envFrom": [{"secretRef": {"name": "shop-env"}}],
    "livenessProbe": {"exec": {"command": ["shop", "work", "--check"]}},
}
SHIPPER = {"name": "log-shipper", "image": SIDECAR}
SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": WEB},
    "spec": {
        "selector": {"app.kubernetes.io/component": "web"},
        "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
    },
}
CONTRACT = """
conveyor:
  project:
    name: shop
  image:
    name: shop
  processes:
    web:
      command: [shop, serve]
      port: 8000
    worker:
      command: [shop, work, --queue, default]
  release:
    command: [shop, migrate, --no-input]
"""


def write_manifests(
    proj: Project, deployments: list[dict[str, Any]], extra: tuple[dict[str, Any], ...] = ()
) -> None:
    resources = []
    for obj in [*deployments, *extra]:
        rel = f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
        proj.write(f"k8s/base/{rel}", yaml.safe_dump(obj, sort_keys=False))
        resources.append(rel)
    base = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "labels": [{"pairs": {"app.kubernetes.io/name": "shop"}, "includeSelectors": True}],
        "resources": resources,
    }
    proj.write("k8s/base/kustomization.yaml", yaml.safe_dump(base, sort_keys=False))


def web_and_worker() -> list[dict[str, Any]]:
    return [deployment(WEB, "web", [WEB_APP], 2), deployment(WORKER, "worker", [SHIPPER, WORKER_APP], 1)]


@pytest.fixture
def project(tmp_path: Path) -> Project:
    proj = Project(tmp_path)
    proj.write("tasks.py", "from conveyor.tasks import namespace\n\nns = namespace()\n")
    proj.write("invoke.yaml", CONTRACT)
    write_manifests(proj, web_and_worker(), (SERVICE,))
    proj.write(
        "k8s/overlays/production/kustomization.yaml",
        f"""
        apiVersion: kustomize.config.k8s.io/v1beta1
        kind: Kustomization
        namespace: {NS}
        resources:
          - ../../base
        """,
    )
    proj.write(
        "deploy/environments/production.yaml",
        f"""
        target: k8s
        url: https://shop.example.com
        registry: registry.example.com/shop
        k8s:
          overlay: k8s/overlays/production
          namespace: {NS}
        secrets:
          DATABASE_URL: env:DB_URL
        deploy:
          timeout: 60
        """,
    )
    return proj


def make(
    project: Project, kube: FakeKube, clock: Clock | None = None, db_url: str = SENTINEL
) -> tuple[Deployer, K8sDeployTarget, io.StringIO]:
    """Deployer and target on the fake; ``db_url`` is what the project's DB_URL secret resolves to."""
    cfg = config.load(project.root, "production", environ={"DB_URL": db_url})
    clock = clock or Clock()
    out = io.StringIO()
    runner = Runner(out=out)
    resolver = SecretResolver(runner.redact, environ=cfg.dotenv, root=cfg.root)
    target = K8sDeployTarget(
        runner, kube, cfg, deployer="tester", resolver=resolver, sleep=clock.sleep, clock=clock,
        validate=schema_validate_once,
    )  # fmt: skip
    deployer = Deployer(
        target=target, runner=runner, journal=FileJournal(project.root, "production"), env="production",
        timeout=cfg.env.deploy.timeout, lock_ttl=600, contract=cfg.app, url=cfg.env.url,
        probe=kube.probe_for(WEB), clock=clock, sleep=clock.sleep,
    )  # fmt: skip
    return deployer, target, out


def seeded(project: Project) -> FakeKube:
    """A cluster already running OLD as revision 1 of both Deployments."""
    kube = FakeKube(NS)
    deployer, _, _ = make(project, kube)
    deployer.deploy(OLD)
    kube.calls.clear()
    kube.stdin.clear()
    return kube


def applied(kube: FakeKube) -> list[str]:
    return [c for c in kube.calls if c.startswith(("apply", "rollout", "scale", "delete job"))]


def job_name(kube: FakeKube) -> str:
    """The name of the last Job applied."""
    return [c.split("/", 1)[1] for c in kube.calls if c.startswith("apply job/")][-1]


def job_of(kube: FakeKube) -> dict[str, Any]:
    return kube.objects[("job", job_name(kube))]


# --- rendering: the wrapper kustomization ---------------------------------------------------------------


def test_generated_kustomization_sets_digest_and_args_per_process_and_leaves_committed_files_alone(
    project: Project,
) -> None:
    before = {p: p.read_text() for p in (project.root / "k8s").rglob("*.yaml")}
    _, target, _ = make(project, FakeKube(NS))
    folder = write_kustomization(target.cfg, NEW, "tester", target.workloads, base=target.base)
    assert folder == project.root / "build/k8s/production"
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["../../../k8s/overlays/production"]  # relative: kustomize needs it
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, check=True
    )
    deps = {
        o["metadata"]["name"]: o for o in yaml.safe_load_all(rendered.stdout) if o["kind"] == "Deployment"
    }
    web = deps[WEB]["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"], c["args"]) for c in web] == [("app", NEW.image, ["shop", "serve"])]
    worker = deps[WORKER]["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in worker] == ["log-shipper", "app"]  # the order stays
    assert worker[0] == {**SHIPPER, "resources": LIMITS, "securityContext": RESTRICTED}  # untouched
    assert (worker[1]["image"], worker[1]["args"]) == (NEW.image, ["shop", "work", "--queue", "default"])
    for dep in deps.values():
        annotations = dep["metadata"]["annotations"]
        assert annotations["kubernetes.io/change-cause"] == f"conveyor deploy {NEW.git_sha[:12]} by tester"
        assert annotations["conveyor.dev/image"] == NEW.image
        assert dep["spec"]["template"]["metadata"]["annotations"]["conveyor.dev/git-sha"] == NEW.git_sha
    assert {p: p.read_text() for p in (project.root / "k8s").rglob("*.yaml")} == before


def test_a_process_without_a_command_keeps_the_manifests_args(project: Project) -> None:
    project.write("invoke.yaml", CONTRACT.replace("      command: [shop, work, --queue, default]\n", ""))
    _, target, _ = make(project, FakeKube(NS))
    objects = target.render(NEW, require_digest=True)
    worker = next(o for o in objects if o["metadata"]["name"] == WORKER)
    assert worker["spec"]["template"]["spec"]["containers"][1]["args"] == ["from", "the", "manifest"]


def test_the_placeholder_image_is_k8s_image(project: Project) -> None:
    """`k8s.image` names the placeholder when it differs from the image's name."""
    project.write("invoke.yaml", CONTRACT.replace("name: shop\n  processes", "name: shop-app\n  processes"))
    with pytest.raises(ConfigError, match="placeholder image `shop-app`"):
        make(project, FakeKube(NS))
    env = project.root / "deploy/environments/production.yaml"
    env.write_text(env.read_text().replace("k8s:\n", "k8s:\n  image: shop\n"))
    _, target, _ = make(project, FakeKube(NS))
    objects = target.render(NEW, require_digest=True)
    assert {
        o["spec"]["template"]["spec"]["containers"][-1]["image"] for o in objects if o["kind"] == "Deployment"
    } == {NEW.image}


def with_vars(project: Project, variables: str) -> None:
    """The fixture project's environment file with this `vars:` block (production-like: LOG_LEVEL)."""
    path = project.root / "deploy/environments/production.yaml"
    path.write_text(path.read_text().split("vars:\n")[0] + "vars:\n" + variables)


VARS = "  LOG_LEVEL: warning\n  FEATURE_FLAGS: 'search,$(HOSTNAME),a$$b'\n"


def test_vars_reach_every_app_container_over_its_own_env_and_no_sidecar(project: Project) -> None:
    web_app = {**WEB_APP, "env": [{"name": "LOG_LEVEL", "value": "debug"}, {"name": "TZ", "value": "UTC"}]}
    write_manifests(project, [deployment(WEB, "web", [web_app], 2), web_and_worker()[1]], (SERVICE,))
    with_vars(project, VARS)
    _, target, _ = make(project, FakeKube(NS))
    objects = target.render(NEW, require_digest=True)
    deps = {
        o["metadata"]["name"]: o["spec"]["template"]["spec"] for o in objects if o["kind"] == "Deployment"
    }
    flags = {"name": "FEATURE_FLAGS", "value": "search,$$(HOSTNAME),a$$$$b"}  # as written, not expanded
    [web] = deps[WEB]["containers"]
    # the environment wins on LOG_LEVEL, in the manifest's place; TZ stays; the other vars follow by name
    level, tz = {"name": "LOG_LEVEL", "value": "warning"}, {"name": "TZ", "value": "UTC"}
    assert web["env"] == [level, tz, SHUTDOWN, flags]
    assert web["envFrom"] == [{"secretRef": {"name": "shop-env"}}]
    shipper, worker = deps[WORKER]["containers"]
    assert worker["env"] == [SHUTDOWN, flags, level]
    assert worker["envFrom"] == [{"secretRef": {"name": "shop-env"}}]
    assert worker["args"] == ["shop", "work", "--queue", "default"]  # the same JSON patch sets both
    assert "env" not in shipper
    assert shipper == {**SHIPPER, "resources": LIMITS, "securityContext": RESTRICTED}


def test_without_vars_the_app_containers_get_only_the_shutdown_budget(project: Project) -> None:
    web_app = {**WEB_APP, "env": [{"name": "TZ", "value": "UTC"}]}
    write_manifests(project, [deployment(WEB, "web", [web_app], 2), web_and_worker()[1]], (SERVICE,))
    _, target, _ = make(project, FakeKube(NS))
    deps = {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]
        for o in target.render(NEW, require_digest=True)
        if o["kind"] == "Deployment"
    }
    assert deps[WEB]["containers"][0]["env"] == [{"name": "TZ", "value": "UTC"}, SHUTDOWN]
    shipper, worker = deps[WORKER]["containers"]
    assert worker["env"] == [SHUTDOWN]
    assert "env" not in shipper


def test_vars_are_deployed_and_changed_ones_listed_in_the_plan_masked_when_secret_like(
    project: Project,
) -> None:
    kube = seeded(project)  # OLD runs without vars
    with_vars(project, "  LOG_LEVEL: warning\n  SENTRY_API_KEY: k8s-not-shown-4d1\n")
    deployer, target, out = make(project, kube)
    what = {c.what: (c.old, c.new) for c in target.plan(NEW).changes}
    for process in ("web", "worker"):
        assert what[f"process {process} env LOG_LEVEL"] == ("", "warning")
        assert what[f"process {process} env SENTRY_API_KEY"] == ("", "***")
    deployer.deploy(NEW)
    for name in (WEB, WORKER):
        assert kube.container(name, "app")["env"] == [
            SHUTDOWN,
            {"name": "LOG_LEVEL", "value": "warning"},
            {"name": "SENTRY_API_KEY", "value": "k8s-not-shown-4d1"},
        ]
    assert "env" not in kube.container(WORKER, "log-shipper")
    assert "env" in job_of(kube)["spec"]["template"]["spec"]["containers"][0]  # the release Job has them
    assert "k8s-not-shown-4d1" not in out.getvalue()
    with_vars(project, "  LOG_LEVEL: info\n")  # LOG_LEVEL changes, SENTRY_API_KEY is dropped
    _, target, _ = make(project, kube)
    env_changes = [(c.what, c.old, c.new) for c in target.plan(NEW).changes if " env " in c.what]
    assert env_changes == [
        ("process web env LOG_LEVEL", "warning", "info"),
        ("process web env SENTRY_API_KEY", "***", "(removed)"),
        ("process worker env LOG_LEVEL", "warning", "info"),
        ("process worker env SENTRY_API_KEY", "***", "(removed)"),
    ]


def test_offline_plan_lists_the_vars_it_will_set(project: Project) -> None:
    with_vars(project, "  LOG_LEVEL: warning\n  DB_PASSWORD: hunter2\n")
    _, target, _ = make(project, FakeKube(NS, context=None))
    what = {c.what: (c.old, c.new) for c in target.plan(NEW).changes}
    assert what["process worker env LOG_LEVEL"] == ("unknown (no cluster)", "warning")
    assert what["process web env DB_PASSWORD"] == ("unknown (no cluster)", "***")


@pytest.mark.parametrize(
    ("image", "entry"),
    [
        (NEW.image, {"newName": "registry.example.com/shop/shop", "digest": "sha256:" + "2" * 64}),
        ("localhost:5000/shop/shop:abc123", {"newName": "localhost:5000/shop/shop", "newTag": "abc123"}),
        ("localhost:5000/shop", {"newName": "localhost:5000/shop", "newTag": "latest"}),
    ],
)
def test_split_image(image: str, entry: dict[str, str]) -> None:
    assert split_image(image, "shop") == {"name": "shop", **entry}


# --- the orchestration against the fake adapter --------------------------------------------------------


def test_two_processes_deployed_release_job_first_both_verified(project: Project) -> None:
    kube = seeded(project)
    deployer, target, out = make(project, kube)
    deployer.deploy(NEW)
    steps = applied(kube)
    job = next(i for i, c in enumerate(steps) if c.startswith("apply job/"))
    assert steps[0].startswith("apply secret/shop-env-")  # before the Job: it reads the same secrets
    assert job < steps.index(f"apply deployment/{WEB}") < steps.index(f"apply deployment/{WORKER}")
    assert steps[-2:] == [f"rollout status {WEB}", f"rollout status {WORKER}"]
    for name, args in ((WEB, ["shop", "serve"]), (WORKER, ["shop", "work", "--queue", "default"])):
        app = kube.container(name, "app")
        assert (app["image"], app["args"]) == (NEW.image, args)
        assert kube.revision(name) == 2
        ready, wanted = kube.ready(name)
        assert ready == wanted > 0
    assert kube.container(WORKER, "log-shipper")["image"] == SIDECAR
    current = target.current()
    assert current is not None
    assert (current.ref, current.git_sha, current.image) == ("2", NEW.git_sha, NEW.image)
    # the secret's value went on stdin, base64 in the Secret, never on argv or in the output
    secret = yaml.safe_load(kube.stdin[0])
    assert (secret["kind"], secret["metadata"]["name"][:9]) == ("Secret", "shop-env-")
    assert base64.b64decode(secret["data"]["DATABASE_URL"]).decode() == SENTINEL
    assert SENTINEL not in out.getvalue()
    assert SENTINEL not in " ".join(kube.calls)


def test_the_release_job_runs_the_release_command_in_the_anchor_pod(project: Project) -> None:
    kube = seeded(project)
    deployer, _, _ = make(project, kube)
    deployer.deploy(NEW)
    job = job_of(kube)
    assert job["metadata"]["name"].startswith(f"{WEB}-release-{NEW.git_sha[:8]}-")
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (
        0,
        60,
        3600,
    )
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert spec["template"]["metadata"]["labels"] == {
        "app.kubernetes.io/component": "release",
        "app.kubernetes.io/name": "shop",
    }
    [container] = pod["containers"]
    assert (container["image"], container["args"]) == (NEW.image, ["shop", "migrate", "--no-input"])
    assert "command" not in container  # args: the image's ENTRYPOINT stays
    assert not {"ports", "readinessProbe", "livenessProbe", "startupProbe"} & set(container)
    [source] = container["envFrom"]  # the release's own Secret, named by the hash of its values
    assert source["secretRef"]["name"] == kube.container(WEB, "app")["envFrom"][0]["secretRef"]["name"]
    assert source["secretRef"]["name"].startswith("shop-env-")


def test_no_release_command_no_job(project: Project) -> None:
    project.write(
        "invoke.yaml", CONTRACT.replace("  release:\n    command: [shop, migrate, --no-input]\n", "")
    )
    kube = seeded(project)
    deployer, _, _ = make(project, kube)
    deployer.deploy(NEW)
    assert not any(c.startswith("apply job/") for c in kube.calls)
    steps = applied(kube)
    assert steps[0].startswith("apply secret/shop-env-")
    assert steps.index(f"apply deployment/{WEB}") < steps.index(f"rollout status {WEB}")


def test_live_history_reads_every_processs_rollout_history(project: Project) -> None:
    kube = seeded(project)
    deployer, target, _ = make(project, kube)
    deployer.deploy(NEW)
    lines = target.live_history()
    web = lines[: lines.index(f"serving (web): revision 2, sha {NEW.git_sha[:12]}, {NEW.image}") + 1]
    assert web[0].strip() == f"deployment.apps/{WEB}"
    assert web[1].split() == ["REVISION", "CHANGE-CAUSE"]
    assert web[2].split()[:4] == ["1", "conveyor", "deploy", OLD.git_sha[:12]]
    assert web[3].split()[:4] == ["2", "conveyor", "deploy", NEW.git_sha[:12]]
    assert lines[len(web)].strip() == f"deployment.apps/{WORKER}"
    assert lines[-1] == f"serving (worker): revision 2, sha {NEW.git_sha[:12]}, {NEW.image}"


@pytest.mark.parametrize("failing", [WORKER, WEB])
def test_a_deployment_that_never_gets_ready_rolls_every_deployment_back(
    project: Project, failing: str
) -> None:
    kube = seeded(project)
    kube.rollouts[failing].append("timeout")
    deployer, target, _ = make(project, kube)
    with pytest.raises(DeployFailed) as exc:
        deployer.deploy(NEW)
    assert "failed at wait (kubectl rollout: error: timed out waiting for the condition)" in str(exc.value)
    assert str(exc.value).endswith(f"rolled back: serving {OLD.git_sha[:12]} again (verified)")
    assert f"rollout undo {WEB} --to-revision=1" in kube.calls
    assert f"rollout undo {WORKER} --to-revision=1" in kube.calls
    for name in (WEB, WORKER):  # both back on the old template, as a new revision, all replicas ready
        assert kube.container(name, "app")["image"] == OLD.image
        assert kube.revision(name) == 3
        ready, wanted = kube.ready(name)
        assert ready == wanted > 0
    assert target.current().git_sha == OLD.git_sha  # type: ignore[union-attr]
    entries = FileJournal(project.root, "production").entries()
    assert [(e["action"], e["result"]) for e in entries[-2:]] == [
        ("deploy", "failed"),
        ("rollback", "succeeded"),
    ]


def test_the_wrong_image_in_our_revisions_replicaset_fails_the_wait(project: Project) -> None:
    kube = seeded(project)
    kube.rollouts[WORKER].append("foreign-image")  # an admission webhook rewrote the image
    _, target, _ = make(project, kube)
    plan = target.plan(NEW)
    target.apply(plan)
    with pytest.raises(
        RolloutFailed,
        match=f"deployment/{WORKER} revision 2 .ReplicaSet {WORKER}-.*\\) runs {FOREIGN}, not {NEW.image}",
    ):
        target.wait(plan, NEW, target.clock() + 60)


def test_the_wrong_image_is_rolled_back(project: Project) -> None:
    kube = seeded(project)
    kube.rollouts[WEB].append("foreign-image")
    deployer, _, _ = make(project, kube)
    with pytest.raises(DeployFailed, match=f"failed at wait .deployment/{WEB} revision 2 .* runs {FOREIGN}"):
        deployer.deploy(NEW)
    assert kube.container(WEB, "app")["image"] == OLD.image


def test_a_partially_ready_replicaset_is_not_a_success(project: Project) -> None:
    kube = seeded(project)
    kube.rollouts[WEB].append("partial")  # `rollout status` passed, then a pod went unready
    clock = Clock()
    _, target, _ = make(project, kube, clock)
    plan = target.plan(NEW)
    target.apply(plan)
    with pytest.raises(
        RolloutFailed, match=f"timed out: deployment/{WEB}: ReplicaSet {WEB}-.* has 1/2 ready"
    ):
        target.wait(plan, NEW, clock() + 30)
    assert clock() >= 1030  # it waited until the deadline


def test_a_replicaset_getting_ready_is_waited_for(project: Project) -> None:
    kube = seeded(project)
    kube.rollouts[WORKER].append("slow")
    deployer, _, _ = make(project, kube)
    deployer.deploy(NEW)
    start = kube.calls.index(f"rollout status {WORKER}")
    waited = kube.calls[start : kube.calls.index(f"get deployment/{WEB}", start)]  # housekeeping reads too
    assert sum(c.startswith("get replicasets") and "component=worker" in c for c in waited) == 2


def test_a_failing_release_job_applies_nothing(project: Project) -> None:
    kube = seeded(project)
    kube.jobs.append("fail")
    deployer, target, _ = make(project, kube)
    with pytest.raises(
        DeployFailed,
        match=f"failed before apply .release Job {WEB}-release-.* failed: Job has reached the specified",
    ):
        deployer.deploy(NEW)
    assert not any(c.startswith("apply deployment") for c in kube.calls)
    assert not any(c.startswith("delete job") for c in kube.calls)  # a failed Job stays for its log
    assert target.current().git_sha == OLD.git_sha  # type: ignore[union-attr]


def test_a_release_job_that_does_not_finish_is_deleted(project: Project) -> None:
    kube = seeded(project)
    kube.jobs.append("hang")
    deployer, _, _ = make(project, kube)
    with pytest.raises(DeployFailed, match="failed before apply .timed out: release Job .* has not finished"):
        deployer.deploy(NEW)
    name = job_name(kube)
    assert f"delete job/{name}" in kube.calls
    assert ("job", name) not in kube.objects
    assert not any(c.startswith("apply deployment") for c in kube.calls)


def test_an_interrupted_release_job_is_deleted(project: Project) -> None:
    kube = seeded(project)
    kube.jobs.append("hang")
    _, target, _ = make(project, kube)

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    target.sleep = interrupt
    plan = target.plan(NEW)
    with pytest.raises(KeyboardInterrupt):
        target.release_steps(plan)
    assert f"delete job/{job_name(kube)}" in kube.calls


def test_first_deploy_that_fails_scales_the_new_deployments_to_zero(project: Project) -> None:
    kube = FakeKube(NS)
    kube.rollouts[WORKER].append("timeout")
    deployer, _, _ = make(project, kube)
    with pytest.raises(DeployFailed, match="nothing was serving before, and the failed revision was stopped"):
        deployer.deploy(NEW)
    assert [c for c in kube.calls if c.startswith("scale")] == [f"scale {WEB} 0", f"scale {WORKER} 0"]


def test_a_new_process_is_scaled_to_zero_when_the_others_roll_back(project: Project) -> None:
    """The worker is added by this deploy: the rollback undoes web and stops the worker it created."""
    write_manifests(project, [deployment(WEB, "web", [WEB_APP], 2)], (SERVICE,))
    project.write(
        "invoke.yaml", CONTRACT.replace("    worker:\n      command: [shop, work, --queue, default]\n", "")
    )
    kube = seeded(project)
    write_manifests(project, web_and_worker(), (SERVICE,))
    project.write("invoke.yaml", CONTRACT)
    kube.rollouts[WORKER].append("timeout")
    deployer, target, _ = make(project, kube)
    plan = target.plan(NEW)
    assert plan.detail.previous[WORKER] is None  # it does not exist yet
    assert plan.detail.previous[WEB].revision == 1
    with pytest.raises(DeployFailed, match=f"rolled back: serving {OLD.git_sha[:12]} again .verified."):
        deployer.deploy(NEW)
    assert f"rollout undo {WEB} --to-revision=1" in kube.calls
    assert f"scale {WORKER} 0" in kube.calls
    assert kube.ready(WORKER) == (0, 0)


def test_plan_lists_changes_per_process_and_keeps_previous_revisions(project: Project) -> None:
    kube = seeded(project)
    _, target, _ = make(project, kube)
    plan = target.plan(NEW)
    assert isinstance(plan.detail, Rendered)
    assert {name: p.revision for name, p in plan.detail.previous.items() if p} == {WEB: 1, WORKER: 1}
    what = {c.what: (c.old, c.new) for c in plan.changes}
    assert what["process web image"] == (OLD.image, NEW.image)
    assert what["process worker image"] == (OLD.image, NEW.image)
    assert "process web args" not in what  # unchanged
    assert any(
        step.startswith(f"release Job from deployment/{WEB}: shop migrate --no-input") for step in plan.steps
    )
    assert f"wait for deployment/{WEB} (web), deployment/{WORKER} (worker)" in plan.steps
    assert kube.calls.count("diff") == 1
    assert not any(c.startswith("apply") for c in kube.calls)


def test_offline_plan_renders_validates_and_says_not_connected(project: Project) -> None:
    kube = FakeKube(NS, context=None)
    _, target, _ = make(project, kube)
    plan = target.plan(NEW)
    assert plan.steps[0].startswith("NOT CONNECTED (no kube context")
    assert [(c.what, c.old) for c in plan.changes] == [
        ("process web image", "unknown (no cluster)"),
        ("process web env CONVEYOR_SHUTDOWN_TIMEOUT", "unknown (no cluster)"),
        ("process worker image", "unknown (no cluster)"),
        ("process worker env CONVEYOR_SHUTDOWN_TIMEOUT", "unknown (no cluster)"),
    ]
    assert f"image: {NEW.image}" in plan.preview
    assert kube.calls == []


def test_lease_held_refuses_a_second_deploy(project: Project) -> None:
    kube = seeded(project)
    deployer, target, _ = make(project, kube)
    target.lock.acquire(Owner("alice", "ci-3", 77, "c" * 40), ttl=600)
    with pytest.raises(LockHeld, match=r"production is being deployed by alice@ci-3 \(pid 77"):
        deployer.deploy(NEW)
    assert not any(c.startswith("apply") for c in kube.calls)


# --- bad input: one line, nothing applied ----------------------------------------------------------------


def one_line_config_error(project: Project, kube: FakeKube) -> str:
    with pytest.raises(ConfigError) as exc:
        make(project, kube)
    assert "\n" not in str(exc.value)
    assert not any(c.startswith(("apply", "create", "scale", "rollout")) for c in kube.calls)
    return str(exc.value)


def test_a_process_without_its_deployment(project: Project) -> None:
    project.write(
        "invoke.yaml", CONTRACT.replace("  release:", "    beat:\n      command: [shop, beat]\n  release:")
    )
    kube = FakeKube(NS)
    message = one_line_config_error(project, kube)
    assert message == (
        "k8s/overlays/production: process `beat` runs in the Deployment labelled "
        "`app.kubernetes.io/component: beat` (metadata.labels), and no Deployment has it; "
        "exactly one is needed"
    )
    assert kube.calls == []


def test_two_deployments_for_one_process(project: Project) -> None:
    write_manifests(project, [*web_and_worker(), deployment("shop-web-2", "web", [WEB_APP], 1)], (SERVICE,))
    message = one_line_config_error(project, FakeKube(NS))
    assert "process `web` runs in the Deployment labelled `app.kubernetes.io/component: web`" in message
    assert "2 Deployments labelled it (shop-web, shop-web-2)" in message


def test_a_deployment_running_the_app_for_no_process(project: Project) -> None:
    write_manifests(project, [*web_and_worker(), deployment("shop-cron", "cron", [WEB_APP], 1)], (SERVICE,))
    message = one_line_config_error(project, FakeKube(NS))
    assert message.startswith("k8s/overlays/production: Deployment shop-cron runs the app image `shop`")
    assert "`app.kubernetes.io/component: cron`; processes: web, worker" in message


def test_a_deployment_with_two_app_containers(project: Project) -> None:
    twice = deployment(WORKER, "worker", [WORKER_APP, {**WORKER_APP, "name": "app2"}], 1)
    write_manifests(project, [deployment(WEB, "web", [WEB_APP], 2), twice], (SERVICE,))
    message = one_line_config_error(project, FakeKube(NS))
    assert "Deployment shop-worker (process `worker`) has 2 containers with the placeholder image" in message


def test_secrets_that_no_app_container_reads(project: Project) -> None:
    write_manifests(
        project,
        [
            deployment(WEB, "web", [{**WEB_APP, "envFrom": []}], 2),
            deployment(WORKER, "worker", [SHIPPER, {**WORKER_APP, "envFrom": []}], 1),
        ],
        [SERVICE],
    )
    assert "`secrets` is set but no app container references a Secret" in one_line_config_error(
        project, FakeKube(NS)
    )


def test_unknown_overlay(project: Project) -> None:
    path = project.root / "deploy/environments/production.yaml"
    path.write_text(path.read_text().replace("overlays/production", "overlays/prod"))
    with pytest.raises(ConfigError, match="k8s.overlay: k8s/overlays/prod is not a kustomize overlay"):
        make(project, FakeKube(NS))


def test_kustomize_error_shows_kubectls_message(project: Project) -> None:
    (project.root / "k8s/overlays/production/kustomization.yaml").write_text("resources:\n  - ../../nope\n")
    kube = FakeKube(NS)
    with pytest.raises(ConfigError, match="kustomize .*: .*nope"):
        make(project, kube)
    assert kube.calls == []


def test_manifest_with_an_unknown_field(project: Project) -> None:
    broken = deployment(WEB, "web", [WEB_APP], 2)
    broken["spec"]["maxUnavailabel"] = 1
    write_manifests(project, [broken, web_and_worker()[1]], (SERVICE,))
    kube = FakeKube(NS)
    deployer, _, _ = make(project, kube)
    with pytest.raises(ConfigError, match="'maxUnavailabel' was unexpected"):
        deployer.deploy(NEW)
    assert not any(c.startswith("apply") for c in kube.calls)


def test_missing_kube_context(project: Project) -> None:
    kube = FakeKube(NS, context=None)
    deployer, _, _ = make(project, kube)
    with pytest.raises(ConfigError, match="no kube context: set KUBECONFIG"):
        deployer.deploy(NEW)
    assert kube.calls == []


def test_namespace_mismatch(project: Project) -> None:
    path = project.root / "deploy/environments/production.yaml"
    path.write_text(path.read_text().replace(f"namespace: {NS}", "namespace: shop-prod"))
    with pytest.raises(ConfigError, match=f"namespace '{NS}' differs from k8s.namespace 'shop-prod'"):
        make(project, FakeKube("shop-prod"))


def test_cli_plan_dry_prints_rendered_validated_manifests_with_the_digest(
    project: Project, tmp_path: Path
) -> None:
    project.write(
        "build/release.json",
        json.dumps({"refs": ["shop:" + NEW.git_sha[:12]], "image_id": "sha256:" + "9" * 64,
                    "git_sha": NEW.git_sha, "pushed": {"production": NEW.image}}),
    )  # fmt: skip
    env = {"KUBECONFIG": str(tmp_path / "no-such-kubeconfig"), "PATH": os.environ["PATH"]}
    result = project.invoke("--dry", "plan", "--env", "production", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "NOT CONNECTED (no kube context" in result.stdout
    assert f"~ process web image: unknown (no cluster) -> {NEW.image}" in result.stdout
    assert f"~ process worker image: unknown (no cluster) -> {NEW.image}" in result.stdout
    assert f"image: {NEW.image}" in result.stdout
    assert f"namespace: {NS}" in result.stdout


# --- the fake is as strict as the API server for what the target uses --------------------------------------


def fake_with_old(project: Project) -> tuple[FakeKube, Plan]:
    kube = seeded(project)
    _, target, _ = make(project, kube)
    return kube, target.plan(NEW)


def test_fake_rollout_status_and_undo_need_an_existing_deployment() -> None:
    kube = FakeKube(NS)
    with pytest.raises(RolloutFailed, match='deployments.apps "nope" not found'):
        kube.rollout_status("nope", 10)
    with pytest.raises(ConveyorError, match='deployments.apps "nope" not found'):
        kube.rollout_undo("nope", 1)


def test_fake_replicasets_filter_by_selector(project: Project) -> None:
    kube = seeded(project)
    web = kube.replicasets("app.kubernetes.io/component=web,app.kubernetes.io/name=shop")
    assert [rs["metadata"]["ownerReferences"][0]["name"] for rs in web] == [WEB]
    assert kube.replicasets("app.kubernetes.io/component=cron") == []


def test_fake_apply_refuses_what_the_api_server_refuses(project: Project) -> None:
    kube, plan = fake_with_old(project)
    dep = next(o for o in plan.detail.objects if o["kind"] == "Deployment" and o["metadata"]["name"] == WEB)
    nameless = json.loads(json.dumps(dep))
    del nameless["metadata"]["name"]
    with pytest.raises(ConveyorError, match="resource name may not be empty"):
        kube.apply(json.dumps(nameless))
    elsewhere = json.loads(json.dumps(dep))
    elsewhere["metadata"]["namespace"] = "other"
    with pytest.raises(ConveyorError, match='namespace from the provided object "other" does not match'):
        kube.apply(json.dumps(elsewhere))
    moved = json.loads(json.dumps(dep))
    moved["spec"]["selector"]["matchLabels"]["tier"] = "x"
    moved["spec"]["template"]["metadata"]["labels"]["tier"] = "x"
    with pytest.raises(ConveyorError, match="spec.selector: Invalid value: .*field is immutable"):
        kube.apply(json.dumps(moved))
    job = kube.get("job", next(name for kind, name in kube.objects if kind == "job"))
    assert job is not None
    job["spec"]["template"]["spec"]["containers"][0]["args"] = ["other"]
    with pytest.raises(ConveyorError, match="spec.template: field is immutable"):
        kube.apply(json.dumps(job))
    assert kube.revision(WEB) == 1


# --- the reference project's own overlays ------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ["staging", "production"])
def test_reference_overlays_render_validate_and_are_restricted(overlay: str) -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(REPO / "k8s/overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    schema_validate(Runner(out=io.StringIO()), rendered)
    objects = list(yaml.safe_load_all(rendered))
    kinds = {o["kind"] for o in objects}
    assert kinds >= {"Deployment", "Service", "Ingress", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                     "NetworkPolicy", "ServiceAccount", "ConfigMap"}  # fmt: skip
    assert {o["metadata"]["namespace"] for o in objects} == {f"conveyor-{overlay}"}
    deployments = {o["metadata"]["labels"].get(COMPONENT): o for o in objects if o["kind"] == "Deployment"}
    for component, dep in deployments.items():
        assert dep["spec"]["selector"]["matchLabels"][COMPONENT] == component
        assert dep["spec"]["template"]["metadata"]["labels"][COMPONENT] == component
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for container in pod["containers"]:
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    web = deployments["web"]["spec"]["template"]["spec"]["containers"][0]
    probes = (web["readinessProbe"], web["livenessProbe"], web["startupProbe"])
    assert [p["httpGet"]["path"] for p in probes] == ["/ready", "/health", "/startup"]
    sa = next(o for o in objects if o["kind"] == "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False


def test_reference_project_contract_matches_its_production_overlay(tmp_path: Path) -> None:
    """Every process of the repository's invoke.yaml has its Deployment, and nothing else runs the app."""
    shutil.copytree(REPO / "k8s", tmp_path / "k8s")
    shutil.copy(REPO / "invoke.yaml", tmp_path / "invoke.yaml")
    (tmp_path / "deploy/environments").mkdir(parents=True)
    shutil.copy(REPO / "deploy/environments/production.yaml", tmp_path / "deploy/environments")
    cfg = config.load(tmp_path, "production", environ={})
    runner = Runner(out=io.StringIO())
    resolver = SecretResolver(runner.redact, environ={}, root=tmp_path)
    kube = FakeKube(cfg.env.k8s.namespace, context=None)
    target = K8sDeployTarget(runner, kube, cfg, deployer="tester", resolver=resolver)
    release = Release(f"{cfg.env.registry}/{cfg.image.name}@sha256:" + "2" * 64, "b" * 40)
    plan = target.plan(release)
    assert [w.process for w in target.workloads] == cfg.app.names()
    for proc, w in zip(cfg.app.processes, target.workloads, strict=True):
        dep = next(
            o
            for o in plan.detail.objects
            if o["kind"] == "Deployment" and o["metadata"]["name"] == w.deployment
        )
        app = dep["spec"]["template"]["spec"]["containers"][w.index]
        assert app["image"] == release.image
        if proc.command:
            assert app["args"] == list(proc.command)
        assert {"name": "LOG_LEVEL", "value": cfg.env.vars["LOG_LEVEL"]} in app["env"]
        assert app["envFrom"]  # untouched: the ConfigMap and the Secret stay
    assert plan.detail.secret == "conveyor-demo"
