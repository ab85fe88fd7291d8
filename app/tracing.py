"""OpenTelemetry for the web and the worker process, set up only when tracing is on.

Settings.traces_exporters (the standard OTEL_* variables, validated in app.settings) says whether it is.
Off, the default, this module is never imported: no tracer provider, no instrumentation, the request path
and the log lines are the ones without tracing. On, a process gets one tracer provider with a batch span
processor, FastAPI's server spans (W3C `traceparent` accepted), psycopg and Redis client spans, the trace
context carried on the notes stream to the worker (inject/extract), and the trace and span ids in every
JSON log line written inside a span.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from fastapi import FastAPI
from opentelemetry import context, propagate, trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind

from app import __version__
from app.settings import Settings

SERVICE = "conveyor-demo"
# FastAPI's per-message spans (http receive / http send) double the spans of a request for no insight.
EXCLUDED_SPANS: list[Any] = ["receive", "send"]


class Tracing:
    """One process's tracer provider and the libraries instrumented with it; shutdown() undoes both."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("app")
        self._libraries = (PsycopgInstrumentor(), RedisInstrumentor())
        for library in self._libraries:
            # Global: every psycopg connection and Redis client of the process, made before or after.
            library.instrument(tracer_provider=provider, raise_exception_on_conflict=True)

    def instrument_app(self, app: FastAPI) -> None:
        """Server spans for every request, child of an incoming W3C `traceparent`."""
        FastAPIInstrumentor.instrument_app(app, tracer_provider=self.provider, exclude_spans=EXCLUDED_SPANS)

    def untraced(self) -> AbstractContextManager[None]:
        """No library span inside: the worker's polling (a read a second, sweeps, claims) would otherwise
        start a trace of its own every second. A job inside is traced again (job())."""
        return suppress_instrumentation()

    @contextmanager
    def job(self, name: str, carrier: Mapping[str, str], attributes: Mapping[str, Any]) -> Iterator[Span]:
        """A consumer span for a job, child of the context its producer injected into `carrier` (a new
        trace without one), with the libraries' spans inside it whatever the caller suppressed."""
        token = context.attach(propagate.extract(carrier, context=context.Context()))
        try:
            with self.tracer.start_as_current_span(
                name, kind=SpanKind.CONSUMER, attributes=dict(attributes)
            ) as span:
                yield span
        finally:
            context.detach(token)

    def shutdown(self) -> None:
        """Export what is buffered, then remove the instrumentation (tests start several in one process)."""
        for library in self._libraries:
            library.uninstrument()
        self.provider.shutdown()


def start(settings: Settings, process: str, exporter: SpanExporter | None = None) -> Tracing | None:
    """Tracing for `process` (web, worker) as the settings ask, or with `exporter` (tests, benchmarks);
    None when tracing is off."""
    exporters = [exporter] if exporter is not None else [_exporter(n) for n in settings.traces_exporters]
    if not exporters:
        return None
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are read here; ours only fill what they leave unset.
    resource = Resource.create({SERVICE_VERSION: __version__, "vcs.ref.head.revision": settings.git_sha})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        name = SERVICE if process == "web" else f"{SERVICE}-{process}"
        resource = resource.merge(Resource({SERVICE_NAME: name}))
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER, parent-based always on
    for each in exporters:
        provider.add_span_processor(BatchSpanProcessor(each))  # OTEL_BSP_* tune it
    return Tracing(provider)


def _exporter(name: str) -> SpanExporter:
    if name == "console":  # one JSON line per span on stderr: stdout carries the logs
        return ConsoleSpanExporter(out=sys.stderr, formatter=_one_line)
    # Endpoint, headers, timeout, compression and certificates from OTEL_EXPORTER_OTLP_[TRACES_]*.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _one_line(span: ReadableSpan) -> str:
    return f"{span.to_json(indent=None)}\n"


def inject(fields: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """The current trace context added to a stream entry's fields (`traceparent`, `tracestate`)."""
    propagate.inject(fields)
    return fields


def add_trace_ids(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the ids of the span the line is written in (see current_ids)."""
    ids = current_ids()
    if ids is not None:
        event.update(ids)
    return event


def current_ids() -> dict[str, str] | None:
    """trace_id and span_id of the current span, in hex as W3C `traceparent` writes them; None outside
    a span."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return {
        "trace_id": trace.format_trace_id(context.trace_id),
        "span_id": trace.format_span_id(context.span_id),
    }
