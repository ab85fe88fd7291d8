"""The real Kubernetes flow against whatever cluster KUBECONFIG points at (kind, k3d, EKS, ...): the
reference project's overlay and app contract (web and worker, the migrate release Job).

No API server can run on the project's machines (no kind/k3s/envtest from the registries we reach), so
there this module is SKIPPED with the reason printed - the one skip CI allows (see the k8s issue).
To run it:
    KUBECONFIG=... CONVEYOR_K8S_TEST_IMAGE=<registry>/conveyor-demo@sha256:... \\
    K8S_TEST_DATABASE_URL=postgresql://... K8S_TEST_REDIS_URL=redis://... nox -s integration -- -m k8s
The image must be a build of this repo's app the cluster can pull, by digest; both URLs must be reachable
from the cluster (readiness checks them; the worker consumes Redis). /version is read through
`kubectl port-forward`.
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
from pathlib import Path

import pytest

from app.tests.conftest import free_port
from conveyor import config
from conveyor.deploy.journal import FileJournal
from conveyor.deploy.k8s import K8sDeployTarget, KubeCtl
from conveyor.deploy.model import Deployer, Release
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


def test_deploy_to_a_real_cluster(cluster: str, tmp_path: Path) -> None:
    namespace = f"conveyor-test-{uuid.uuid4().hex[:6]}"
    shutil.copytree(REPO / "k8s", tmp_path / "k8s")
    shutil.copy(REPO / "invoke.yaml", tmp_path / "invoke.yaml")  # the app contract: web + worker
    overlay = tmp_path / "k8s/overlays/production/kustomization.yaml"
    overlay.write_text(overlay.read_text().replace("conveyor-production", namespace))
    project = Project(tmp_path)
    project.write(
        "deploy/environments/production.yaml",
        "target: k8s\nurl: http://127.0.0.1:9\n"
        f"k8s:\n  overlay: k8s/overlays/production\n  namespace: {namespace}\n"
        "secrets:\n  DATABASE_URL: env:K8S_TEST_DATABASE_URL\n  REDIS_URL: env:K8S_TEST_REDIS_URL\n",
    )
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    subprocess.run(["kubectl", "create", "namespace", namespace], check=True)
    probe = PortForward(namespace)
    try:
        cfg = config.load(tmp_path, "production", environ=os.environ)
        runner = Runner(out=io.StringIO())
        resolver = SecretResolver(runner.redact, environ=os.environ, root=tmp_path)
        target = K8sDeployTarget(
            runner, KubeCtl(runner, namespace), cfg, deployer="k8s-test", resolver=resolver
        )
        journal = FileJournal(tmp_path, "production")
        deployer = Deployer(
            target, runner, journal, "production", timeout=300, lock_ttl=600, contract=cfg.app,
            url=cfg.env.url, probe=probe,
        )  # fmt: skip
        deployer.deploy(Release(cluster, sha))
        current = target.current()
        assert current is not None
        assert current.image == cluster
        assert journal.entries()[-1]["result"] == "succeeded"
        kube = KubeCtl(runner, namespace)
        for workload in target.workloads:  # every process runs the release, with its command
            live = kube.get("deployment", workload.deployment)
            assert live is not None
            app = live["spec"]["template"]["spec"]["containers"][workload.index]
            assert app["image"] == cluster
            command = next(p.command for p in cfg.app.processes if p.name == workload.process)
            assert app.get("args", []) == list(command)
    finally:
        probe.close()
        subprocess.run(["kubectl", "delete", "namespace", namespace, "--wait=false"], check=False)
