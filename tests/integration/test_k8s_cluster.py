"""The real Kubernetes flow against whatever cluster KUBECONFIG points at (kind, k3d, EKS, ...): the
reference project's overlay and app contract (web and worker, the migrate release Job).

No API server can run on the project's machines (no kind/k3s/envtest from the registries we reach), so
there this module is SKIPPED with the reason printed - the one skip CI allows (see the k8s issue).
To run it:
    KUBECONFIG=... CONVEYOR_K8S_TEST_IMAGE=<registry>/conveyor-demo@sha256:... \\
    K8S_TEST_DATABASE_URL=postgresql://... K8S_TEST_REDIS_URL=redis://... nox -s integration -- -m k8s
The image must be a build of this repo's app the cluster can pull, by digest; both URLs must be reachable
from the cluster (the release Job migrates Postgres; the worker consumes Redis). /version is read through
`kubectl port-forward`. The cluster must be 1.30 or newer (the preStop `sleep` action).

Scenarios, the same as the unit tests on the strict fake (tests/unit/test_k8s_release.py): a deploy with
the rollout settings, preStop and no `replicas` owned by conveyor (the HPA's); a rollout that stalls on an
image that cannot be pulled rolls back image AND config (the pods' environment is the previous one); a
failing release Job shows its log tail and applies nothing.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.tests.conftest import free_port
from conveyor import config
from conveyor.deploy.journal import FileJournal
from conveyor.deploy.k8s import K8sDeployTarget, KubeCtl
from conveyor.deploy.model import Deployer, DeployFailed, Release
from conveyor.runner import Runner
from conveyor.secrets import SecretResolver
from tests.conftest import REPO, Project

pytestmark = pytest.mark.k8s
NEEDED = ("CONVEYOR_K8S_TEST_IMAGE", "K8S_TEST_DATABASE_URL", "K8S_TEST_REDIS_URL")


@pytest.fixture
def cluster() -> str:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    probe = subprocess.run(
        ["kubectl", "version", "--request-timeout=5s", "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0 or '"serverVersion"' not in probe.stdout:
        pytest.skip(
            "no Kubernetes API server reachable through KUBECONFIG; none can run on this project's machines, "
            "so this is the one skip CI allows"
        )
    missing = [v for v in NEEDED if not os.environ.get(v)]
    if missing or "@sha256:" not in os.environ["CONVEYOR_K8S_TEST_IMAGE"]:
        pytest.fail(f"a cluster is reachable: set {', '.join(NEEDED)} (the image by digest)")
    return os.environ["CONVEYOR_K8S_TEST_IMAGE"]


class PortForward:
    """GET /version through `kubectl port-forward svc/conveyor-demo`, started on first use."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.proc: subprocess.Popen[str] | None = None
        self.port = free_port()

    def __call__(self, url: str) -> dict[str, object]:
        if self.proc is None:
            argv = ["kubectl", "-n", self.namespace, "port-forward", "svc/conveyor-demo", f"{self.port}:80"]
            self.proc = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
            )
            time.sleep(2)
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/version", timeout=5) as response:
            return dict(json.loads(response.read()))

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


