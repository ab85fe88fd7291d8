"""The journal stores: the local file, ConfigMaps (through the fake of OUR KubeApi), the fallback policy.

The SSM store runs against moto server in tests/integration/test_journal_ecs.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conveyor.deploy.journal import (
    CHUNK,
    SSM_VALUE_LIMIT,
    ConfigMapJournal,
    FallbackJournal,
    FileJournal,
    _fit,
    find,
    last_good_before_current,
)
from conveyor.errors import ConveyorError
from tests.k8s_fake import FakeKube

NS = "shop"


def entry(sha: str, result: str = "succeeded", **extra: object) -> dict[str, object]:
    return {"action": "deploy", "git_sha": sha * 40, "image": f"img{sha}", "result": result, **extra}


class UnreachableKube(FakeKube):
    """The cluster went away: every call fails the way KubeCtl reports a refused connection."""

    down = True

    def get(self, kind: str, name: str) -> dict[str, object] | None:  # type: ignore[override]
        if self.down:
            raise ConveyorError("kubectl get: The connection to the server 127.0.0.1:6443 was refused")
        return super().get(kind, name)

    def apply(self, manifests: str) -> None:
        if self.down:
            raise ConveyorError("kubectl apply: The connection to the server 127.0.0.1:6443 was refused")
        super().apply(manifests)


def test_configmap_journal_numbers_entries_and_splits_them_into_chunks() -> None:
    kube = FakeKube(NS)
    journal = ConfigMapJournal(kube, NS, "production")
    assert journal.entries() == []
    for i in range(CHUNK + 3):
        numbered = journal.record(entry(str(i % 10), note=i))
        assert numbered["id"] == i + 1
    entries = journal.entries()
    assert [e["id"] for e in entries] == list(range(1, CHUNK + 4))
    assert [e["note"] for e in entries] == list(range(CHUNK + 3))
    first = kube.get("configmap", "conveyor-journal-production-0")
    second = kube.get("configmap", "conveyor-journal-production-1")
    assert first is not None
    assert second is not None
    assert len(first["data"]) == CHUNK
    assert sorted(second["data"]) == [f"{n:06d}" for n in range(CHUNK + 1, CHUNK + 4)]
    assert all(isinstance(v, str) for v in second["data"].values())  # ConfigMap data is string-only
    assert first["metadata"]["labels"]["conveyor.dev/journal"] == "production"
    assert kube.get("configmap", "conveyor-journal-production-2") is None
    # The last write applied its whole chunk: keys it omitted would be removed by server-side apply.
    last = json.loads(kube.stdin[-1])
    assert len(last["data"]) == 3


def test_a_second_checkout_reads_what_the_first_wrote_and_rolls_back_to_it() -> None:
    kube = FakeKube(NS)
    ci = ConfigMapJournal(kube, NS, "production")
    laptop = ConfigMapJournal(kube, NS, "production")
    ci.record(entry("1"))
    ci.record(entry("2"))
    laptop.record(entry("3", result="failed"))
    assert [e["git_sha"][0] for e in laptop.entries()] == ["1", "2", "3"]
    assert find(laptop, "production", 1)["image"] == "img1"
    assert last_good_before_current(laptop, "production")["git_sha"] == "1" * 40
    with pytest.raises(ConveyorError, match=r"production \(ConfigMaps shop/conveyor-journal-production-\*\)"):
        find(laptop, "production", 9)


def test_a_foreign_value_in_the_configmap_is_one_line_naming_the_key() -> None:
    kube = FakeKube(NS)
    kube.apply(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "conveyor-journal-production-0"},
                "data": {"000001": "{truncated"},
            }
        )
    )
    with pytest.raises(
        ConveyorError, match="ConfigMap conveyor-journal-production-0 key 000001: not a journal"
    ):
        ConfigMapJournal(kube, NS, "production").entries()


def test_a_failed_shared_write_lands_in_the_local_file_and_is_copied_later(tmp_path: Path) -> None:
    kube = UnreachableKube(NS)
    said: list[str] = []
    local = FileJournal(tmp_path, "production")
    journal = FallbackJournal(ConfigMapJournal(kube, NS, "production"), local, said.append)
    kept = journal.record(entry("1", result="failed"))
    assert kept["id"] == 1
    assert said == [
        "warning: journal ConfigMaps shop/conveyor-journal-production-* not written (kubectl get: The "
        "connection to the server 127.0.0.1:6443 was refused): "
        "entry kept in .conveyor/history/production.jsonl #1"
    ]
    (stored,) = local.entries()
    assert stored["git_sha"] == "1" * 40
    assert "was refused" in str(stored["shared_journal_error"])
    kube.down = False  # the cluster answers again: the next write carries the kept entry along
    journal.record(entry("2", action="rollback"))
    assert [(e["id"], e["git_sha"][0], e["result"]) for e in journal.entries()] == [
        (1, "1", "failed"),
        (2, "2", "succeeded"),
    ]
    assert "shared_journal_error" not in journal.entries()[0]
    assert len(said) == 1


def test_a_journal_line_that_is_not_an_object_names_file_and_line(tmp_path: Path) -> None:
    journal = FileJournal(tmp_path, "local")
    journal.record(entry("1"))
    with journal.path.open("a") as out:
        out.write('["a list"]\n')
    with pytest.raises(ConveyorError, match=r"local.jsonl:2: not a JSON object line"):
        journal.entries()


def test_a_long_error_is_shortened_to_fit_an_ssm_parameter() -> None:
    big = {"id": 1, "git_sha": "a" * 40, "error": "x" * 10_000}
    text = _fit(big, SSM_VALUE_LIMIT)
    assert len(text.encode()) <= SSM_VALUE_LIMIT
    assert json.loads(text)["error"].endswith(" [shortened]")
    small = {"id": 1, "error": "short"}
    assert json.loads(_fit(small, SSM_VALUE_LIMIT)) == small
