"""The Kubernetes deploy target: every process of the app contract is one Deployment, deployed by digest.

Plan: render and validate offline (render.py); with a cluster also each Deployment's live revision (kept
in the plan for the rollback) and `kubectl diff`. ConfigMaps the pods read and the Secret conveyor fills
are named by their content hash, so each revision's pod template names its own config: `rollout undo`
(the automatic rollback) brings back image, config and secrets together, and a deploy with
``Release.restore`` (`invoke rollback`) reuses the retained revision that ran that release. Release
command: a Job from the anchor process's pod spec (the HTTP process, else the first), after the new config
exists. Apply: `kubectl apply --server-side` (no `replicas` where an HPA scales). Wait, per Deployment:
`rollout status` AND the ReplicaSet of OUR revision runs our image with as many ready replicas as the LIVE
desired count (the HPA may change it); ProgressDeadlineExceeded fails at once. Rollback: each Deployment
back to its previous revision (one that did not exist is scaled to 0), then the same wait. Housekeeping:
versioned config no retained revision (``deploy.keep_revisions``) reads is pruned. Lock: a Lease.
"""

from __future__ import annotations

import copy
import functools
import json
import shlex
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from conveyor.config import SECRET_LIKE, Config
from conveyor.deploy.k8s.kubectl import KubeApi
from conveyor.deploy.k8s.render import (
    ANN_SHA,
    CONFIG_OF,
    Workload,
    app_container,
    autoscaled,
    check_manifests,
    deployment_of,
    discover,
    dump_all,
    overlay_dir,
    parse,
    pod_refs,
    release_job,
    rename_refs,
    rollout_settings,
    schema_validate,
    secret_manifest,
    secret_name,
    settle,
    version_configmaps,
    write_kustomization,
)
from conveyor.deploy.locks import StoredLock
from conveyor.deploy.model import Change, Lock, Owner, Plan, Release, Revision, RolloutFailed
from conveyor.errors import ConfigError, ConveyorError
from conveyor.runner import Runner
from conveyor.secrets import SecretResolver

REVISION = "deployment.kubernetes.io/revision"
LEASE = "conveyor-deploy-lock"
OWNER = "conveyor.dev/owner"
POLL = 2.0  # seconds between two reads of a Job or a ReplicaSet
LOG_TAIL = 20  # lines of a failed release Job's log shown
HASH_LABEL = "pod-template-hash"
HANDOVER = "handover-to-hpa"  # the field manager that takes `replicas` from conveyor for an HPA


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


def poll(
    check: Callable[[], str | None],
    deadline: float,
    *,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    interval: float = POLL,
) -> None:
    """Call ``check`` until it returns None (done). It returns what it still waits for, or raises when
    the wait cannot succeed any more; past ``deadline`` the last thing waited for is the error."""
    while True:
        pending = check()
        if pending is None:
            return
        if clock() >= deadline:
            raise RolloutFailed(f"timed out: {pending}")
        sleep(interval)


@dataclass(frozen=True)
class Previous:
    """A Deployment's revision before this deploy, and the image its app container ran."""

    revision: int
    image: str


