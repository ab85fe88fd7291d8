"""The bake: after the smoke probe, watch the NEW revision through Prometheus for `deploy.bake` seconds.

Every `deploy.bake_interval` seconds three instant queries read the series the new revision's processes
expose, picked by their `git_sha` label (the app contract's revision label):

    requests  sum(http_requests_total{git_sha="<sha>"})
    errors    sum(http_requests_total{git_sha="<sha>", status=~"5.."})
    p95       histogram_quantile(0.95, sum by (le) (http_request_duration_seconds_bucket{git_sha="<sha>"}))

The counters of the new revision's processes began at zero when they started (at apply), so their sums
ARE the revision's whole life so far: an instant query needs one scrape, where rate()/increase() over a
bake-long window needs two and drops what the first scrape saw. Crossing `deploy.bake_max_error_rate` or
`deploy.bake_max_p95_ms` at any query fails the bake; so does a Prometheus that does not answer, and a
revision with no series by the end (nothing verified is never a pass). The Deployer then rolls back
through the same verified path as a failed smoke probe. Prometheus's HTTP API:
https://prometheus.io/docs/prometheus/latest/querying/api/#instant-queries
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from conveyor.config import DeploySettings
from conveyor.errors import ConveyorError

REQUESTS = "http_requests_total"
LATENCY = "http_request_duration_seconds"
LABEL = "git_sha"


class BakeFailed(ConveyorError):
    """The new revision crossed a bake threshold, or the bake could not verify it."""


Query = Callable[[str], list[float]]  # PromQL instant query -> the values of its result vector


class Prometheus:
    """Prometheus's HTTP API, one method per call: GET /api/v1/query."""

    def __init__(self, base_url: str, timeout: float = 5) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def query(self, promql: str) -> list[float]:
        """The values of an instant vector query (NaN for "no value"); any failure is a BakeFailed."""
        url = f"{self.base_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        where = f"Prometheus at {self.base_url}"
        try:
            # The scheme is checked by the config (`url` kind); the URL is the environment's own.
            with urllib.request.urlopen(url, timeout=self.timeout) as response:  # noqa: S310  # nosec B310
                body = response.read()
        except urllib.error.HTTPError as exc:  # 400/422/503 carry {"status": "error", "error": ...}
            raise BakeFailed(f"{where} refused the query ({exc.code}: {_api_error(exc.read())})") from None
        except (urllib.error.URLError, OSError) as exc:
            raise BakeFailed(f"{where} does not answer ({getattr(exc, 'reason', exc)})") from None
        try:
            data = json.loads(body)
            if data["status"] != "success":
                raise BakeFailed(f"{where}: the query failed ({data.get('error', 'no reason given')})")
            if data["data"]["resultType"] != "vector":
                raise BakeFailed(f"{where}: expected a vector, got {data['data']['resultType']}")
            return [float(item["value"][1]) for item in data["data"]["result"]]
        except (ValueError, KeyError, TypeError, IndexError):
            raise BakeFailed(f"{where}: the answer is not the query API's JSON") from None


