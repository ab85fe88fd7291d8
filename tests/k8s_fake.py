"""A fake of conveyor's KubeApi (OUR kubectl adapter), at least as strict as the API server and kubectl
for what the target uses.

- Revisions are per Deployment: a change of the pod template makes a new revision with its own
  ReplicaSet (named <deployment>-<pod-template-hash>, labelled with the template's labels and the hash,
  owned by the Deployment); an unchanged template keeps the revision. `rollout undo --to-revision`
  re-activates the old template under a NEW revision number; undoing to the current template is a no-op.
- Outcomes are scripted per Deployment, one per new revision: ``kube.rollouts["web"].append(...)`` with
  succeed | timeout (no new replica gets ready, `rollout status` times out, the old ReplicaSet keeps
  serving) | partial (`rollout status` passed but one replica is not ready) | slow (one replica becomes
  ready only on the next read) | foreign-image (an admission webhook replaced the images). Default: succeed.
- Jobs: ``kube.jobs.append(...)`` with succeed | fail | hang (never finishes), one per Job.
- Errors read as kubectl's: an unknown Deployment is `deployments.apps "x" not found`; `apply` refuses
  an object without metadata.name, one in another namespace, a Deployment whose selector does not match
  its template or changes (immutable), a Job whose template changes (immutable) or whose restartPolicy
  is not Never/OnFailure; `create` of an existing object is AlreadyExists.
Rendering is NOT faked: `kustomize` runs the real `kubectl kustomize`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
from collections import defaultdict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from conveyor.deploy.model import RolloutFailed
from conveyor.errors import ConfigError, ConveyorError

REVISION = "deployment.kubernetes.io/revision"
GIT_SHA = "conveyor.dev/git-sha"
FOREIGN = "registry.example.com/mirror/rewritten@sha256:" + "e" * 64


class FakeKube:
    def __init__(self, namespace: str, *, context: str | None = "fake-cluster") -> None:
        self.namespace = namespace
        self.context = context
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.sets: list[dict[str, Any]] = []  # ReplicaSets, as `kubectl get rs -o json` items
        self.rollouts: defaultdict[str, deque[str]] = defaultdict(deque)
        self.jobs: deque[str] = deque()
        self.calls: list[str] = []
        self.stdin: list[str] = []  # everything sent on stdin (secrets travel there)
        self._outcome: dict[str, str] = {}  # ReplicaSet name -> its scripted outcome
        self._cause: dict[str, str] = {}  # ReplicaSet name -> change-cause of its revision

    # -- reading -----------------------------------------------------------------------------------

    def current_context(self) -> str:
        if self.context is None:
            raise ConfigError("no kube context: set KUBECONFIG (or k8s.context) to reach a cluster")
        return self.context

    def kustomize(self, path: Path) -> str:
        out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise ConfigError(f"kustomize {path}: {out.stderr.strip().splitlines()[-1]}")
        return out.stdout

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        self.calls.append(f"get {kind}/{name}")
        obj = self.objects.get((kind.lower(), name))
        return copy.deepcopy(obj) if obj else None

    def diff(self, manifests: str) -> str:
        """The header lines of `kubectl diff` (the target only reads which objects differ)."""
        self.calls.append("diff")
        lines = []
        for obj in self._parse(manifests):
            live = self.objects.get((obj["kind"].lower(), obj["metadata"]["name"]))
            if live is None or live.get("spec") != obj.get("spec") or live.get("data") != obj.get("data"):
                ident = ".".join(
                    [
                        obj["apiVersion"].replace("/", "."),
                        obj["kind"],
                        self.namespace,
                        obj["metadata"]["name"],
                    ]
                )
                lines.append(f"diff -u -N /tmp/LIVE-1/{ident} /tmp/MERGED-1/{ident}")
        return "\n".join(lines)

    def rollout_history(self, name: str) -> str:
        """As kubectl prints it: REVISION and CHANGE-CAUSE columns, oldest first."""
        self._deployment(name)
        rows = [f"deployment.apps/{name} ", "REVISION  CHANGE-CAUSE"]
        for rs in sorted(self._owned(name), key=self._revision_of):
            rows.append(f"{self._revision_of(rs):<9} {self._cause.get(rs['metadata']['name'], '<none>')}")
        return "\n".join(rows) + "\n"

    def replicasets(self, selector: str) -> list[dict[str, Any]]:
        """`kubectl get rs -l k=v,k2=v2`: only the ReplicaSets whose labels match every pair."""
        self.calls.append(f"get replicasets -l {selector}")
        pairs = [part.split("=", 1) for part in selector.split(",") if part]
        if any(len(pair) != 2 for pair in pairs):
            raise ConveyorError(f"kubectl get: error: unable to parse requirement: {selector!r}")
        matching = [rs for rs in self.sets if all(rs["metadata"]["labels"].get(k) == v for k, v in pairs)]
        answer = copy.deepcopy(matching)
        for rs in matching:  # a slow ReplicaSet gets its last replica ready after this read
            if self._outcome.get(rs["metadata"]["name"]) == "slow":
                rs["status"]["readyReplicas"] = rs["spec"]["replicas"]
        return answer

    # -- acting ------------------------------------------------------------------------------------

    @staticmethod
    def _parse(manifests: str) -> list[dict[str, Any]]:
        return [o for o in yaml.safe_load_all(manifests) if o]

    def apply(self, manifests: str) -> None:
        """Like `kubectl apply -f -`: each object on its own; the errors are reported at the end."""
        self.stdin.append(manifests)
        errors = []
        for obj in self._parse(manifests):
            try:
                self._apply_one(obj)
            except ConveyorError as exc:
                errors.append(str(exc))
        if errors:
            raise ConveyorError(f"kubectl apply: {errors[0]}")

    def _apply_one(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name, kind = meta.get("name"), obj.get("kind", "")
        if not name:
            raise ConveyorError("error: resource name may not be empty")
        ns = meta.get("namespace", self.namespace)
        if ns != self.namespace:
            raise ConveyorError(
                f'error: the namespace from the provided object "{ns}" does not match the namespace '
                f"\"{self.namespace}\". You must pass '--namespace={ns}' to perform this operation."
            )
        live = self.objects.get((kind.lower(), name))
        if kind == "Deployment":
            selector = obj["spec"]["selector"]["matchLabels"]
            labels = obj["spec"]["template"].get("metadata", {}).get("labels") or {}
            if any(labels.get(k) != v for k, v in selector.items()):
                raise ConveyorError(
                    f'The Deployment "{name}" is invalid: spec.template.metadata.labels: Invalid value: '
                    f"{json.dumps(labels)}: `selector` does not match template `labels`"
                )
            if live is not None and live["spec"]["selector"] != obj["spec"]["selector"]:
                raise ConveyorError(
                    f'The Deployment "{name}" is invalid: spec.selector: Invalid value: '
                    f"{json.dumps(obj['spec']['selector'])}: field is immutable"
                )
        if kind == "Job":
            if obj["spec"]["template"]["spec"].get("restartPolicy") not in ("Never", "OnFailure"):
                raise ConveyorError(
                    f'The Job "{name}" is invalid: spec.template.spec.restartPolicy: Required value: '
                    'valid values: "OnFailure", "Never"'
                )
            if live is not None and live["spec"]["template"] != obj["spec"]["template"]:
                raise ConveyorError(f'The Job "{name}" is invalid: spec.template: field is immutable')
        self.calls.append(f"apply {kind.lower()}/{name}")
        obj = copy.deepcopy(obj)
        obj["metadata"]["namespace"] = self.namespace
        if kind == "Deployment":
            self._apply_deployment(obj, live)
        elif kind == "Job" and live is None:
            outcome = self.jobs.popleft() if self.jobs else "succeed"
            if outcome == "succeed":
                obj["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
            elif outcome == "fail":
                message = "Job has reached the specified backoff limit"
                obj["status"] = {
                    "failed": 1,
                    "conditions": [{"type": "Failed", "status": "True", "message": message}],
                }
            self.objects[("job", name)] = obj
        elif kind != "Job":
            self.objects[(kind.lower(), name)] = obj

    def _apply_deployment(self, obj: dict[str, Any], live: dict[str, Any] | None) -> None:
        name = obj["metadata"]["name"]
        annotations = obj["metadata"].setdefault("annotations", {})
        obj["metadata"]["uid"] = live["metadata"]["uid"] if live else hashlib.sha1(name.encode()).hexdigest()
        if live is not None and live["spec"]["template"] == obj["spec"]["template"]:
            annotations[REVISION] = live["metadata"]["annotations"][REVISION]
            self.objects[("deployment", name)] = obj
            self._scale_current(name, int(obj["spec"].get("replicas", 1)))
            return
        self.objects[("deployment", name)] = obj
        self._roll(name)

    def _roll(self, name: str) -> None:
        """A new revision of Deployment ``name`` from its current template, with its scripted outcome."""
        dep = self.objects[("deployment", name)]
        outcome = self.rollouts[name].popleft() if self.rollouts[name] else "succeed"
        if outcome == "foreign-image":
            for container in dep["spec"]["template"]["spec"]["containers"]:
                container["image"] = FOREIGN
        template = dep["spec"]["template"]
        owned = self._owned(name)
        revision = 1 + max((self._revision_of(rs) for rs in owned), default=0)
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        rs_name = f"{name}-{digest}"
        rs = next((r for r in owned if r["metadata"]["name"] == rs_name), None)
        if rs is None:
            rs = {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": rs_name,
                    "namespace": self.namespace,
                    "labels": {
                        **(template.get("metadata", {}).get("labels") or {}),
                        "pod-template-hash": digest,
                    },
                    "annotations": {},
                    "ownerReferences": [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "Deployment",
                            "name": name,
                            "uid": dep["metadata"]["uid"],
                        }
                    ],
                },
                "spec": {"replicas": 0, "template": copy.deepcopy(template)},
                "status": {"readyReplicas": 0},
            }
            self.sets.append(rs)
        rs["metadata"]["annotations"][REVISION] = str(revision)
        dep["metadata"]["annotations"][REVISION] = str(revision)
        self._outcome[rs_name] = outcome
        self._cause[rs_name] = dep["metadata"]["annotations"].get("kubernetes.io/change-cause", "<none>")
        self._scale_current(name, int(dep["spec"].get("replicas", 1)))

    def _scale_current(self, name: str, replicas: int) -> None:
        """The current revision's ReplicaSet gets ``replicas`` (ready as its outcome allows)."""
        dep = self.objects[("deployment", name)]
        current = dep["metadata"]["annotations"][REVISION]
        for rs in self._owned(name):
            outcome = self._outcome.get(rs["metadata"]["name"], "succeed")
            if str(self._revision_of(rs)) == current:
                rs["spec"]["replicas"] = replicas
                ready = {"timeout": 0, "partial": replicas - 1, "slow": replicas - 1}.get(outcome, replicas)
                rs["status"]["readyReplicas"] = max(0, ready)
            elif self._outcome.get(self._current_rs(name)["metadata"]["name"]) != "timeout":
                rs["spec"]["replicas"] = 0  # the old ones scale down once the new one is available
                rs["status"]["readyReplicas"] = 0

    def create(self, manifest: str) -> bool:
        obj = json.loads(manifest)
        key = (obj["kind"].lower(), obj["metadata"]["name"])
        self.calls.append(f"create {key[0]}/{key[1]}")
        if key in self.objects:
            return False  # kubectl: Error from server (AlreadyExists)
        self.objects[key] = obj
        return True

    def delete(self, kind: str, name: str) -> None:
        self.calls.append(f"delete {kind}/{name}")
        self.objects.pop((kind.lower(), name), None)

    def scale(self, name: str, replicas: int) -> None:
        self.calls.append(f"scale {name} {replicas}")
        self._deployment(name)["spec"]["replicas"] = replicas
        self._scale_current(name, replicas)

    def rollout_status(self, name: str, timeout: int) -> None:
        self.calls.append(f"rollout status {name}")
        try:
            self._deployment(name)
        except ConveyorError as exc:
            raise RolloutFailed(str(exc)) from None
        if self._outcome.get(self._current_rs(name)["metadata"]["name"]) == "timeout":
            raise RolloutFailed("kubectl rollout: error: timed out waiting for the condition")

    def rollout_undo(self, name: str, revision: int) -> None:
        self.calls.append(f"rollout undo {name} --to-revision={revision}")
        dep = self._deployment(name)
        rs = next((r for r in self._owned(name) if self._revision_of(r) == revision), None)
        if rs is None:
            raise ConveyorError(
                f"kubectl rollout: error: unable to find specified revision {revision} in history"
            )
        if rs["spec"]["template"] == dep["spec"]["template"]:
            return  # kubectl: skipped rollback (current template already matches revision N)
        dep["spec"]["template"] = copy.deepcopy(rs["spec"]["template"])  # only the template goes back
        self._roll(name)

    # -- helpers and what tests read ---------------------------------------------------------------------

    def _deployment(self, name: str) -> dict[str, Any]:
        dep = self.objects.get(("deployment", name))
        if dep is None:
            raise ConveyorError(
                f'kubectl rollout: Error from server (NotFound): deployments.apps "{name}" not found'
            )
        return dep

    def _owned(self, name: str) -> list[dict[str, Any]]:
        return [
            rs
            for rs in self.sets
            if any(
                ref["kind"] == "Deployment" and ref["name"] == name
                for ref in rs["metadata"]["ownerReferences"]
            )
        ]

    @staticmethod
    def _revision_of(rs: dict[str, Any]) -> int:
        return int(rs["metadata"]["annotations"][REVISION])

    def _current_rs(self, name: str) -> dict[str, Any]:
        current = int(self._deployment(name)["metadata"]["annotations"][REVISION])
        return next(rs for rs in self._owned(name) if self._revision_of(rs) == current)

    def revision(self, name: str) -> int:
        return int(self._deployment(name)["metadata"]["annotations"][REVISION])

    def container(self, name: str, container: str) -> dict[str, Any]:
        """Deployment ``name``'s container as the live pod template has it."""
        pod = self._deployment(name)["spec"]["template"]["spec"]
        return copy.deepcopy(next(c for c in pod["containers"] if c["name"] == container))

    def ready(self, name: str) -> tuple[int, int]:
        """(ready replicas of the current revision's ReplicaSet, the Deployment's spec.replicas)."""
        rs = self._current_rs(name)
        return int(rs["status"]["readyReplicas"]), int(self._deployment(name)["spec"].get("replicas", 1))

    def probe_for(self, name: str) -> Callable[[str], dict[str, object]]:
        """What the Service in front of Deployment ``name`` answers on /version: the git sha of the pods
        of its newest ReplicaSet with ready replicas."""

        def probe(url: str) -> dict[str, object]:
            ready = [rs for rs in self._owned(name) if rs["status"].get("readyReplicas")]
            if not ready:
                return {"git_sha": None}
            newest = max(ready, key=self._revision_of)
            return {"git_sha": newest["spec"]["template"]["metadata"]["annotations"].get(GIT_SHA)}

        return probe
