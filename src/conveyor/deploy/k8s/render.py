"""Rendering and offline validation: the overlay plus conveyor's wrapper kustomization, checked.

The manifests are the project's; conveyor finds each process in them by a label and changes them only
through a generated kustomization in build/k8s/<env>/ that points at the overlay by a RELATIVE path
(kustomize refuses absolute resource roots), so committed files never change:

- process P runs in the one Deployment labelled ``app.kubernetes.io/component: P``;
- its app container is the container whose image is the placeholder ``k8s.image`` (sidecars keep theirs);
- the wrapper sets the placeholder to the release image (by digest), the app container's ``args`` to the
  process command when the contract gives one (``args``, not ``command``: the image's ENTRYPOINT stays),
  the app container's ``env`` to its own with the environment's ``vars`` over it, and conveyor's
  annotations on each process's Deployment and pod template.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from conveyor.config import AppContract, Config, DeploySettings, K8sTarget
from conveyor.deploy.model import Release
from conveyor.errors import ConfigError
from conveyor.runner import Runner

BUILD_DIR = Path("build/k8s")
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KINDS = {
    "ServiceAccount", "ConfigMap", "Secret", "Deployment", "Service", "Ingress", "HorizontalPodAutoscaler",
    "PodDisruptionBudget", "NetworkPolicy", "Job",
}  # fmt: skip
COMPONENT = "app.kubernetes.io/component"
RELEASE_COMPONENT = "release"  # the component label of the release Job's pods
ANN_SHA, ANN_DIGEST, ANN_DEPLOYER = "conveyor.dev/git-sha", "conveyor.dev/image", "conveyor.dev/deployer"
ANN_PROCESS = "conveyor.dev/process"
CHANGE_CAUSE = "kubernetes.io/change-cause"
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
JOB_TTL = 3600  # seconds a finished release Job (and its log) stays for inspection
NAME_MAX = 63  # a Job's name is also a label value (batch.kubernetes.io/job-name)
CONFIG_OF = "conveyor.dev/config-of"  # on a versioned ConfigMap/Secret: the name the manifests gave it


class _Dumper(yaml.SafeDumper):
    """The generated kustomization is read by people: block strings for the patches, no YAML aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


@dataclass(frozen=True)
class Workload:
    """Where one process runs: its Deployment, and the app container in the pod (name and position)."""

    process: str
    deployment: str
    container: str
    index: int


# libyaml's parser and emitter when PyYAML has them (its wheels do): rendered streams are large, and the
# pure-Python ones were a third of a deploy's CPU time. Same YAML either way.
_LOADER = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader
_DUMPER = yaml.CSafeDumper if yaml.__with_libyaml__ else yaml.SafeDumper


def parse(stream: str) -> list[dict[str, Any]]:
    return [obj for obj in yaml.load_all(stream, Loader=_LOADER) if obj]


def dump_all(objects: list[dict[str, Any]]) -> str:
    return yaml.dump_all(objects, Dumper=_DUMPER, sort_keys=False)


def image_name(ref: str) -> str:
    """``host:5000/team/app:tag@sha256:..`` -> ``host:5000/team/app``: what kustomize `images:` matches."""
    name = ref.split("@", 1)[0]
    return name[: name.rfind(":")] if name.rfind(":") > name.rfind("/") else name


