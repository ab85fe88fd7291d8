"""A steady mixed load (reads and writes) against the notes service, for deploys under load.

Each client thread is an httpx client with a keep-alive connection pool (as browsers and SDKs keep them:
a pooled connection the server has already closed is not reused), alternates `GET /notes?limit=5` and
`POST /notes`, and paces itself to one request every `interval` seconds. Every request is recorded: when it
started, how long it took, and whether it failed (a non-2xx answer, a reset, a refused connection). A
failed request is not retried: a user would have seen it.
Used by tests/integration/test_compose_deploy.py and benchmarks/deploy_under_load.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx


@dataclass(frozen=True)
class Sample:
    start: float
    seconds: float
    ok: bool
    what: str  # "GET 200", "POST 502", "ConnectionResetError", ...


@dataclass
class Window:
    """The samples that started between two moments, and what a table row says about them."""

    samples: list[Sample]

    @property
    def failed(self) -> list[Sample]:
        return [s for s in self.samples if not s.ok]

    def percentile(self, q: float) -> float:
        times = sorted(s.seconds for s in self.samples)
        if not times:
            return 0.0
        return times[min(len(times) - 1, int(q * len(times)))]

    def failing_window(self) -> float:
        failed = self.failed
        return failed[-1].start - failed[0].start if failed else 0.0

    def summary(self) -> str:
        kinds = sorted({s.what for s in self.failed})
        return f"{len(self.samples)} sent, {len(self.failed)} failed" + (
            f" ({', '.join(kinds)})" if kinds else ""
        )


@dataclass
class Load:
    url: str
    clients: int = 2
    interval: float = 0.02
    samples: list[Sample] = field(default_factory=list)
    written: list[int] = field(default_factory=list)  # ids of the notes whose POST succeeded
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Load:
        for n in range(self.clients):
            thread = threading.Thread(target=self._client, args=(n,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def window(self, start: float, end: float) -> Window:
        with self._lock:
            return Window([s for s in self.samples if start <= s.start < end])

    def _client(self, n: int) -> None:
        i = 0
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                i += 1
                began = time.monotonic()
                title = f"load-{n}-{i}-{uuid.uuid4().hex[:6]}"
                write = i % 2 == 0
                try:
                    if write:
                        response = client.post("/notes", json={"title": title})
                    else:
                        response = client.get("/notes", params={"limit": 5})
                    ok, what = response.is_success, f"{response.request.method} {response.status_code}"
                except httpx.HTTPError as exc:
                    ok, what = False, type(exc).__name__
                elapsed = time.monotonic() - began
                with self._lock:
                    self.samples.append(Sample(began, elapsed, ok, what))
                    if ok and write:
                        self.written.append(int(response.json()["id"]))
                self._stop.wait(max(0.0, self.interval - elapsed))


def row(name: str, during: Window, steady: Window, seconds: float) -> str:
    """One line of the deploy-under-load table."""
    p50, p99, base99 = during.percentile(0.5), during.percentile(0.99), steady.percentile(0.99)
    ratio = p99 / base99 if base99 else 0.0
    return (
        f"{name:<28} {seconds:6.1f}s {len(during.samples):6d} {len(during.failed):6d} "
        f"{during.failing_window():7.2f}s {p50 * 1000:7.1f}ms {p99 * 1000:7.1f}ms {base99 * 1000:7.1f}ms "
        f"{ratio:6.2f}x"
    )


HEADER = (
    f"{'operation':<28} {'took':>7} {'sent':>6} {'failed':>6} {'window':>8} {'p50':>9} {'p99':>9} "
    f"{'p99 idle':>9} {'ratio':>7}"
)
