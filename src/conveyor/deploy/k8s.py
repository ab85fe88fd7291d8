"""The Kubernetes target: kustomize overlays deployed by digest with kubectl.

Render: a generated kustomization in build/k8s/<env>/ points at the overlay by a RELATIVE path (kustomize
refuses absolute roots) and sets the image digest and conveyor's annotations, so committed files never
change. Validate offline (kinds, namespace, digest, restricted Pod Security fields, kubernetes-validate
--strict). Release step: a migration Job from the same image. Apply: `kubectl apply --server-side`.
Wait: `kubectl rollout status` AND the ReplicaSet of OUR revision has every replica ready with our image.
Rollback: `kubectl rollout undo --to-revision`. Lock: a coordination.k8s.io Lease created atomically.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import yaml

from conveyor.config import Config
from conveyor.deploy.locks import StoredLock
from conveyor.deploy.model import Change, Lock, Owner, Plan, Release, Revision, RolloutFailed
from conveyor.errors import CommandFailed, ConfigError, ConveyorError
from conveyor.runner import Runner
from conveyor.secrets import SecretResolver

BUILD_DIR = Path("build/k8s")
IMAGE_NAME = "conveyor-demo"  # the placeholder image name in k8s/base/deployment.yaml
KINDS = {
    "ServiceAccount", "ConfigMap", "Secret", "Deployment", "Service", "Ingress", "HorizontalPodAutoscaler",
    "PodDisruptionBudget", "NetworkPolicy", "Job",
}  # fmt: skip
ANN_SHA, ANN_DIGEST, ANN_DEPLOYER = "conveyor.dev/git-sha", "conveyor.dev/image", "conveyor.dev/deployer"
REVISION = "deployment.kubernetes.io/revision"
LEASE = "conveyor-deploy-lock"
OWNER = "conveyor.dev/owner"
MIGRATE = ["python", "-m", "app", "migrate"]


class KubeApi(Protocol):
    """What the target needs from kubectl; the real one is KubeCtl, tests use a fake of THIS interface."""

    def current_context(self) -> str: ...
    def kustomize(self, path: Path) -> str: ...
    def diff(self, manifests: str) -> str: ...
    def apply(self, manifests: str) -> None: ...
    def create(self, manifest: str) -> bool: ...
    def get(self, kind: str, name: str) -> dict[str, Any] | None: ...
    def delete(self, kind: str, name: str) -> None: ...
    def scale(self, name: str, replicas: int) -> None: ...
    def rollout_status(self, name: str, timeout: int) -> None: ...
    def rollout_undo(self, name: str, revision: int) -> None: ...
    def rollout_history(self, name: str) -> str: ...
    def replicasets(self, selector: str) -> list[dict[str, Any]]: ...


class KubeCtl:
    """kubectl through the runner: argv lists, manifests and secrets on stdin, never on argv."""

    def __init__(self, runner: Runner, namespace: str, context: str = "") -> None:
        self.runner = runner
        self.namespace = namespace
        self.context = context

    def _argv(self, *args: str, namespaced: bool = True) -> list[str]:
        argv = ["kubectl"]
        if self.context:
            argv += ["--context", self.context]
        if namespaced:
            argv += ["--namespace", self.namespace]
        return [*argv, *args]

    def _run(
        self, *args: str, stdin: str | None = None, mutates: bool = False, namespaced: bool = True
    ) -> str:
        try:
            result = self.runner.run(
                self._argv(*args, namespaced=namespaced), capture=True, input=stdin, mutates=mutates
            )
        except CommandFailed as exc:
            raise ConveyorError(f"kubectl {args[0]}: {exc.tail or f'exit {exc.returncode}'}") from None
        return result.stdout

    def current_context(self) -> str:
        if self.context:
            return self.context
        try:
            out = self.runner.run(["kubectl", "config", "current-context"], capture=True, mutates=False)
        except CommandFailed:
            raise ConfigError("no kube context: set KUBECONFIG (or k8s.context) to reach a cluster") from None
        return out.stdout.strip()

    def kustomize(self, path: Path) -> str:
        try:
            out = self.runner.run(["kubectl", "kustomize", str(path)], capture=True, mutates=False)
        except CommandFailed as exc:
            raise ConfigError(f"kustomize {path}: {exc.tail}") from None
        return out.stdout

    def diff(self, manifests: str) -> str:
        result = self.runner.run(
            self._argv("diff", "--server-side", "--field-manager=conveyor", "-f", "-"),
            capture=True, input=manifests, mutates=False, check=False,
        )  # fmt: skip
        if result.returncode > 1:  # 0: no differences, 1: differences, >1: kubectl failed
            raise ConveyorError(f"kubectl diff: {result.stderr.strip().splitlines()[-1:]}")
        return result.stdout

    def apply(self, manifests: str) -> None:
        self._run("apply", "--server-side", "--field-manager=conveyor", "--force-conflicts", "-f", "-",
                  stdin=manifests, mutates=True)  # fmt: skip

    def create(self, manifest: str) -> bool:
        result = self.runner.run(self._argv("create", "-f", "-"), capture=True, input=manifest, check=False)
        if result.returncode == 0:
            return True
        if "AlreadyExists" in result.stderr or "already exists" in result.stderr:
            return False
        raise ConveyorError(f"kubectl create: {result.stderr.strip()}")

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        result = self.runner.run(
            self._argv("get", kind, name, "-o", "json", "--ignore-not-found"), capture=True, mutates=False
        )
        return json.loads(result.stdout) if result.stdout.strip() else None

    def delete(self, kind: str, name: str) -> None:
        self._run("delete", kind, name, "--ignore-not-found", mutates=True)

    def scale(self, name: str, replicas: int) -> None:
        self._run("scale", f"deployment/{name}", f"--replicas={replicas}", mutates=True)

    def rollout_status(self, name: str, timeout: int) -> None:
        try:
            self._run("rollout", "status", f"deployment/{name}", f"--timeout={timeout}s")
        except ConveyorError as exc:
            raise RolloutFailed(str(exc)) from None

    def rollout_undo(self, name: str, revision: int) -> None:
        self._run("rollout", "undo", f"deployment/{name}", f"--to-revision={revision}", mutates=True)

    def rollout_history(self, name: str) -> str:
        return self._run("rollout", "history", f"deployment/{name}")

    def replicasets(self, selector: str) -> list[dict[str, Any]]:
        out = self._run("get", "replicasets", "-l", selector, "-o", "json")
        return list(json.loads(out).get("items", []))


class LeaseLock(StoredLock):
    """The deploy lock as a Lease: `kubectl create` fails if it exists, so taking it is atomic."""

    def __init__(self, kube: KubeApi, namespace: str, env: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.env = env

    def _create(self, owner_json: str, owner: Owner, ttl: int) -> bool:
        self.kube.current_context()  # no cluster configured: one clear line before any call
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE, "namespace": self.namespace, "annotations": {OWNER: owner_json}},
            "spec": {
                "holderIdentity": f"{owner.who}@{owner.host}",
                "leaseDurationSeconds": ttl,
                "acquireTime": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            },
        }
        return self.kube.create(json.dumps(lease))

    def _read(self) -> str | None:
        lease = self.kube.get("lease", LEASE)
        if lease is None:
            return None
        return str(lease.get("metadata", {}).get("annotations", {}).get(OWNER, ""))

    def _delete(self) -> None:
        self.kube.delete("lease", LEASE)


# --- rendering and validation (offline) ---------------------------------------------------------------


def split_image(image: str) -> dict[str, str]:
    """kustomize `images:` entry for ``repo@sha256:..`` (or ``repo:tag`` before a push)."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return {"name": IMAGE_NAME, "newName": name, "digest": digest}
    name, _, tag = image.rpartition(":")
    return {"name": IMAGE_NAME, "newName": name or image, "newTag": tag or "latest"}


