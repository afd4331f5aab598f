"""Where a request's time goes, from the services' OTLP/JSON trace files.

Each line of a trace file is one OTLP/JSON ExportTraceServiceRequest. For every server span
(kind 2) the durations of its descendants are summed by category; a categorised span's own
descendants are not counted again, so nested spans never count twice. "rest" is the server
span's duration minus the categorised time: the handler's own Python between its steps
(validation, serialisation). Ingest's own categories: "dispatch" (from the server span's start
to the tracker door, and from its slot taken to the handler's first step: the tracing
middleware and the framework's routing), "body receive" (reading the request body from the
connection), "admission wait" (a tracker slot of the process), "key lookup" (the project of a
key in the URL), "enrichment" (a replay chunk's summary included), "event-loop lag" (from the
commit to the request's task running again) and "response" (from the task running again after
the commit, or from the response's first message, to its last send's return: the handler's
return, the answer built and handed to the server).
Sampling keeps only a few percent of traces; shares are computed over whatever was sampled.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVER, CLIENT = 2, 3
# protobuf's MessageToJson writes enums by name unless told otherwise; both forms are accepted.
SPAN_KIND_NAMES = {
    "SPAN_KIND_UNSPECIFIED": 0,
    "SPAN_KIND_INTERNAL": 1,
    "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3,
    "SPAN_KIND_PRODUCER": 4,
    "SPAN_KIND_CONSUMER": 5,
}

CATEGORIES = (
    "dispatch",
    "body receive",
    "admission wait",
    "pool wait",
    "writer queue wait",
    "SQL",
    "commit",
    "decompression",
    "JSON decoding",
    "enrichment",
    "event-loop lag",
    "key lookup",
    "response",
)
SPAN_CATEGORIES = {
    "ingest.dispatch": "dispatch",
    "ingest.route": "dispatch",
    "ingest.read_body": "body receive",
    "ingest.admission_wait": "admission wait",
    "ingest.resume_wait": "event-loop lag",
    "db.pool_checkout": "pool wait",
    "ingest.writer.queue_wait": "writer queue wait",
    "db.sql": "SQL",
    "db.commit": "commit",
    "ingest.decompress": "decompression",
    "ingest.decode_json": "JSON decoding",
    "ingest.enrich": "enrichment",
    "ingest.summarise": "enrichment",
    "ingest.admit": "key lookup",
    "ingest.respond": "response",
}


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    service: str
    attributes: dict[str, Any]

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    @property
    def category(self) -> str | None:
        category = SPAN_CATEGORIES.get(self.name)
        if category is None and self.kind == CLIENT and self.attributes.get("db.system") == "postgresql":
            return "SQL"
        return category


def _attribute_value(value: dict[str, Any]) -> Any:
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])  # OTLP/JSON writes 64-bit integers as strings
    return None


def _attributes(items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {item["key"]: _attribute_value(item.get("value", {})) for item in items}


def _kind(value: int | str) -> int:
    if isinstance(value, str) and not value.isdigit():
        return SPAN_KIND_NAMES.get(value, 0)
    return int(value)


def parse_line(line: str) -> Iterator[Span]:
    document = json.loads(line)
    for resource_spans in document.get("resourceSpans", []):
        resource = _attributes(resource_spans.get("resource", {}).get("attributes", []))
        service = str(resource.get("service.name", "unknown"))
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                yield Span(
                    trace_id=span["traceId"],
                    span_id=span["spanId"],
                    parent_id=span.get("parentSpanId") or "",
                    name=span.get("name", ""),
                    kind=_kind(span.get("kind", 0)),
                    start_ns=int(span["startTimeUnixNano"]),
                    end_ns=int(span["endTimeUnixNano"]),
                    service=service,
                    attributes=_attributes(span.get("attributes", [])),
                )


def read_spans(paths: Iterable[Path], since_ns: int = 0, until_ns: int | None = None) -> tuple[list[Span], int]:
    """Spans from trace files within the time window, and how many lines could not be read.

    A service killed mid-write can leave a truncated last line; it is counted, not fatal.
    """
    spans: list[Span] = []
    unreadable = 0
    for path in paths:
        with path.open() as file:
            for line in file:
                if not line.strip():
                    continue
                try:
                    parsed = list(parse_line(line))
                except (ValueError, KeyError, TypeError):
                    unreadable += 1
                    continue
                spans += [
                    span
                    for span in parsed
                    if span.start_ns >= since_ns and (until_ns is None or span.start_ns <= until_ns)
                ]
    return spans, unreadable


@dataclass
class EndpointBreakdown:
    endpoint: str
    requests: int = 0
    total_ns: int = 0
    by_category_ns: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))

    @property
    def rest_ns(self) -> int:
        return max(0, self.total_ns - sum(self.by_category_ns.values()))

    def shares(self) -> dict[str, float]:
        """Fraction of server time per category, plus "rest"; they add up to 1 (or more if overlapping)."""
        if self.total_ns == 0:
            return {**dict.fromkeys(CATEGORIES, 0.0), "rest": 0.0}
        shares = {name: spent / self.total_ns for name, spent in self.by_category_ns.items()}
        shares["rest"] = self.rest_ns / self.total_ns
        return shares

    @property
    def explained(self) -> float:
        """Share of server time the categories account for (1 - rest)."""
        return 1.0 - self.rest_ns / self.total_ns if self.total_ns else 0.0

    @property
    def mean_ms(self) -> float:
        return self.total_ns / self.requests / 1e6 if self.requests else 0.0


def breakdown(spans: Iterable[Span]) -> dict[str, EndpointBreakdown]:
    """Per server span name (for example "POST /v1/events"), time by category over all its requests."""
    by_trace: dict[str, list[Span]] = defaultdict(list)
    for span in spans:
        by_trace[span.trace_id].append(span)
    result: dict[str, EndpointBreakdown] = {}
    for trace_spans in by_trace.values():
        children: dict[str, list[Span]] = defaultdict(list)
        for span in trace_spans:
            children[span.parent_id].append(span)
        for server in (span for span in trace_spans if span.kind == SERVER):
            entry = result.setdefault(server.name, EndpointBreakdown(server.name))
            entry.requests += 1
            entry.total_ns += server.duration_ns
            pending = list(children.get(server.span_id, []))
            while pending:
                span = pending.pop()
                # A nested server span (a request to another service) is its own entry.
                if span.kind == SERVER:
                    continue
                category = span.category
                if category is not None:
                    entry.by_category_ns[category] += span.duration_ns
                else:
                    pending += children.get(span.span_id, [])
    return result