@dataclass(frozen=True)
class Rendered:
    """The k8s plan's own payload: what is applied, where each process runs, what ran before."""

    objects: list[dict[str, Any]]
    workloads: tuple[Workload, ...]
    previous: Mapping[str, Previous | None] = field(default_factory=dict)  # by Deployment; None: new
    secret: str | None = None  # the Secret conveyor fills from the environment's `secrets` (its base name)
    secret_manifest: dict[str, Any] | None = field(default=None, repr=False)  # values: never printed
    restored: Mapping[str, int] = field(
        default_factory=dict
    )  # Deployment -> revision whose template is reused


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
        self.contract = cfg.app
        self.namespace = cfg.env.k8s.namespace
        self.deployer = deployer
        self.resolver = resolver
        self.validate = validate
        self.sleep = sleep
        self.clock = clock
        self.lock: Lock = LeaseLock(kube, self.namespace, cfg.env.name)
        # Static checks before anything is pushed or called: the overlay renders, every process is found.
        overlay = overlay_dir(cfg)
        self.base = parse(kube.kustomize(overlay))  # the overlay as committed: the app containers' own env
        self.workloads = discover(self.base, cfg.app, cfg.env.k8s.image, cfg.env.k8s.overlay)
        anchor = cfg.app.anchor
        self.anchor = next(w for w in self.workloads if w.process == anchor.name)
        objects = self.render(Release(f"{cfg.env.k8s.image}:current", "0" * 40), require_digest=False)
        secret_name(objects, self.workloads, required=bool(cfg.env.secrets))
        self._config_sent: Plan | None = None

    def render(self, release: Release, *, require_digest: bool) -> list[dict[str, Any]]:
        """The manifests of ``release``. Under --dry the wrapper kustomization lives in a folder inside the
        project (kustomize needs a relative path to the overlay) that is removed again: nothing is left."""
        if self.runner.dry:
            with tempfile.TemporaryDirectory(prefix=".conveyor-render-", dir=self.cfg.root) as scratch:
                folder = write_kustomization(
                    self.cfg, release, self.deployer, self.workloads, base=self.base, folder=Path(scratch)
                )
                stream = self.kube.kustomize(folder)
        else:
            folder = write_kustomization(self.cfg, release, self.deployer, self.workloads, base=self.base)
            stream = self.kube.kustomize(folder)
        objects = parse(stream)
        check_manifests(objects, self.namespace, self.workloads, require_digest=require_digest)
        http = self.contract.web.name if self.contract.web else None
        settle(objects, self.workloads, self.cfg.env.k8s, self.cfg.env.deploy, http)
        version_configmaps(objects)
        return objects

    # -- reading -------------------------------------------------------------------------------------

    def _revision(self, workload: Workload) -> Revision | None:
        dep = self.kube.get("deployment", workload.deployment)
        if dep is None:
            return None
        # The pod template is what `rollout undo` restores, so sha and image are read there.
        template = dep["spec"]["template"]
        sha = (template.get("metadata", {}).get("annotations") or {}).get(ANN_SHA, "unknown")
        image = str(app_container(template["spec"], workload).get("image", ""))
        revision = (dep["metadata"].get("annotations") or {}).get(REVISION, "0")
        return Revision(str(revision), image, str(sha))

    def current(self) -> Revision | None:
        """What the anchor process (the HTTP one, else the first) runs."""
        return self._revision(self.anchor)

    def plan(self, release: Release) -> Plan:
        """Render and validate offline; with a cluster also each process's live revision, `kubectl diff`."""
        objects = self.render(release, require_digest="@" in release.image)
        secret = secret_name(objects, self.workloads, required=bool(self.cfg.env.secrets))
        steps = []
        try:
            context: str | None = self.kube.current_context()
        except ConfigError as exc:
            context = None
            steps.append(f"NOT CONNECTED ({exc}): rendered and validated offline only")
        restored: dict[str, int] = {}
        if context is not None and release.restore:
            steps += self._restore_templates(objects, release, restored)
        manifest = None
        if secret is not None:
            readers = [
                w.deployment
                for w in self.workloads
                if w.deployment not in restored
                and secret in pod_refs(deployment_of(objects, w)["spec"]["template"]["spec"], "Secret")
            ]
            if readers and (self.runner.dry or context is None):
                why = "--dry" if self.runner.dry else "not connected"
                steps.append(
                    f"Secret {secret}: named by the hash of its values at deploy time ({why}: none resolved)"
                )
            elif readers:
                values = {
                    key: self.resolver.resolve(ref) for key, ref in sorted(self.cfg.env.secrets.items())
                }
                manifest = secret_manifest(secret, self.namespace, values)
                rename_refs(objects, "Secret", secret, str(manifest["metadata"]["name"]))
                steps.append(f"Secret {manifest['metadata']['name']} ({len(values)} keys, from `secrets`)")
        stream = dump_all(objects)
        self.validate(self.runner, stream)
        steps += self._settings_steps(objects)
        if self.contract.release:
            command = shlex.join(self.contract.release)
            steps.append(f"release Job from deployment/{self.anchor.deployment}: {command}")
        steps.append(f"kubectl apply --server-side ({len(objects)} objects)")
        steps.append(
            "wait for " + ", ".join(f"deployment/{w.deployment} ({w.process})" for w in self.workloads)
        )
        if context is None:
            changes = []
            for w in self.workloads:
                changes.append(Change(f"process {w.process} image", "unknown (no cluster)", release.image))
                changes += [
                    Change(f"process {w.process} env {name}", "unknown (no cluster)", _shown(name, value))
                    for name, value in sorted(self.cfg.env.process_env().items())
                ]
            detail = Rendered(objects, self.workloads, {}, secret, manifest)
            return Plan(
                self.cfg.env.name, self.kind, release, None, tuple(changes), tuple(steps), detail, stream
            )
        previous: dict[str, Previous | None] = {}
        changes = []
        for w in self.workloads:
            live = self.kube.get("deployment", w.deployment)
            old_pod = live["spec"]["template"]["spec"] if live else {}
            new_pod = deployment_of(objects, w)["spec"]["template"]["spec"]
            old = app_container(old_pod, w) if live else {}
            new = app_container(new_pod, w)
            if live is None:
                previous[w.deployment] = None
            else:
                revision = int((live["metadata"].get("annotations") or {}).get(REVISION, "0"))
                previous[w.deployment] = Previous(revision, str(old.get("image", "")))
            if old.get("image") != new.get("image"):
                changes.append(Change(f"process {w.process} image", str(old.get("image", "")), release.image))
            if old.get("args") != new.get("args") and (live is not None or new.get("args")):
                changes.append(Change(f"process {w.process} args", _argv(old), _argv(new)))
            changes += _env_changes(w.process, old, new)
            for kind in ("ConfigMap", "Secret"):
                before, after = pod_refs(old_pod, kind), pod_refs(new_pod, kind)
                if before != after:
                    changes.append(
                        Change(
                            f"process {w.process} {kind}", ", ".join(sorted(before)), ", ".join(sorted(after))
                        )
                    )
        diff = self.kube.diff(stream)
        changed = {
            line.split()[-2].rsplit("/", 1)[-1] for line in diff.splitlines() if line.startswith("diff -u -N")
        }
        changes += [Change("object", "(live)", name) for name in sorted(changed)]
        steps.insert(0, f"context {context}, namespace {self.namespace}")
        detail = Rendered(objects, self.workloads, previous, secret, manifest, restored)
        return Plan(
            self.cfg.env.name,
            self.kind,
            release,
            self.current(),
            tuple(changes),
            tuple(steps),
            detail,
            stream,
        )

    def _settings_steps(self, objects: list[dict[str, Any]]) -> list[str]:
        """The numbers that make a rollout drop no request, as the plan shows them."""
        settings = rollout_settings(self.cfg.env.k8s)
        rolling = settings["strategy"]["rollingUpdate"]
        deploy = self.cfg.env.deploy
        web = self.contract.web
        drain = (
            f"preStop sleep {deploy.drain_seconds}s ({web.name}), " if web and deploy.drain_seconds else ""
        )
        steps = [
            f"rollout: maxSurge {rolling['maxSurge']}, maxUnavailable {rolling['maxUnavailable']}, "
            f"minReadySeconds {settings['minReadySeconds']}, "
            f"progressDeadlineSeconds {settings['progressDeadlineSeconds']}; pods: {drain}"
            f"terminationGracePeriodSeconds {deploy.shutdown_timeout + deploy.drain_seconds}"
        ]
        ours = {w.deployment for w in self.workloads}
        steps += [
            f"replicas of deployment/{name}: its HPA's (not applied)"
            for name in sorted(autoscaled(objects) & ours)
        ]
        return steps

    def _owned_sets(self, dep: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The Deployment's ReplicaSets, newest revision first."""
        labels = (dep["spec"].get("selector") or {}).get("matchLabels") or {}
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        owned = [rs for rs in self.kube.replicasets(selector) if _owned_by(rs, dep)]
        return sorted(owned, key=_rs_revision, reverse=True)

    def _restore_templates(
        self, objects: list[dict[str, Any]], release: Release, restored: dict[str, int]
    ) -> list[str]:
        """A rollback: each Deployment takes the pod template of its newest retained revision that ran
        ``release`` (image, args, env, ConfigMap and Secret together), if its config still exists."""
        notes = []
        for w in self.workloads:
            live = self.kube.get("deployment", w.deployment)
            if live is None:
                continue
            ran = [
                rs
                for rs in self._owned_sets(live)
                if (rs["spec"]["template"].get("metadata", {}).get("annotations") or {}).get(ANN_SHA)
                == release.git_sha
                and app_container(rs["spec"]["template"]["spec"], w).get("image") == release.image
            ]
            if not ran:
                notes.append(
                    f"deployment/{w.deployment}: no retained revision ran {release.git_sha[:12]}: "
                    "today's config and secrets"
                )
                continue
            template = copy.deepcopy(ran[0]["spec"]["template"])
            (template.get("metadata", {}).get("labels") or {}).pop(HASH_LABEL, None)
            missing = [
                f"{kind} {name}"
                for kind in ("ConfigMap", "Secret")
                for name in sorted(pod_refs(template["spec"], kind))
                if self.kube.get(kind.lower(), name) is None
            ]
            revision = _rs_revision(ran[0])
            if missing:
                notes.append(
                    f"deployment/{w.deployment}: revision {revision}'s {', '.join(missing)} no longer "
                    "exist (pruned): today's config and secrets"
                )
                continue
            deployment_of(objects, w)["spec"]["template"] = template
            restored[w.deployment] = revision
            notes.append(
                f"deployment/{w.deployment}: the pod template of revision {revision} (image, config, secrets)"
            )
        return notes

    # -- acting --------------------------------------------------------------------------------------

    def _apply_config(self, plan: Plan) -> None:
        """The release's versioned ConfigMaps and Secret, before anything reads them (the Job does); the
        Secret's values travel on stdin only."""
        if self._config_sent is plan:
            return
        config = [o for o in plan.detail.objects if o.get("kind") == "ConfigMap" and CONFIG_OF in _labels(o)]
        if plan.detail.secret_manifest is not None:
            config.append(plan.detail.secret_manifest)
        if config:
            self.kube.apply(dump_all(config))
        self._config_sent = plan

    def release_steps(self, plan: Plan) -> None:
        """Run the release command as a Job in the new image and wait for it. A Job that is still running
        when the wait ends (timeout, interrupt) is deleted; a failed one stays for its log."""
        self._apply_config(plan)
        timeout = self.cfg.env.deploy.timeout
        deployment = deployment_of(plan.detail.objects, self.anchor)
        job = release_job(deployment, self.anchor, plan.release, self.contract.release, timeout=timeout)
        name = str(job["metadata"]["name"])
        self.kube.apply(json.dumps(job))
        ended = False

        def state() -> str | None:
            nonlocal ended
            status = (self.kube.get("job", name) or {}).get("status") or {}
            conditions = {
                c.get("type"): c for c in status.get("conditions") or [] if c.get("status") != "False"
            }
            if status.get("succeeded") or "Complete" in conditions:
                ended = True
                return None
            if status.get("failed") or "Failed" in conditions:
                ended = True
                reason = (conditions.get("Failed") or {}).get("message", "")
                last = self._job_log(name)
                raise RolloutFailed(
                    f"release Job {name} failed{': ' + reason if reason else ''}"
                    + (f" (log: {last})" if last else "")
                )
            return f"release Job {name} has not finished"

        try:
            poll(state, self.clock() + timeout, clock=self.clock, sleep=self.sleep)
        finally:
            if not ended:
                self._delete_job(name)

    def _job_log(self, name: str) -> str:
        """Show the failed Job's log tail; return its last line (empty when there is no log to read)."""
        try:
            lines = self.kube.logs(name, LOG_TAIL).rstrip().splitlines()
        except ConveyorError as exc:
            self.runner.say(f"warning: no log of release Job {name}: {exc}")
            return ""
        self.runner.say(f"release Job {name}, last {len(lines)} log lines:")
        for line in lines:
            self.runner.say(f"  | {line}")
        return lines[-1].strip() if lines else ""

    def _delete_job(self, name: str) -> None:
        try:
            self.kube.delete("job", name)
            self.runner.say(f"deleted the unfinished release Job {name}")
        except ConveyorError as exc:
            self.runner.say(f"warning: could not delete release Job {name}: {exc}")

    def apply(self, plan: Plan) -> None:
        self._apply_config(plan)
        self._hand_over_replicas(plan)
        self.kube.apply(dump_all(plan.detail.objects))

    def _hand_over_replicas(self, plan: Plan) -> None:
        """An HPA now scales a Deployment whose ``replicas`` conveyor owns (applied before the HPA came):
        another field manager takes the field at its live value first, so that conveyor leaving it out
        does not reset the count to 1 (server-side apply, "Transferring ownership"). A conflict means
        someone else owns it already: nothing to hand over."""
        ours = {w.deployment for w in self.workloads}
        for name in sorted(autoscaled(plan.detail.objects) & ours):
            live = self.kube.get("deployment", name)
            if live is None or not _owns_replicas(live, "conveyor"):
                continue
            replicas = int(live["spec"].get("replicas", 1))
            handover = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "namespace": self.namespace},
                "spec": {"replicas": replicas},
            }
            try:
                self.kube.apply(json.dumps(handover), field_manager=HANDOVER)
                self.runner.say(f"deployment/{name}: replicas ({replicas}) handed over to its HPA")
            except ConveyorError as exc:
                self.runner.say(f"warning: deployment/{name}: replicas not handed over ({exc})")

    def wait(self, plan: Plan, expected: Release, deadline: float) -> None:
        """For every process's Deployment: `rollout status`, then the ReplicaSet of its current revision
        runs the expected image with every replica ready. Waiting for a rollback (``expected`` is not the
        plan's release) expects each Deployment's previous image and skips those that were new."""
        rollback = expected != plan.release
        for w in self.workloads:
            image = expected.image
            if rollback:
                before = plan.detail.previous.get(w.deployment)
                if before is None:
                    continue  # it did not exist: the rollback scaled it to 0
                image = before.image
            self.kube.rollout_status(w.deployment, max(1, int(deadline - self.clock())))
            check = functools.partial(self._replicaset_state, w, image)
            poll(check, deadline, clock=self.clock, sleep=self.sleep)

    def _replicaset_state(self, workload: Workload, image: str) -> str | None:
        """None when the Deployment's current revision runs ``image`` with every replica ready."""
        name = workload.deployment
        dep = self.kube.get("deployment", name)
        if dep is None:
            raise RolloutFailed(f"deployment/{name} does not exist")
        for condition in (dep.get("status") or {}).get("conditions") or []:
            if (
                condition.get("type") == "Progressing"
                and condition.get("reason") == "ProgressDeadlineExceeded"
            ):
                raise RolloutFailed(
                    f"deployment/{name}: ProgressDeadlineExceeded ({condition.get('message', 'no progress')})"
                )
        revision = (dep["metadata"].get("annotations") or {}).get(REVISION)
        wanted = int(dep["spec"].get("replicas", 1))  # read on every poll: the HPA may change it
        ours = [
            rs
            for rs in self._owned_sets(dep)
            if (rs["metadata"].get("annotations") or {}).get(REVISION) == revision
        ]
        if not ours:
            raise RolloutFailed(f"no ReplicaSet for revision {revision} of deployment/{name}")
        rs = ours[0]
        rs_name = rs["metadata"].get("name", "?")
        running = app_container(rs["spec"]["template"]["spec"], workload).get("image")
        if running != image:
            raise RolloutFailed(
                f"deployment/{name} revision {revision} (ReplicaSet {rs_name}) runs {running}, not {image}"
            )
        ready = int((rs.get("status") or {}).get("readyReplicas") or 0)
        if ready < wanted:
            return f"deployment/{name}: ReplicaSet {rs_name} has {ready}/{wanted} ready replicas"
        return None

    def rollback(self, plan: Plan, to: Revision) -> None:
        """Every process's Deployment back to the revision it had before (a new one is scaled to 0)."""
        self._restore(plan)

    def stop(self, plan: Plan) -> None:
        """Nothing served before: scale to 0 the Deployments this deploy created (any that existed go
        back to their previous revision)."""
        self._restore(plan)

    def _restore(self, plan: Plan) -> None:
        failures = []
        for w in self.workloads:
            before = plan.detail.previous.get(w.deployment)
            try:
                if before is None:
                    self.kube.scale(w.deployment, 0)
                elif before.revision < 1:  # `--to-revision=0` would mean "the one before the current"
                    failures.append(f"deployment/{w.deployment}: no revision was recorded before this deploy")
                else:
                    self.kube.rollout_undo(w.deployment, before.revision)
            except ConveyorError as exc:  # the other Deployments still go back
                failures.append(f"deployment/{w.deployment}: {exc}")
        if failures:
            raise RolloutFailed("; ".join(failures))

    def finish(self, plan: Plan) -> None:
        """Prune versioned ConfigMaps and Secrets that neither the current template nor the newest
        ``deploy.keep_revisions`` older revisions of any process read (ReplicaSets stay, for history)."""
        bases = {
            "configmap": {
                str(_labels(o)[CONFIG_OF])
                for o in plan.detail.objects
                if o.get("kind") == "ConfigMap" and CONFIG_OF in _labels(o)
            },
            "secret": {plan.detail.secret} if plan.detail.secret else set(),
        }
        keep: dict[str, set[str]] = {"configmap": set(), "secret": set()}
        for w in self.workloads:
            dep = self.kube.get("deployment", w.deployment)
            if dep is None:
                continue
            pods = [dep["spec"]["template"]["spec"]]
            pods += [
                rs["spec"]["template"]["spec"]
                for rs in self._owned_sets(dep)[: self.cfg.env.deploy.keep_revisions + 1]
            ]
            for pod in pods:
                keep["configmap"] |= pod_refs(pod, "ConfigMap")
                keep["secret"] |= pod_refs(pod, "Secret")
        for kind, names in bases.items():
            if not names:
                continue
            for obj in self.kube.list(kind, CONFIG_OF):
                name = str(obj["metadata"]["name"])
                if _labels(obj).get(CONFIG_OF) in names and name not in keep[kind]:
                    self.kube.delete(kind, name)
                    self.runner.say(f"pruned {kind} {name} (no retained revision reads it)")

    def live_history(self) -> list[str]:
        """`kubectl rollout history` of every process (CHANGE-CAUSE carries sha and deployer), and what
        each serves now."""
        lines = []
        for w in self.workloads:
            current = self._revision(w)
            if current is None:
                lines.append(f"deployment/{w.deployment} ({w.process}): not deployed")
                continue
            lines += self.kube.rollout_history(w.deployment).rstrip().splitlines()
            lines.append(
                f"serving ({w.process}): revision {current.ref}, sha {current.git_sha[:12]}, {current.image}"
            )
        return lines