def write_kustomization(cfg: Config, release: Release, deployer: str) -> Path:
    """build/k8s/<env>/kustomization.yaml: the overlay + our digest + annotations. Returns its folder."""
    overlay = cfg.root / cfg.env.k8s.overlay
    if not (overlay / "kustomization.yaml").is_file():
        raise ConfigError(
            f"k8s.overlay: {cfg.env.k8s.overlay} is not a kustomize overlay (no kustomization.yaml)"
        )
    folder = cfg.root / BUILD_DIR / cfg.env.name
    folder.mkdir(parents=True, exist_ok=True)
    annotations = {
        ANN_SHA: release.git_sha,
        ANN_DIGEST: release.image,
        ANN_DEPLOYER: deployer,
        "kubernetes.io/change-cause": f"conveyor deploy {release.git_sha[:12]} by {deployer}",
    }
    patch = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "any", "annotations": annotations},
        "spec": {"template": {"metadata": {"annotations": {ANN_SHA: release.git_sha}}}},
    }
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(overlay, folder)],
        "images": [split_image(release.image)],
        "patches": [{"target": {"kind": "Deployment"}, "patch": yaml.safe_dump(patch)}],
    }
    header = "# GENERATED by conveyor for one deploy; do not edit or commit.\n"
    (folder / "kustomization.yaml").write_text(header + yaml.safe_dump(kustomization, sort_keys=False))
    return folder


