"""The bake: its keys (bad values refused in one line, before anything happens), the loop's verdicts, and
the Deployer step (a failed bake rolls back through the verified path; the journal keeps the measurements).

The loop reads Prometheus through an injected query function (house style: clients injected, like the
Deployer's probe); the real Prometheus answers in tests/integration/test_bake.py.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from conveyor import config
from conveyor.config import DeploySettings
from conveyor.deploy.bake import Bake, BakeFailed, Prometheus, Report
from conveyor.deploy.model import DeployFailed
from conveyor.errors import ConfigError
from tests.conftest import Clock, Project
from tests.unit.test_deploy_model import NEW, OLD, make

SHA = NEW.git_sha


def settings(**over: object) -> DeploySettings:
    """Deploy settings with a 30 s bake every 5 s, limits 1% and 500 ms."""
    base: dict[str, object] = dict(
        timeout=30,
        lock_ttl=60,
        keep_revisions=5,
        bake=30,
        bake_prometheus="http://prom.test:9090",
        bake_max_error_rate=0.01,
        bake_max_p95_ms=500,
        bake_interval=5,
    )
    return DeploySettings(**{**base, **over})  # type: ignore[arg-type]


class Series:
    """What Prometheus would hold for the revision, poll by poll: (requests, errors, p95 seconds)."""

    def __init__(self, polls: list[tuple[float, float, float] | None]) -> None:
        self.polls = polls
        self.asked: list[str] = []
        self.n = -1

    def query(self, promql: str) -> list[float]:
        self.asked.append(promql)
        if promql.startswith("sum(http_requests_total{") and "status" not in promql:
            self.n = min(self.n + 1, len(self.polls) - 1)
        current = self.polls[self.n]
        if current is None:
            return []
        requests, errors, p95 = current
        if "status" in promql:
            return [errors] if errors else []  # no 5xx series at all: Prometheus returns nothing
        if promql.startswith("histogram_quantile"):
            return [p95]
        return [requests]


def bake_with(series: Series, **over: object) -> tuple[Bake, Report, list[str], Clock]:
    bake = Bake.from_settings(settings(**over), query=series.query)
    assert bake is not None
    return bake, Report(), [], Clock()


def run(bake: Bake, report: Report, said: list[str], clock: Clock) -> None:
    bake.run(SHA, report, say=said.append, clock=clock, sleep=clock.sleep)


# --- the loop -------------------------------------------------------------------------------------------


def test_a_healthy_revision_passes_after_polling_for_the_whole_bake() -> None:
    series = Series([(100, 0, 0.02), (200, 1, 0.03), (400, 2, 0.04)])
    bake, report, said, clock = bake_with(series)
    start = clock.now
    run(bake, report, said, clock)
    assert clock.now - start == 30
    assert len(report.samples) == 7  # at 0, 5, ... 30 s
    assert report.measured() == {
        "samples": 7,
        "with_series": 7,
        "requests": 400,
        "errors": 2,
        "max_error_rate": 0.005,
        "max_p95_ms": 40.0,
    }
    assert said[0] == "bake   0.0s/30s: 100 requests, 0 5xx (0.00%), p95 20 ms"
    assert f'git_sha="{SHA}"' in series.asked[0]


def test_an_error_rate_above_the_limit_fails_at_the_first_poll_that_sees_it() -> None:
    series = Series([(100, 0, 0.02), (200, 40, 0.02)])
    bake, report, said, clock = bake_with(series)
    with pytest.raises(BakeFailed) as exc:
        run(bake, report, said, clock)
    assert str(exc.value) == (
        f"{SHA[:12]} answered 40 of 200 requests with 5xx (20.0% > deploy.bake_max_error_rate 1.0%) after 5s"
    )
    assert report.measured()["max_error_rate"] == 0.2
    assert len(report.samples) == 2


def test_a_p95_above_the_limit_fails() -> None:
    bake, report, said, clock = bake_with(Series([(50, 0, 0.75)]))
    with pytest.raises(BakeFailed, match=r"p95 latency 750 ms > deploy.bake_max_p95_ms 500 ms after 0s"):
        run(bake, report, said, clock)
    assert report.measured()["max_p95_ms"] == 750.0


def test_a_p95_limit_of_zero_is_not_checked_nor_queried() -> None:
    series = Series([(50, 0, 9.0)])
    bake, report, said, clock = bake_with(series, bake_max_p95_ms=0, bake=5)
    run(bake, report, said, clock)
    assert not any(q.startswith("histogram_quantile") for q in series.asked)
    assert report.measured()["max_p95_ms"] is None


def test_no_series_until_a_scrape_is_waited_for_then_judged() -> None:
    series = Series([None, None, (30, 0, 0.01)])
    bake, report, said, clock = bake_with(series, bake=10)
    run(bake, report, said, clock)
    assert said[0].endswith("no series for the new revision yet (waiting for a scrape)")
    assert report.measured()["with_series"] == 1


def test_a_revision_never_seen_by_prometheus_cannot_pass() -> None:
    bake, report, said, clock = bake_with(Series([None]), bake=10)
    with pytest.raises(BakeFailed) as exc:
        run(bake, report, said, clock)
    assert str(exc.value).startswith(f"cannot verify {SHA[:12]}: Prometheus http://prom.test:9090 never had")
    assert "\n" not in str(exc.value)
    assert report.measured()["samples"] == 3


def test_series_that_vanish_before_the_end_cannot_pass() -> None:
    bake, report, said, clock = bake_with(Series([(10, 0, 0.01), None]), bake=5)
    with pytest.raises(BakeFailed, match="lost its series"):
        run(bake, report, said, clock)


def test_an_unreachable_prometheus_fails_the_bake_in_one_line() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bake = Bake.from_settings(settings(bake_prometheus=f"http://127.0.0.1:{port}"))
    assert bake is not None
    clock = Clock()
    with pytest.raises(BakeFailed) as exc:
        bake.run(SHA, Report(), say=lambda _: None, clock=clock, sleep=clock.sleep)
    assert str(exc.value).startswith(f"Prometheus at http://127.0.0.1:{port} does not answer (")
    assert "\n" not in str(exc.value)


def test_a_sha_is_quoted_as_a_promql_string() -> None:
    bake = Bake.from_settings(settings(), query=lambda q: [])
    assert bake is not None
    assert bake.queries('ab"c\\')["requests"] == 'sum(http_requests_total{git_sha="ab\\"c\\\\"})'


def test_off_means_no_bake() -> None:
    assert Bake.from_settings(settings(bake=0)) is None
    assert isinstance(Prometheus("http://p:9090/").base_url, str)


# --- the Deployer step ----------------------------------------------------------------------------------


def test_a_failed_bake_rolls_back_verified_and_journals_what_it_measured(tmp_path: Path) -> None:
    deployer, target, journal, out = make(tmp_path)
    deployer.bake, _, _, _ = bake_with(Series([(100, 0, 0.02), (300, 60, 0.02)]))
    with pytest.raises(DeployFailed) as exc:
        deployer.deploy(NEW)
    assert "failed at bake (" in str(exc.value)
    assert str(exc.value).endswith(f"rolled back: serving {OLD.git_sha[:12]} again (verified)")
    assert target.serving == OLD
    assert target.calls[-2:] == ["rollback", f"wait:{OLD.image}"]
    deploy, rollback = journal.entries()[-2:]
    assert deploy["result"] == "failed"
    assert str(deploy["error"]).startswith(f"bake: {SHA[:12]} answered 60 of 300 requests with 5xx (20.0%")
    assert deploy["bake"] == {
        "samples": 2,
        "with_series": 2,
        "requests": 300,
        "errors": 60,
        "max_error_rate": 0.2,
        "max_p95_ms": 20.0,
    }
    assert (rollback["action"], rollback["result"], rollback["git_sha"]) == (
        "rollback",
        "succeeded",
        OLD.git_sha,
    )
    assert target.lock.holder() is None
    text = out.getvalue()
    assert "bake        : 30s after the smoke probe, every 5s, Prometheus http://prom.test:9090" in text
    assert "s/30s: 300 requests, 60 5xx (20.00%), p95 20 ms" in text  # progress while baking


def test_a_passed_bake_is_journaled_with_the_deploy(tmp_path: Path) -> None:
    deployer, target, journal, _ = make(tmp_path)
    deployer.bake, _, _, _ = bake_with(Series([(100, 0, 0.02)]), bake=10)
    deployer.deploy(NEW)
    (entry,) = journal.entries()
    assert entry["result"] == "succeeded"
    measured = entry["bake"]
    assert isinstance(measured, dict)
    assert measured["samples"] >= 2  # polled until the end of the bake, not once
    assert measured["with_series"] == measured["samples"]
    assert target.calls[-1] == "finish"


def test_the_dry_plan_shows_the_bake_and_queries_nothing(tmp_path: Path) -> None:
    deployer, _, _, out = make(tmp_path)
    series = Series([(1, 0, 0.01)])
    deployer.bake, _, _, _ = bake_with(series)
    deployer.deploy(NEW, dry=True)
    assert (
        "bake limits : 5xx share <= 0.01, p95 <= 500 ms; else (or unverifiable) roll back" in out.getvalue()
    )
    assert f'bake query  : sum(http_requests_total{{git_sha="{SHA}"}})' in out.getvalue()
    assert series.asked == []


def test_a_rollback_is_not_baked(tmp_path: Path) -> None:
    deployer, _, journal, out = make(tmp_path)
    series = Series([None])
    deployer.bake, _, _, _ = bake_with(series)
    deployer.deploy(NEW, action="rollback")
    assert series.asked == []
    assert "bake" not in journal.entries()[-1]
    assert "none for a rollback" in out.getvalue()


def test_without_a_bake_the_journal_entry_is_as_before(tmp_path: Path) -> None:
    deployer, _, journal, out = make(tmp_path)
    deployer.deploy(NEW)
    assert "bake" not in journal.entries()[0]
    assert "bake" not in out.getvalue()


# --- the keys -------------------------------------------------------------------------------------------


def _env(project: Project, body: str) -> None:
    project.write(
        "deploy/environments/local.yaml",
        f"target: compose\nurl: http://127.0.0.1:8080\ncompose:\n  files: [compose.yaml]\n{body}",
    )


def test_the_keys_load_into_the_deploy_settings(project: Project) -> None:
    _env(
        project,
        "deploy:\n  bake: 60\n  bake_prometheus: http://prom:9090\n  bake_max_error_rate: 0.05\n"
        "  bake_max_p95_ms: 250\n  bake_interval: 2\n",
    )
    deploy = config.load(project.root, environ={}).env.deploy
    assert (deploy.bake, deploy.bake_prometheus, deploy.bake_max_error_rate) == (60, "http://prom:9090", 0.05)
    assert (deploy.bake_max_p95_ms, deploy.bake_interval) == (250, 2)
    off = config.load(project.root, environ={"CONVEYOR_DEPLOY__BAKE": "0"}).env.deploy
    assert off.bake == 0
    assert Bake.from_settings(off) is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "deploy:\n  bake: 30\n",
            "deploy/environments/local.yaml:6: `deploy.bake` is 30s but `deploy.bake_prometheus` is not set",
        ),
        (
            "deploy:\n  bake_max_error_rate: 5%\n",
            ":6: `deploy.bake_max_error_rate` must be a fraction from 0 to 1 (0.01 is 1%), got '5%'",
        ),
        (
            "deploy:\n  bake_max_error_rate: 1.5\n",
            "`deploy.bake_max_error_rate` must be a fraction from 0 to 1",
        ),
        (
            "deploy:\n  bake_max_error_rate: true\n",
            "`deploy.bake_max_error_rate` must be a fraction from 0 to 1",
        ),
        ("deploy:\n  bake: -5\n", "local.yaml:6: `deploy.bake` must be 0 or more, got -5"),
        ("deploy:\n  bake_interval: 0\n", "local.yaml:6: `deploy.bake_interval` must be 1 or more, got 0"),
        ("deploy:\n  bake_max_p95_ms: fast\n", "`deploy.bake_max_p95_ms` must be an integer, got str 'fast'"),
        (
            "deploy:\n  bake_prometheus: prom:9090\n",
            "`deploy.bake_prometheus` must be an http:// or https:// URL, got 'prom:9090'",
        ),
        (
            "deploy:\n  bake: 30\n  bake_prometheus: http://p:9090\nprocesses:\n  worker: {}\n",
            "`deploy.bake` watches HTTP request metrics, but no process serves HTTP",
        ),
    ],
)
def test_a_bad_bake_setting_is_one_line_naming_the_key(project: Project, body: str, message: str) -> None:
    _env(project, body)
    with pytest.raises(ConfigError) as exc:
        config.load(project.root, environ={})
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_bad_bake_setting_stops_invoke_deploy_before_any_side_effect(project: Project) -> None:
    _env(project, "deploy:\n  bake: 30\n")
    project.write(
        "build/release.json", '{"refs": ["demo-app:abc"], "image_id": "sha256:1", "git_sha": "abc"}'
    )
    result = project.invoke("deploy", env={"CONVEYOR_DEPLOY__BAKE_MAX_ERROR_RATE": "lots"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "conveyor: env CONVEYOR_DEPLOY__BAKE_MAX_ERROR_RATE: `deploy.bake_max_error_rate` must be a fraction "
        "from 0 to 1 (0.01 is 1%), got 'lots'"
    )
    assert result.stdout == ""
    assert not (project.root / ".conveyor").exists()  # no lock taken, nothing journaled


def test_the_reference_app_labels_its_request_metrics_with_the_revision() -> None:
    """What the bake's queries select is what the app exposes (the app's own exposition format)."""
    from prometheus_client import generate_latest

    from app.observability import Metrics

    metrics = Metrics(SHA)
    metrics.observe("GET", "/notes", 500, 0.02)
    text = generate_latest(metrics.registry).decode()
    assert f'http_requests_total{{git_sha="{SHA}",method="GET",route="/notes",status="500"}} 1.0' in text
    assert f'http_request_duration_seconds_bucket{{git_sha="{SHA}",le="0.025",method="GET"' in text
    assert "git_sha" not in generate_latest(Metrics().registry).decode()  # no sha given: no label
