"""make attack's judgement: each attack against the baseline windows just around it."""

from __future__ import annotations

import argparse

import pytest

from tools.attack import PhaseFigures, judge, report


def window(latencies: list[float], cpu_s: float = 1.0) -> PhaseFigures:
    return PhaseFigures("baseline (no attack)", latencies_ms=latencies, cpu_s=cpu_s, seconds=10, is_baseline=True)


def attack(name: str, latencies: list[float], requests: int = 0, cpu_s: float = 2.0) -> PhaseFigures:
    return PhaseFigures(name, latencies_ms=latencies, attack_requests=requests, cpu_s=cpu_s, seconds=20)


def test_each_attack_is_compared_with_the_windows_around_it_not_the_first() -> None:
    # The machine drifts: the honest path takes 10 ms early in the run and 100 ms late.
    phases = [
        window([10.0] * 20),
        attack("early", [15.0] * 20),
        window([10.0] * 20),
        attack("late", [150.0] * 20, requests=100, cpu_s=12.0),
        window([100.0] * 20, cpu_s=4.0),
    ]
    judged = judge(phases)
    assert [item.attack.name for item in judged] == ["early", "late"]
    assert [len(item.around) for item in judged] == [2, 2]
    assert judged[0].p95_ratio == pytest.approx(1.5)
    # The late one's baseline pools a 10-ms and a 100-ms window: p95 100 ms, ratio 1.5 (not 15).
    assert judged[1].p95_ratio == pytest.approx(1.5)
    # Ingest's rate around it: (1 + 4) CPU-s over 20 s = 0.25/s, so 5 s of the 12 were the
    # baseline's; 7 s over 100 requests = 70 ms each.
    assert judged[1].cpu_per_attack_request_ms == pytest.approx(70.0)
    assert judged[0].cpu_per_attack_request_ms is None


def test_the_report_names_the_attacks_over_the_target() -> None:
    phases = [window([10.0] * 20), attack("bomb", [30.0] * 20), window([10.0] * 20)]
    phases[0].rss_mb, phases[1].rss_mb = 100.0, 250.0
    args = argparse.Namespace(
        visitors=5,
        phase=20.0,
        baseline=10.0,
        settle=5.0,
        attack_rate=0.0,
        slice=2.0,
        edge=0.5,
        attacker_cpus=[],
        visitor_cpus=[],
        server_cpus=[],
    )
    text = report(phases, 60, 59, args, "make attack")
    assert "missed** by bomb (3.0×)" in text
    assert "ingest RSS growth 150 MB (≤ 100 MB: **missed**)" in text
    assert "acknowledged 60, stored 59 (**DIFFERENT**)" in text
    assert "Baseline windows in run order, honest p50/p95 ms: 10/10, 10/10" in text


def test_turns_of_the_attacker_running_and_paused_decide_the_verdict_where_there_are_some() -> None:
    # Around the attack the machine was quiet (10 ms) but during it other work slowed everything:
    # paused turns 100 ms, running turns 150 ms. The windows say 15x; the turns, 1.5x.
    bomb = attack("bomb", [100.0] * 10 + [150.0] * 10)
    bomb.latencies_off_ms, bomb.latencies_on_ms = [100.0] * 10, [150.0] * 10
    flood = attack("flood", [10.0] * 10 + [30.0] * 10)
    flood.latencies_off_ms, flood.latencies_on_ms = [10.0] * 10, [30.0] * 10
    phases = [window([10.0] * 20), bomb, window([10.0] * 20), flood, window([10.0] * 20)]
    judged = judge(phases)
    assert judged[0].p95_ratio == pytest.approx(15.0)
    assert judged[0].interleaved_ratio == pytest.approx(1.5)
    assert judged[0].ratio == pytest.approx(1.5)
    assert judged[1].ratio == pytest.approx(3.0)
    # Without turns (--slice 0, or no request in one of them) the windows decide.
    judged[1].attack.latencies_off_ms = []
    assert judged[1].interleaved_ratio is None
    assert judged[1].ratio == pytest.approx(3.0)
    args = argparse.Namespace(
        visitors=5,
        phase=20.0,
        baseline=10.0,
        settle=5.0,
        attack_rate=0.0,
        slice=2.0,
        edge=0.5,
        attacker_cpus=[],
        visitor_cpus=[],
        server_cpus=[],
    )
    text = report(phases, 1, 1, args, "make attack")
    assert "**missed** by flood (3.0×);" in text
    assert "bomb (" not in text.split("Targets:")[1]


def test_the_control_is_reported_beside_the_verdict_not_in_it() -> None:
    control = attack("control: attacker spins a core, sends nothing", [10.0] * 20)
    control.latencies_off_ms, control.latencies_on_ms = [10.0] * 10, [25.0] * 10
    phases = [window([10.0] * 20), control, window([10.0] * 20)]
    args = argparse.Namespace(
        visitors=5,
        phase=20.0,
        baseline=10.0,
        settle=5.0,
        attack_rate=0.0,
        slice=2.0,
        edge=0.5,
        attacker_cpus=[],
        visitor_cpus=[],
        server_cpus=[],
    )
    targets = report(phases, 1, 1, args, "make attack").split("Targets: ")[1]
    assert targets.startswith(
        "honest p95 ≤ 2× without the attack under every attack (interleaved turns where there are): met;"
    )
    assert "the control (CPU taken, nothing sent) 2.5×: a ratio up to it is what the CPU explains" in targets
