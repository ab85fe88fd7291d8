"""The k8s target on the strict fake: config and secrets versioned with the release (complete rollback),
the HPA owning replicas, zero-downtime rollout settings, the release Job's failures and its log."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor.deploy.journal import FileJournal
from conveyor.deploy.k8s import K8sDeployTarget
from conveyor.deploy.model import Deployer, DeployFailed, Release, RolloutFailed
from conveyor.errors import ConfigError
from tests.conftest import Clock, Project, engine_missing
from tests.k8s_fake import FAILED_LOG, REVISION, FakeKube
from tests.unit import test_k8s as base
from tests.unit.test_k8s import (
    NEW,
    NS,
    OLD,
    SENTINEL,
    SERVICE,
    SHIPPER,
    WEB,
    WEB_APP,
    WORKER,
    WORKER_APP,
    deployment,
    write_manifests,
)

THIRD = Release("registry.example.com/shop/shop@sha256:" + "3" * 64, "c" * 40)
CONFIG = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shop-config"}}
HPA = {
    "apiVersion": "autoscaling/v2",
    "kind": "HorizontalPodAutoscaler",
    "metadata": {"name": WEB},
    "spec": {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": WEB},
        "minReplicas": 2,
        "maxReplicas": 6,
    },
}
CONFIG_REF = {"configMapRef": {"name": "shop-config"}}


@pytest.fixture(autouse=True)
def tools() -> None:
    if shutil.which("kubectl") is None:
        engine_missing("kubectl not installed (`conveyor setup` installs it)")


@pytest.fixture
def shop(tmp_path: Path) -> Project:
    """test_k8s's shop project (web + worker with a sidecar, a release command), production on k8s."""
    proj = Project(tmp_path)
    proj.write("invoke.yaml", base.CONTRACT)
    write_manifests(proj, base.web_and_worker(), (SERVICE,))
    proj.write(
        "k8s/overlays/production/kustomization.yaml",
        f"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: {NS}\n"
        "resources:\n  - ../../base\n",
    )
    proj.write(
        "deploy/environments/production.yaml",
        f"target: k8s\nurl: https://shop.example.com\nregistry: registry.example.com/shop\n"
        f"k8s:\n  overlay: k8s/overlays/production\n  namespace: {NS}\n"
        "secrets:\n  DATABASE_URL: env:DB_URL\ndeploy:\n  timeout: 60\n",
    )
    proj.write(".db_url", SENTINEL)
    return proj


BUDGET = {"CONVEYOR_SHUTDOWN_TIMEOUT": "20"}  # every app container: deploy.shutdown_timeout


def make(
    project: Project, kube: FakeKube, clock: Clock | None = None
) -> tuple[Deployer, K8sDeployTarget, io.StringIO]:
    """Deployer and target on the fake; DB_URL is what the project's .db_url holds now."""
    return base.make(project, kube, clock, db_url=(project.root / ".db_url").read_text())


def configured(project: Project, data: dict[str, str], *, secret: str = SENTINEL, hpa: bool = True) -> None:
    """The shop project with a ConfigMap both processes read (envFrom, before the Secret) and an HPA."""
    web = {**WEB_APP, "envFrom": [CONFIG_REF, *WEB_APP["envFrom"]]}
    worker = {**WORKER_APP, "envFrom": [CONFIG_REF, *WORKER_APP["envFrom"]]}
    extra: list[dict[str, Any]] = [SERVICE, {**CONFIG, "data": data}]
    if hpa:
        extra.append(HPA)
    write_manifests(
        project,
        [deployment(WEB, "web", [web], 2), deployment(WORKER, "worker", [SHIPPER, worker], 1)],
        tuple(extra),
    )
    project.write(".db_url", secret)


def env_file(project: Project, extra: str) -> None:
    path = project.root / "deploy/environments/production.yaml"
    path.write_text(path.read_text() + extra)


def k8s_settings(project: Project, settings: str) -> None:
    path = project.root / "deploy/environments/production.yaml"
    text = path.read_text()
    path.write_text(text.replace(f"  namespace: {NS}\n", f"  namespace: {NS}\n{settings}"))