def check_manifests(objects: list[dict[str, Any]], namespace: str, *, require_digest: bool) -> None:
    """Kinds we know, the environment's namespace, the image by digest, the restricted Pod Security fields."""
    for obj in objects:
        kind, name = obj.get("kind"), obj.get("metadata", {}).get("name")
        if kind not in KINDS:
            raise ConfigError(
                f"manifest {kind}/{name}: conveyor does not deploy {kind} (known: {', '.join(sorted(KINDS))})"
            )
        ns = obj.get("metadata", {}).get("namespace")
        if ns != namespace:
            raise ConfigError(
                f"manifest {kind}/{name}: namespace {ns!r} differs from k8s.namespace {namespace!r}"
            )
        if kind == "Deployment":
            _check_pod(obj["spec"]["template"]["spec"], f"{kind}/{name}", require_digest=require_digest)


def _check_pod(pod: Mapping[str, Any], where: str, *, require_digest: bool) -> None:
    ctx = pod.get("securityContext", {})
    if not ctx.get("runAsNonRoot") or ctx.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        raise ConfigError(
            f"{where}: pod securityContext needs runAsNonRoot and seccompProfile RuntimeDefault"
        )
    for container in pod.get("containers", []):
        c = container.get("securityContext", {})
        if c.get("allowPrivilegeEscalation") is not False or "ALL" not in c.get("capabilities", {}).get(
            "drop", []
        ):
            raise ConfigError(
                f"{where}: container {container['name']} must drop ALL capabilities, no escalation"
            )
        if not c.get("readOnlyRootFilesystem"):
            raise ConfigError(f"{where}: container {container['name']} needs readOnlyRootFilesystem")
        if not container.get("resources", {}).get("limits"):
            raise ConfigError(f"{where}: container {container['name']} needs resource limits")
        if require_digest and "@sha256:" not in container.get("image", ""):
            raise ConfigError(
                f"{where}: container {container['name']} image {container.get('image')} is not a digest"
            )


def schema_validate(runner: Runner, manifests: str, version: str = "1.32.0") -> None:
    """kubernetes-validate --strict: unknown fields are errors (offline, bundled schemas)."""
    result = runner.run(
        ["kubernetes-validate", "--strict", "--kubernetes-version", version, "-"],
        capture=True, input=manifests, mutates=False, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        lines = [
            line
            for line in (result.stdout + result.stderr).splitlines()
            if "ERROR" in line or "error" in line
        ]
        raise ConfigError(f"manifest schema: {(lines or ['kubernetes-validate failed'])[0].strip()}")


def migration_job(deployment: Mapping[str, Any], release: Release) -> dict[str, Any]:
    """A Job running the migrate command with the Deployment's own pod spec (image, env, security)."""
    pod = json.loads(json.dumps(deployment["spec"]["template"]["spec"]))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        pod["containers"][0].pop(probe, None)
    pod["containers"][0]["command"] = MIGRATE
    pod["containers"][0].pop("ports", None)
    pod["restartPolicy"] = "Never"
    name = f"{deployment['metadata']['name']}-migrate-{release.git_sha[:8]}-{uuid.uuid4().hex[:4]}"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": deployment["metadata"]["namespace"],
            "labels": {"app.kubernetes.io/component": "migrate"},
            "annotations": {ANN_SHA: release.git_sha},
        },
        "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": 3600, "template": {"spec": pod}},
    }


