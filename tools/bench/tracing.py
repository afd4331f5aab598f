"""`make bench-tracing`: what tracing costs, as throughput with it on vs off in one run.

Starts two extra ingest servers on free ports against the running stack's database (the
one `make up` started): one with tracing off, one with the default tracing settings
(spans to a local OTLP/JSON file, default sampler), and runs wrk against each in
alternating rounds, for the no-op endpoint and for POST /v1/events. Writes the figures to
docs/benchmarks.md between the tracing-cost markers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from services.cli.serving import running_service
from services.cli.stack import load_local_env
from services.common.settings import StackSettings
from services.common.telemetry import DEFAULT_SAMPLE_RATIO
from tools.bench.ingest import LUA, batch_body, run_wrk
from tools.benchmarks_file import write_section

MARKERS = ("<!-- tracing-cost:start -->", "<!-- tracing-cost:end -->", "## Tracing: what it costs")
START, END, _ = MARKERS


def ingest_env(extra_env: dict[str, str]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "SIGHTLINE_TRACE"))}
    return {**env, "SIGHTLINE_INGEST_WORKERS": "1", "SIGHTLINE_INGEST_BENCHMARK_NOOP": "1", **extra_env}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    load_local_env()
    demo_file = StackSettings.from_env().data_dir / "demo-project.json"
    if not demo_file.exists():
        raise SystemExit("run `make up` first: this benchmark uses the running stack's database")
    demo = json.loads(demo_file.read_text())

    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch_dir = Path(scratch)
        body_file, lua_file = scratch_dir / "body.json", scratch_dir / "post.lua"
        body_file.write_bytes(batch_body(str(demo["publicKey"]), 8))
        lua_file.write_text(LUA)
        variants = {"off": {}, "on": {"SIGHTLINE_TRACE_DIR": str(scratch_dir / "traces")}}
        with (
            running_service("ingest", ingest_env(variants["off"]), scratch_dir / "off.log") as untraced,
            running_service("ingest", ingest_env(variants["on"]), scratch_dir / "on.log") as traced,
        ):
            urls = {"off": untraced.url, "on": traced.url}
            for _ in range(args.rounds):
                for path in ("/v1/noop", "/v1/events"):
                    for variant in ("off", "on"):
                        figures = run_wrk(urls[variant] + path, body_file, lua_file, args.seconds, args.connections, 2)
                        results.setdefault((path, variant), []).append(figures["rps"])
                        print(f"{path} tracing {variant}: {figures['rps']:.0f} requests/s", flush=True)
        spans_written = sum(1 for file in (scratch_dir / "traces").glob("*.jsonl") for _ in file.open())

    lines = []
    for path in ("/v1/noop", "/v1/events"):
        off = sum(results[(path, "off")]) / len(results[(path, "off")])
        on = sum(results[(path, "on")]) / len(results[(path, "on")])
        lines.append(f"| `POST {path}` | {off:.0f} | {on:.0f} | {1 - on / off:.1%} |")
    section = f"""{START}
Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} cores); command:
`make up && make bench-tracing` (two ingest servers, one worker each, wrk -t2 -c{args.connections}
-d{args.seconds}s, {args.rounds} alternating rounds; ~3 kB event batches).

Default tracing: Litestar's OpenTelemetry plugin entered only for the {DEFAULT_SAMPLE_RATIO:.0%} of requests
sampled at the door, no receive/send spans, batch span processor, OTLP/JSON lines to a local file
({spans_written} export lines written).

| endpoint | requests/s, tracing off | requests/s, tracing on | throughput lost |
| --- | --- | --- | --- |
{chr(10).join(lines)}
{END}"""
    print(section)
    if not args.no_write:
        write_section(section, MARKERS)


if __name__ == "__main__":
    main()
