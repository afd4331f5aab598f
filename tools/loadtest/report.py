"""The run's report: report.md and PNG plots in the run folder."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402

from tools.loadtest.check import Acknowledged, DeliveryCheck  # noqa: E402
from tools.loadtest.monitor import STACK_PID_FILES  # noqa: E402
from tools.loadtest.plan import LoadPlan  # noqa: E402
from tools.loadtest.stats import merge, summary  # noqa: E402
from tools.loadtest.traces import CATEGORIES, EndpointBreakdown  # noqa: E402

RETRIED_SUFFIX = " (retried)"
NOOP_ENDPOINT = "POST /v1/noop"
INGEST_ENDPOINTS = ("POST /v1/events", "POST /v1/replay", "POST /v1/replay (first chunk)")


@dataclass(frozen=True)
class RunData:
    plan: LoadPlan
    command: str
    started_at: datetime
    timeseries: list[dict[str, Any]]
    monitor: list[dict[str, Any]]
    final: dict[str, Any]
    acknowledged: Acknowledged
    acknowledged_files: int
    checks: list[DeliveryCheck]
    pool: dict[str, int]
    breakdown: dict[str, EndpointBreakdown]
    spans_read: int
    trace_files: int
    unreadable_trace_lines: int
    processes: int
    # The probe's requests (tools.loadtest.probe.read_probe): (epoch s, path, status, ms).
    probe: Sequence[tuple[float, str, int, float]] = ()
    engine: str = "locust"
    # 1-minute load average when the run began and ended (/proc/loadavg).
    load_average: tuple[float, float] = (0.0, 0.0)
    noop_only: bool = False


# The report says at the top, in words, when the generator's own figures cannot be trusted.
LATE_P95_MS = 50.0
SATURATED_SHARE = 0.9
# And when the stack did not take the load planned: the visitors' deliveries at full load below
# DELIVERED_SHARE of the planned rate; more than TURNED_AWAY_SHARE of the attempts at full load
# sent again (a 503 at the admission door, a connection lost); the machine's cores busy above
# MACHINE_SATURATED_SHARE on average at full load, the probe's ingest p95 within
# QUEUE_RATIO of its no-op p95 (both waited in the same queue).
DELIVERED_SHARE = 0.9
TURNED_AWAY_SHARE = 0.01
MACHINE_SATURATED_SHARE = 0.9
QUEUE_RATIO = 1.5
# The breakdown should account for at least this share of server time; less is flagged.
EXPLAINED_SHARE = 0.9
PROBE_EVENTS, PROBE_NOOP = "/v1/events", "/v1/noop"


def exact_percentile(values: Sequence[float], fraction: float) -> float:
    """The smallest value with at least `fraction` of the values at or below it; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = max(0, math.ceil(fraction * len(ordered)) - 1)
    return float(ordered[index])


def hold_window(timeseries: Sequence[Mapping[str, Any]]) -> tuple[float, float] | None:
    """(start, end) epoch seconds of the intervals at peak users: the run's full load."""
    peak_users = max((record["users"] for record in timeseries), default=0)
    at_peak = [record for record in timeseries if peak_users and record["users"] == peak_users]
    if not at_peak:
        return None
    return min(r["t"] - r["interval_s"] for r in at_peak), max(r["t"] for r in at_peak)


def probe_figures(
    probe: Sequence[tuple[float, str, int, float]], window: tuple[float, float] | None
) -> dict[str, float]:
    """The probe's latencies at full load (the whole run when there was no hold): the headline."""
    chosen = [row for row in probe if window is None or window[0] <= row[0] <= window[1]] or list(probe)
    figures: dict[str, float] = {"probe_requests": float(len(chosen))}
    failed = sum(1 for row in chosen if row[2] != 202)
    figures["probe_failures"] = float(failed)
    figures["probe_failure_ratio"] = failed / len(chosen) if chosen else 0.0
    for path, key in ((PROBE_EVENTS, "ingest"), (PROBE_NOOP, "noop")):
        values = [row[3] for row in chosen if row[1] == path and row[2] == 202]
        for name, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            figures[f"probe_{key}_{name}"] = exact_percentile(values, fraction)
        figures[f"probe_{key}_max"] = max(values, default=0.0)
    return figures