def split_image(image: str, placeholder: str) -> dict[str, str]:
    """The kustomize `images:` entry for ``repo@sha256:..`` (or ``repo:tag`` before a push)."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return {"name": placeholder, "newName": name, "digest": digest}
    name = image_name(image)
    return {"name": placeholder, "newName": name, "newTag": image[len(name) + 1 :] or "latest"}


def overlay_dir(cfg: Config) -> Path:
    overlay = cfg.root / cfg.env.k8s.overlay
    if not any((overlay / name).is_file() for name in KUSTOMIZATION_FILES):
        raise ConfigError(
            f"k8s.overlay: {cfg.env.k8s.overlay} is not a kustomize overlay (no kustomization.yaml)"
        )
    return overlay


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def _containers(deployment: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or [])


def discover(
    objects: Sequence[Mapping[str, Any]], contract: AppContract, placeholder: str, overlay: str
) -> tuple[Workload, ...]:
    """Each process's Deployment (by its component label) and app container (by the placeholder image).

    A process with no such Deployment or with two, a Deployment with no app container or two, and a
    Deployment that runs the app image but belongs to no process are errors: conveyor would otherwise
    change what it does not verify, or verify what it did not change.
    """
    if RELEASE_COMPONENT in contract.names():
        raise ConfigError(
            f"processes.{RELEASE_COMPONENT}: on Kubernetes `{COMPONENT}: {RELEASE_COMPONENT}` labels the "
            "release Job's pods; rename the process"
        )
    deployments = [o for o in objects if o.get("kind") == "Deployment"]
    workloads = []
    for proc in contract.processes:
        found = [d for d in deployments if _labels(d).get(COMPONENT) == proc.name]
        if len(found) != 1:
            names = ", ".join(str(d["metadata"].get("name")) for d in found)
            detail = f"{len(found)} Deployments labelled it ({names})" if found else "no Deployment has it"
            raise ConfigError(
                f"{overlay}: process `{proc.name}` runs in the Deployment labelled "
                f"`{COMPONENT}: {proc.name}` (metadata.labels), and {detail}; exactly one is needed"
            )
        dep = found[0]
        name = str(dep["metadata"].get("name"))
        apps = [
            (i, c) for i, c in enumerate(_containers(dep)) if image_name(c.get("image", "")) == placeholder
        ]
        if len(apps) != 1:
            listed = f" ({', '.join(c.get('name', '?') for _, c in apps)})" if apps else ""
            raise ConfigError(
                f"{overlay}: Deployment {name} (process `{proc.name}`) has {len(apps)} containers with the "
                f"placeholder image `{placeholder}` (k8s.image){listed}; exactly one runs the app"
            )
        index, container = apps[0]
        workloads.append(Workload(proc.name, name, str(container.get("name")), index))
    ours = {w.deployment for w in workloads}
    for dep in deployments:
        name = str(dep["metadata"].get("name"))
        if name not in ours and any(image_name(c.get("image", "")) == placeholder for c in _containers(dep)):
            label = _labels(dep).get(COMPONENT)
            raise ConfigError(
                f"{overlay}: Deployment {name} runs the app image `{placeholder}` but is labelled for no "
                f"process (`{COMPONENT}: {label or '(none)'}`; processes: {', '.join(contract.names())})"
            )
    return tuple(workloads)


def app_env(container: Mapping[str, Any], variables: Mapping[str, str]) -> list[dict[str, Any]]:
    """The container's ``env`` with the environment's ``vars`` over it: an entry of the same name becomes
    the var, in its place; the other vars follow by name. ``$`` is doubled so that Kubernetes passes the
    value as written (it expands ``$(NAME)`` and reads ``$$`` as ``$``), as compose and ECS do."""
    literal = {name: value.replace("$", "$$") for name, value in variables.items()}
    env = [
        {"name": e["name"], "value": literal[e["name"]]} if e.get("name") in literal else dict(e)
        for e in container.get("env") or []
    ]
    present = {e.get("name") for e in env}
    env += [{"name": name, "value": literal[name]} for name in sorted(literal) if name not in present]
    return env


def write_kustomization(
    cfg: Config,
    release: Release,
    deployer: str,
    workloads: Sequence[Workload],
    *,
    base: Sequence[Mapping[str, Any]],
    folder: Path | None = None,
) -> Path:
    """build/k8s/<env>/kustomization.yaml (or ``folder``, which must be inside the project): the overlay
    + image + per-process patches. Returns its folder.

    ``base`` is the overlay as rendered (the app containers' own ``env`` is read there)."""
    overlay = overlay_dir(cfg)
    folder = folder or cfg.root / BUILD_DIR / cfg.env.name
    folder.mkdir(parents=True, exist_ok=True)
    commands = {p.name: p.command for p in cfg.app.processes}
    patches: list[dict[str, Any]] = []
    for w in workloads:
        target = {"kind": "Deployment", "labelSelector": f"{COMPONENT}={w.process}"}
        annotations = {
            ANN_SHA: release.git_sha,
            ANN_DIGEST: release.image,
            ANN_DEPLOYER: deployer,
            ANN_PROCESS: w.process,
            CHANGE_CAUSE: f"conveyor deploy {release.git_sha[:12]} by {deployer}",
        }
        merge = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": w.deployment, "annotations": annotations},
            "spec": {"template": {"metadata": {"annotations": {ANN_SHA: release.git_sha}}}},
        }
        patches.append({"target": target, "patch": yaml.safe_dump(merge, sort_keys=False)})
        container = f"/spec/template/spec/containers/{w.index}"  # JSON patches by position: order stays
        ops: list[dict[str, Any]] = []
        if commands[w.process]:
            ops.append({"op": "add", "path": f"{container}/args", "value": list(commands[w.process])})
        # the whole list: a JSON patch cannot merge into a list by name
        own = app_container(deployment_of(base, w)["spec"]["template"]["spec"], w)
        ops.append({"op": "add", "path": f"{container}/env", "value": app_env(own, cfg.env.process_env())})
        if ops:
            patches.append({"target": target, "patch": json.dumps(ops)})
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(overlay, folder)],
        "images": [split_image(release.image, cfg.env.k8s.image)],
        "patches": patches,
    }
    header = "# GENERATED by conveyor for one deploy; do not edit or commit.\n"
    text = yaml.dump(kustomization, Dumper=_Dumper, sort_keys=False, width=110)
    (folder / "kustomization.yaml").write_text(header + text)
    return folder


