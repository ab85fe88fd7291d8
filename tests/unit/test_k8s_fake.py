"""The fake is as strict as the API server for what the target does (see tests/k8s_fake.py for the
documentation page each behaviour follows), and the reference overlays as conveyor deploys them (hashed
config names, rollout settings, no replicas under the HPA) stay valid and checkov-clean."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor import config, security
from conveyor.deploy.k8s import K8sDeployTarget
from conveyor.deploy.k8s.render import secret_manifest
from conveyor.deploy.model import Release, RolloutFailed
from conveyor.errors import ConveyorError
from conveyor.runner import Runner
from conveyor.secrets import SecretResolver
from tests.conftest import REPO, Clock, engine_missing
from tests.k8s_fake import FakeKube

NS = "shop"


@pytest.fixture(autouse=True)
def tools() -> None:
    for tool in ("kubectl", "kubernetes-validate"):
        if shutil.which(tool) is None:
            engine_missing(f"{tool} not installed (`conveyor setup`, pip install -e '.[dev]')")


def deployment(name: str = "web", **spec: Any) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "x"}]},
            },
            **spec,
        },
    }


def dump(*objects: dict[str, Any]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False)


def test_unknown_fields_and_kinds_are_refused() -> None:
    kube = FakeKube(NS)
    with pytest.raises(
        ConveyorError, match="cannot be handled as a Deployment: .*'maxUnavailabel' was unexpected"
    ):
        kube.apply(dump(deployment(maxUnavailabel=1)))
    with pytest.raises(ConveyorError, match='no matches for kind "Widget" in version "v1"'):
        kube.apply(dump({"apiVersion": "v1", "kind": "Widget", "metadata": {"name": "w"}}))
    with pytest.raises(ConveyorError, match="cannot be handled as a Lease"):
        kube.create(
            '{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}, "x": 1}'
        )
    assert kube.objects == {}


def test_the_namespace_must_exist() -> None:
    kube = FakeKube(NS, namespaces=["default"])
    with pytest.raises(ConveyorError, match=f'Error from server .NotFound.: .*namespaces "{NS}" not found'):
        kube.apply(dump(deployment()))
    with pytest.raises(ConveyorError, match=f'namespaces "{NS}" not found'):
        kube.create('{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}}')


def test_an_immutable_configmap_or_secret_keeps_its_data() -> None:
    kube = FakeKube(NS)
    secret = secret_manifest("env", NS, {"A": "1"})
    kube.apply(dump(secret))
    kube.apply(dump(secret))  # the same content: fine
    changed = {**secret, "data": {"A": "Mg=="}}
    with pytest.raises(ConveyorError, match='The Secret "env-.*" is invalid: .*immutable'):
        kube.apply(dump(changed))
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c"},
        "data": {"A": "1"},
        "immutable": True,
    }
    kube.apply(dump(cm))
    with pytest.raises(ConveyorError, match='The ConfigMap "c" is invalid'):
        kube.apply(dump({**cm, "data": {"A": "2"}}))
    with pytest.raises(ConveyorError, match='The ConfigMap "c" is invalid'):
        kube.apply(dump({**cm, "immutable": False}))


def test_diff_covers_every_field_not_only_spec() -> None:
    kube = FakeKube(NS)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "annotations": {"a": "1"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
    }
    dep = deployment(replicas=2)
    kube.apply(dump(service, dep))
    assert kube.diff(dump(service, dep)) == ""
    relabelled = {**service, "metadata": {"name": "web", "annotations": {"a": "2"}}}
    assert kube.diff(dump(relabelled)).endswith(f"Service.{NS}.web")
    ported = {**service, "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080}]}}
    assert "Service" in kube.diff(dump(ported))
    without_replicas = deployment()  # left out: server-side apply leaves the live count alone
    assert kube.diff(dump(without_replicas)) == ""
    assert "Deployment" in kube.diff(dump(deployment(replicas=3)))


def test_server_side_apply_resets_replicas_nobody_owns_and_a_handover_keeps_them() -> None:
    kube = FakeKube(NS)
    kube.apply(dump(deployment(replicas=3)))
    kube.apply(dump(deployment()))  # conveyor leaves replicas out: it was the only owner
    assert "ssa resets replicas of web to 1" in kube.calls
    assert kube.ready("web")[1] == 1
    kube.apply(dump(deployment(replicas=3)))
    partial = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 3},
    }
    kube.apply(dump(partial), field_manager="handover-to-hpa")  # merged into the live object
    kube.calls.clear()
    kube.apply(dump(deployment()))
    assert kube.ready("web")[1] == 3
    assert kube.calls == ["apply deployment/web"]
    other = {**partial, "spec": {"replicas": 5}}
    with pytest.raises(ConveyorError, match="conflict with 'handover-to-hpa': .spec.replicas"):
        kube.apply(dump(other), field_manager="someone-else")


def test_label_selectors() -> None:
    kube = FakeKube(NS)
    for name, labels in (("a", {"tier": "web", "x": "1"}), ("b", {"tier": "worker"}), ("c", {})):
        kube.apply(
            dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}})
        )

    def names(selector: str) -> list[str]:
        return [o["metadata"]["name"] for o in kube.list("configmap", selector)]

    assert names("tier=web") == names("tier==web") == ["a"]
    assert names("tier!=web") == ["b", "c"]
    assert names("tier") == ["a", "b"]
    assert names("!tier") == ["c"]
    assert names("tier,x=1") == ["a"]
    with pytest.raises(ConveyorError, match="unable to parse requirement"):
        names("tier=a=b")
    with pytest.raises(ConveyorError, match="doesn't have a resource type"):
        kube.list("gadgets", "")


def test_rollout_status_honours_its_timeout_and_the_progress_deadline() -> None:
    clock = Clock()
    kube = FakeKube(NS, clock=clock)
    kube.apply(dump(deployment(progressDeadlineSeconds=600)))
    kube.rollouts["web"].append("timeout")
    kube.apply(
        dump({**deployment(progressDeadlineSeconds=600), "metadata": {"name": "web", "labels": {"v": "2"}}})
    )
    changed = deployment(progressDeadlineSeconds=600)
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = "y"
    kube.apply(dump(changed))  # a new revision that stalls
    with pytest.raises(RolloutFailed, match="timed out waiting for the condition"):
        kube.rollout_status("web", 45)
    assert clock() == 1045
    with pytest.raises(RolloutFailed, match='deployment "web" exceeded its progress deadline'):
        kube.rollout_status("web", 10_000)
    assert clock() == 1600  # the deadline came first
    status = (kube.get("deployment", "web") or {})["status"]
    assert status["conditions"][0]["reason"] == "ProgressDeadlineExceeded"
    assert kube.ready("web")[0] == 0


def test_a_deployment_reading_a_missing_configmap_stalls() -> None:
    kube = FakeKube(NS)
    dep = deployment()
    dep["spec"]["template"]["spec"]["containers"][0]["envFrom"] = [{"configMapRef": {"name": "gone"}}]
    kube.apply(dump(dep))
    assert kube.ready("web") == (0, 1)
    with pytest.raises(RolloutFailed, match="timed out"):
        kube.rollout_status("web", 5)


def test_jobs_hang_and_logs_need_a_job() -> None:
    kube = FakeKube(NS)
    kube.jobs.append("hang")
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "m"},
        "spec": {
            "template": {"spec": {"restartPolicy": "Always", "containers": [{"name": "a", "image": "x"}]}}
        },
    }
    with pytest.raises(ConveyorError, match="restartPolicy: Required value"):
        kube.apply(dump(job))
    job["spec"]["template"]["spec"]["restartPolicy"] = "Never"
    kube.apply(dump(job))
    kube.clock.sleep(10_000)
    assert (kube.get("job", "m") or {})["status"] == {"active": 1}
    assert kube.logs("m", 5) == "migrating\n"
    with pytest.raises(ConveyorError, match='jobs.batch "nope" not found'):
        kube.logs("nope", 5)


# --- the reference overlays, as conveyor deploys them ----------------------------------------------------


def deployed(env: str, tmp_path: Path) -> str:
    """The reference project's overlay for ``env`` as conveyor applies it (with its versioned Secret)."""
    shutil.copytree(REPO / "k8s", tmp_path / "k8s")
    shutil.copy(REPO / "invoke.yaml", tmp_path / "invoke.yaml")
    shutil.copy(REPO / ".checkov.yaml", tmp_path / ".checkov.yaml")
    (tmp_path / "deploy/environments").mkdir(parents=True)
    namespace = f"conveyor-{env}"
    (tmp_path / "deploy/environments" / f"{env}.yaml").write_text(
        "target: k8s\nurl: https://x.example.com\nregistry: registry.example.com/conveyor\n"
        f"k8s:\n  overlay: k8s/overlays/{env}\n  namespace: {namespace}\n"
        "vars:\n  LOG_LEVEL: warning\nsecrets:\n  DATABASE_URL: env:DB\n  REDIS_URL: env:REDIS\n"
    )
    cfg = config.load(tmp_path, env, environ={"DB": "postgresql://db/x", "REDIS": "redis://r"})
    runner = Runner(out=io.StringIO())
    resolver = SecretResolver(runner.redact, environ=cfg.dotenv, root=tmp_path)
    kube = FakeKube(namespace)
    target = K8sDeployTarget(runner, kube, cfg, deployer="tester", resolver=resolver)
    plan = target.plan(Release(f"{cfg.env.registry}/{cfg.image.name}@sha256:" + "2" * 64, "b" * 40))
    objects = plan.detail.objects
    web = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "conveyor-demo")
    assert "replicas" not in web["spec"]  # its HPA's
    [config_map] = [o for o in objects if o["kind"] == "ConfigMap"]
    assert config_map["metadata"]["name"].startswith("conveyor-demo-")
    app = web["spec"]["template"]["spec"]["containers"][0]
    assert app["envFrom"][0]["configMapRef"]["name"] == config_map["metadata"]["name"]
    assert app["envFrom"][1]["secretRef"]["name"] == plan.detail.secret_manifest["metadata"]["name"]
    assert app["lifecycle"] == {"preStop": {"sleep": {"seconds": 3}}}
    assert web["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 23
    probes = (app["readinessProbe"]["httpGet"]["path"], app["livenessProbe"]["httpGet"]["path"])
    assert probes == ("/ready", "/health")
    stream = plan.preview + "---\n" + yaml.safe_dump(plan.detail.secret_manifest)
    kube.apply(stream)  # the strict fake takes every object
    (tmp_path / "rendered.yaml").write_text(stream)
    return "rendered.yaml"


@pytest.mark.parametrize("env", ["staging", "production"])
def test_reference_overlays_as_deployed_validate(env: str, tmp_path: Path) -> None:
    rendered = deployed(env, tmp_path)
    validated = subprocess.run(
        ["kubernetes-validate", "--strict", "-k", "1.32.0", str(tmp_path / rendered)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert validated.returncode == 0, validated.stdout + validated.stderr


@pytest.mark.scanners
@pytest.mark.parametrize("env", ["staging", "production"])
def test_reference_overlays_as_deployed_are_checkov_clean(env: str, tmp_path: Path) -> None:
    if shutil.which("checkov") is None:
        engine_missing("checkov not installed (pip install -e '.[scanners]')")
    rendered = deployed(env, tmp_path)
    (tmp_path / security.REPORTS).mkdir(parents=True)
    result = security.checkov(tmp_path, [rendered])
    assert result.status == "clean", (result.detail, (tmp_path / str(result.report)).read_text()[:3000])