def cluster(project: Project, data: dict[str, str], secret: str = SENTINEL) -> tuple[FakeKube, Clock]:
    """A cluster running OLD with ``data`` and ``secret``."""
    clock = Clock()
    kube = FakeKube(NS, clock=clock)
    configured(project, data, secret=secret)
    make(project, kube, clock)[0].deploy(OLD)
    return kube, clock


def envs(kube: FakeKube) -> dict[str, dict[str, str]]:
    return {name: kube.pod_env(name, "app") for name in (WEB, WORKER)}


# --- 1. config and secrets versioned with the release ----------------------------------------------------


def test_config_and_secret_names_carry_their_content_hash_and_pods_read_them(shop: Project) -> None:
    kube, _ = cluster(shop, {"LOG_LEVEL": "info"})
    web = kube.container(WEB, "app")
    config_name, secret_name = (
        web["envFrom"][0]["configMapRef"]["name"],
        web["envFrom"][1]["secretRef"]["name"],
    )
    assert config_name.startswith("shop-config-")
    assert secret_name.startswith("shop-env-")
    assert len(config_name) - len("shop-config-") == len(secret_name) - len("shop-env-") == 10
    for kind, name in (("configmap", config_name), ("secret", secret_name)):
        obj = kube.objects[(kind, name)]
        assert obj["immutable"] is True
        assert obj["metadata"]["labels"]["conveyor.dev/config-of"] in ("shop-config", "shop-env")
    assert ("configmap", "shop-config") not in kube.objects  # only the versioned one is applied
    assert envs(kube)[WEB] == {**BUDGET, "LOG_LEVEL": "info", "DATABASE_URL": SENTINEL}
    # the same content is the same name: a redeploy creates nothing new
    names = sorted(k for k in kube.objects if k[0] in ("configmap", "secret"))
    clock = Clock()
    make(shop, kube, clock)[0].deploy(NEW)
    assert sorted(k for k in kube.objects if k[0] in ("configmap", "secret")) == names


def test_the_release_job_reads_the_new_config_which_exists_before_it_runs(shop: Project) -> None:
    kube, clock = cluster(shop, {"LOG_LEVEL": "info"})
    configured(shop, {"LOG_LEVEL": "debug"}, secret="rotated-secret-91c")
    kube.calls.clear()
    make(shop, kube, clock)[0].deploy(NEW)
    job = next(name for kind, name in kube.objects if kind == "job" and NEW.git_sha[:8] in name)
    [container] = kube.objects[("job", job)]["spec"]["template"]["spec"]["containers"]
    new_config = container["envFrom"][0]["configMapRef"]["name"]
    new_secret = container["envFrom"][1]["secretRef"]["name"]
    order = [c for c in kube.calls if c.startswith("apply")]
    assert order.index(f"apply configmap/{new_config}") < order.index(f"apply job/{job}")
    assert order.index(f"apply secret/{new_secret}") < order.index(f"apply job/{job}")
    assert kube.container(WEB, "app")["envFrom"] == container["envFrom"]


def test_a_failed_deploy_rolls_back_image_config_and_secret_together(shop: Project) -> None:
    """The rolled-back pods start with the previous release's environment, not the new one's."""
    kube, clock = cluster(shop, {"LOG_LEVEL": "info", "FEATURE": "old"}, secret="old-secret-1a")
    before = envs(kube)
    assert before[WEB] == {**BUDGET, "LOG_LEVEL": "info", "FEATURE": "old", "DATABASE_URL": "old-secret-1a"}
    configured(shop, {"LOG_LEVEL": "debug", "FEATURE": "new"}, secret="new-secret-2b")
    kube.rollouts[WORKER].append("timeout")
    deployer, _, _ = make(shop, kube, clock)
    with pytest.raises(DeployFailed, match=f"rolled back: serving {OLD.git_sha[:12]} again .verified."):
        deployer.deploy(NEW)
    assert envs(kube) == before
    assert {kube.container(n, "app")["image"] for n in (WEB, WORKER)} == {OLD.image}
    # a pod restart after the rollback still reads the old values: they were never overwritten
    web = kube.container(WEB, "app")
    old_secret = kube.objects[("secret", web["envFrom"][1]["secretRef"]["name"])]
    assert old_secret["immutable"] is True


