"""The deploy journal: one entry per deploy, rollback or promote (who, when, sha, image, result, error).

Where it lives follows the environment, so every operator and CI job reads the same record:

- compose (a machine's own stack): a JSON-lines file, ``.conveyor/history/<env>.jsonl``.
- ecs: SSM Parameter Store, one String parameter per entry,
  ``/conveyor/journal/<project>/<env>/<000042>``. Chosen over a DynamoDB table because the environment
  already depends on SSM (its deploy lock is ``/conveyor/locks/<project>/<env>``; ``ssm:`` secrets): no
  table to provision, the same IAM path-scoped permissions, and ``PutParameter(Overwrite=False)`` creates
  an entry number atomically. ``GetParametersByPath`` reads the whole journal, sorted by the zero-padded
  number. A standard parameter holds 4 KB, so a long error is shortened to fit.
- k8s: ConfigMaps in the environment's namespace, ``conveyor-journal-<env>-<chunk>``, 100 entries each
  (data key: the zero-padded number, value: the entry as JSON), written with the same server-side apply
  as every other object. Chunks keep each object far below the 1 MiB ConfigMap limit; a chunk is read,
  extended and applied whole, because server-side apply removes keys the field manager no longer sends.

Entries are written under the deploy lock. When the shared store cannot be written (the engine went away
mid-deploy) the entry goes to the local file instead, with one line saying so, and is copied to the shared
store by the next write of the same run that succeeds: nothing is lost silently.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from conveyor.errors import ConveyorError, UsageError

if TYPE_CHECKING:
    from conveyor.deploy.k8s.kubectl import KubeApi

HISTORY_DIR = Path(".conveyor/history")
SSM_VALUE_LIMIT = 4096  # bytes of a standard-tier parameter value
CHUNK = 100  # entries per journal ConfigMap


class JournalStore(Protocol):
    """Where an environment's journal lives: read every entry (oldest first), append one."""

    where: str  # for messages: the file, the parameter path, the ConfigMaps

    def entries(self) -> list[dict[str, Any]]: ...
    def record(self, entry: dict[str, object]) -> dict[str, object]: ...


def _stamp(number: int, entry: dict[str, object]) -> dict[str, object]:
    return {"id": number, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **entry}


def find(store: JournalStore, env: str, number: int) -> dict[str, Any]:
    """Entry ``number`` of the journal (what `invoke rollback --to N` goes back to)."""
    for entry in store.entries():
        if entry.get("id") == number:
            return entry
    raise UsageError(f"the journal of {env} ({store.where}) has no entry {number} (see `invoke history`)")


def last_good_before_current(store: JournalStore, env: str) -> dict[str, Any]:
    """The newest good deploy of a sha other than the newest good one (the default rollback target)."""
    good = [e for e in store.entries() if e.get("result") == "succeeded" and e.get("image")]
    if not good:
        raise ConveyorError(
            f"no successful deploy recorded for {env} ({store.where}): nothing to roll back to"
        )
    current = str(good[-1]["git_sha"])
    earlier = [e for e in good if e["git_sha"] != current]
    if earlier:
        return earlier[-1]
    raise ConveyorError(f"only one release ({current[:12]}) was ever deployed to {env}")


class FileJournal:
    """A JSON-lines file on this machine (compose environments, and the fallback of the shared stores)."""

    def __init__(self, root: Path, env: str) -> None:
        self.env = env
        self.path = root / HISTORY_DIR / f"{env}.jsonl"
        self.where = str(HISTORY_DIR / f"{env}.jsonl")

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, oldest first; a line that is not JSON is a one-line error naming file and line."""
        if not self.path.exists():
            return []
        entries: list[dict[str, Any]] = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                entry = None
            if not isinstance(entry, dict):
                raise ConveyorError(f"{self.path}:{number}: not a JSON object line (the journal was edited?)")
            entries.append(entry)
        return entries

    def record(self, entry: dict[str, object]) -> dict[str, object]:
        """Append one entry (numbered, timestamped); one write per line so concurrent appends stay whole."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        numbered = _stamp(len(self.entries()) + 1, entry)
        line = json.dumps(numbered, sort_keys=False) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)
        return numbered

    def find(self, number: int) -> dict[str, Any]:
        """Entry ``number``."""
        return find(self, self.env, number)

    def last_good_before_current(self) -> dict[str, Any]:
        """The default rollback target (see the module function)."""
        return last_good_before_current(self, self.env)


def _fit(entry: dict[str, object], limit: int) -> str:
    """The entry as JSON within ``limit`` bytes: a long error is shortened (it is the only free text)."""
    text = json.dumps(entry)
    error = str(entry.get("error") or "")
    while len(text.encode("utf-8")) > limit and error:
        error = error[: max(0, len(error) - (len(text.encode("utf-8")) - limit) - 16)]
        text = json.dumps({**entry, "error": error + " [shortened]"})
    return text