class Env:
    """A throwaway namespace with the reference project's overlay, contract and a Deployer on KubeCtl."""

    def __init__(self, tmp_path: Path, image: str, extra_env: str = "") -> None:
        self.namespace = f"conveyor-test-{uuid.uuid4().hex[:6]}"
        self.root = tmp_path
        self.image = image
        shutil.copytree(REPO / "k8s", tmp_path / "k8s")
        shutil.copy(REPO / "invoke.yaml", tmp_path / "invoke.yaml")  # the app contract: web + worker
        overlay = tmp_path / "k8s/overlays/production/kustomization.yaml"
        overlay.write_text(overlay.read_text().replace("conveyor-production", self.namespace))
        self.project = Project(tmp_path)
        self.project.write(
            "deploy/environments/production.yaml",
            "target: k8s\nurl: http://127.0.0.1:9\n"
            f"k8s:\n  overlay: k8s/overlays/production\n  namespace: {self.namespace}\n{extra_env}"
            "secrets:\n  DATABASE_URL: env:K8S_TEST_DATABASE_URL\n  REDIS_URL: env:K8S_TEST_REDIS_URL\n",
        )
        self.sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
        subprocess.run(["kubectl", "create", "namespace", self.namespace], check=True)
        self.probe = PortForward(self.namespace)
        self.runner = Runner(out=io.StringIO())
        self.kube = KubeCtl(self.runner, self.namespace)

    def deployer(self) -> tuple[Deployer, K8sDeployTarget]:
        """A fresh config read (the test may have changed the files), target and Deployer."""
        cfg = config.load(self.root, "production", environ=os.environ)
        resolver = SecretResolver(self.runner.redact, environ=os.environ, root=self.root)
        target = K8sDeployTarget(self.runner, self.kube, cfg, deployer="k8s-test", resolver=resolver)
        deployer = Deployer(
            target, self.runner, FileJournal(self.root, "production"), "production", timeout=300,
            lock_ttl=600, contract=cfg.app, url=cfg.env.url, probe=self.probe,
        )  # fmt: skip
        return deployer, target

    def pod_env(self, deployment: str, name: str) -> str:
        """What a running pod of ``deployment`` has in its environment for ``name``."""
        return subprocess.run(
            ["kubectl", "-n", self.namespace, "exec", f"deploy/{deployment}", "--", "printenv", name],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip

    def close(self) -> None:
        self.probe.close()
        subprocess.run(["kubectl", "delete", "namespace", self.namespace, "--wait=false"], check=False)


@pytest.fixture
def env(cluster: str, tmp_path: Path) -> Iterator[Env]:
    environment = Env(tmp_path, cluster)
    try:
        yield environment
    finally:
        environment.close()


def test_deploy_to_a_real_cluster(env: Env) -> None:
    deployer, target = env.deployer()
    deployer.deploy(Release(env.image, env.sha))
    current = target.current()
    assert current is not None
    assert current.image == env.image
    assert FileJournal(env.root, "production").entries()[-1]["result"] == "succeeded"
    cfg = config.load(env.root, "production", environ=os.environ)
    for workload in target.workloads:  # every process runs the release, with its command
        live = env.kube.get("deployment", workload.deployment)
        assert live is not None
        app = live["spec"]["template"]["spec"]["containers"][workload.index]
        assert app["image"] == env.image
        command = next(p.command for p in cfg.app.processes if p.name == workload.process)
        assert app.get("args", []) == list(command)
        assert live["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 23
    web = env.kube.get("deployment", "conveyor-demo")
    assert web is not None
    assert web["spec"]["template"]["spec"]["containers"][0]["lifecycle"] == {
        "preStop": {"sleep": {"seconds": 3}}
    }
    # the HPA owns replicas: conveyor's field manager does not
    owned = [m for m in web["metadata"].get("managedFields", []) if m.get("manager") == "conveyor"]
    assert owned
    assert all("f:replicas" not in json.dumps(m.get("fieldsV1", {}).get("f:spec", {})) for m in owned)


def test_a_failed_rollout_on_a_cluster_restores_image_config_and_secret(env: Env) -> None:
    deployer, _ = env.deployer()
    deployer.deploy(Release(env.image, env.sha))
    before = env.pod_env("conveyor-demo", "LOG_LEVEL")
    configmap = env.root / "k8s/base/configmap.yaml"
    configmap.write_text(configmap.read_text().replace("LOG_LEVEL: info", "LOG_LEVEL: debug"))
    overlay = env.root / "k8s/overlays/production/kustomization.yaml"
    overlay.write_text(overlay.read_text().replace("value: warning", "value: debug"))
    environment = env.root / "deploy/environments/production.yaml"
    environment.write_text(
        environment.read_text().replace("  namespace:", "  progress_deadline: 60\n  namespace:")
    )
    missing = env.image.split("@")[0] + "@sha256:" + "0" * 64  # never pulls: the rollout stalls
    deployer, target = env.deployer()
    with pytest.raises(DeployFailed, match="rolled back"):
        deployer.deploy(Release(missing, env.sha))
    assert env.pod_env("conveyor-demo", "LOG_LEVEL") == before  # config came back with the image
    current = target.current()
    assert current is not None
    assert current.image == env.image


def test_a_failing_release_job_shows_its_log_on_a_cluster(env: Env) -> None:
    contract = env.root / "invoke.yaml"
    migrate = "    command: [python, -m, app, migrate]\n"
    assert migrate in contract.read_text()
    failing = "    command: [python, -c, \"import sys; print('k8s-log-canary'); sys.exit(3)\"]\n"
    contract.write_text(contract.read_text().replace(migrate, failing))
    deployer, _ = env.deployer()
    with pytest.raises(DeployFailed, match=r"failed before apply .*\(log: k8s-log-canary\)"):
        deployer.deploy(Release(env.image, env.sha))
    assert env.kube.get("deployment", "conveyor-demo") is None  # nothing was applied
