"""A fake of conveyor's KubeApi (OUR kubectl adapter), answering as kubectl documents.

Kept deliberately small: a Deployment's rollout creates a numbered revision with its own ReplicaSet
(`deployment.kubernetes.io/revision` annotation, `pod-template-hash` label); `rollout undo --to-revision`
re-activates an old template under a NEW revision number; `rollout status --timeout` ends with
"error: timed out waiting for the condition" when a rollout does not finish; `kubectl create` of an
existing object fails with AlreadyExists; a Job ends with status.succeeded or status.failed + a Failed
condition. Rendering is NOT faked: `kustomize` runs the real `kubectl kustomize`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections import deque
from pathlib import Path
from typing import Any

import yaml

from conveyor.deploy.model import RolloutFailed
from conveyor.errors import ConfigError, ConveyorError

REVISION = "deployment.kubernetes.io/revision"


class FakeKube:
    def __init__(self, namespace: str, *, context: str | None = "fake-cluster") -> None:
        self.namespace = namespace
        self.context = context
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.sets: list[dict[str, Any]] = []
        self.revision = 0
        self.rollouts: deque[str] = deque()  # per new revision: succeed | timeout
        self.jobs: deque[str] = deque()  # per Job: succeed | fail
        self.calls: list[str] = []
        self.stdin: list[str] = []  # everything sent on stdin (secrets travel there)

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
        return json.loads(json.dumps(obj)) if obj else None

    def diff(self, manifests: str) -> str:
        self.calls.append("diff")
        lines = []
        for obj in self._parse(manifests):
            live = self.objects.get((obj["kind"].lower(), obj["metadata"]["name"]))
            if live is None or live.get("spec") != obj.get("spec"):
                lines.append(
                    f"diff -u -N /tmp/LIVE-1/{obj['kind']}.{obj['metadata']['name']} /tmp/MERGED-1/x"
                )
        return "\n".join(lines)

    def rollout_history(self, name: str) -> str:
        """As kubectl prints it: REVISION and CHANGE-CAUSE columns, oldest first."""
        rows = ["deployment.apps/" + name, "REVISION  CHANGE-CAUSE"]
        for rs in sorted(self.sets, key=lambda r: int(r["metadata"]["annotations"][REVISION])):
            cause = rs.get("change_cause", "<none>")
            rows.append(f"{rs['metadata']['annotations'][REVISION]:<9} {cause}")
        return "\n".join(rows) + "\n"

    def replicasets(self, selector: str) -> list[dict[str, Any]]:
        self.calls.append(f"get replicasets -l {selector}")
        return json.loads(json.dumps(self.sets))

    # -- acting ------------------------------------------------------------------------------------

    @staticmethod
    def _parse(manifests: str) -> list[dict[str, Any]]:
        return [o for o in yaml.safe_load_all(manifests) if o]

    def apply(self, manifests: str) -> None:
        self.stdin.append(manifests)
        for obj in self._parse(manifests):
            kind, name = obj["kind"].lower(), obj["metadata"]["name"]
            self.calls.append(f"apply {kind}/{name}")
            if kind == "deployment":
                self._apply_deployment(obj)
            elif kind == "job":
                outcome = self.jobs.popleft() if self.jobs else "succeed"
                obj["status"] = (
                    {"succeeded": 1}
                    if outcome == "succeed"
                    else {
                        "failed": 1,
                        "conditions": [
                            {"type": "Failed", "message": "Job has reached the specified backoff limit"}
                        ],
                    }
                )
                self.objects[(kind, name)] = obj
            else:
                self.objects[(kind, name)] = obj

    def _apply_deployment(self, obj: dict[str, Any]) -> None:
        live = self.objects.get(("deployment", obj["metadata"]["name"]))
        if live is not None and live["spec"]["template"] == obj["spec"]["template"]:
            obj["metadata"].setdefault("annotations", {})[REVISION] = live["metadata"]["annotations"][
                REVISION
            ]
            self.objects[("deployment", obj["metadata"]["name"])] = obj
            return
        self._activate(obj, self.rollouts.popleft() if self.rollouts else "succeed")

    def _activate(self, obj: dict[str, Any], outcome: str) -> None:
        self.revision += 1
        obj["metadata"].setdefault("annotations", {})[REVISION] = str(self.revision)
        self.objects[("deployment", obj["metadata"]["name"])] = obj
        template = obj["spec"]["template"]
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        replicas = int(obj["spec"].get("replicas", 1))
        for rs in self.sets:  # the previous ReplicaSets scale down (or never got ready)
            rs["status"]["readyReplicas"] = 0
        existing = next(
            (rs for rs in self.sets if rs["metadata"]["labels"]["pod-template-hash"] == digest), None
        )
        rs = existing or {
            "metadata": {"labels": {"pod-template-hash": digest}, "annotations": {}},
            "spec": {"template": template},
            "status": {},
        }
        rs["metadata"]["annotations"][REVISION] = str(self.revision)
        rs["change_cause"] = obj["metadata"]["annotations"].get("kubernetes.io/change-cause", "<none>")
        rs["status"]["readyReplicas"] = replicas if outcome == "succeed" else 0
        rs["outcome"] = outcome
        if existing is None:
            self.sets.append(rs)

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
        self.objects[("deployment", name)]["spec"]["replicas"] = replicas

    def rollout_status(self, name: str, timeout: int) -> None:
        self.calls.append(f"rollout status {name}")
        current = str(self.revision)
        rs = next(r for r in self.sets if r["metadata"]["annotations"][REVISION] == current)
        if rs["outcome"] != "succeed":
            raise RolloutFailed("kubectl rollout: error: timed out waiting for the condition")

    def rollout_undo(self, name: str, revision: int) -> None:
        self.calls.append(f"rollout undo {name} --to-revision={revision}")
        rs = next((r for r in self.sets if r["metadata"]["annotations"][REVISION] == str(revision)), None)
        if rs is None:
            raise ConveyorError(
                f"kubectl rollout: error: unable to find specified revision {revision} in history"
            )
        live = self.objects[("deployment", name)]
        live["spec"]["template"] = rs["spec"]["template"]  # only the pod template goes back, as in kubectl
        self._activate(live, "succeed")

    def probe(self, url: str) -> dict[str, object]:
        """What the Service answers on /version: the git sha of the pods of the ready ReplicaSet."""
        ready = [rs for rs in self.sets if rs["status"].get("readyReplicas")]
        if not ready:
            return {"git_sha": None}
        return {"git_sha": ready[-1]["spec"]["template"]["metadata"]["annotations"]["conveyor.dev/git-sha"]}