def test_invoke_rollback_restores_the_retained_revisions_config(shop: Project) -> None:
    kube, clock = cluster(shop, {"LOG_LEVEL": "info"}, secret="old-secret-1a")
    before = envs(kube)
    configured(shop, {"LOG_LEVEL": "debug"}, secret="new-secret-2b")
    deployer, _, _ = make(shop, kube, clock)
    deployer.deploy(NEW)
    assert envs(kube)[WEB] == {**BUDGET, "LOG_LEVEL": "debug", "DATABASE_URL": "new-secret-2b"}
    # today's files say debug/new-secret; the rollback brings back what OLD ran with
    deployer, _, out = make(shop, kube, clock)
    deployer.deploy(Release(OLD.image, OLD.git_sha), action="rollback")
    assert envs(kube) == before
    assert kube.revision(WEB) == 3
    assert f"deployment/{WEB}: the pod template of revision 1 (image, config, secrets)" in out.getvalue()
    assert FileJournal(shop.root, "production").entries()[-1]["action"] == "rollback"


def test_a_rollback_whose_config_was_pruned_uses_todays_and_says_so(shop: Project) -> None:
    env_file(shop, "  keep_revisions: 1\n")
    kube, clock = cluster(shop, {"LOG_LEVEL": "info"})
    configured(shop, {"LOG_LEVEL": "warning"})
    make(shop, kube, clock)[0].deploy(NEW)
    configured(shop, {"LOG_LEVEL": "debug"})
    make(shop, kube, clock)[0].deploy(THIRD)  # keep 1: OLD's ConfigMap, 2 revisions back, is pruned
    deployer, _, out = make(shop, kube, clock)
    deployer.deploy(Release(OLD.image, OLD.git_sha), action="rollback")
    assert "no longer exist (pruned): today's config and secrets" in out.getvalue()
    assert envs(kube)[WEB]["LOG_LEVEL"] == "debug"
    assert kube.container(WEB, "app")["image"] == OLD.image


def test_versioned_config_is_pruned_beyond_keep_revisions_and_nothing_else(shop: Project) -> None:
    env_file(shop, "  keep_revisions: 1\n")
    kube, clock = cluster(shop, {"LOG_LEVEL": "v1"})
    journal = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "conveyor-journal"}, "data": {}}
    kube.apply(yaml.safe_dump(journal))  # another writer's ConfigMap: not ours to prune
    for n, release in enumerate((NEW, THIRD), start=2):
        configured(shop, {"LOG_LEVEL": f"v{n}"}, secret=f"secret-{n}")
        deployer, _, out = make(shop, kube, clock)
        deployer.deploy(release)
    maps = {k[1]: o["data"].get("LOG_LEVEL") for k, o in kube.objects.items() if k[0] == "configmap"}
    assert sorted(maps.values(), key=str) == sorted([None, "v2", "v3"], key=str)  # v1 pruned: 2 revisions ago
    assert "conveyor-journal" in maps
    assert "pruned configmap shop-config-" in out.getvalue()
    secrets = [o for k, o in kube.objects.items() if k[0] == "secret"]
    assert len(secrets) == 2  # the current one and the one of the revision before
    journal_read = kube.get("configmap", "conveyor-journal")
    assert journal_read is not None
    assert journal_read["data"] == {}


def test_dry_plan_resolves_no_secret(shop: Project) -> None:
    configured(shop, {"LOG_LEVEL": "info"})
    clock = Clock()
    kube = FakeKube(NS, clock=clock)
    _, target, out = make(shop, kube, clock)
    target.runner.dry = True
    plan = target.plan(NEW)
    assert plan.detail.secret_manifest is None
    assert (
        "Secret shop-env: named by the hash of its values at deploy time (--dry: none resolved)" in plan.steps
    )
    assert SENTINEL not in out.getvalue() + plan.preview


# --- 2. the HPA owns replicas ---------------------------------------------------------------------------