def generator_figures(
    data_final: Mapping[str, Any],
    timeseries: Sequence[Mapping[str, Any]],
    monitor: Sequence[Mapping[str, Any]],
    window: tuple[float, float] | None,
    requests: int,
) -> dict[str, float]:
    """What the generator cost and how late it was: CPU per request, share of its core, scheduling delay."""

    def in_window(record: Mapping[str, Any]) -> bool:
        return window is None or window[0] <= record["t"] - record.get("interval_s", 0) and record["t"] <= window[1]

    own = [record for record in timeseries if "generator_cpu_s" in record]
    if own:  # the engine's own CPU time, read from /proc by itself
        # From the first request's plan on: start-up (imports, loading the payload pools) is not a request's cost.
        cpu_s = sum(float(record["generator_cpu_s"]) for record in own)
        held = [record for record in own if in_window(record)] or own
        share = sum(r["generator_cpu_s"] for r in held) / max(1e-9, sum(r["interval_s"] for r in held))
        peak = max(r["generator_cpu_s"] / max(1e-9, r["interval_s"]) for r in own)
    else:  # Locust: the monitor's samples of its processes (all of them, workers included)
        samples = [record for record in monitor if "cpu" in record]
        cpu_s = sum(r["cpu"].get("load generator", 0.0) / 100 * r.get("interval_s", 0.0) for r in samples)
        held = [record for record in samples if in_window(record)] or samples
        share = sum(r["cpu"].get("load generator", 0.0) for r in held) / 100 / max(1, len(held))
        peak = max((r["cpu"].get("load generator", 0.0) / 100 for r in samples), default=0.0)
    figures = {
        "generator_cpu_ms_per_request": 1000 * cpu_s / requests if requests else 0.0,
        "generator_cpu_share": share,
        "generator_cpu_share_max": peak,
    }
    figures["generator_saturated"] = float(share > SATURATED_SHARE)
    delay = data_final.get("schedule_delay")
    if delay is not None:
        figures.update({f"schedule_delay_{key}": float(delay[key]) for key in ("p50", "p95", "p99")})
        histogram = merge(
            {int(k): v for k, v in r["histograms"].get("schedule_delay", {}).items()}
            for r in timeseries
            if in_window(r) and "histograms" in r
        )
        figures.update({f"hold_schedule_delay_{key}": value for key, value in summary(histogram).items()})
    figures["generator_late"] = float(figures.get("schedule_delay_p95", 0.0) > LATE_P95_MS)
    return figures


def verdicts(figures: Mapping[str, float]) -> list[str]:
    """Sentences for the top of the report: was the generator late or saturated? Empty when neither."""
    said = []
    if "schedule_delay_p95" not in figures:
        said.append(
            "The generator's scheduling delay was not measured (Locust engine): its latencies may include its "
            "own queueing; the headline is the probe's."
        )
    elif figures["generator_late"]:
        said.append(
            f"**The generator was late**: its requests left {figures['schedule_delay_p95']:.0f} ms after their "
            f"planned time at p95 (bound {LATE_P95_MS:.0f} ms), so the load offered was lower and burstier than "
            "planned and its own latencies include its queueing. Trust the probe's figures, not the generator's."
            + (
                f" It used only {100 * figures['generator_cpu_share']:.0f} % of its core at full load: it waited "
                "for the machine's CPU, taken by other processes, not for its own work."
                if not figures["generator_saturated"]
                else ""
            )
        )
    if figures["generator_saturated"]:
        said.append(
            f"**The generator was saturated**: it used {100 * figures['generator_cpu_share']:.0f} % of its core at "
            f"full load (bound {100 * SATURATED_SHARE:.0f} %). Its latencies include time its answers waited "
            "for it; trust the probe's figures."
        )
    return said


