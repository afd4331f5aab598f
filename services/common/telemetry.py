"""OpenTelemetry tracing for every service: where a request's time goes under load.

Configured by the standard ``OTEL_*`` variables:

- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``): spans go out over OTLP/HTTP
  (compose points it at Jaeger);
- otherwise ``SIGHTLINE_TRACE_DIR`` (set by ``make up`` to ``.data/traces``) or
  ``SIGHTLINE_TRACE_FILE``: spans are appended to a local file as OTLP/JSON lines, one file
  per process, so diagnosis needs no extra server;
- neither, or ``OTEL_SDK_DISABLED=true``: tracing is off and costs nothing.

Defaults keep tracing cheap at load (measured by `make bench-tracing`): the sampling
decision is made first, before any per-request span work (``HeadSampledTracingMiddleware``,
``SIGHTLINE_TRACE_SAMPLE_RATIO``, default ``DEFAULT_SAMPLE_RATIO``); the per-message ASGI
receive/send spans are not made; spans leave through a batch processor off the request
path. With ``OTEL_TRACES_SAMPLER`` set, the SDK's sampler decides instead.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TextIO

from litestar.plugins.opentelemetry import OpenTelemetryConfig
from litestar.plugins.opentelemetry.middleware import OpenTelemetryInstrumentationMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags
from sqlalchemy.ext.asyncio import AsyncEngine

tracer = trace.get_tracer("sightline")


def step_span(name: str) -> AbstractContextManager[Span]:
    """A child span for one step of a request, or a no-op when the request is not traced.

    Most requests are not sampled; for them, even a non-recording span costs a context
    attach and detach per step (3-4 % of an ingest worker's CPU at load), so none is made.
    """
    if trace.get_current_span().is_recording():
        return tracer.start_as_current_span(name)
    return nullcontext(trace.INVALID_SPAN)


def past_span(name: str, start_ns: int, end_ns: int, parent: Span) -> None:
    """A finished child span of `parent` (a recording span) between two times, in ns since the
    epoch: a step whose start was not seen from inside it (before a middleware ran, around an
    ASGI send)."""
    span = tracer.start_span(name, context=trace.set_span_in_context(parent), start_time=start_ns)
    span.end(end_time=end_ns)


# Moments of a traced request that a later step's span starts from, kept in its task's context
# (begun by the middleware that traces its steps): "routed" (its tracker slot taken, routing to
# its handler begins), "answer" (its task ran again after its last wait, the commit: its answer
# begins). Untraced requests have none, and marking costs them one lookup.
_request_marks: ContextVar[dict[str, int] | None] = ContextVar("sightline_request_marks", default=None)


def begin_request_marks() -> None:
    """This task's request keeps its marks from now (a fresh set: not an earlier request's)."""
    _request_marks.set({})


def mark_request(name: str, at_ns: int | None = None) -> None:
    """Marks a moment (now, or at_ns since the epoch) of this task's traced request."""
    marks = _request_marks.get()
    if marks is not None:
        marks[name] = time.time_ns() if at_ns is None else at_ns


def request_mark(name: str) -> int | None:
    marks = _request_marks.get()
    return None if marks is None else marks.get(name)


# Share of requests traced when OTEL_TRACES_SAMPLER is not set: at the seed load (~1,000
# requests/s) this still yields about 10 traces a second for the latency breakdown.
DEFAULT_SAMPLE_RATIO = 0.01

_KIND_NUMBERS = {
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}


def _otlp_endpoint(env: Mapping[str, str]) -> str | None:
    return env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None


def trace_file_for(service_name: str, env: Mapping[str, str]) -> Path | None:
    if env.get("SIGHTLINE_TRACE_FILE"):
        return Path(env["SIGHTLINE_TRACE_FILE"])
    if env.get("SIGHTLINE_TRACE_DIR"):
        # One file per process: Granian workers never interleave partial lines.
        return Path(env["SIGHTLINE_TRACE_DIR"]) / f"{service_name}-{os.getpid()}.jsonl"
    return None