def test_a_deployment_an_hpa_scales_is_applied_without_replicas(shop: Project) -> None:
    configured(shop, {"LOG_LEVEL": "info"})
    _, target, _ = make(shop, FakeKube(NS))
    objects = target.render(NEW, require_digest=True)
    deps = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "Deployment"}
    assert "replicas" not in deps[WEB]
    assert deps[WORKER]["replicas"] == 1  # no HPA: the manifests' count
    assert f"replicas of deployment/{WEB}: its HPA's (not applied)" in target.plan(NEW).steps


def test_a_redeploy_keeps_the_count_the_hpa_chose(shop: Project) -> None:
    kube, clock = cluster(shop, {"LOG_LEVEL": "info"})
    kube.autoscale[WEB].append(5)
    kube.replicasets("app.kubernetes.io/component=web")  # the HPA acts between two deploys
    assert kube.ready(WEB)[1] == 5
    make(shop, kube, clock)[0].deploy(NEW)
    assert kube.ready(WEB) == (5, 5)


def test_replicas_conveyor_owned_are_handed_over_to_a_new_hpa_not_reset(shop: Project) -> None:
    """Before the HPA came conveyor applied (owned) `replicas`; leaving it out would reset it to 1."""
    clock = Clock()
    kube = FakeKube(NS, clock=clock)
    configured(shop, {"LOG_LEVEL": "info"}, hpa=False)
    make(shop, kube, clock)[0].deploy(OLD)
    assert kube.ready(WEB) == (2, 2)
    configured(shop, {"LOG_LEVEL": "info"}, hpa=True)
    kube.calls.clear()
    deployer, _, out = make(shop, kube, clock)
    deployer.deploy(NEW)
    assert f"deployment/{WEB}: replicas (2) handed over to its HPA" in out.getvalue()
    assert not any(c.startswith("ssa resets") for c in kube.calls)
    assert kube.ready(WEB) == (2, 2)
    live = kube.get("deployment", WEB)
    assert live is not None
    assert [m["manager"] for m in live["metadata"]["managedFields"]] == ["handover-to-hpa"]
    kube.calls.clear()
    make(shop, kube, clock)[0].deploy(THIRD)  # conveyor owns nothing now: no second hand-over
    assert not any("handed over" in c for c in kube.calls)


def test_the_hpa_scaling_up_mid_rollout_is_waited_for_pod_by_pod(shop: Project) -> None:
    kube, clock = cluster(shop, {"LOG_LEVEL": "info"})
    kube.rollouts[WEB].append("slow")
    kube.autoscale[WEB].append(4)  # decided while our ReplicaSet has 1 of 2 ready
    _, target, _ = make(shop, kube, clock)
    plan = target.plan(NEW)
    target.apply(plan)
    kube.calls.clear()
    target.wait(plan, NEW, clock() + 60)
    assert "hpa scales shop-web to 4" in kube.calls
    assert kube.ready(WEB) == (4, 4)
    reads = [c for c in kube.calls if c.startswith("get replicasets") and "component=web" in c]
    assert len(reads) == 4  # 1/2, then 2/4, 3/4, 4/4: it read the live desired count each time


def test_the_hpa_scaling_up_to_pods_that_never_get_ready_times_out(shop: Project) -> None:
    kube, clock = cluster(shop, {"LOG_LEVEL": "info"})
    kube.rollouts[WEB].append("partial")
    kube.autoscale[WEB].append(3)
    _, target, _ = make(shop, kube, clock)
    plan = target.plan(NEW)
    target.apply(plan)
    with pytest.raises(RolloutFailed, match=f"timed out: deployment/{WEB}: ReplicaSet .* has 2/3 ready"):
        target.wait(plan, NEW, clock() + 20)


# --- 3. zero-downtime rollouts ----------------------------------------------------------------------------


