"""Summaries and the SLO verdict from samples; the markdown/PNG/JSON report; wrk output parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import CropsError
from loadtest import wrk
from loadtest.report import Sample, Slo, percentile, summarize, write_report


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


def test_wrk_output_parsing_and_script() -> None:
    out = (
        'Running 1s test\nWRKJSON {"requests":500,"duration_us":2000000,"status_errors":1,'
        '"connect_errors":0,"read_errors":0,"write_errors":0,"timeouts":2,"p50_us":1500,'
        '"p90_us":2500,"p99_us":9000,"max_us":12000,"mean_us":1700.5}\n'
    )
    res = wrk.parse_output(out)
    assert res["rps"] == 250.0 and res["errors"] == 3 and res["p99_ms"] == 9.0
    with pytest.raises(CropsError):
        wrk.parse_output("no result here")
    script = wrk.write_script([b'{"query": "cat"}', b'{"query": "dog"}'])
    try:
        text = script.read_text()
        assert '[==[{"query": "cat"}]==],' in text and "WRKJSON" in text
    finally:
        script.unlink()
    with pytest.raises(CropsError):
        wrk.write_script([b'{"query": "]==]"}'])