def tracing_enabled(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return bool(_otlp_endpoint(env) or env.get("SIGHTLINE_TRACE_FILE") or env.get("SIGHTLINE_TRACE_DIR"))


def head_sample_ratio(env: Mapping[str, str]) -> float:
    """Share of requests the server middleware traces (1.0 when the SDK's sampler decides)."""
    if env.get("OTEL_TRACES_SAMPLER"):
        return 1.0
    return float(env.get("SIGHTLINE_TRACE_SAMPLE_RATIO", DEFAULT_SAMPLE_RATIO))


def _sampler(env: Mapping[str, str]) -> Sampler | None:
    # None lets the SDK read OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG itself. Otherwise
    # requests were already sampled at the door, so whatever starts a trace is kept, and
    # children follow their parent.
    if env.get("OTEL_TRACES_SAMPLER"):
        return None
    return ParentBased(ALWAYS_ON)


def unsampled_span() -> NonRecordingSpan:
    """A parent that makes every span under it a cheap non-recording one."""
    return NonRecordingSpan(
        SpanContext(
            trace_id=random.getrandbits(128) or 1,
            span_id=random.getrandbits(64) or 1,
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.DEFAULT),
        )
    )


class HeadSampledTracingMiddleware(OpenTelemetryInstrumentationMiddleware):
    """Litestar's OpenTelemetry middleware, entered only for the requests that are traced.

    The OpenTelemetry ASGI middleware collects a dozen request attributes and starts a span
    before the sampler is asked, which cost about half of a no-op endpoint's throughput at
    a 2 % sample rate. Here the decision comes first: a request that carries a W3C
    ``traceparent`` (its caller decided) or wins the draw goes through the full middleware;
    any other runs under a non-recording parent, so its child spans cost almost nothing.

    On the public tracker paths (``UNTRUSTED_TRACE_CONTEXT_PATHS``) anyone can send a
    ``traceparent``, so it is removed there: otherwise every client could decide to be traced
    and how fast span files grow. Those requests are traced by the draw alone.
    """

    def __init__(self, app: ASGIApp, config: OpenTelemetryConfig) -> None:
        super().__init__(app=app, config=config)
        self._ratio = head_sample_ratio(os.environ)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("path") in UNTRUSTED_TRACE_CONTEXT_PATHS and _has_traceparent(scope):
            scope = scope.copy()
            scope["headers"] = [(name, value) for name, value in scope["headers"] if name not in _TRACE_HEADERS]
        if self._ratio >= 1.0 or random.random() < self._ratio or _has_traceparent(scope):
            await super().__call__(scope, receive, send)
            return
        with trace.use_span(unsampled_span(), end_on_exit=False):
            await self.app(scope, receive, send)


# Ingest's public routes: the tracker's posts and its script.
UNTRUSTED_TRACE_CONTEXT_PATHS = frozenset({"/v1/events", "/v1/replay", "/tracker.js"})
_TRACE_HEADERS = (b"traceparent", b"tracestate")


def _has_traceparent(scope: Scope) -> bool:
    return any(name == b"traceparent" for name, _ in scope.get("headers", ()))


def configure_tracing(service: str, environ: Mapping[str, str] | None = None) -> TracerProvider | None:
    """Install this process's tracer provider, or return None when tracing is off."""
    env = os.environ if environ is None else environ
    if not tracing_enabled(env):
        return None
    service_name = env.get("OTEL_SERVICE_NAME", f"sightline-{service}")
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}), sampler=_sampler(env))
    exporter: SpanExporter
    if _otlp_endpoint(env):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    else:
        path = trace_file_for(service, env)
        assert path is not None  # tracing_enabled() checked one of the two is set
        exporter = OtlpJsonLinesExporter(
            path,
            max_bytes=int(env.get("SIGHTLINE_TRACE_FILE_MAX_BYTES", DEFAULT_TRACE_FILE_MAX_BYTES)),
            backups=int(env.get("SIGHTLINE_TRACE_FILE_BACKUPS", DEFAULT_TRACE_FILE_BACKUPS)),
        )
    # The processor reads OTEL_BSP_* for its queue and batch sizes; spans are exported by
    # its own thread, never on a request.
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def instrument_engine(engine: AsyncEngine, tracer_provider: TracerProvider) -> None:
    """A CLIENT span (db.system = postgresql) for every statement the engine runs."""
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    # The instrumentation declares support up to SQLAlchemy 2.0 only; the engine events it
    # hooks are unchanged in 2.1 (tests/common/test_tracing.py checks the spans appear).
    SQLAlchemyInstrumentor().instrument(engine=engine.sync_engine, tracer_provider=tracer_provider, skip_dep_check=True)


