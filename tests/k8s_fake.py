"""A fake of conveyor's KubeApi (OUR kubectl adapter), at least as strict as the API server and kubectl
for what the target uses. No API server can run on the project's machines; every behaviour below follows
the Kubernetes documentation page named with it.

Objects and the API server
- Every object applied or created is validated against the OpenAPI schema of Kubernetes 1.32 with
  kubernetes-validate, strictly (an unknown field is an error, as `kubectl apply --validate=strict`, the
  default since 1.27): https://kubernetes.io/docs/reference/using-api/api-concepts/#field-validation .
  An unknown kind is refused: https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-types
- The namespace must exist, and an object's own namespace must be the one kubectl targets:
  https://kubernetes.io/docs/concepts/overview/working-with-objects/namespaces/
- A name is required: https://kubernetes.io/docs/concepts/overview/working-with-objects/names/
- Immutable fields are refused: a Deployment's selector
  (https://kubernetes.io/docs/concepts/workloads/controllers/deployment/#label-selector-updates), a Job's
  pod template (https://kubernetes.io/docs/concepts/workloads/controllers/job/#mutable-scheduling-directives),
  the data of a ConfigMap or Secret with ``immutable: true``
  (https://kubernetes.io/docs/concepts/configuration/configmap/#configmap-immutable,
  https://kubernetes.io/docs/concepts/configuration/secret/#secret-immutable).
- A Deployment's selector must match its template's labels:
  https://kubernetes.io/docs/concepts/workloads/controllers/deployment/#selector
- Server-side apply: fields the applied object leaves out are left alone (the HPA's ``replicas`` stays):
  https://kubernetes.io/docs/reference/using-api/server-side-apply/#transferring-ownership ;
  a new Deployment without ``replicas`` gets 1 (the API default).
- `create` of an existing object is AlreadyExists:
  https://kubernetes.io/docs/reference/kubectl/generated/kubectl_create/
- Label selectors (``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, comma = AND):
  https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors
- `diff` reports every object whose merged (applied over live) form differs from the live one, any field:
  https://kubernetes.io/docs/reference/kubectl/generated/kubectl_diff/

Deployments, ReplicaSets, rollouts (https://kubernetes.io/docs/concepts/workloads/controllers/deployment/)
- A change of the pod template makes a new revision with its own ReplicaSet (named
  <deployment>-<pod-template-hash>, the hash label on it and its template, owned by the Deployment); an
  unchanged template keeps the revision. `rollout undo --to-revision` re-activates the old template under a
  NEW revision number; undoing to the current template is a no-op ("Rolling Back a Deployment").
- Pods become ready pod by pod (one more per read of the ReplicaSets), as outcomes allow. Outcomes are
  scripted per Deployment, one per new revision: ``kube.rollouts["web"].append(...)`` with
  succeed | slow (the last replica becomes ready on the next read) | partial (`rollout status` passed, one
  replica stays unready) | timeout (no new replica gets ready: the rollout stalls) | foreign-image (an
  admission webhook replaced the images). Default: succeed. A pod template that reads a ConfigMap or
  Secret that does not exist stalls too (CreateContainerConfigError:
  https://kubernetes.io/docs/tasks/debug/debug-application/debug-pods/).
- A stalled rollout gets the condition Progressing=False, reason ProgressDeadlineExceeded, once
  ``progressDeadlineSeconds`` passed ("Failed Deployment"); `rollout status --timeout` waits at most its
  timeout, and exits at once with "exceeded its progress deadline" when the deadline comes first:
  https://kubernetes.io/docs/reference/kubectl/generated/kubectl_rollout/kubectl_rollout_status/
- The old ReplicaSets scale down once the new one is available; a stalled one leaves the old serving.
- An HPA that targets a Deployment owns its replica count, clamped to [minReplicas, maxReplicas];
  ``kube.autoscale["web"].append(3)`` makes the HPA change the desired count on the next read of the
  ReplicaSets, mid-rollout: https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/
  (and "Migrating Deployments and StatefulSets to horizontal autoscaling" there).

Jobs (https://kubernetes.io/docs/concepts/workloads/controllers/job/)
- ``kube.jobs.append(...)``, one per Job: succeed | fail (backoffLimit reached, condition Failed) | hang
  (never finishes) | deadline (runs until ``activeDeadlineSeconds``, then Failed with reason
  DeadlineExceeded: "Job termination and cleanup"). A Job whose pod reads a missing ConfigMap/Secret never
  starts: it hangs until its deadline. restartPolicy must be Never or OnFailure.
- `kubectl logs job/NAME --tail N`: the last N lines of its pod; a pod that never started answers as
  kubectl does (waiting to start): https://kubernetes.io/docs/reference/kubectl/generated/kubectl_logs/

Errors read as kubectl's. Rendering is NOT faked: `kustomize` runs the real `kubectl kustomize`; a render of
exactly the same files as an earlier one (same relative path, same names and bytes of every file of the
test's project) with the same kubectl reuses that render's output, since kustomize's output is a function
of those files alone; renders and schema verdicts are kept on disk for every session (tests/tool_cache.py).
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import importlib.metadata
import json
import subprocess
import tempfile
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import kubernetes_validate

from conveyor.deploy.k8s.render import parse, schema_validate
from conveyor.deploy.model import RolloutFailed
from conveyor.errors import ConfigError, ConveyorError
from conveyor.runner import Runner
from tests.tool_cache import memo

K8S_VERSION = "1.32.0"
REVISION = "deployment.kubernetes.io/revision"
GIT_SHA = "conveyor.dev/git-sha"
HASH = "pod-template-hash"
FOREIGN = "registry.example.com/mirror/rewritten@sha256:" + "e" * 64
KINDS = {  # kubectl's resource names (singular, lower case) -> kind
    "deployment": "Deployment", "replicaset": "ReplicaSet", "job": "Job", "configmap": "ConfigMap",
    "secret": "Secret", "service": "Service", "ingress": "Ingress", "lease": "Lease",
    "horizontalpodautoscaler": "HorizontalPodAutoscaler", "poddisruptionbudget": "PodDisruptionBudget",
    "networkpolicy": "NetworkPolicy", "serviceaccount": "ServiceAccount",
}  # fmt: skip
PLURAL = {"replicasets": "replicaset", "configmaps": "configmap", "secrets": "secret", "jobs": "job",
          "deployments": "deployment", "leases": "lease", "hpa": "horizontalpodautoscaler"}  # fmt: skip
HPA_MANAGER = "kube-controller-manager"
FAILED_LOG = 'applying migration 0002_notes_index\nERROR: relation "notes_idx" already exists'


def _render_key(path: Path) -> bytes | None:
    """A digest of ``path`` relative to its test project and every file of that project (the nearest
    folder holding invoke.yaml, inside the temp dir where tests make projects) but conveyor's own state in
    .conveyor/ (the deploy history and locks: timestamps, never named by a kustomization); None: not
    cacheable."""
    path = path.resolve()
    tmp = Path(tempfile.gettempdir()).resolve()
    root = next((d for d in (path, *path.parents) if (d / "invoke.yaml").is_file()), None)
    if root is None or root == tmp or not root.is_relative_to(tmp):
        return None
    digest = hashlib.sha256(str(path.relative_to(root)).encode() + b"\0")
    for file in sorted(f for f in root.rglob("*") if f.is_file()):
        if file.relative_to(root).parts[0] == ".conveyor":
            continue
        digest.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.digest()


def schema_validate_once(runner: Runner, manifests: str) -> None:
    """conveyor's schema_validate (kubernetes-validate --strict), run once per distinct stream and version
    of kubernetes-validate: a repeat gets the recorded verdict, error message included."""

    def verdict() -> str:
        try:
            schema_validate(runner, manifests)
        except ConfigError as exc:
            return str(exc)
        return ""

    identity = "kubernetes-validate " + importlib.metadata.version("kubernetes-validate")
    message = memo("kubernetes-validate", identity, manifests.encode(), verdict)
    if message:
        raise ConfigError(message)


_NO_SCHEMA = "\0no schema"


@functools.cache
def _schema_problem(stored: str) -> str:
    """kubernetes-validate's verdict on one object (as JSON): "" valid, _NO_SCHEMA for an unknown kind, else
    the first line of the error. Cached: the library reads its schema files again on every call."""
    try:
        kubernetes_validate.validate(json.loads(stored), K8S_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return _NO_SCHEMA
    except kubernetes_validate.ValidationError as exc:
        return str(exc).splitlines()[0]
    return ""


@functools.cache
def _kubectl_version() -> str:
    """`kubectl version --client` (kubectl's and its kustomize's versions): what a render depends on."""
    out = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True, check=True)
    return out.stdout


class _Clock:
    """Time that passes only when someone sleeps (the tests pass their own Clock to share it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _resource(kind: str) -> str:
    key = kind.lower()
    key = PLURAL.get(key, key)
    if key not in KINDS:
        raise ConveyorError(f'kubectl get: error: the server doesn\'t have a resource type "{kind}"')
    return key


def _selector(selector: str) -> Callable[[dict[str, str]], bool]:
    """A label selector as kubectl parses it (equality-based requirements, existence, comma = AND)."""
    tests: list[Callable[[dict[str, str]], bool]] = []
    for part in (p.strip() for p in selector.split(",")):
        if not part:
            continue
        if "!=" in part:
            key, value = part.split("!=", 1)
            tests.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif "=" in part:
            key, value = part.replace("==", "=").split("=", 1)
            if not key or "=" in value:
                raise ConveyorError(f"kubectl get: error: unable to parse requirement: {selector!r}")
            tests.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif part.startswith("!"):
            tests.append(lambda labels, k=part[1:]: k not in labels)
        else:
            tests.append(lambda labels, k=part: k in labels)
    return lambda labels: all(test(labels) for test in tests)


def _partial(obj: dict[str, Any]) -> bool:
    """A Deployment apply configuration without a pod template: a few fields, not the whole object."""
    return obj.get("kind") == "Deployment" and "template" not in (obj.get("spec") or {})


def _merge(live: Any, applied: Any) -> Any:
    """Applied over live: maps merge key by key, anything else (lists included) is replaced."""
    if isinstance(live, dict) and isinstance(applied, dict):
        return {**live, **{k: _merge(live.get(k), v) for k, v in applied.items()}}
    return copy.deepcopy(applied)


SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields")


def _comparable(obj: dict[str, Any]) -> dict[str, Any]:
    """What `kubectl diff` compares: everything but status and server-set metadata."""
    obj = copy.deepcopy(obj)
    obj.pop("status", None)
    meta = obj.get("metadata", {})
    for key in SERVER_FIELDS:
        meta.pop(key, None)
    (meta.get("annotations") or {}).pop(REVISION, None)
    return obj


class FakeKube:
    def __init__(
        self,
        namespace: str,
        *,
        context: str | None = "fake-cluster",
        clock: Any = None,
        namespaces: Iterable[str] | None = None,
    ) -> None:
        self.namespace = namespace
        self.context = context
        self.clock = clock or _Clock()
        self.namespaces = set(namespaces) if namespaces is not None else {namespace, "default"}
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.sets: list[dict[str, Any]] = []  # ReplicaSets, as `kubectl get rs -o json` items
        self.rollouts: defaultdict[str, deque[str]] = defaultdict(deque)
        self.autoscale: defaultdict[str, deque[int]] = defaultdict(deque)  # HPA decisions, by Deployment
        self.jobs: deque[str] = deque()
        self.job_log = FAILED_LOG  # what a failing Job's pod printed
        self.calls: list[str] = []
        self.stdin: list[str] = []  # everything sent on stdin (secrets travel there)
        self._outcome: dict[str, str] = {}  # ReplicaSet name -> its scripted outcome
        self._cause: dict[str, str] = {}  # ReplicaSet name -> change-cause of its revision
        self._started: dict[str, float] = {}  # ReplicaSet or Job name -> when it started
        self._job_outcome: dict[str, str] = {}
        self._replica_owners: dict[str, set[str]] = {}  # Deployment -> field managers of spec.replicas

    # -- reading -----------------------------------------------------------------------------------

    def current_context(self) -> str:
        if self.context is None:
            raise ConfigError("no kube context: set KUBECONFIG (or k8s.context) to reach a cluster")
        return self.context

    def kustomize(self, path: Path) -> str:
        def render() -> str:
            argv = ["kubectl", "kustomize", str(path)]
            out = subprocess.run(argv, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise ConfigError(f"kustomize {path}: {out.stderr.strip().splitlines()[-1]}")
            return out.stdout

        key = _render_key(Path(path))
        return render() if key is None else memo("kustomize", _kubectl_version(), key, render)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        self.calls.append(f"get {kind}/{name}")
        key = (_resource(kind), name)
        if key[0] == "job" and key in self.objects:
            self._job_status(name)
        if key[0] == "deployment" and key in self.objects:
            self._progress(name)
        obj = self.objects.get(key)
        return copy.deepcopy(obj) if obj else None

    def list(self, kind: str, selector: str) -> list[dict[str, Any]]:
        """`kubectl get KIND -l SELECTOR -o json` items."""
        resource = _resource(kind)
        if resource == "replicaset":
            return self.replicasets(selector)
        self.calls.append(f"get {resource} -l {selector}")
        match = _selector(selector)
        return [
            copy.deepcopy(o)
            for (k, _), o in sorted(self.objects.items())
            if k == resource and match(o["metadata"].get("labels") or {})
        ]

    def diff(self, manifests: str) -> str:
        """The header lines of `kubectl diff` for every object whose merged form differs, in any field."""
        self.calls.append("diff")
        lines = []
        for obj in self._parse(manifests):
            key = (_resource(obj["kind"]), obj["metadata"]["name"])
            live = self.objects.get(key)
            obj = {**obj, "metadata": {**obj["metadata"], "namespace": self.namespace}}
            if live is None or _comparable(_merge(live, obj)) != _comparable(live):
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
        """`kubectl get rs -l SELECTOR`; the cluster moves on after each read (the HPA decides, one more
        pod gets ready)."""
        self.calls.append(f"get replicasets -l {selector}")
        match = _selector(selector)
        matching = [rs for rs in self.sets if match(rs["metadata"]["labels"])]
        answer = copy.deepcopy(matching)
        for owner in {ref["name"] for rs in matching for ref in rs["metadata"]["ownerReferences"]}:
            if self.autoscale[owner]:
                self._hpa_scale(owner, self.autoscale[owner].popleft())
        for rs in matching:
            self._tick(rs)
        return answer

    def logs(self, job: str, tail: int) -> str:
        """`kubectl logs job/NAME --tail N`."""
        self.calls.append(f"logs job/{job} --tail={tail}")
        obj = self.objects.get(("job", job))
        if obj is None:
            raise ConveyorError(f'kubectl logs: Error from server (NotFound): jobs.batch "{job}" not found')
        missing = self._missing_refs(obj["spec"]["template"]["spec"])
        if missing:
            raise ConveyorError(
                f'kubectl logs: Error from server (BadRequest): container "{self._container(obj)}" in pod '
                f'"{job}-x7k2p" is waiting to start: CreateContainerConfigError'
            )
        text = {"fail": self.job_log, "succeed": "migrations applied"}.get(
            self._job_outcome[job], "migrating"
        )
        return "\n".join(text.splitlines()[-tail:]) + "\n"

    # -- acting ------------------------------------------------------------------------------------

    @staticmethod
    def _parse(manifests: str) -> list[dict[str, Any]]:
        return parse(manifests)

    def apply(self, manifests: str, field_manager: str = "conveyor") -> None:
        """Like `kubectl apply --server-side -f -`: each object on its own; the errors reported at the end."""
        self.stdin.append(manifests)
        errors = []
        for obj in self._parse(manifests):
            try:
                self._apply_one(obj, field_manager)
            except ConveyorError as exc:
                errors.append(str(exc))
        if errors:
            raise ConveyorError(f"kubectl apply: {errors[0]}")

    def _admit(self, obj: dict[str, Any], verb: str) -> tuple[str, str]:
        """What every write goes through: schema (of the object as it would be stored), name, namespace."""
        kind = str(obj.get("kind", ""))
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if not name:
            raise ConveyorError("error: resource name may not be empty")
        live = self.objects.get((_resource(kind), str(name))) if kind.lower() in KINDS else None
        stored = _merge(live, obj) if live is not None and _partial(obj) else obj
        problem = _schema_problem(json.dumps(stored, sort_keys=True))
        if problem == _NO_SCHEMA:
            raise ConveyorError(
                f'error: resource mapping not found for name: "{name}" namespace: "" from "STDIN": '
                f'no matches for kind "{kind}" in version "{obj.get("apiVersion")}"'
            )
        if problem:
            raise ConveyorError(
                f'Error from server (BadRequest): error when {verb} "STDIN": {kind} in version '
                f'"{obj.get("apiVersion")}" cannot be handled as a {kind}: {problem}'
            )
        ns = meta.get("namespace", self.namespace)
        if ns != self.namespace:
            raise ConveyorError(
                f'error: the namespace from the provided object "{ns}" does not match the namespace '
                f"\"{self.namespace}\". You must pass '--namespace={ns}' to perform this operation."
            )
        if self.namespace not in self.namespaces:
            raise ConveyorError(
                f'Error from server (NotFound): error when {verb} "STDIN": '
                f'namespaces "{self.namespace}" not found'
            )
        return _resource(kind), str(name)

    def _apply_one(self, obj: dict[str, Any], manager: str = "conveyor") -> None:
        resource, name = self._admit(obj, "creating")
        kind = obj["kind"]
        live = self.objects.get((resource, name))
        if live is not None and _partial(obj):  # an apply configuration of a few fields: merged in
            self._own_replicas(name, obj, live, manager)
            obj = _merge(live, obj)
        elif kind == "Deployment":
            self._own_replicas(name, obj, live, manager)
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
        if kind in ("ConfigMap", "Secret") and live is not None and live.get("immutable"):
            fields = ("data", "binaryData") if kind == "ConfigMap" else ("data", "type")
            if any(live.get(f) != obj.get(f) for f in fields) or not obj.get("immutable"):
                raise ConveyorError(
                    f'The {kind} "{name}" is invalid: data: Forbidden: '
                    "field is immutable when `immutable` is set"
                )
        self.calls.append(f"apply {resource}/{name}")
        obj = copy.deepcopy(obj)
        obj["metadata"]["namespace"] = self.namespace
        if kind == "Deployment":
            self._apply_deployment(obj, live)
        elif kind == "Job" and live is None:
            self._job_outcome[name] = self.jobs.popleft() if self.jobs else "succeed"
            self._started[name] = self.clock()
            obj["status"] = {"active": 1}
            self.objects[("job", name)] = obj
        elif kind == "HorizontalPodAutoscaler":
            self.objects[(resource, name)] = obj
            target = obj["spec"]["scaleTargetRef"]["name"]
            if ("deployment", target) in self.objects:
                replicas = int(self.objects[("deployment", target)]["spec"].get("replicas", 1))
                self._hpa_scale(target, replicas)
        elif kind != "Job":
            self.objects[(resource, name)] = obj

    def _own_replicas(
        self, name: str, obj: dict[str, Any], live: dict[str, Any] | None, manager: str
    ) -> None:
        """Server-side apply's ownership of spec.replicas (the field the HPA and conveyor could fight over):
        setting it takes (forced) or shares ownership; leaving it out gives it up, and a field nobody owns
        any more is reset to its default, 1 ("Transferring ownership" is the way out of that)."""
        owners = self._replica_owners.setdefault(name, set())
        spec = obj.setdefault("spec", {})
        if "replicas" in spec:
            changed = live is not None and int(live["spec"].get("replicas", 1)) != int(spec["replicas"])
            if changed and owners - {manager} and manager != "conveyor":  # only conveyor forces conflicts
                raise ConveyorError(
                    f"Apply failed with 1 conflict: conflict with {sorted(owners)[0]!r}: .spec.replicas"
                )
            if changed:
                owners.clear()
            owners.add(manager)
        elif manager in owners:
            owners.discard(manager)
            if not owners and live is not None:
                spec["replicas"] = 1
                self.calls.append(f"ssa resets replicas of {name} to 1")

    def _managed_fields(self, name: str) -> list[dict[str, Any]]:
        return [
            {"manager": m, "operation": "Update" if m == HPA_MANAGER else "Apply",
             "fieldsV1": {"f:spec": {"f:replicas": {}}}}
            for m in sorted(self._replica_owners.get(name, set()))
        ]  # fmt: skip

    def _apply_deployment(self, obj: dict[str, Any], live: dict[str, Any] | None) -> None:
        name = obj["metadata"]["name"]
        annotations = obj["metadata"].setdefault("annotations", {})
        obj["metadata"]["uid"] = live["metadata"]["uid"] if live else hashlib.sha1(name.encode()).hexdigest()
        if "replicas" not in obj["spec"]:  # server-side apply leaves an unowned field alone
            obj["spec"]["replicas"] = int(live["spec"].get("replicas", 1)) if live else 1
        if live is not None:
            obj["status"] = live.get("status", {})
        if live is not None and live["spec"]["template"] == obj["spec"]["template"]:
            annotations[REVISION] = live["metadata"]["annotations"][REVISION]
            self.objects[("deployment", name)] = obj
            self._scale_current(name, int(obj["spec"]["replicas"]))
        else:
            self.objects[("deployment", name)] = obj
            self._roll(name)
        obj["metadata"]["managedFields"] = self._managed_fields(name)
        hpa = self._hpa_for(name)
        if hpa is not None:
            self._hpa_scale(name, int(obj["spec"]["replicas"]))

    def _roll(self, name: str) -> None:
        """A new revision of Deployment ``name`` from its current template, with its scripted outcome."""
        dep = self.objects[("deployment", name)]
        outcome = self.rollouts[name].popleft() if self.rollouts[name] else "succeed"
        if outcome == "foreign-image":
            for container in dep["spec"]["template"]["spec"]["containers"]:
                container["image"] = FOREIGN
        if self._missing_refs(dep["spec"]["template"]["spec"]):
            outcome = "timeout"  # CreateContainerConfigError: no new pod ever gets ready
        template = dep["spec"]["template"]
        owned = self._owned(name)
        revision = 1 + max((self._revision_of(rs) for rs in owned), default=0)
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        rs_name = f"{name}-{digest}"
        rs = next((r for r in owned if r["metadata"]["name"] == rs_name), None)
        if rs is None:
            rs_template = copy.deepcopy(template)
            rs_template.setdefault("metadata", {}).setdefault("labels", {})[HASH] = digest
            rs = {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": rs_name,
                    "namespace": self.namespace,
                    "labels": {**(template.get("metadata", {}).get("labels") or {}), HASH: digest},
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
                "spec": {"replicas": 0, "template": rs_template},
                "status": {"readyReplicas": 0},
            }
            self.sets.append(rs)
        rs["metadata"]["annotations"][REVISION] = str(revision)
        dep["metadata"]["annotations"][REVISION] = str(revision)
        dep["status"] = {
            "conditions": [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}]
        }
        self._outcome[rs_name] = outcome
        self._started[rs_name] = self.clock()
        self._cause[rs_name] = dep["metadata"]["annotations"].get("kubernetes.io/change-cause", "<none>")
        rs["status"]["readyReplicas"] = 0
        self._scale_current(name, int(dep["spec"].get("replicas", 1)))

    def _cap(self, rs: dict[str, Any]) -> int:
        """How many of the ReplicaSet's replicas can be ready, as its outcome allows."""
        replicas = int(rs["spec"]["replicas"])
        outcome = self._outcome.get(rs["metadata"]["name"], "succeed")
        return max(0, {"timeout": 0, "partial": replicas - 1}.get(outcome, replicas))

    def _tick(self, rs: dict[str, Any]) -> None:
        """One more pod of the ReplicaSet gets ready (pod by pod), within what its outcome allows."""
        ready = int(rs["status"].get("readyReplicas") or 0)
        if ready < self._cap(rs):
            rs["status"]["readyReplicas"] = ready + 1

    def _scale_current(self, name: str, replicas: int) -> None:
        """The current revision's ReplicaSet gets ``replicas``; the old ones go once it is available."""
        dep = self.objects[("deployment", name)]
        current = self._current_rs(name)
        outcome = self._outcome.get(current["metadata"]["name"], "succeed")
        ready = int(current["status"].get("readyReplicas") or 0)
        current["spec"]["replicas"] = replicas
        if ready == 0 and outcome in ("succeed", "foreign-image"):
            ready = replicas
        elif ready == 0 and outcome in ("slow", "partial"):
            ready = replicas - 1
        current["status"]["readyReplicas"] = max(0, min(ready, self._cap(current)))
        dep["spec"]["replicas"] = replicas
        if outcome != "timeout":
            for rs in self._owned(name):
                if rs is not current:
                    rs["spec"]["replicas"] = 0
                    rs["status"]["readyReplicas"] = 0

    def _hpa_for(self, name: str) -> dict[str, Any] | None:
        return next(
            (
                o
                for (k, _), o in self.objects.items()
                if k == "horizontalpodautoscaler"
                and o["spec"]["scaleTargetRef"]["kind"] == "Deployment"
                and o["spec"]["scaleTargetRef"]["name"] == name
            ),
            None,
        )

    def _hpa_scale(self, name: str, replicas: int) -> None:
        """The HPA sets the Deployment's desired count (clamped to its bounds); new pods start unready."""
        hpa = self._hpa_for(name)
        if hpa is None:
            raise AssertionError(f"no HPA targets deployment {name}: the test scripted an impossible scale")
        low, high = int(hpa["spec"].get("minReplicas", 1)), int(hpa["spec"]["maxReplicas"])
        self.calls.append(f"hpa scales {name} to {max(low, min(high, replicas))}")
        dep = self.objects[("deployment", name)]
        if int(dep["spec"].get("replicas", 1)) != max(low, min(high, replicas)):  # the scale subresource
            self._replica_owners[name] = {HPA_MANAGER}
            dep["metadata"]["managedFields"] = self._managed_fields(name)
        dep["spec"]["replicas"] = max(low, min(high, replicas))
        self._current_rs(name)["spec"]["replicas"] = dep["spec"]["replicas"]
        rs = self._current_rs(name)
        rs["status"]["readyReplicas"] = min(int(rs["status"].get("readyReplicas") or 0), self._cap(rs))

    def _progress(self, name: str) -> None:
        """A stalled rollout past its progressDeadlineSeconds gets ProgressDeadlineExceeded."""
        dep = self.objects[("deployment", name)]
        revision = dep["metadata"]["annotations"][REVISION]
        rs = next((r for r in self._owned(name) if str(self._revision_of(r)) == revision), None)
        if rs is None:  # its ReplicaSet was deleted (a test does that): nothing progresses
            return
        deadline = int(dep["spec"].get("progressDeadlineSeconds", 600))
        stalled = int(rs["status"].get("readyReplicas") or 0) < int(rs["spec"]["replicas"])
        stuck = self._outcome.get(rs["metadata"]["name"]) == "timeout"
        if stalled and stuck and self.clock() >= self._started[rs["metadata"]["name"]] + deadline:
            self.exceed(name)

    def exceed(self, name: str) -> None:
        """The Deployment controller's verdict on a rollout that made no progress within its deadline."""
        rs = self._current_rs(name)
        self.objects[("deployment", name)]["status"] = {
            "conditions": [
                {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": f'ReplicaSet "{rs["metadata"]["name"]}" has timed out progressing.',
                }
            ]
        }

    def _job_status(self, name: str) -> None:
        job = self.objects[("job", name)]
        outcome = self._job_outcome[name]
        if self._missing_refs(job["spec"]["template"]["spec"]) and outcome != "hang":
            outcome = "deadline"  # the pod never starts; the Job ends at its deadline
        deadline = job["spec"].get("activeDeadlineSeconds")
        if outcome == "succeed":
            job["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
        elif outcome == "fail":
            message = "Job has reached the specified backoff limit"
            job["status"] = {
                "failed": 1,
                "conditions": [
                    {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": message}
                ],
            }
        elif (
            outcome == "deadline" and deadline is not None and self.clock() >= self._started[name] + deadline
        ):
            message = "Job was active longer than specified deadline"
            job["status"] = {
                "failed": 1,
                "conditions": [
                    {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": message}
                ],
            }

    def create(self, manifest: str) -> bool:
        obj = json.loads(manifest)
        resource, name = self._admit(obj, "creating")
        self.calls.append(f"create {resource}/{name}")
        if (resource, name) in self.objects:
            return False  # kubectl: Error from server (AlreadyExists)
        self.objects[(resource, name)] = obj
        return True

    def delete(self, kind: str, name: str) -> None:
        self.calls.append(f"delete {kind}/{name}")
        self.objects.pop((_resource(kind), name), None)

    def scale(self, name: str, replicas: int) -> None:
        self.calls.append(f"scale {name} {replicas}")
        self._deployment(name)
        self._scale_current(name, replicas)

    def rollout_status(self, name: str, timeout: int) -> None:
        """Waits (on the clock) until the rollout completes, its deadline passes, or ``timeout``."""
        self.calls.append(f"rollout status {name}")
        try:
            dep = self._deployment(name)
        except ConveyorError as exc:
            raise RolloutFailed(str(exc)) from None
        rs = self._current_rs(name)
        if self._outcome.get(rs["metadata"]["name"]) != "timeout":
            return
        deadline = self._started[rs["metadata"]["name"]] + int(
            dep["spec"].get("progressDeadlineSeconds", 600)
        )
        if deadline <= self.clock() + timeout:
            self.clock.sleep(max(0.0, deadline - self.clock()))
            self.exceed(name)
            raise RolloutFailed(f'kubectl rollout: error: deployment "{name}" exceeded its progress deadline')
        self.clock.sleep(timeout)
        raise RolloutFailed("kubectl rollout: error: timed out waiting for the condition")

    def rollout_undo(self, name: str, revision: int) -> None:
        self.calls.append(f"rollout undo {name} --to-revision={revision}")
        dep = self._deployment(name)
        rs = next((r for r in self._owned(name) if self._revision_of(r) == revision), None)
        if rs is None:
            raise ConveyorError(
                f"kubectl rollout: error: unable to find specified revision {revision} in history"
            )
        template = copy.deepcopy(rs["spec"]["template"])
        template["metadata"]["labels"].pop(HASH, None)
        if template == dep["spec"]["template"]:
            return  # kubectl: skipped rollback (current template already matches revision N)
        dep["spec"]["template"] = template  # only the template goes back
        self._roll(name)

    # -- helpers and what tests read ---------------------------------------------------------------------

    def _missing_refs(self, pod: dict[str, Any]) -> list[str]:
        """The ConfigMaps and Secrets a pod reads (not optional) that do not exist."""
        from conveyor.deploy.k8s.render import pod_refs

        return [
            f"{kind} {name}"
            for kind in ("ConfigMap", "Secret")
            for name in sorted(pod_refs(pod, kind))
            if (kind.lower(), name) not in self.objects
        ]

    @staticmethod
    def _container(job: dict[str, Any]) -> str:
        return str(job["spec"]["template"]["spec"]["containers"][0]["name"])

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

    def pod_env(self, name: str, container: str) -> dict[str, str]:
        """The environment a pod of Deployment ``name``'s current revision starts ``container`` with:
        envFrom (ConfigMaps, Secrets; later sources win) then env, read from the LIVE objects, as the
        kubelet does (https://kubernetes.io/docs/tasks/inject-data-application/define-environment-variable-container/)."""
        pod = self._current_rs(name)["spec"]["template"]["spec"]
        spec = next(c for c in pod["containers"] if c["name"] == container)
        env: dict[str, str] = {}
        for source in spec.get("envFrom") or []:
            for key, kind in (("configMapRef", "configmap"), ("secretRef", "secret")):
                if key in source:
                    env.update(self._data(kind, source[key]["name"]))
        for var in spec.get("env") or []:
            if "value" in var:
                env[var["name"]] = str(var["value"]).replace("$$", "$")
            for key, kind in (("configMapKeyRef", "configmap"), ("secretKeyRef", "secret")):
                ref = (var.get("valueFrom") or {}).get(key)
                if ref:
                    env[var["name"]] = self._data(kind, ref["name"])[ref["key"]]
        return env

    def _data(self, kind: str, name: str) -> dict[str, str]:
        obj = self.objects.get((kind, name))
        if obj is None:
            raise AssertionError(f"the pod cannot start: {kind} {name} does not exist")
        data = dict(obj.get("data") or {})
        return {k: base64.b64decode(v).decode() for k, v in data.items()} if kind == "secret" else data

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