class SsmJournal:
    """ECS environments: one SSM parameter per entry under ``/conveyor/journal/<project>/<env>/``."""

    def __init__(self, clients: Callable[[str], Any], project: str, env: str) -> None:
        self._clients = clients
        self.env = env
        self.path = f"/conveyor/journal/{project}/{env}"
        self.where = f"SSM {self.path}/"

    def _call(self, op: str, /, **kwargs: Any) -> Any:
        from conveyor.aws import translate

        try:
            return getattr(self._clients("ssm"), op)(**kwargs)
        except ConveyorError:
            raise
        except Exception as exc:  # botocore's classes are generated: translate at the wrapper
            raise translate(op, exc) from None

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, oldest first (GetParametersByPath pages of 10, sorted by the padded number)."""
        params: list[dict[str, Any]] = []
        token: dict[str, str] = {}
        while True:
            out = self._call(
                "get_parameters_by_path", Path=self.path, Recursive=False, MaxResults=10, **token
            )
            params += out.get("Parameters") or []
            if not out.get("NextToken"):
                break
            token = {"NextToken": str(out["NextToken"])}
        entries = []
        for param in sorted(params, key=lambda p: str(p["Name"])):
            try:
                entry = json.loads(param["Value"])
            except json.JSONDecodeError:
                entry = None
            if not isinstance(entry, dict):
                raise ConveyorError(f"SSM {param['Name']}: not a journal entry (a JSON object)")
            entries.append(entry)
        return entries

    def record(self, entry: dict[str, object]) -> dict[str, object]:
        """Create the next numbered parameter; Overwrite=False refuses a number someone else just took."""
        number = len(self.entries()) + 1
        for _ in range(10):
            numbered = _stamp(number, entry)
            try:
                self._call(
                    "put_parameter",
                    Name=f"{self.path}/{number:06d}",
                    Value=_fit(numbered, SSM_VALUE_LIMIT),
                    Type="String",
                    Overwrite=False,
                )
            except ConveyorError as exc:
                if "ParameterAlreadyExists" in str(exc):
                    number += 1
                    continue
                raise
            return numbered
        raise ConveyorError(f"{self.where}: could not take a new entry number (ten were taken meanwhile)")


class ConfigMapJournal:
    """k8s environments: ConfigMaps ``conveyor-journal-<env>-<chunk>`` in the namespace, 100 entries each."""

    def __init__(self, kube: KubeApi, namespace: str, env: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.env = env
        self.prefix = f"conveyor-journal-{env}"
        self.where = f"ConfigMaps {namespace}/{self.prefix}-*"

    def _chunk(self, index: int) -> dict[str, str] | None:
        found = self.kube.get("configmap", f"{self.prefix}-{index}")
        return None if found is None else {str(k): str(v) for k, v in (found.get("data") or {}).items()}

    def _chunks(self) -> list[dict[str, str]]:
        chunks: list[dict[str, str]] = []
        while (data := self._chunk(len(chunks))) is not None:
            chunks.append(data)
        return chunks

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, oldest first."""
        entries = []
        for index, data in enumerate(self._chunks()):
            for key in sorted(data):
                try:
                    entry = json.loads(data[key])
                except json.JSONDecodeError:
                    entry = None
                if not isinstance(entry, dict):
                    raise ConveyorError(
                        f"ConfigMap {self.prefix}-{index} key {key}: not a journal entry (a JSON object)"
                    )
                entries.append(entry)
        return entries

    def record(self, entry: dict[str, object]) -> dict[str, object]:
        """Add the entry to the last chunk (or start the next one) and apply that chunk whole."""
        chunks = self._chunks()
        number = sum(len(c) for c in chunks) + 1
        index = (number - 1) // CHUNK
        data = dict(chunks[index]) if index < len(chunks) else {}
        numbered = _stamp(number, entry)
        data[f"{number:06d}"] = json.dumps(numbered)
        manifest = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": f"{self.prefix}-{index}",
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": "conveyor", "conveyor.dev/journal": self.env},
            },
            "data": data,
        }
        self.kube.apply(json.dumps(manifest))
        return numbered


class FallbackJournal:
    """A shared store that never loses an entry: on a failed write the entry goes to the local file (one
    line says so) and is copied to the shared store by the next successful write of this run."""

    def __init__(self, shared: JournalStore, local: FileJournal, say: Callable[[str], None]) -> None:
        self.shared = shared
        self.local = local
        self.say = say
        self.where = shared.where
        self.pending: list[dict[str, object]] = []

    def entries(self) -> list[dict[str, Any]]:
        """The shared journal (what every checkout sees)."""
        return self.shared.entries()

    def record(self, entry: dict[str, object]) -> dict[str, object]:
        """Write to the shared store (first any entries kept locally earlier in this run)."""
        try:
            while self.pending:
                self.shared.record(self.pending[0])
                self.pending.pop(0)
            return self.shared.record(entry)
        except Exception as exc:
            from conveyor.deploy.model import describe

            self.pending.append(entry)
            kept = self.local.record({**entry, "shared_journal_error": describe(exc)})
            self.say(
                f"warning: journal {self.shared.where} not written ({describe(exc)}): "
                f"entry kept in {self.local.where} #{kept['id']}"
            )
            return kept
