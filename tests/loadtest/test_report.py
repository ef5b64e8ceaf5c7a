"""Summaries and the SLO verdict from samples; one load run's numbers; the markdown/PNG/JSON report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.report import Sample, Slo, percentile, run_stats, summarize, write_report


def _steady(rate: float, seconds: float, latency_ms: float, arm: str = "a", start: float = 0.0) -> list[Sample]:
    n = int(rate * seconds)
    return [Sample(t=start + i / rate, endpoint="/retrieve", arm=arm, latency_ms=latency_ms, ok=True) for i in range(n)]


def test_percentile_is_nearest_rank() -> None:
    vals = [float(x) for x in range(1, 101)]
    assert percentile(vals, 50) == 50.0
    assert percentile(vals, 99) == 99.0
    assert percentile(vals, 100) == 100.0
    assert percentile([], 99) != percentile([], 99)  # nan


def test_slo_met_at_rate_with_low_latency_and_ramp_excluded() -> None:
    ramp = [Sample(t=i / 100, endpoint="/retrieve", arm="a", latency_ms=500.0, ok=True) for i in range(100)]
    samples = ramp + _steady(100, 10, 2.0, start=1.0)
    s = summarize(samples, target_rate=100, hold_start=1.0, hold_end=11.0, slo=Slo(p99_ms=10))
    assert s["slo_met"], s["slo_violations"]
    assert s["achieved_rate"] == pytest.approx(100, rel=0.02)
    assert s["by_arm"]["a"]["p99_ms"] == 2.0


def test_each_slo_criterion_can_fail() -> None:
    slow = _steady(100, 10, 2.0)
    for s in slow[::50]:
        s.latency_ms = 50.0  # 2% of requests slow → p99 over 10 ms
    res = summarize(slow, target_rate=100, hold_start=0, hold_end=10, slo=Slo(p99_ms=10))
    assert not res["slo_met"] and "p99" in res["slo_violations"][0]

    short = summarize(_steady(50, 10, 2.0), target_rate=100, hold_start=0, hold_end=10, slo=Slo())
    assert not short["slo_met"] and "achieved" in short["slo_violations"][0]

    failing = _steady(100, 10, 2.0)
    for s in failing[:20]:
        s.ok, s.status, s.error = False, 503, "HTTP 503"
    res = summarize(failing, target_rate=100, hold_start=0, hold_end=10, slo=Slo(max_fail_ratio=0.01))
    assert not res["slo_met"] and "failure ratio" in res["slo_violations"][0]
    assert res["failures"] == {"/retrieve HTTP 503": 20}


def test_write_report_files(tmp_path: Path) -> None:
    samples = _steady(50, 4, 3.0, arm="control") + _steady(50, 4, 4.0, arm="crops")
    samples.sort(key=lambda s: s.t)
    summary = summarize(samples, target_rate=100, hold_start=1, hold_end=4, slo=Slo())
    md = write_report(tmp_path, samples, summary, {"host": "http://x", "ramp": 1, "hold_start": 1, "hold_end": 4})
    text = md.read_text()
    assert "| control |" in text and "| crops |" in text and "**MET**" in text
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["slo_met"] is True and set(saved["by_arm"]) == {"control", "crops"}
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == len(samples)


def test_run_stats_counts_the_window_and_its_rate() -> None:
    samples = _steady(100, 3, 2.0)  # t = 0.00 .. 2.99
    samples[150].ok, samples[150].status, samples[150].error = False, 503, "HTTP 503"
    samples[160].latency_ms = 40.0
    st = run_stats(samples, 3.0, warmup_s=1.0)
    assert st["requests"] == 200 and st["rps"] == 100.0 and st["failures"] == 1
    assert st["ok_rps"] == 99.5  # the shed request is sent, not answered
    late = _steady(100, 3, 1500.0)  # a queueing server: every answer 1.5 s after its request
    assert run_stats(late, 3.0, warmup_s=1.0)["ok_rps"] == 75.0  # answers arriving in [1, 3): sent in [0, 1.5)
    assert st["p50_ms"] == 2.0 and st["max_ms"] == 40.0 and st["p999_ms"] == 40.0
    assert st["mean_ms"] == pytest.approx((198 * 2.0 + 40.0) / 199, abs=1e-3)
    assert run_stats(samples, 2.0)["requests"] == 200  # samples sent after the end are not counted
    assert run_stats(iter(samples), 3.0, warmup_s=1.0) == st  # a one-pass iterable reads the same
    with pytest.raises(ValueError):
        run_stats(samples, 1.0, warmup_s=1.0)