def app_container(pod: Mapping[str, Any], workload: Workload) -> dict[str, Any]:
    """The workload's app container in a pod spec (by name; by position if it was renamed)."""
    containers = list(pod.get("containers") or [])
    named = [c for c in containers if c.get("name") == workload.container]
    if named:
        return dict(named[0])
    return dict(containers[workload.index]) if workload.index < len(containers) else {}


def deployment_of(objects: Sequence[Mapping[str, Any]], workload: Workload) -> Mapping[str, Any]:
    return next(
        o for o in objects if o.get("kind") == "Deployment" and o["metadata"]["name"] == workload.deployment
    )


def check_manifests(
    objects: Sequence[Mapping[str, Any]],
    namespace: str,
    workloads: Sequence[Workload],
    *,
    require_digest: bool,
) -> None:
    """Kinds we know, the environment's namespace, restricted Pod Security fields, the app by digest."""
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
            _check_pod(obj["spec"]["template"]["spec"], f"{kind}/{name}")
    if require_digest:
        for w in workloads:
            image = app_container(deployment_of(objects, w)["spec"]["template"]["spec"], w).get("image", "")
            if "@sha256:" not in image:
                raise ConfigError(
                    f"Deployment/{w.deployment}: app container {w.container} image {image} is not a digest"
                )


def _check_pod(pod: Mapping[str, Any], where: str) -> None:
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


def secret_name(
    objects: Sequence[Mapping[str, Any]], workloads: Sequence[Workload], *, required: bool
) -> str | None:
    """The Secret conveyor fills from the environment's secret references: the one the app containers
    reference (envFrom or env) that the manifests do not define. None when there is none."""
    defined = {o["metadata"]["name"] for o in objects if o.get("kind") == "Secret"}
    referenced: dict[str, str] = {}
    for w in workloads:
        container = app_container(deployment_of(objects, w)["spec"]["template"]["spec"], w)
        refs = [(s.get("secretRef") or {}).get("name") for s in container.get("envFrom") or []]
        refs += [
            ((e.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name")
            for e in container.get("env") or []
        ]
        for ref in refs:
            if ref and ref not in defined:
                referenced.setdefault(str(ref), w.deployment)
    if len(referenced) > 1:
        names = ", ".join(f"{name} (Deployment {dep})" for name, dep in sorted(referenced.items()))
        raise ConfigError(
            f"the app containers reference {len(referenced)} Secrets the manifests do not define ({names}); "
            "conveyor fills exactly one from the environment's `secrets`"
        )
    if not referenced and required:
        raise ConfigError(
            "`secrets` is set but no app container references a Secret the manifests do not define "
            "(envFrom: [{secretRef: {name: ...}}]): the values would reach no process"
        )
    return next(iter(referenced), None)


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


def release_job(
    deployment: Mapping[str, Any],
    workload: Workload,
    release: Release,
    command: Sequence[str],
    *,
    timeout: int,
) -> dict[str, Any]:
    """The release command as a Job with the pod spec of ``workload``'s Deployment (image, env, security).

    Only the app container runs (a sidecar that never exits would keep the Job from ending; native
    sidecars, initContainers with restartPolicy Always, stay), with ``args`` = the release command, and no
    probes or ports. The pods keep the Deployment's labels (network policies select them) with
    ``app.kubernetes.io/component: release``, so no process's Service or ReplicaSet selects them.
    """
    template = copy.deepcopy(dict(deployment["spec"]["template"]))
    pod = template["spec"]
    container = app_container(pod, workload)
    for field in (*PROBES, "ports", "lifecycle"):
        container.pop(field, None)
    container["args"] = list(command)
    pod["containers"] = [container]
    pod["restartPolicy"] = "Never"
    meta = template.setdefault("metadata", {})
    meta["labels"] = {**(meta.get("labels") or {}), COMPONENT: RELEASE_COMPONENT}
    meta["annotations"] = {**(meta.get("annotations") or {}), ANN_SHA: release.git_sha}
    suffix = f"-release-{release.git_sha[:8]}-{uuid.uuid4().hex[:4]}"
    stem = re.sub(r"[-.]+$", "", str(deployment["metadata"]["name"])[: NAME_MAX - len(suffix)])
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": stem + suffix,
            "namespace": deployment["metadata"]["namespace"],
            "labels": {**_labels(deployment), COMPONENT: RELEASE_COMPONENT},
            "annotations": {ANN_SHA: release.git_sha, ANN_DIGEST: release.image},
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": timeout,
            "ttlSecondsAfterFinished": JOB_TTL,
            "template": template,
        },
    }