def _api_error(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error") or "no reason given")
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace").strip() or "no body"


@dataclass(frozen=True)
class Sample:
    """One poll: what Prometheus holds for the new revision at that moment (None: no value yet)."""

    at: float  # seconds into the bake
    requests: float | None
    errors: float
    p95_ms: float | None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass
class Report:
    """What a bake measured: written to the journal entry of the deploy, passed or failed."""

    samples: list[Sample] = field(default_factory=list)

    def measured(self) -> dict[str, object]:
        """The journal's `bake` field: samples, requests, max error rate, max p95 (null when unmeasured)."""
        rates = [s.error_rate for s in self.samples if s.error_rate is not None]
        p95s = [s.p95_ms for s in self.samples if s.p95_ms is not None]
        last = next((s for s in reversed(self.samples) if s.requests), None)
        return {
            "samples": len(self.samples),
            "with_series": sum(1 for s in self.samples if s.requests),
            "requests": int(last.requests) if last and last.requests else 0,
            "errors": int(last.errors) if last else 0,
            "max_error_rate": round(max(rates), 4) if rates else None,
            "max_p95_ms": round(max(p95s), 1) if p95s and math.isfinite(max(p95s)) else None,
        }


@dataclass(frozen=True)
class Bake:
    """The bake of one environment: its settings and the query function (Prometheus.query in use)."""

    seconds: int
    prometheus: str
    max_error_rate: float
    max_p95_ms: int
    interval: int
    query: Query
    label: str = LABEL
    requests_metric: str = REQUESTS
    latency_metric: str = LATENCY

    @classmethod
    def from_settings(cls, deploy: DeploySettings, query: Query | None = None) -> Bake | None:
        """The environment's bake, or None when `deploy.bake` is 0."""
        if not deploy.bake:
            return None
        return cls(
            deploy.bake,
            deploy.bake_prometheus,
            deploy.bake_max_error_rate,
            deploy.bake_max_p95_ms,
            deploy.bake_interval,
            query or Prometheus(deploy.bake_prometheus).query,
        )

    def queries(self, git_sha: str) -> dict[str, str]:
        """The three PromQL instant queries that read the revision ``git_sha``."""
        sha = f'{self.label}="{_promql_string(git_sha)}"'
        return {
            "requests": f"sum({self.requests_metric}{{{sha}}})",
            "errors": f'sum({self.requests_metric}{{{sha}, status=~"5.."}})',
            "p95": f"histogram_quantile(0.95, sum by (le) ({self.latency_metric}_bucket{{{sha}}}))",
        }

    def describe(self, git_sha: str) -> list[str]:
        """The plan's lines for the bake."""
        latency = f"p95 <= {self.max_p95_ms} ms" if self.max_p95_ms else "p95 not checked"
        lines = [
            f"  bake        : {self.seconds}s after the smoke probe, every {self.interval}s, "
            f"Prometheus {self.prometheus}",
            f"  bake limits : 5xx share <= {self.max_error_rate:g}, {latency}; "
            "else (or unverifiable) roll back",
        ]
        lines += [f"  bake query  : {q}" for q in self.queries(git_sha).values()]
        return lines

    def run(
        self,
        git_sha: str,
        report: Report,
        *,
        say: Callable[[str], None],
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        """Poll until the bake's end; raise BakeFailed at the first crossed limit, at an unanswered
        query, or at the end when the revision had no series. ``report`` collects every sample."""
        queries = self.queries(git_sha)
        start = clock()
        end = start + self.seconds
        while True:
            sample = self._sample(queries, clock() - start)
            report.samples.append(sample)
            say(f"bake {sample.at:5.1f}s/{self.seconds}s: {self._show(sample)}")
            self._check(sample, git_sha)
            now = clock()
            if now >= end:
                break
            sleep(min(self.interval, end - now))
        if not report.samples[-1].requests:
            seen = "never had" if not any(s.requests for s in report.samples) else "lost its"
            raise BakeFailed(
                f"cannot verify {git_sha[:12]}: Prometheus {self.prometheus} {seen} series "
                f"{self.requests_metric}{{{self.label}=...}} for it within the {self.seconds}s bake "
                "(is the new revision scraped, and does it label its metrics?)"
            )

    def _sample(self, queries: dict[str, str], at: float) -> Sample:
        requests = _one(self.query(queries["requests"]))
        errors = _one(self.query(queries["errors"]))
        p95 = _one(self.query(queries["p95"])) if self.max_p95_ms else None
        return Sample(
            at=at,
            requests=requests,
            errors=errors or 0.0,
            p95_ms=None if p95 is None else p95 * 1000,
        )

    def _check(self, sample: Sample, git_sha: str) -> None:
        rate = sample.error_rate
        if rate is not None and rate > self.max_error_rate:
            raise BakeFailed(
                f"{git_sha[:12]} answered {sample.errors:.0f} of {sample.requests:.0f} requests with 5xx "
                f"({rate:.1%} > deploy.bake_max_error_rate {self.max_error_rate:.1%}) after {sample.at:.0f}s"
            )
        if self.max_p95_ms and sample.p95_ms is not None and sample.p95_ms > self.max_p95_ms:
            raise BakeFailed(
                f"{git_sha[:12]} p95 latency {sample.p95_ms:.0f} ms > deploy.bake_max_p95_ms "
                f"{self.max_p95_ms} ms after {sample.at:.0f}s ({sample.requests:.0f} requests)"
            )

    def _show(self, sample: Sample) -> str:
        if not sample.requests:
            return "no series for the new revision yet (waiting for a scrape)"
        p95 = f"p95 {sample.p95_ms:.0f} ms" if sample.p95_ms is not None else "p95 -"
        return f"{sample.requests:.0f} requests, {sample.errors:.0f} 5xx ({sample.error_rate:.2%}), {p95}"


def _one(values: list[float]) -> float | None:
    """The single value of a sum() (None: no series, or NaN)."""
    if not values or math.isnan(values[0]):
        return None
    return values[0]


def _promql_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
