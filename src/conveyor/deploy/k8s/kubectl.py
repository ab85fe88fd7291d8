"""kubectl as an adapter: the calls the Kubernetes target makes, one method per kubectl command.

Argv lists through the runner; manifests (and the Secret's values) travel on stdin, never on argv.
Errors are translated here: a failed kubectl call is a ConveyorError carrying kubectl's last line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from conveyor.deploy.model import RolloutFailed
from conveyor.errors import CommandFailed, ConfigError, ConveyorError
from conveyor.runner import Runner


class KubeApi(Protocol):
    """What the target needs from kubectl; the real one is KubeCtl, tests use a fake of THIS interface."""

    def current_context(self) -> str: ...
    def kustomize(self, path: Path) -> str: ...
    def diff(self, manifests: str) -> str: ...
    def apply(self, manifests: str, field_manager: str = "conveyor") -> None: ...
    def create(self, manifest: str) -> bool: ...
    def get(self, kind: str, name: str) -> dict[str, Any] | None: ...
    def delete(self, kind: str, name: str) -> None: ...
    def scale(self, name: str, replicas: int) -> None: ...
    def rollout_status(self, name: str, timeout: int) -> None: ...
    def rollout_undo(self, name: str, revision: int) -> None: ...
    def rollout_history(self, name: str) -> str: ...
    def replicasets(self, selector: str) -> list[dict[str, Any]]: ...
    def list(self, kind: str, selector: str) -> list[dict[str, Any]]: ...
    def logs(self, job: str, tail: int) -> str: ...


class KubeCtl:
    """kubectl through the runner, in one namespace (and context, when configured)."""

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

    def _run(self, *args: str, stdin: str | None = None, mutates: bool = False) -> str:
        try:
            result = self.runner.run(self._argv(*args), capture=True, input=stdin, mutates=mutates)
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
            lines = result.stderr.strip().splitlines()
            raise ConveyorError(f"kubectl diff: {lines[-1] if lines else f'exit {result.returncode}'}")
        return result.stdout

    def apply(self, manifests: str, field_manager: str = "conveyor") -> None:
        """Server-side apply. conveyor's own manager forces conflicts (its manifests win); another manager
        (the replicas hand-over to an HPA) does not: a conflict means someone else owns the field."""
        force = ["--force-conflicts"] if field_manager == "conveyor" else []
        self._run("apply", "--server-side", f"--field-manager={field_manager}", *force, "-f", "-",
                  stdin=manifests, mutates=True)  # fmt: skip

    def create(self, manifest: str) -> bool:
        result = self.runner.run(self._argv("create", "-f", "-"), capture=True, input=manifest, check=False)
        if result.returncode == 0:
            return True
        if "AlreadyExists" in result.stderr or "already exists" in result.stderr:
            return False
        raise ConveyorError(f"kubectl create: {result.stderr.strip()}")

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        out = self._run("get", kind, name, "-o", "json", "--ignore-not-found", "--show-managed-fields")
        return dict(json.loads(out)) if out.strip() else None

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
        return self.list("replicasets", selector)

    def list(self, kind: str, selector: str) -> list[dict[str, Any]]:
        """`kubectl get KIND -l SELECTOR -o json`: the items of the List kubectl prints."""
        out = self._run("get", kind, "-l", selector, "-o", "json")
        try:
            return list(json.loads(out).get("items", []))
        except (ValueError, AttributeError):
            raise ConveyorError(f"kubectl get {kind}: not a JSON List: {out[:80]!r}") from None

    def logs(self, job: str, tail: int) -> str:
        """The last ``tail`` lines of the Job's pod (`kubectl logs job/NAME --tail N`)."""
        return self._run("logs", f"job/{job}", f"--tail={tail}", "--all-containers=true")