def test_rollout_settings_grace_and_prestop_come_from_configuration(shop: Project) -> None:
    configured(shop, {"LOG_LEVEL": "info"})
    env_file(shop, "  shutdown_timeout: 25\n  drain_seconds: 5\n")
    k8s_settings(
        shop,
        "  max_surge: '50%'\n  max_unavailable: '1'\n  min_ready_seconds: 10\n  progress_deadline: 120\n",
    )
    kube = FakeKube(NS)
    _, target, _ = make(shop, kube)
    plan = target.plan(NEW)
    deps = {o["metadata"]["name"]: o["spec"] for o in plan.detail.objects if o["kind"] == "Deployment"}
    for spec in deps.values():
        assert spec["strategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": "50%", "maxUnavailable": 1},
        }
        assert (spec["minReadySeconds"], spec["progressDeadlineSeconds"]) == (10, 120)
        assert spec["template"]["spec"]["terminationGracePeriodSeconds"] == 30
    assert deps[WEB]["template"]["spec"]["containers"][0]["lifecycle"] == {
        "preStop": {"sleep": {"seconds": 5}}
    }
    assert all("lifecycle" not in c for c in deps[WORKER]["template"]["spec"]["containers"])  # no Service
    assert (
        "rollout: maxSurge 50%, maxUnavailable 1, minReadySeconds 10, progressDeadlineSeconds 120; "
        "pods: preStop sleep 5s (web), terminationGracePeriodSeconds 30"
    ) in plan.steps
    target.apply(plan)
    target.release_steps(plan)
    [job] = [o for k, o in kube.objects.items() if k[0] == "job"]
    assert "lifecycle" not in job["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("  max_surge: '0'\n  max_unavailable: '0%'\n", "k8s.max_surge and k8s.max_unavailable are both 0"),
        ("  max_surge: lots\n", "k8s.max_surge: `lots` is not a number of pods or a percentage"),
        (
            "  max_unavailable: '150%'\n",
            "k8s.max_unavailable: `150%` is not a number of pods or a percentage",
        ),
        (
            "  min_ready_seconds: 30\n  progress_deadline: 30\n",
            "k8s.progress_deadline (30) must be greater than k8s.min_ready_seconds (30)",
        ),
    ],
)
def test_bad_rollout_settings_are_one_line_before_any_call(
    shop: Project, settings: str, message: str
) -> None:
    k8s_settings(shop, settings)
    kube = FakeKube(NS)
    with pytest.raises(ConfigError) as exc:
        make(shop, kube)
    assert str(exc.value) == message or str(exc.value).startswith(message)
    assert "\n" not in str(exc.value)
    assert kube.calls == []


def test_progress_deadline_exceeded_fails_the_wait_at_once_and_rolls_back(shop: Project) -> None:
    k8s_settings(shop, "  progress_deadline: 30\n")
    kube, clock = cluster(shop, {"LOG_LEVEL": "info"})
    kube.rollouts[WEB].append("timeout")
    deployer, _, _ = make(shop, kube, clock)
    start = clock()
    with pytest.raises(DeployFailed, match=f'deployment "{WEB}" exceeded its progress deadline.*rolled back'):
        deployer.deploy(NEW)
    assert clock() - start < 60  # the deploy timeout is 60: it did not wait for it
    assert kube.container(WEB, "app")["image"] == OLD.image


def test_a_progress_deadline_condition_seen_while_polling_fails_at_once(shop: Project) -> None:
    kube, clock = cluster(shop, {"LOG_LEVEL": "info"})
    kube.rollouts[WEB].append("partial")
    _, target, _ = make(shop, kube, clock)
    plan = target.plan(NEW)
    target.apply(plan)

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        kube.exceed(WEB)  # the controller gives up on the rollout

    target.sleep = sleep
    with pytest.raises(RolloutFailed, match=f"deployment/{WEB}: ProgressDeadlineExceeded .ReplicaSet"):
        target.wait(plan, NEW, clock() + 600)
    assert clock() < 1100


# --- 4. the release Job ----------------------------------------------------------------------------------


def test_a_failed_release_job_shows_its_log_tail(shop: Project) -> None:
    kube, clock = cluster(shop, {"LOG_LEVEL": "info"})
    kube.jobs.append("fail")
    deployer, _, out = make(shop, kube, clock)
    last = FAILED_LOG.splitlines()[-1]
    with pytest.raises(
        DeployFailed, match=f"failed before apply .release Job .* failed: .*\\(log: {last}\\)"
    ):
        deployer.deploy(NEW)
    printed = out.getvalue()
    assert f"  | {FAILED_LOG.splitlines()[0]}" in printed
    assert f"  | {last}" in printed
    assert any(c.startswith("logs job/") and c.endswith("--tail=20") for c in kube.calls)