def _owns_replicas(obj: Mapping[str, Any], manager: str) -> bool:
    """Whether ``manager`` owns spec.replicas in the object's managedFields."""
    return any(
        entry.get("manager") == manager
        and "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})
        for entry in obj.get("metadata", {}).get("managedFields") or []
    )


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def _rs_revision(rs: Mapping[str, Any]) -> int:
    return int((rs["metadata"].get("annotations") or {}).get(REVISION, "0"))


def _owned_by(rs: Mapping[str, Any], dep: Mapping[str, Any]) -> bool:
    uid = dep["metadata"].get("uid")
    return any(
        ref.get("kind") == "Deployment"
        and ref.get("name") == dep["metadata"]["name"]
        and (uid is None or ref.get("uid") == uid)
        for ref in rs["metadata"].get("ownerReferences") or []
    )


def _env_changes(process: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    """The app container's variables that change (the environment's ``vars`` among them), by name;
    values of secret-looking names are masked."""
    before, after = _env(old), _env(new)
    return [
        Change(
            f"process {process} env {name}",
            _shown(name, before.get(name, "")),
            _shown(name, after[name]) if name in after else "(removed)",
        )
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    ]


def _env(container: Mapping[str, Any]) -> dict[str, str]:
    """name -> value as the process sees it (``$$`` is Kubernetes' escape for ``$``)."""
    return {
        str(e.get("name")): "(valueFrom)" if "valueFrom" in e else str(e.get("value", "")).replace("$$", "$")
        for e in container.get("env") or []
    }


def _shown(name: str, value: str) -> str:
    return "***" if value and SECRET_LIKE.search(name) and value != "(valueFrom)" else value


def _argv(container: Mapping[str, Any]) -> str:
    args = container.get("args")
    return shlex.join(args) if args else "(the image CMD)"
