"""The Kubernetes target: real kustomize and schema validation offline; the orchestration against a fake
of OUR kubectl adapter (tests/k8s_fake.py) - no API server can run on our machines."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conveyor import config
from conveyor.deploy.journal import FileJournal
from conveyor.deploy.k8s import K8sDeployTarget, schema_validate, write_kustomization
from conveyor.deploy.model import Deployer, DeployFailed, LockHeld, Owner, Release
from conveyor.errors import ConfigError
from conveyor.runner import Runner
from conveyor.secrets import SecretResolver
from tests.conftest import REPO, Project, engine_missing
from tests.k8s_fake import FakeKube

OLD = Release("registry.example.com/conveyor/conveyor-demo@sha256:" + "1" * 64, "a" * 40)
NEW = Release("registry.example.com/conveyor/conveyor-demo@sha256:" + "2" * 64, "b" * 40)
SENTINEL = "k8s-sentinel-secret-value-7f3a"


@pytest.fixture(autouse=True)
def tools() -> None:
    if shutil.which("kubectl") is None:
        engine_missing("kubectl not installed (ci/setup-debian.sh installs it)")
    if shutil.which("kubernetes-validate") is None:
        engine_missing("kubernetes-validate not installed (pip install -e '.[dev]')")


@pytest.fixture
def project(tmp_path: Path) -> Project:
    proj = Project(tmp_path)
    shutil.copytree(REPO / "k8s", tmp_path / "k8s")
    proj.write("tasks.py", "from conveyor.tasks import namespace\n\nns = namespace()\n")
    shutil.copy(REPO / "invoke.yaml", tmp_path / "invoke.yaml")
    proj.write(
        "deploy/environments/production.yaml",
        """
        target: k8s
        url: https://conveyor-demo.example.com
        registry: registry.example.com/conveyor
        k8s:
          overlay: k8s/overlays/production
          namespace: conveyor-production
        secrets:
          DATABASE_URL: env:DB_URL
        """,
    )
    return proj


def make(project: Project, kube: FakeKube) -> tuple[Deployer, K8sDeployTarget, io.StringIO]:
    cfg = config.load(project.root, "production", environ={"DB_URL": SENTINEL})
    out = io.StringIO()
    runner = Runner(out=out)
    resolver = SecretResolver(runner.redact, environ=cfg.dotenv, root=cfg.root)
    target = K8sDeployTarget(runner, kube, cfg, deployer="tester", resolver=resolver, sleep=lambda s: None)
    deployer = Deployer(
        target=target, runner=runner, journal=FileJournal(project.root, "production"), env="production",
        timeout=60, lock_ttl=600, probe=kube.probe, sleep=lambda s: None,
    )  # fmt: skip
    return deployer, target, out


def seeded(project: Project) -> FakeKube:
    """A cluster already running OLD as revision 1."""
    kube = FakeKube("conveyor-production")
    deployer, _, _ = make(project, kube)
    deployer.deploy(OLD)
    kube.calls.clear()
    kube.stdin.clear()
    return kube


# --- offline: every overlay renders, validates, and is restricted-PSS shaped ------------------------


@pytest.mark.parametrize("overlay", ["staging", "production"])
def test_overlays_render_validate_and_are_restricted(overlay: str) -> None:
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
    dep = next(o for o in objects if o["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    container = pod["containers"][0]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    probes = (container["readinessProbe"], container["livenessProbe"], container["startupProbe"])
    assert [p["httpGet"]["path"] for p in probes] == ["/ready", "/health", "/startup"]
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    sa = next(o for o in objects if o["kind"] == "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False


def test_generated_kustomization_sets_the_digest_and_leaves_committed_files_alone(project: Project) -> None:
    before = {p: p.read_text() for p in (project.root / "k8s").rglob("*.yaml")}
    cfg = config.load(project.root, "production", environ={})
    folder = write_kustomization(cfg, NEW, "tester")
    assert not Path(yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"][0]).is_absolute()
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, check=True
    ).stdout
    dep = next(o for o in yaml.safe_load_all(rendered) if o["kind"] == "Deployment")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == NEW.image
    assert dep["metadata"]["annotations"]["kubernetes.io/change-cause"].startswith(
        f"conveyor deploy {NEW.git_sha[:12]}"
    )
    assert {p: p.read_text() for p in (project.root / "k8s").rglob("*.yaml")} == before


# --- the orchestration against the fake adapter --------------------------------------------------------


def test_deploy_success_job_before_apply_then_verified(project: Project) -> None:
    kube = seeded(project)
    deployer, target, out = make(project, kube)
    deployer.deploy(NEW)
    applied = [c for c in kube.calls if c.startswith(("apply", "rollout"))]
    job = next(i for i, c in enumerate(applied) if c.startswith("apply job/"))
    deployment = applied.index("apply deployment/conveyor-demo")
    assert job < deployment
    assert applied[-1] == "rollout status conveyor-demo"
    current = target.current()
    assert current is not None
    assert (current.ref, current.git_sha, current.image) == ("2", NEW.git_sha, NEW.image)
    assert SENTINEL not in out.getvalue()
    secret = json.loads(kube.stdin[0])
    assert secret["kind"] == "Secret"  # the value went on stdin, base64 in the Secret, never on argv
    assert SENTINEL not in " ".join(kube.calls)


def test_live_history_reads_rollout_history_and_annotations(project: Project) -> None:
    kube = seeded(project)
    deployer, target, _ = make(project, kube)
    deployer.deploy(NEW)
    lines = target.live_history()
    assert lines[1].split() == ["REVISION", "CHANGE-CAUSE"]
    assert lines[2].split()[0] == "1"
    assert f"conveyor deploy {OLD.git_sha[:12]} by tester" in lines[2]
    assert lines[3].split()[0] == "2"
    assert f"conveyor deploy {NEW.git_sha[:12]} by tester" in lines[3]
    assert lines[-1] == f"serving: revision 2, sha {NEW.git_sha[:12]}, {NEW.image}"


def test_rollout_timeout_is_undone_and_verified(project: Project) -> None:
    kube = seeded(project)
    kube.rollouts.extend(["timeout"])
    deployer, target, _ = make(project, kube)
    with pytest.raises(DeployFailed) as exc:
        deployer.deploy(NEW)
    assert "failed at wait (kubectl rollout: error: timed out waiting for the condition)" in str(exc.value)
    assert str(exc.value).endswith(f"rolled back: serving {OLD.git_sha[:12]} again (verified)")
    assert "rollout undo conveyor-demo --to-revision=1" in kube.calls
    current = target.current()
    assert current is not None
    assert (current.git_sha, current.image) == (OLD.git_sha, OLD.image)


def test_failed_migration_job_applies_nothing(project: Project) -> None:
    kube = seeded(project)
    kube.jobs.extend(["fail"])
    deployer, target, _ = make(project, kube)
    with pytest.raises(
        DeployFailed, match="failed before apply .migration Job conveyor-demo-migrate-.* failed"
    ):
        deployer.deploy(NEW)
    assert "apply deployment/conveyor-demo" not in kube.calls
    assert target.current().git_sha == OLD.git_sha  # type: ignore[union-attr]


def test_lease_held_refuses_a_second_deploy(project: Project) -> None:
    kube = seeded(project)
    deployer, target, _ = make(project, kube)
    target.lock.acquire(Owner("alice", "ci-3", 77, "c" * 40), ttl=600)
    with pytest.raises(LockHeld, match=r"production is being deployed by alice@ci-3 \(pid 77"):
        deployer.deploy(NEW)
    assert not any(c.startswith("apply") for c in kube.calls)


# --- bad input: one line, nothing applied ----------------------------------------------------------------


def test_unknown_overlay(project: Project) -> None:
    path = project.root / "deploy/environments/production.yaml"
    path.write_text(path.read_text().replace("overlays/production", "overlays/prod"))
    with pytest.raises(ConfigError, match="k8s.overlay: k8s/overlays/prod is not a kustomize overlay"):
        make(project, FakeKube("conveyor-production"))


def test_kustomize_error_shows_kubectls_message(project: Project) -> None:
    (project.root / "k8s/overlays/production/kustomization.yaml").write_text("resources:\n  - ../../nope\n")
    kube = FakeKube("conveyor-production")
    with pytest.raises(ConfigError, match="kustomize .*: .*nope"):
        make(project, kube)
    assert kube.calls == []


def test_manifest_with_an_unknown_field(project: Project) -> None:
    pdb = project.root / "k8s/base/pdb.yaml"
    pdb.write_text(pdb.read_text().replace("minAvailable: 1", "minAvailable: 1\n  maxUnavailabel: 1"))
    kube = seeded_or_empty = FakeKube("conveyor-production")
    deployer, _, _ = make(project, seeded_or_empty)
    with pytest.raises(ConfigError, match="'maxUnavailabel' was unexpected"):
        deployer.deploy(NEW)
    assert not any(c.startswith("apply") for c in kube.calls)


def test_missing_kube_context(project: Project) -> None:
    kube = FakeKube("conveyor-production", context=None)
    deployer, _, _ = make(project, kube)
    with pytest.raises(ConfigError, match="no kube context: set KUBECONFIG"):
        deployer.deploy(NEW)
    assert kube.calls == []


def test_namespace_mismatch(project: Project) -> None:
    path = project.root / "deploy/environments/production.yaml"
    path.write_text(path.read_text().replace("namespace: conveyor-production", "namespace: conveyor-prod"))
    with pytest.raises(
        ConfigError, match="namespace 'conveyor-production' differs from k8s.namespace 'conveyor-prod'"
    ):
        make(project, FakeKube("conveyor-prod"))


def test_cli_plan_dry_prints_rendered_validated_manifests_with_the_digest(
    project: Project, tmp_path: Path
) -> None:
    project.write(
        "build/release.json",
        json.dumps({"refs": ["conveyor-demo:" + NEW.git_sha[:12]], "image_id": "sha256:" + "9" * 64,
                    "git_sha": NEW.git_sha, "pushed": {"production": NEW.image}}),
    )  # fmt: skip
    env = {"KUBECONFIG": str(tmp_path / "no-such-kubeconfig"), "PATH": os.environ["PATH"]}
    result = project.invoke("--dry", "plan", "--env", "production", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "NOT CONNECTED (no kube context" in result.stdout
    assert f"image: {NEW.image}" in result.stdout
    assert "kind: Deployment" in result.stdout
    assert "namespace: conveyor-production" in result.stdout