def test_a_release_job_past_its_deadline_fails_with_the_reason(shop: Project) -> None:
    kube, clock = cluster(shop, {"LOG_LEVEL": "info"})
    kube.jobs.append("deadline")
    deployer, _, _ = make(shop, kube, clock)
    with pytest.raises(
        DeployFailed, match="release Job .* failed: Job was active longer than specified deadline"
    ):
        deployer.deploy(NEW)
    assert not any(c.startswith("apply deployment") for c in kube.calls[-20:])


def test_a_job_whose_config_is_missing_never_starts_and_its_log_says_why() -> None:
    """The fake: a pod reading a missing ConfigMap waits (CreateContainerConfigError) until the deadline."""
    clock = Clock()
    kube = FakeKube(NS, clock=clock)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "migrate"},
        "spec": {
            "activeDeadlineSeconds": 30,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "app", "image": "x", "envFrom": [CONFIG_REF]}],
                }
            },
        },
    }
    kube.apply(yaml.safe_dump(job))
    assert (kube.get("job", "migrate") or {})["status"] == {"active": 1}
    with pytest.raises(Exception, match="is waiting to start: CreateContainerConfigError"):
        kube.logs("migrate", 5)
    clock.sleep(30)
    status = (kube.get("job", "migrate") or {})["status"]
    assert status["conditions"][0]["reason"] == "DeadlineExceeded"


# --- the wait's other ways out, and immutable fields as one line -------------------------------------------


def test_a_deployment_deleted_or_without_our_replicaset_fails_the_wait(shop: Project) -> None:
    kube, clock = cluster(shop, {"LOG_LEVEL": "info"})
    _, target, _ = make(shop, kube, clock)
    plan = target.plan(NEW)
    target.apply(plan)
    status = kube.rollout_status

    def raced(name: str, timeout: int) -> None:  # another rollout moves the revision on meanwhile
        status(name, timeout)
        kube.objects[("deployment", name)]["metadata"]["annotations"][REVISION] = "9"

    kube.rollout_status = raced  # type: ignore[method-assign]
    with pytest.raises(RolloutFailed, match=f"no ReplicaSet for revision 9 of deployment/{WEB}"):
        target.wait(plan, NEW, clock() + 60)
    kube.rollout_status = status  # type: ignore[method-assign]
    kube.objects[("deployment", WEB)]["metadata"]["annotations"][REVISION] = "2"
    kube.delete("deployment", WORKER)
    with pytest.raises(RolloutFailed, match=f'deployments.apps "{WORKER}" not found'):
        target.wait(plan, NEW, clock() + 60)


def test_a_changed_selector_is_refused_in_one_line_and_nothing_is_rolled(shop: Project) -> None:
    kube, clock = cluster(shop, {"LOG_LEVEL": "info"})
    web = deployment(WEB, "web", [{**WEB_APP, "envFrom": [CONFIG_REF, *WEB_APP["envFrom"]]}], 2)
    web["spec"]["selector"]["matchLabels"]["tier"] = "front"
    web["spec"]["template"]["metadata"]["labels"]["tier"] = "front"
    worker = deployment(
        WORKER, "worker", [SHIPPER, {**WORKER_APP, "envFrom": [CONFIG_REF, *WORKER_APP["envFrom"]]}], 1
    )
    write_manifests(shop, [web, worker], (SERVICE, {**CONFIG, "data": {"LOG_LEVEL": "info"}}, HPA))
    deployer, _, _ = make(shop, kube, clock)
    with pytest.raises(DeployFailed) as exc:
        deployer.deploy(NEW)
    message = str(exc.value)
    assert "\n" not in message
    assert f'failed at apply (kubectl apply: The Deployment "{WEB}" is invalid: spec.selector' in message
    assert "field is immutable" in message
    assert kube.revision(WEB) == 1  # the old revision serves on
    assert kube.container(WEB, "app")["image"] == OLD.image
