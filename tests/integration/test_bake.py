"""The bake on the real engine: `invoke deploy` to a compose environment with the monitoring profile up
(the real Prometheus stand-in scraping every web instance) and `deploy.bake` set.

A healthy release passes the bake; a release whose GET /notes answers 500 two times in five (about 20% of
the /notes load) is rolled back by the bake while tests/load.py keeps requests coming through the proxy,
and the previous revision serves again, verified. The tests share one copy of the project and run in file
order, as successive deploys do. Each prints what the bake added to its deploy.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from app.tests.conftest import free_port
from tests.conftest import Project, engine_missing
from tests.integration.conftest import copy_project, own_stack
from tests.integration.test_compose_deploy import commit
from tests.load import Load

pytestmark = pytest.mark.docker

BAKE = 30  # seconds: three scrapes of the project's Prometheus (scrape_interval 10s)
STANDINS = ("PROMETHEUS_IMAGE", "ALERTMANAGER_IMAGE", "WEBHOOK_IMAGE")
LIST_NOTES = (
    '            "SELECT id, title, body, created_at, words, summary, tags, processed_at FROM notes"\n'
)
FAILING = (
    '        if __import__("random").random() < 0.4:  # a test release: 2 in 5 GET /notes fail\n'
    '            raise HTTPException(500, "injected failure")\n'
)


def get(url: str) -> dict:
    """GET url as JSON."""
    with urllib.request.urlopen(url, timeout=5) as response:  # a loopback URL we built
        return json.loads(response.read())


@dataclass
class Env:
    project: Project
    name: str
    url: str
    prometheus: str

    def journal(self) -> list[dict]:
        """The environment's deploy journal, oldest first."""
        path = self.project.root / ".conveyor/history/local.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def env(base_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    project = copy_project(tmp_path_factory.mktemp("bake"), base_image)
    dotenv = (project.root / ".env").read_text()
    for var in STANDINS:
        if f"{var}=" not in dotenv:
            engine_missing(f"{var} is not set in .env (run `invoke image.standins --save`)")
    name, port = own_stack(project, "bake")
    prom_port = free_port()
    local = project.root / "deploy/environments/local.yaml"
    text = local.read_text()
    old = "files: [compose/compose.yaml, compose/compose.local.yaml]"
    assert old in text
    local.write_text(
        text.replace(
            old, "files: [compose/compose.yaml, compose/compose.local.yaml, compose/compose.monitoring.yaml]"
        )
    )
    lines = [
        "COMPOSE_PROFILES=monitoring",
        f"PROMETHEUS_PORT={prom_port}",
        f"ALERTMANAGER_PORT={free_port()}",
        f"ALERT_WEBHOOK_PORT={free_port()}",
        f"CONVEYOR_DEPLOY__BAKE={BAKE}",
        f"CONVEYOR_DEPLOY__BAKE_PROMETHEUS=http://127.0.0.1:{prom_port}",
        "CONVEYOR_DEPLOY__BAKE_INTERVAL=3",
        # This machine's two cores are shared: a p95 limit that load alone cannot cross; still measured.
        "CONVEYOR_DEPLOY__BAKE_MAX_P95_MS=3000",
    ]
    with (project.root / ".env").open("a") as out:
        out.write("".join(f"{line}\n" for line in lines))
    commit(project, "deploy with the monitoring profile and a bake")
    built = project.invoke("build", timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr
    try:
        yield Env(project, name, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{prom_port}")
    finally:
        project.invoke("down", "--volumes", timeout=180)
        subprocess.run(
            ["docker", "compose", "-p", name, "--profile", "monitoring", "down", "-v", "--remove-orphans"],
            capture_output=True,
            check=False,
        )


def bake_seconds(stdout: str) -> float:
    """How long the bake step took, from the runner's timing line."""
    found = re.search(r"<== bake [0-9a-f]{12}\S* for \d+s: (?:done in|failed after) ([0-9.]+)s", stdout)
    assert found, stdout[-3000:]
    return float(found.group(1))


def sha_of(project: Project) -> str:
    """The project's HEAD commit."""
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=project.root, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_a_healthy_release_passes_the_bake_prometheus_brought_up_by_the_same_deploy(env: Env) -> None:
    sha = sha_of(env.project)
    start = time.monotonic()
    result = env.project.invoke("deploy", timeout=600)
    took = time.monotonic() - start
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    assert get(f"{env.url}/version")["git_sha"] == sha
    assert (
        f"bake        : {BAKE}s after the smoke probe, every 3s, Prometheus {env.prometheus}" in result.stdout
    )
    assert re.search(r"bake +\d+\.\ds/30s: \d+ requests, 0 5xx \(0\.00%\), p95 \d+ ms", result.stdout)
    (entry,) = env.journal()
    assert entry["result"] == "succeeded"
    bake = entry["bake"]
    assert bake["samples"] >= BAKE // 3
    assert bake["with_series"] >= 1
    assert bake["requests"] > 0
    assert bake["max_error_rate"] == 0.0
    assert bake["max_p95_ms"] is not None
    # Prometheus holds the revision's series by its label: what the bake read is really there.
    query = urllib.parse.urlencode({"query": f'sum(http_requests_total{{git_sha="{sha}"}})'})
    assert get(f"{env.prometheus}/api/v1/query?{query}")["data"]["result"]
    baked = bake_seconds(result.stdout)
    print(f"first deploy: {took:.1f}s, of which the bake {baked:.1f}s ({baked - BAKE:.1f}s over {BAKE}s)")


def test_a_release_answering_5xx_under_load_is_rolled_back_by_the_bake(env: Env) -> None:
    before = get(f"{env.url}/version")["git_sha"]
    main = env.project.root / "app/main.py"
    text = main.read_text()
    anchor = "        rows = await _db(\n            state,\n" + LIST_NOTES
    assert text.count(anchor) == 1
    main.write_text(text.replace(anchor, FAILING + anchor))
    bad = commit(env.project, "a release that fails 2 in 5 GET /notes")
    built = env.project.invoke("build", timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr
    with Load(env.url, clients=2, interval=0.05) as load:
        time.sleep(2)
        start = time.monotonic()
        result = env.project.invoke("deploy", timeout=600)
        took = time.monotonic() - start
        time.sleep(2)
    assert result.returncode == 1, result.stdout[-4000:] + result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "failed at bake (" in line
    assert re.search(
        rf"{bad[:12]} answered \d+ of \d+ requests with 5xx \(\d+\.\d% > deploy.bake_max_error_rate", line
    )
    assert line.endswith(f"rolled back: serving {before[:12]} again (verified)")
    assert get(f"{env.url}/version")["git_sha"] == before
    deploy, rollback = env.journal()[-2:]
    assert (deploy["action"], deploy["result"], deploy["git_sha"]) == ("deploy", "failed", bad)
    assert deploy["error"].startswith(f"bake: {bad[:12]} answered ")
    assert deploy["bake"]["max_error_rate"] > 0.01
    assert deploy["bake"]["errors"] > 0
    assert (rollback["action"], rollback["result"], rollback["git_sha"]) == ("rollback", "succeeded", before)
    # The old revision serves the load again: every request after the rollback succeeds.
    after = time.monotonic() - 2
    assert load.window(after, time.monotonic() + 1).failed == []
    served = load.window(start, after)
    baked = bake_seconds(result.stdout)
    print(
        f"bad release: deploy + rollback {took:.1f}s, the bake failed it after {baked:.1f}s "
        f"(limit {BAKE}s); load during the deploy: {served.summary()}"
    )


def test_a_healthy_release_under_load_passes_and_the_bake_adds_its_seconds(env: Env) -> None:
    main = env.project.root / "app/main.py"
    main.write_text(main.read_text().replace(FAILING, ""))
    good = commit(env.project, "the fix")
    built = env.project.invoke("build", timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr
    with Load(env.url, clients=2, interval=0.05) as load:
        start = time.monotonic()
        result = env.project.invoke("deploy", timeout=600)
        took = time.monotonic() - start
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    assert get(f"{env.url}/version")["git_sha"] == good
    entry = env.journal()[-1]
    assert (entry["result"], entry["git_sha"]) == ("succeeded", good)
    assert entry["bake"]["max_error_rate"] <= 0.01
    assert entry["bake"]["requests"] > 100  # the load reached the new revision and was measured
    baked = bake_seconds(result.stdout)
    assert BAKE <= baked < BAKE + 10
    during = load.window(start, start + took)
    print(
        f"healthy release under load: deploy {took:.1f}s, of which the bake {baked:.1f}s "
        f"({baked - BAKE:.1f}s over {BAKE}s: the queries); load: {during.summary()}"
    )