def stack_shortfalls(figures: Mapping[str, float]) -> dict[str, float]:
    """Where the stack did not take the load planned, each with its figure: "behind" (the share of
    the planned deliveries the visitors started at full load), "turned_away" (the share of the
    attempts at full load sent again), "saturated" (the share of the machine's cores busy)."""
    found = {}
    planned, delivered = figures.get("planned_rps", 0.0), figures.get("hold_deliveries_rps")
    if planned and delivered is not None and delivered < DELIVERED_SHARE * planned:
        found["behind"] = delivered / planned
    if figures.get("hold_retried_share", 0.0) > TURNED_AWAY_SHARE:
        found["turned_away"] = figures["hold_retried_share"]
    if figures.get("hold_machine_cpu_share", 0.0) > MACHINE_SATURATED_SHARE:
        found["saturated"] = figures["hold_machine_cpu_share"]
    return found


def stack_verdicts(figures: Mapping[str, float]) -> list[str]:
    """Sentences for the top of the report: did the stack take the load planned, and is the latency
    measured its own work or the machine's queue? Empty when it kept up on a machine with room."""
    found = stack_shortfalls(figures)
    said = []
    if "behind" in found:
        said.append(
            f"**The stack did not keep up with the planned load**: at full load the visitors started "
            f"{figures['hold_deliveries_rps']:.0f} deliveries a second against the {figures['planned_rps']:.0f} "
            f"planned ({100 * found['behind']:.0f} %). A visitor sends its next request only once its last one was "
            "delivered, as the tracker does, so deliveries slower than the pacing lower the load offered: the "
            "figures below are for the load the stack took, not for the load planned."
        )
    if "turned_away" in found:
        said.append(
            f"**{100 * found['turned_away']:.0f} % of the attempts at full load were turned away** (answered 503 by "
            "the admission door, or their connection lost) and sent again with the same body."
        )
    if "saturated" in found:
        noop = figures.get("probe_noop_p95", 0.0)
        ratio = figures.get("probe_ingest_p95", 0.0) / noop if noop else float("inf")
        queue = (
            f", and the probe's no-op waited about as long as ingest (ingest p95 {ratio:.1f}× the no-op's): the "
            "latency measured is the machine's queue, not ingest's own work"
            if ratio <= QUEUE_RATIO
            else ""
        )
        said.append(
            f"**The machine was saturated**: {100 * found['saturated']:.0f} % of its cores busy on average at full "
            f"load{queue}."
        )
    return said


def _elapsed(records: Sequence[Mapping[str, Any]], start: float) -> list[float]:
    return [float(record["t"]) - start for record in records]