class K8sDeployTarget:
    kind = "k8s"

    def __init__(
        self,
        runner: Runner,
        kube: KubeApi,
        cfg: Config,
        *,
        deployer: str,
        resolver: SecretResolver,
        validate: Callable[[Runner, str], None] = schema_validate,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runner = runner
        self.kube = kube
        self.cfg = cfg
        self.namespace = cfg.env.k8s.namespace
        self.deployer = deployer
        self.resolver = resolver
        self.validate = validate
        self.sleep = sleep
        self.clock = clock
        self.lock: Lock = LeaseLock(kube, self.namespace, cfg.env.name)
        base = self.render(Release(f"{IMAGE_NAME}:current", "0" * 40), require_digest=False)
        self.deployment = next(o for o in base if o["kind"] == "Deployment")
        self.name = str(self.deployment["metadata"]["name"])
        labels = self.deployment["spec"]["selector"]["matchLabels"]
        self.selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))

    def render(self, release: Release, *, require_digest: bool) -> list[dict[str, Any]]:
        folder = write_kustomization(self.cfg, release, self.deployer)
        stream = self.kube.kustomize(folder)
        objects = [o for o in yaml.safe_load_all(stream) if o]
        check_manifests(objects, self.namespace, require_digest=require_digest)
        return objects

    def current(self) -> Revision | None:
        dep = self.kube.get("deployment", self.name)
        if dep is None:
            return None
        # The pod template is what `rollout undo` restores, so the sha is read there, not from metadata.
        template = dep["spec"]["template"]
        sha = template.get("metadata", {}).get("annotations", {}).get(ANN_SHA, "unknown")
        image = template["spec"]["containers"][0]["image"]
        return Revision(str(dep["metadata"].get("annotations", {}).get(REVISION, "0")), image, str(sha))

    def plan(self, release: Release) -> Plan:
        """Render and validate offline; with a cluster also the live revision and `kubectl diff`."""
        objects = self.render(release, require_digest="@" in release.image)
        stream = yaml.safe_dump_all(objects, sort_keys=False)
        self.validate(self.runner, stream)
        steps: tuple[str, ...] = (
            f"migration Job from {release.image}",
            f"kubectl apply --server-side ({len(objects)} objects)",
        )
        try:
            context = self.kube.current_context()
        except ConfigError as exc:
            steps = (f"NOT CONNECTED ({exc}): rendered and validated offline only", *steps)
            change = Change("image", "unknown (no cluster)", release.image)
            return Plan(self.cfg.env.name, self.kind, release, None, (change,), steps, objects, stream)
        current = self.current()
        changes = [Change("image", current.image if current else "", release.image)]
        diff = self.kube.diff(stream)
        changed = {
            line.split()[-2].rsplit("/", 1)[-1] for line in diff.splitlines() if line.startswith("diff -u -N")
        }
        changes += [Change("object", "(live)", name) for name in sorted(changed)]
        steps = (f"context {context}, namespace {self.namespace}", *steps)
        return Plan(self.cfg.env.name, self.kind, release, current, tuple(changes), steps, objects, stream)

    def _secret(self) -> str:
        data = {name: self.resolver.resolve(ref) for name, ref in sorted(self.cfg.env.secrets.items())}
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }
        return json.dumps(secret)

    def release_steps(self, plan: Plan) -> None:
        self.kube.apply(self._secret())  # values travel on stdin only
        deployment = next(o for o in plan.detail if o["kind"] == "Deployment")
        job = migration_job(deployment, plan.release)
        name = job["metadata"]["name"]
        self.kube.apply(json.dumps(job))
        deadline = self.clock() + self.cfg.env.deploy.timeout
        while True:
            status = (self.kube.get("job", name) or {}).get("status", {})
            if status.get("succeeded"):
                return
            if status.get("failed"):
                reason = next(
                    (c.get("message", "") for c in status.get("conditions", []) if c.get("type") == "Failed"),
                    "",
                )
                raise RolloutFailed(f"migration Job {name} failed{': ' + reason if reason else ''}")
            if self.clock() > deadline:
                raise RolloutFailed(
                    f"migration Job {name} did not finish within {self.cfg.env.deploy.timeout}s"
                )
            self.sleep(2)

    def apply(self, plan: Plan) -> None:
        self.kube.apply(yaml.safe_dump_all(plan.detail, sort_keys=False))

    def wait(self, plan: Plan, expected: Release, deadline: float) -> None:
        """`rollout status`, then: the current revision's ReplicaSet runs OUR image, all replicas ready."""
        remaining = max(1, int(deadline - self.clock()))
        self.kube.rollout_status(self.name, remaining)
        dep = self.kube.get("deployment", self.name) or {}
        revision = dep.get("metadata", {}).get("annotations", {}).get(REVISION)
        wanted = int(dep.get("spec", {}).get("replicas", 0))
        for rs in self.kube.replicasets(self.selector):
            if rs["metadata"].get("annotations", {}).get(REVISION) != revision:
                continue
            image = rs["spec"]["template"]["spec"]["containers"][0]["image"]
            ready = int(rs.get("status", {}).get("readyReplicas", 0))
            template_hash = rs["metadata"].get("labels", {}).get("pod-template-hash", "?")
            if image != expected.image:
                raise RolloutFailed(
                    f"revision {revision} (ReplicaSet {template_hash}) runs {image}, not {expected.image}"
                )
            if ready != wanted:
                raise RolloutFailed(f"ReplicaSet {template_hash} has {ready}/{wanted} ready replicas")
            return
        raise RolloutFailed(f"no ReplicaSet for revision {revision} of deployment/{self.name}")

    def rollback(self, plan: Plan, to: Revision) -> None:
        self.kube.rollout_undo(self.name, int(to.ref))

    def stop(self, plan: Plan) -> None:
        self.kube.scale(self.name, 0)

    def finish(self, plan: Plan) -> None:
        """Nothing to clean: the Deployment keeps revisionHistoryLimit ReplicaSets for rollbacks."""

    def version_url(self) -> str:
        return f"{self.cfg.env.url.rstrip('/')}/version"

    def live_history(self) -> list[str]:
        """`kubectl rollout history` (CHANGE-CAUSE carries sha and deployer) and what serves now."""
        current = self.current()
        lines = self.kube.rollout_history(self.name).rstrip().splitlines()
        if current is not None:
            lines.append(f"serving: revision {current.ref}, sha {current.git_sha[:12]}, {current.image}")
        return lines