# --- rollout settings: zero-downtime, the HPA owns replicas ------------------------------------------------


def _int_or_percent(key: str, value: str) -> int | str:
    """``"25%"`` stays a string, ``"1"`` becomes 1 (an IntOrString); anything else is a config error."""
    text = value.strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    if re.fullmatch(r"\d+%", text) and int(text[:-1]) <= 100:
        return text
    raise ConfigError(f"{key}: `{value}` is not a number of pods or a percentage (e.g. 1 or 25%)")


def rollout_settings(k8s: K8sTarget) -> dict[str, Any]:
    """The Deployment fields conveyor sets from ``k8s.*``, refused as the API server would refuse them."""
    surge = _int_or_percent("k8s.max_surge", k8s.max_surge)
    unavailable = _int_or_percent("k8s.max_unavailable", k8s.max_unavailable)
    if surge in (0, "0%") and unavailable in (0, "0%"):
        raise ConfigError("k8s.max_surge and k8s.max_unavailable are both 0: a rollout could never progress")
    if k8s.min_ready_seconds < 0:
        raise ConfigError(f"k8s.min_ready_seconds: {k8s.min_ready_seconds} must be 0 or more")
    if k8s.progress_deadline <= k8s.min_ready_seconds:
        raise ConfigError(
            f"k8s.progress_deadline ({k8s.progress_deadline}) must be greater than k8s.min_ready_seconds "
            f"({k8s.min_ready_seconds})"
        )
    return {
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable},
        },
        "minReadySeconds": k8s.min_ready_seconds,
        "progressDeadlineSeconds": k8s.progress_deadline,
    }


def autoscaled(objects: Sequence[Mapping[str, Any]]) -> set[str]:
    """The Deployments an HPA scales: their replica count is the HPA's, not the manifests'."""
    return {
        str(ref.get("name"))
        for o in objects
        if o.get("kind") == "HorizontalPodAutoscaler"
        for ref in [o.get("spec", {}).get("scaleTargetRef") or {}]
        if ref.get("kind") == "Deployment"
    }


def settle(
    objects: list[dict[str, Any]],
    workloads: Sequence[Workload],
    k8s: K8sTarget,
    deploy: DeploySettings,
    http: str | None,
) -> list[dict[str, Any]]:
    """Every process's Deployment gets the rollout settings and a grace period of ``shutdown_timeout +
    drain_seconds``; the HTTP process's app container a ``preStop`` sleep of ``drain_seconds`` (endpoints
    drop the pod while it sleeps, then SIGTERM); a Deployment an HPA scales loses ``replicas``."""
    settings = rollout_settings(k8s)
    scaled = autoscaled(objects)
    for w in workloads:
        dep = deployment_of(objects, w)
        spec = dep["spec"]
        spec.update(copy.deepcopy(settings))
        if w.deployment in scaled:
            spec.pop("replicas", None)
        pod = spec["template"]["spec"]
        pod["terminationGracePeriodSeconds"] = deploy.shutdown_timeout + deploy.drain_seconds
        if w.process == http and deploy.drain_seconds > 0:
            container = pod["containers"][_index(pod, w)]
            container["lifecycle"] = {
                **(container.get("lifecycle") or {}),
                "preStop": {"sleep": {"seconds": deploy.drain_seconds}},
            }
    return objects