def _save(figure: Any, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _label(axis: Any, ylabel: str, title: str, *, legend_size: int = 8) -> None:
    """The labels of a plot over the run's time, with its legend upper left."""
    axis.set_ylabel(ylabel)
    axis.set_xlabel("seconds since start")
    axis.set_title(title)
    axis.legend(fontsize=legend_size, loc="upper left")


def plot_requests(data: RunData, start: float, path: Path) -> None:
    series = data.timeseries
    times = _elapsed(series, start)
    figure, (rate_axis, failure_axis) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    interval = [max(1e-3, record["interval_s"]) for record in series]
    names = sorted({name for record in series for name in record["endpoints"]})
    for name in names:
        rates = [
            record["endpoints"].get(name, {}).get("requests", 0) / dt
            for record, dt in zip(series, interval, strict=True)
        ]
        if max(rates, default=0) > 0:
            rate_axis.plot(times, rates, label=name, linewidth=1)
    users_axis = rate_axis.twinx()
    users_axis.plot(times, [record["users"] for record in series], color="black", linestyle="--", label="users")
    users_axis.set_ylabel("users (dashed)")
    rate_axis.set_ylabel("requests/s")
    rate_axis.set_title("Requests per second by endpoint")
    rate_axis.legend(fontsize=7, loc="upper left")
    error_names = sorted({name for record in series for name in record.get("errors", {})})
    previous: dict[str, int] = {}
    for name in error_names:
        counts = []
        for record, dt in zip(series, interval, strict=True):
            now = int(record.get("errors", {}).get(name, previous.get(name, 0)))
            counts.append((now - previous.get(name, 0)) / dt)
            previous[name] = now
        failure_axis.plot(times, counts, label=name[:80], linewidth=1)
    failure_axis.set_ylabel("failures/s")
    failure_axis.set_xlabel("seconds since start")
    failure_axis.set_title("Failures per second by endpoint and type" + ("" if error_names else " (none)"))
    if error_names:
        failure_axis.legend(fontsize=7, loc="upper left")
    _save(figure, path)


def plot_latency(data: RunData, start: float, path: Path) -> None:
    series = data.timeseries
    times = _elapsed(series, start)
    figure, (tracker_axis, endpoint_axis) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for key in ("p50", "p95", "p99"):
        tracker_axis.plot(times, [record["tracker"][key] for record in series], label=f"ingest {key}")
    tracker_axis.plot(
        times,
        [record["endpoints"].get(NOOP_ENDPOINT, {}).get("p95", 0) for record in series],
        label="no-op p95",
        linestyle=":",
    )
    tracker_axis.set_ylabel("ms")
    tracker_axis.set_title("Ingest (events + replay) latency per interval, and the no-op endpoint's p95")
    tracker_axis.legend(fontsize=8)
    names = sorted({name for record in series for name in record["endpoints"] if not name.endswith(RETRIED_SUFFIX)})
    for name in names:
        endpoint_axis.plot(times, [record["endpoints"].get(name, {}).get("p95", 0) for record in series], label=name)
    _label(endpoint_axis, "p95 ms", "p95 by endpoint", legend_size=7)
    _save(figure, path)


def plot_pgbouncer(data: RunData, start: float, path: Path) -> None:
    records = [record for record in data.monitor if "pgbouncer" in record]
    figure, axis = plt.subplots(figsize=(10, 4))
    times = _elapsed(records, start)
    axis.plot(times, [r["pgbouncer"]["server_connections"] for r in records], label="server connections in use")
    axis.plot(times, [r["pgbouncer"]["sv_active"] for r in records], label="of which active", linewidth=1)
    axis.plot(times, [r["pgbouncer"]["cl_waiting"] for r in records], label="clients waiting", linewidth=1)
    pool = data.pool.get("pool_size", 0)
    axis.axhline(pool, color="red", linestyle="--", label=f"pool size {pool}")
    if data.pool.get("reserve_pool"):
        axis.axhline(pool + data.pool["reserve_pool"], color="orange", linestyle=":", label="pool + reserve")
    _label(axis, "connections", "PgBouncer → Postgres server connections (SHOW POOLS, database sightline)")
    _save(figure, path)


def plot_cpu(data: RunData, start: float, path: Path) -> None:
    records = [record for record in data.monitor if "cpu" in record]
    figure, axis = plt.subplots(figsize=(10, 4.5))
    times = _elapsed(records, start)
    names = sorted({name for record in records for name in record["cpu"]})
    axis.stackplot(times, *[[r["cpu"].get(name, 0.0) for r in records] for name in names], labels=names)
    axis.plot(
        times,
        [r.get("machine_cpu", 0.0) * (os.cpu_count() or 1) for r in records],
        color="black",
        linewidth=1,
        label="whole machine (other work included)",
    )
    axis.axhline(100 * (os.cpu_count() or 1), color="black", linestyle="--", label="all cores")
    _label(axis, "% of one core", "CPU per process group (stacked; services include their Granian workers)")
    _save(figure, path)


def plot_breakdown(data: RunData, path: Path) -> None:
    entries = sorted(data.breakdown.values(), key=lambda entry: entry.endpoint)
    figure, axis = plt.subplots(figsize=(10, 1.5 + 0.6 * max(1, len(entries))))
    left = [0.0] * len(entries)
    for category in (*CATEGORIES, "rest"):
        shares = [100 * entry.shares()[category] for entry in entries]
        axis.barh([entry.endpoint for entry in entries], shares, left=left, label=category)
        left = [a + b for a, b in zip(left, shares, strict=True)]
    axis.set_xlabel("% of server time (sampled traces)")
    axis.set_title("Latency breakdown from traces")
    axis.legend(fontsize=7, ncol=4, loc="lower right")
    _save(figure, path)


def cpu_table(records: Sequence[Mapping[str, Any]]) -> str:
    cores = os.cpu_count() or 1
    cpu_records = [
        {**record["cpu"], "(whole machine)": record.get("machine_cpu", 0.0) * cores}
        for record in records
        if "cpu" in record
    ]
    names = sorted({name for record in cpu_records for name in record})
    rows = []
    for name in names:
        values = [record.get(name, 0.0) for record in cpu_records]
        rows.append(f"| {name} | {sum(values) / max(1, len(values)):.0f} | {max(values, default=0):.0f} |")
    table = "| process group | mean % of a core | max % |\n| --- | --- | --- |\n" + "\n".join(rows)
    unmeasured = unmeasured_stack_processes(records)
    if cpu_records and unmeasured:
        table += (
            f"\n\n**Not measured: {', '.join(unmeasured)}.** No sample found a running process from their pid"
            " files under the data folder `sightline load` read (its SIGHTLINE_DATA_DIR, default `.data`):"
            " they were not running, or the stack was started with another SIGHTLINE_DATA_DIR (run the load"
            " with the same one). The whole machine's figure above counts them either way."
        )
    return table


def unmeasured_stack_processes(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The stack's processes (ingest, Postgres, ...) that no CPU sample of the run found."""
    found = {name for record in records for name in record.get("cpu", {})}
    return [name for name in STACK_PID_FILES if name not in found]


def _endpoint_table(final: Mapping[str, Any]) -> str:
    rows = []
    for name, entry in sorted(final.get("endpoints", {}).items()):
        rows.append(
            f"| {name} | {entry['requests']} | {entry['failures']} | {entry['rps']:.1f} | {entry['p50']:.0f} | "
            f"{entry['p95']:.0f} | {entry['p99']:.0f} | {entry['max']:.0f} |"
        )
    return (
        "| endpoint | requests | failures | req/s | p50 ms | p95 ms | p99 ms | max ms |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows)
    )


def _breakdown_table(breakdown: Mapping[str, EndpointBreakdown]) -> str:
    header = "| endpoint | traced requests | mean ms | explained | " + " | ".join((*CATEGORIES, "rest")) + " |"
    rule = "|" + " --- |" * (4 + len(CATEGORIES) + 1)
    rows = []
    for name, entry in sorted(breakdown.items()):
        shares = entry.shares()
        cells = " | ".join(f"{100 * shares[category]:.0f} %" for category in (*CATEGORIES, "rest"))
        explained = f"{100 * entry.explained:.0f} %" + ("" if entry.explained >= EXPLAINED_SHARE else " (< 90 %)")
        rows.append(f"| {name} | {entry.requests} | {entry.mean_ms:.1f} | {explained} | {cells} |")
    return "\n".join([header, rule, *rows])


def _failure_table(errors: Iterable[Mapping[str, Any]]) -> str:
    rows = [f"| {error['name']} | {error['error']} | {error['occurrences']} |" for error in errors]
    if not rows:
        return "No request failed."
    return "| endpoint | failure | count |\n| --- | --- | --- |\n" + "\n".join(rows)


def hold_figures(timeseries: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Ingest and no-op percentiles while all users ran: the steady state, without the ramps."""
    peak_users = max((record["users"] for record in timeseries), default=0)
    at_peak = [record for record in timeseries if record["users"] == peak_users and "histograms" in record]
    if not at_peak:
        return {}
    # JSON turned the histogram's int buckets into strings.
    ingest = merge({int(k): v for k, v in record["histograms"]["ingest"].items()} for record in at_peak)
    noop = merge({int(k): v for k, v in record["histograms"]["noop"].items()} for record in at_peak)
    seconds = sum(record["interval_s"] for record in at_peak)
    requests = sum(sum(endpoint["requests"] for endpoint in record["endpoints"].values()) for record in at_peak)
    # The visitors' (and no-op users') POSTs: a delivery's first attempt, and the attempts sent again.
    posts = [(name, entry) for record in at_peak for name, entry in record["endpoints"].items() if name[:5] == "POST "]
    first = sum(entry["requests"] for name, entry in posts if not name.endswith(RETRIED_SUFFIX))
    again = sum(entry["requests"] for name, entry in posts if name.endswith(RETRIED_SUFFIX))
    return {
        "hold_s": seconds,
        "hold_rps": requests / seconds if seconds else 0.0,
        "hold_deliveries_rps": first / seconds if seconds else 0.0,
        "hold_retried_share": again / (first + again) if first + again else 0.0,
        **{f"hold_ingest_{key}": value for key, value in summary(ingest).items()},
        **{f"hold_noop_{key}": value for key, value in summary(noop).items()},
    }


def summary_figures(data: RunData) -> dict[str, float]:
    """The figures a run is judged by (also used by --find-limit)."""
    final = data.final
    endpoints = final.get("endpoints", {})
    tracker = final.get("tracker", {"requests": 0, "failures": 0, "p50": 0, "p95": 0, "p99": 0})
    all_requests = sum(entry["requests"] for entry in endpoints.values())
    all_failures = sum(entry["failures"] for entry in endpoints.values())
    retried = sum(entry["requests"] for name, entry in endpoints.items() if name.endswith(RETRIED_SUFFIX))
    pgbouncer = [record["pgbouncer"]["server_connections"] for record in data.monitor if "pgbouncer" in record]
    window = hold_window(data.timeseries)
    # The machine's CPU (psutil's mean over its cores, in %) at full load.
    machine = [
        float(record["machine_cpu"])
        for record in data.monitor
        if "machine_cpu" in record and (window is None or window[0] <= record["t"] <= window[1])
    ]
    plan = data.plan
    return {
        "planned_rps": (plan.users + plan.noop_users) / plan.pacing_s if plan.pacing_s else 0.0,
        **({"hold_machine_cpu_share": sum(machine) / len(machine) / 100} if machine else {}),
        "requests": float(all_requests),
        "failures": float(all_failures),
        "failure_ratio": all_failures / all_requests if all_requests else 0.0,
        "rps": all_requests / final["duration_s"] if final.get("duration_s") else 0.0,
        "retried_attempts": float(retried),
        "ingest_requests": float(tracker["requests"]),
        "ingest_p50": float(tracker["p50"]),
        "ingest_p95": float(tracker["p95"]),
        "ingest_p99": float(tracker["p99"]),
        "noop_p95": float(endpoints.get(NOOP_ENDPOINT, {}).get("p95", 0.0)),
        "server_connections_max": float(max(pgbouncer, default=0)),
        **generator_figures(final, data.timeseries, data.monitor, window, all_requests),
        **probe_figures(data.probe, window),
        "peak_users": float(max((record["users"] for record in data.timeseries), default=0)),
        "load_average_start": data.load_average[0],
        "load_average_end": data.load_average[1],
        **hold_figures(data.timeseries),
    }


def write_report(data: RunData, folder: Path) -> Path:
    # Time 0 is when Locust's first statistics interval began, not when the command started.
    first = data.timeseries[0] if data.timeseries else None
    start = first["t"] - first["interval_s"] if first else data.started_at.timestamp()
    if data.timeseries:
        plot_requests(data, start, folder / "requests.png")
        plot_latency(data, start, folder / "latency.png")
    if any("pgbouncer" in record for record in data.monitor):
        plot_pgbouncer(data, start, folder / "pgbouncer.png")
    if any("cpu" in record for record in data.monitor):
        plot_cpu(data, start, folder / "cpu.png")
    if data.breakdown:
        plot_breakdown(data, folder / "breakdown.png")
    figures = summary_figures(data)
    plan = data.plan
    pool = data.pool.get("pool_size", 0)
    reserve = data.pool.get("reserve_pool", 0)
    connections_verdict = (
        "never above the pool"
        if figures["server_connections_max"] <= pool
        else ("within pool + reserve" if figures["server_connections_max"] <= pool + reserve else "ABOVE the pool")
    )
    ratio = figures["ingest_p95"] / figures["noop_p95"] if figures["noop_p95"] else float("nan")
    check_rows = "\n".join(
        f"| {check.kind} | {check.acknowledged} | {check.stored} | {check.in_doubt} | {check.verdict} |"
        for check in data.checks
    )
    all_passed = all(check.passed for check in data.checks)
    if data.breakdown:
        breakdown_section = (
            f"From {data.spans_read} spans in {data.trace_files} trace file(s) written during the run "
            f"({data.unreadable_trace_lines} unreadable lines). Shares of the server span's duration; "
            "tracing samples requests, so these are shares of the sampled ones.\n\n"
            + _breakdown_table(data.breakdown)
            + "\n\n![breakdown](breakdown.png)"
        )
    else:
        breakdown_section = (
            f"No server spans were found ({data.trace_files} trace file(s), {data.spans_read} spans in the run's "
            "window): run the stack with tracing on (`SIGHTLINE_TRACE_FILE` or the `make up` default of "
            "`.data/traces/*.jsonl`) to get the breakdown."
        )
    hold = (
        f"{figures.get('hold_rps', 0):.1f}; {figures.get('hold_ingest_p50', 0):.0f} / "
        f"{figures.get('hold_ingest_p95', 0):.0f} / {figures.get('hold_ingest_p99', 0):.0f} ms; "
        f"{figures.get('hold_noop_p95', 0):.0f} ms"
    )
    delivered = (
        f"{figures.get('hold_deliveries_rps', 0):.1f}, {figures['planned_rps']:.0f}; "
        f"{100 * figures.get('hold_retried_share', 0):.1f} %"
    )
    latencies = f"{figures['ingest_p50']:.0f} / {figures['ingest_p95']:.0f} / {figures['ingest_p99']:.0f}"
    connections = f"{figures['server_connections_max']:.0f} (pool {pool}, reserve {reserve}: {connections_verdict})"
    said = verdicts(figures)
    warnings = "\n\n".join(
        (
            said
            or [
                f"The generator kept to its plan (p95 scheduling delay {figures.get('schedule_delay_p95', 0):.0f} ms ≤ "
                f"{LATE_P95_MS:.0f} ms) and was not saturated ({100 * figures['generator_cpu_share']:.0f} % of its "
                f"core at full load ≤ {100 * SATURATED_SHARE:.0f} %)."
            ]
        )
        + stack_verdicts(figures)
    )
    probe_ratio = (
        figures["probe_ingest_p95"] / figures["probe_noop_p95"] if figures.get("probe_noop_p95") else float("nan")
    )
    delay = (
        f"{figures['schedule_delay_p50']:.0f} / {figures['schedule_delay_p95']:.0f} / "
        f"{figures['schedule_delay_p99']:.0f} ms (at full load: {figures.get('hold_schedule_delay_p95', 0):.0f} ms p95)"
        if "schedule_delay_p95" in figures
        else "not measured (Locust)"
    )
    probe_ingest = " / ".join(f"{figures.get(f'probe_ingest_{key}', 0):.0f}" for key in ("p50", "p95", "p99"))
    probe_table = (
        "| probe at full load | p50 ms | p95 ms | p99 ms | max ms |\n| --- | --- | --- | --- | --- |\n"
        + "\n".join(
            f"| {label} | "
            + " | ".join(f"{figures.get(f'probe_{key}_{name}', 0):.0f}" for name in ("p50", "p95", "p99", "max"))
            + " |"
            for label, key in (("ingest `POST /v1/events`", "ingest"), ("no-op `POST /v1/noop`", "noop"))
        )
    )
    share = f"{100 * figures['generator_cpu_share']:.0f} % ({100 * figures['generator_cpu_share_max']:.0f} %)"
    generator = "one asyncio process" if data.engine == "asyncio" else f"{data.processes} Locust process(es)"
    noop_only = (
        "\n\n**No-op only** (`--noop-only`): every visitor posted to `/v1/noop`; this run measures the generator "
        "against the bare HTTP path, not ingest."
        if data.noop_only
        else ""
    )
    text = f"""# Load test {data.started_at:%Y-%m-%d %H:%M:%S} UTC{noop_only}

{warnings}

**Headline, from the probe**: ingest p50 / p95 / p99 **{probe_ingest} ms** at full load.

{probe_table}

The probe is a separate process: every 0.5 s one events POST and one no-op POST, each on a fresh
connection. At full load: {figures.get("probe_requests", 0):.0f} requests, of which not answered 202:
{figures.get("probe_failures", 0):.0f}. Ingest p95 is {probe_ratio:.1f}× the no-op's.

| the generator ({generator}) | value |
| --- | --- |
| CPU per request (its own, from /proc) | {figures["generator_cpu_ms_per_request"]:.2f} ms |
| share of its core at full load (max of a 2-s interval) | {share} |
| scheduling delay p50 / p95 / p99 (request left after its planned time) | {delay} |

Command: `{data.command}`

Machine: {platform.node()}, {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()};
load average {data.load_average[0]:.2f} at the start, {data.load_average[1]:.2f} at the end.
The load generator ({generator}), the probe, Postgres, PgBouncer and the services share it.

Plan: {plan.users} visitors ({plan.shape} ramp up over {plan.ramp_up_s:.0f} s, hold {plan.hold_s:.0f} s,
ramp down over {plan.ramp_down_s:.0f} s), one request per visitor every {plan.pacing_s:.0f} s (first a 15-60 kB gzip
replay chunk with a full snapshot, from a session recorded in Chromium (tools/loadtest/recordings; synthetic only
when those are missing), then events batches and incremental replay chunks alternately), plus
{plan.noop_users} no-op users (same pace, events-sized gzip body to `POST /v1/noop`) and {plan.readers} reader(s).
Ingest {plan.ingest_url}, query {plan.query_url}, replay {plan.replay_url}.

## Summary (the generator's own clock below: see the top for whether to trust it)

| figure | value |
| --- | --- |
| peak users | {figures["peak_users"]:.0f} |
| requests (all endpoints, retried attempts included) | {figures["requests"]:.0f} |
| requests/s (mean over the run) | {figures["rps"]:.1f} |
| final failures | {figures["failures"]:.0f} ({100 * figures["failure_ratio"]:.3f} %) |
| attempts answered 503 or lost and retried with the same body | {figures["retried_attempts"]:.0f} |
| ingest p50 / p95 / p99 (events + replay) | {latencies} ms |
| no-op p95 in the same run | {figures["noop_p95"]:.0f} ms (ingest p95 is {ratio:.1f}× that) |
| at full load only ({figures.get("hold_s", 0):.0f} s): requests/s, ingest p50 / p95 / p99, no-op p95 | {hold} |
| at full load: deliveries started a second (first attempts), planned; attempts sent again | {delivered} |
| PgBouncer server connections, max | {connections} |
| load generator CPU per request | {figures["generator_cpu_ms_per_request"]:.2f} ms |
| acknowledged = stored | {"yes" if all_passed else "**NO**"} |

## Requests and failures over time

![requests](requests.png)

![latency](latency.png)

{_endpoint_table(data.final)}

Failures by endpoint and type:

{_failure_table(data.final.get("errors", []))}

## Postgres server connections (PgBouncer SHOW POOLS)

Server connections in use = sv_active + sv_idle + sv_used + sv_tested + sv_login for database `sightline`,
sampled every few seconds. Maximum {figures["server_connections_max"]:.0f}; pool size {pool} (+{reserve} reserve).

![pgbouncer](pgbouncer.png)

## CPU per process

Percent of one core ({os.cpu_count()} cores = {100 * (os.cpu_count() or 1)} %), from psutil: services with their
Granian workers, PgBouncer, Postgres with its backends, the load generator (all its processes).
"(whole machine)" includes work outside this run: whatever else shares the machine.

{cpu_table(data.monitor)}

![cpu](cpu.png)

## Latency breakdown from traces

{breakdown_section}

## Acknowledged vs stored

Acknowledged = counted by the load generator for every 202 ({data.acknowledged_files} process file(s));
stored = rows of this run's own project (id in `plan.json`). "In doubt" are rows of deliveries that finally
failed or that the run's end interrupted (their commit may have happened after the client gave up).

| kind | acknowledged by 202 | stored | in doubt | verdict |
| --- | --- | --- | --- | --- |
{check_rows}

Deliveries: {data.acknowledged.deliveries}, finally failed: {data.acknowledged.failed_deliveries},
interrupted by the run's end: {data.acknowledged.interrupted_deliveries},
retried attempts: {data.acknowledged.retried_attempts}.
"""
    report = folder / "report.md"
    report.write_text(text)
    return report


def stamp(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