# Spans hold URLs and User-Agents: a file of them grows to this size, then is rotated, and
# only the newest few files are kept (docs/privacy.md).
DEFAULT_TRACE_FILE_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_TRACE_FILE_BACKUPS = 2


class OtlpJsonLinesExporter(SpanExporter):
    """Appends each export as one OTLP/JSON line (hex ids, 64-bit integers as strings).

    The file is readable by its owner only (0600), and once it reaches ``max_bytes`` it is
    renamed to ``<name>.1`` (older ones shift to ``.2`` ...) and a new one begun; files beyond
    ``backups`` are deleted.
    """

    def __init__(
        self, path: Path, max_bytes: int = DEFAULT_TRACE_FILE_MAX_BYTES, backups: int = DEFAULT_TRACE_FILE_BACKUPS
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._max_bytes = max_bytes
        self._backups = backups
        self._lock = threading.Lock()
        self._file = self._open()

    def _open(self) -> TextIO:
        descriptor = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        # A file made earlier with a looser mode (or under another umask) is tightened too.
        os.fchmod(descriptor, 0o600)
        return os.fdopen(descriptor, "a", encoding="utf-8")

    def _rotate_if_full(self) -> None:
        if self._file.tell() < self._max_bytes:
            return
        self._file.close()
        # .1 -> .2 ... (a rename replaces the oldest), then the full file becomes .1.
        for index in range(self._backups - 1, 0, -1):
            older = self._backup(index)
            if older.exists():
                older.rename(self._backup(index + 1))
        if self._backups > 0:
            self._path.rename(self._backup(1))
        else:
            self._path.unlink()
        self._file = self._open()

    def _backup(self, index: int) -> Path:
        return self._path.with_name(f"{self._path.name}.{index}")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        by_resource: dict[int, tuple[Any, dict[str, list[dict[str, Any]]]]] = {}
        for span in spans:
            resource_key = id(span.resource)
            _, scopes = by_resource.setdefault(resource_key, (span.resource, {}))
            scope_name = span.instrumentation_scope.name if span.instrumentation_scope else ""
            scopes.setdefault(scope_name, []).append(_span_json(span))
        line = {
            "resourceSpans": [
                {
                    "resource": {"attributes": _attributes(dict(resource.attributes))},
                    "scopeSpans": [
                        {"scope": {"name": scope_name}, "spans": scope_spans}
                        for scope_name, scope_spans in scopes.items()
                    ],
                }
                for resource, scopes in by_resource.values()
            ]
        }
        with self._lock:
            self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
            self._file.flush()
            self._rotate_if_full()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        with self._lock:
            if not self._file.closed:
                self._file.flush()
        return True


def _span_json(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    assert context is not None
    return {
        "traceId": format(context.trace_id, "032x"),
        "spanId": format(context.span_id, "016x"),
        "parentSpanId": format(span.parent.span_id, "016x") if span.parent else "",
        "name": span.name,
        "kind": _KIND_NUMBERS.get(span.kind, 1),
        "startTimeUnixNano": str(span.start_time or 0),
        "endTimeUnixNano": str(span.end_time or 0),
        "attributes": _attributes(dict(span.attributes or {})),
        "status": {"code": span.status.status_code.value},
    }


def _attributes(attributes: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"key": key, "value": _any_value(value)} for key, value in attributes.items()]


def _any_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, Sequence):
        return {"arrayValue": {"values": [_any_value(item) for item in value]}}
    return {"stringValue": str(value)}