def _index(pod: Mapping[str, Any], workload: Workload) -> int:
    containers = list(pod.get("containers") or [])
    return next((i for i, c in enumerate(containers) if c.get("name") == workload.container), workload.index)


# --- config and secrets versioned with the release ---------------------------------------------------------

_REFS = {  # kind -> (envFrom key, env valueFrom key, volume key, the volume's name field)
    "ConfigMap": ("configMapRef", "configMapKeyRef", "configMap", "name"),
    "Secret": ("secretRef", "secretKeyRef", "secret", "secretName"),
}


def _name_slots(pod: Mapping[str, Any], kind: str) -> Iterator[tuple[dict[str, Any], str]]:
    """Every place a pod spec names a ConfigMap (or Secret): (the dict holding the name, its key)."""
    env_from, value_from, volume, field = _REFS[kind]
    for container in [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]:
        for source in container.get("envFrom") or []:
            if isinstance(source.get(env_from), dict):
                yield source[env_from], "name"
        for var in container.get("env") or []:
            ref = (var.get("valueFrom") or {}).get(value_from)
            if isinstance(ref, dict):
                yield ref, "name"
    for vol in pod.get("volumes") or []:
        if isinstance(vol.get(volume), dict):
            yield vol[volume], field
        for source in (vol.get("projected") or {}).get("sources") or []:
            if isinstance(source.get(volume), dict):
                yield source[volume], "name"


def pod_refs(pod: Mapping[str, Any], kind: str) -> set[str]:
    """The ConfigMaps (or Secrets) a pod spec reads."""
    return {str(holder[key]) for holder, key in _name_slots(pod, kind) if holder.get(key)}


def rename_refs(objects: Sequence[Mapping[str, Any]], kind: str, old: str, new: str) -> None:
    """Point every Deployment's pod template at ``new`` where it named the ConfigMap/Secret ``old``."""
    for obj in objects:
        if obj.get("kind") == "Deployment":
            for holder, key in _name_slots(obj["spec"]["template"]["spec"], kind):
                if holder.get(key) == old:
                    holder[key] = new


def content_hash(obj: Mapping[str, Any]) -> str:
    """10 hex digits of the sha256 of what a ConfigMap or Secret holds (kustomize's generator idea)."""
    payload = {k: obj[k] for k in ("kind", "type", "data", "binaryData") if obj.get(k) is not None}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


def versioned(obj: dict[str, Any], base: str) -> dict[str, Any]:
    """``obj`` (a ConfigMap or Secret named ``base``) as ``base-<content hash>``, labelled with its base
    name for pruning, immutable (a new content is a new name, so nothing ever edits one in place)."""
    if len(base) > NAME_MAX:
        raise ConfigError(
            f"{obj['kind']} {base}: conveyor versions it by name; keep the name <= 63 characters"
        )
    meta = obj.setdefault("metadata", {})
    meta["name"] = f"{base}-{content_hash(obj)}"
    meta["labels"] = {**(meta.get("labels") or {}), CONFIG_OF: base}
    obj["immutable"] = True
    return obj


def version_configmaps(objects: list[dict[str, Any]]) -> dict[str, str]:
    """Every ConfigMap a Deployment's pods read gets a content-hashed name, and the pods point at it, so a
    revision keeps the config it started with (``rollout undo`` brings back image AND config). Returns
    {manifest name: versioned name}."""
    read: set[str] = set()
    for obj in objects:
        if obj.get("kind") == "Deployment":
            read |= pod_refs(obj["spec"]["template"]["spec"], "ConfigMap")
    renamed = {}
    for obj in objects:
        name = str(obj.get("metadata", {}).get("name"))
        if obj.get("kind") == "ConfigMap" and name in read:
            renamed[name] = str(versioned(obj, name)["metadata"]["name"])
    for old, new in renamed.items():
        rename_refs(objects, "ConfigMap", old, new)
    return renamed


def secret_manifest(base: str, namespace: str, values: Mapping[str, str]) -> dict[str, Any]:
    """The Secret conveyor fills from the environment's references, named by the hash of its values."""
    import base64

    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": base, "namespace": namespace},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in sorted(values.items())},
    }
    return versioned(secret, base)
