"""The journal of an ECS environment lives in SSM (moto server over HTTP): two checkouts share it.

Checkout A deploys (as a CI runner would), checkout B deploys too; each `invoke history` shows both, and
`invoke rollback --to N` run in B goes back to the release A recorded, through the real command line.
The services' tasks run as real containers (tests/ecs_harness.py); while the command-line rollback runs,
a thread ticks the harness (ECS moving on), and the smoke probe reaches the real containers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from conveyor import config
from conveyor.deploy import journal_for
from conveyor.deploy.journal import SsmJournal
from conveyor.deploy.model import Release
from tests.conftest import Project
from tests.ecs_harness import TinyImages
from tests.integration import test_ecs
from tests.integration.test_ecs import NEW_SHA, OLD_SHA, OTHER_SHA, Ecs

pytestmark = pytest.mark.aws
# The fixtures of the ECS tests, shared: moto server, the rehearsal registry and image, the accounts.
moto_endpoint = test_ecs.moto_endpoint
rehearsal_registry = test_ecs.rehearsal_registry
tiny = test_ecs.tiny
live = test_ecs.live
ecs = test_ecs.ecs


def own_project(ecs: Ecs) -> None:
    """A project name of this test's own: its SSM journal path and lock are nobody else's."""
    text = (ecs.project.root / "invoke.yaml").read_text()
    ecs.project.write(
        "invoke.yaml", text.replace("name: conveyor-demo", f"name: j-{uuid.uuid4().hex[:8]}", 1)
    )
    ecs.reload()


def second_checkout(ecs: Ecs, root: Path) -> Project:
    """Checkout B: the same project files in another directory (no shared .conveyor/ folder)."""
    for rel in ("tasks.py", "invoke.yaml"):
        shutil.copy2(ecs.project.root / rel, root / rel)
    shutil.copytree(ecs.project.root / "deploy", root / "deploy")
    return Project(root)


def deploy_from(ecs: Ecs, root: Path, release: Release) -> None:
    """A deploy run in checkout ``root``: the journal is the one `invoke deploy` would use there."""
    cfg = config.load(root, "staging", environ=os.environ)
    target = ecs.target()
    replace(ecs.deployer(target), journal=journal_for(cfg, target.runner)).deploy(release)


@contextlib.contextmanager
def ticking(ecs: Ecs) -> Iterator[None]:
    """ECS moves on while a subprocess deploys: tick the harness in the background."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(0.5):
            ecs.harness.tick()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(30)


def history_rows(project: Project) -> list[str]:
    result = project.invoke("history", "--env", "staging")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return [line for line in result.stdout.splitlines() if line[:3].strip().isdigit()]


def test_two_checkouts_share_the_journal_and_roll_back_to_each_others_entries(
    live: Ecs, tiny: TinyImages, tmp_path_factory: pytest.TempPathFactory
) -> None:
    own_project(live)
    other = second_checkout(live, tmp_path_factory.mktemp("checkout-b"))
    first = Release(tiny.image(NEW_SHA), NEW_SHA)
    second = Release(tiny.image(OTHER_SHA), OTHER_SHA)
    deploy_from(live, live.project.root, first)  # checkout A (a CI runner)
    deploy_from(live, other.root, second)  # checkout B (a laptop)
    assert live.serving() == OTHER_SHA
    store = SsmJournal(live.boto, live.cfg.project, "staging")
    names = [p["Name"] for p in live.boto("ssm").get_parameters_by_path(Path=store.path)["Parameters"]]
    assert sorted(names) == [f"{store.path}/000001", f"{store.path}/000002"]
    for checkout in (live.project, other):
        rows = history_rows(checkout)
        assert [row.split()[0] for row in rows] == ["1", "2"]
        assert NEW_SHA[:12] in rows[0]
        assert OTHER_SHA[:12] in rows[1]
        assert not (checkout.root / ".conveyor/history/staging.jsonl").exists()
    # B goes back to what A deployed, through the command line; the smoke probe reaches the real tasks.
    path = other.root / "deploy/environments/staging.yaml"
    path.write_text(path.read_text().replace("https://staging.example.test", live.url))
    with ticking(live):
        result = other.invoke("rollback", "--env", "staging", "--to", "1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert f"rolling staging back to entry 1 (SSM {store.path}/)" in result.stdout
    assert f"rollback to staging succeeded: serving {NEW_SHA[:12]}" in result.stdout
    assert live.serving() == NEW_SHA  # the real container of A's release answers again
    rows = history_rows(live.project)  # A sees the rollback B made
    number, _when, action, sha, outcome = rows[-1].split()[:5]
    assert (number, action, sha, outcome) == ("3", "rollback", NEW_SHA[:12], "succeeded")
    assert OLD_SHA[:12] not in rows[-1]


def test_rollback_to_an_entry_that_does_not_exist_is_one_line(
    ecs: Ecs, tmp_path_factory: pytest.TempPathFactory
) -> None:
    own_project(ecs)
    other = second_checkout(ecs, tmp_path_factory.mktemp("checkout-b"))
    result = other.invoke("rollback", "--env", "staging", "--to", "7")
    assert result.returncode == 2
    store = SsmJournal(ecs.boto, ecs.cfg.project, "staging")
    assert result.stderr.strip() == (
        f"conveyor: the journal of staging ({store.where}) has no entry 7 (see `invoke history`)"
    )
    ecs.unchanged()


def test_the_ssm_store_refuses_to_reuse_a_number(ecs: Ecs) -> None:
    store = SsmJournal(ecs.boto, f"p-{uuid.uuid4().hex[:8]}", "staging")
    first = store.record({"action": "deploy", "result": "succeeded"})
    # Another writer took number 2 between our read and our write: PutParameter(Overwrite=False) refuses it.
    ecs.boto("ssm").put_parameter(Name=f"{store.path}/000002", Value=json.dumps({"id": 2}), Type="String")
    original = store.entries
    store.entries = lambda: original()[:1]  # type: ignore[method-assign]  # a read from before that write
    third = store.record({"action": "deploy", "result": "failed", "error": "x" * 6000})
    assert (first["id"], third["id"]) == (1, 3)
    stored = json.loads(ecs.boto("ssm").get_parameter(Name=f"{store.path}/000003")["Parameter"]["Value"])
    assert stored["error"].endswith("[shortened]")
