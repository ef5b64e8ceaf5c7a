"""The benchmarks' shared code (``benchmarks.harness``, the fleet report) and the load generator's two
modes, against synthetic measurements and a tiny local HTTP server; the limit script on a real bundle."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from benchmarks import harness as h
from benchmarks.fleet import Bodies, render_markdown
from core.errors import CropsError
from loadtest.openloop import closed_loop, open_loop
from loadtest.ready import NotReady, wait_ready

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- a tiny HTTP server


@dataclass
class Tiny:
    url: str
    delay_s: float
    status: int = 200
    in_flight: int = 0
    most_in_flight: int = 0
    served: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture()
def tiny_server() -> Iterator[Tiny]:
    """POST answers ``{"arm": "t"}`` after ``delay_s`` (default 10 ms) with ``status``; counts what is
    in flight at once. GET /readyz answers 200."""
    state = Tiny(url="", delay_s=0.01)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive
        disable_nagle_algorithm = True  # headers and body go out as two writes

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(200, b'{"status": "ready"}')

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            with state.lock:
                state.in_flight += 1
                state.most_in_flight = max(state.most_in_flight, state.in_flight)
            time.sleep(state.delay_s)
            with state.lock:
                state.in_flight -= 1
                state.served += 1
            self._answer(state.status, b'{"arm": "t", "candidates": []}')

        def log_message(self, *args: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        yield state
    finally:
        srv.shutdown()
        srv.server_close()


BODIES = [json.dumps({"query": f"q{i}"}).encode() for i in range(500)]


# --------------------------------------------------------------------------- the load generator


def test_closed_loop_keeps_one_request_per_connection_in_flight(tiny_server: Tiny) -> None:
    """Each connection waits for its answer before sending again: never more than `connections` in
    flight, and requests/s ≈ connections / service time (10 ms each here)."""
    samples = closed_loop(tiny_server.url, BODIES, connections=2, duration=1.0)
    assert tiny_server.most_in_flight == 2  # both connections busy, never a third request
    assert all(s.ok and s.arm == "t" for s in samples)
    assert all(s.latency_ms >= 10.0 for s in samples)
    assert 60 <= len(samples) <= 2 / 0.010 + 2  # a closed loop cannot beat connections / service time
    assert len(samples) == tiny_server.served
    assert samples == sorted(samples, key=lambda s: s.t) and samples[-1].t < 1.0


def test_closed_loop_counts_failures_and_refuses_a_dead_server(tiny_server: Tiny) -> None:
    tiny_server.status = 503
    samples = closed_loop(tiny_server.url, BODIES, connections=1, duration=0.3)
    assert samples and not any(s.ok for s in samples) and {s.error for s in samples} == {"HTTP 503"}
    with pytest.raises(CropsError, match="cannot connect"):
        closed_loop(f"http://127.0.0.1:{h.free_port()}", BODIES, connections=1, duration=0.3)


def test_open_loop_sends_at_the_rate_whatever_the_answers(tiny_server: Tiny) -> None:
    """At 4 requests per service time the open loop keeps sending (in flight goes past one connection's
    worth), where a closed loop on one connection would send a quarter as many."""
    tiny_server.delay_s = 0.05
    samples = open_loop(tiny_server.url, BODIES, rate=80, duration=1.0, connections=8)
    assert len(samples) == 80 and all(s.ok for s in samples)
    assert tiny_server.most_in_flight >= 3
    assert samples[-1].t == pytest.approx(79 / 80, abs=1e-6)


# --------------------------------------------------------------------------- the SLO rate search


def test_meets_slo_needs_p99_no_failures_and_the_rate() -> None:
    ok = {"rate": 400.0, "rps": 398.0, "p99_ms": 9.9, "failures": 0}
    assert h.meets_slo(ok, 10.0)
    assert not h.meets_slo({**ok, "p99_ms": 10.1}, 10.0)
    assert not h.meets_slo({**ok, "failures": 1}, 10.0)
    assert not h.meets_slo({**ok, "rps": 390.0}, 10.0)  # < 98 % of the rate achieved
    assert not h.meets_slo({**ok, "p99_ms": math.nan}, 10.0)  # no successful request at all
    assert h.meets_slo({"rps": 5.0, "p99_ms": 3.0, "failures": 0}, 10.0)  # a closed-loop point: no rate


def capacity(cap: float, fail_over: float | None = None) -> Any:
    """A synthetic server: p99 = 10 ms × rate / cap (so within a 10 ms SLO up to ``cap``)."""
    calls: list[float] = []

    def measure(rate: float) -> dict[str, Any]:
        calls.append(rate)
        failures = 1 if fail_over is not None and rate > fail_over else 0
        return {"rps": rate, "p99_ms": 10.0 * rate / cap, "failures": failures}

    measure.calls = calls  # type: ignore[attr-defined]
    return measure


def test_max_rate_within_slo_bisects_down_from_a_missed_start() -> None:
    m = capacity(100.0)
    found = h.max_rate_within_slo(m, start=400.0, ceiling=475.0, slo_ms=10.0, steps=4)
    assert m.calls == [400.0, 200.0, 100.0, 150.0, 125.0]
    assert not found["start"]["within_slo"] and found["best"] == 100.0
    assert [p["within_slo"] for p in found["points"]] == [False, True, False, False]


def test_max_rate_within_slo_climbs_from_a_met_start_to_the_ceiling() -> None:
    m = capacity(1000.0)
    found = h.max_rate_within_slo(m, start=50.0, ceiling=80.0, slo_ms=10.0, steps=4)
    assert m.calls == [50.0, 65.0, 72.0]  # stops once the bracket is under 10 req/s
    assert found["best"] == 72.0
    # failures count as over the SLO even at a low p99
    m = capacity(1000.0, fail_over=60.0)
    assert h.max_rate_within_slo(m, start=50.0, ceiling=80.0, slo_ms=10.0)["best"] == 58.0
    assert m.calls == [50.0, 65.0, 58.0]
    # an SLO nothing meets: no best, not 0
    found = h.max_rate_within_slo(capacity(100.0), start=40.0, ceiling=80.0, slo_ms=1e-3, steps=2)
    assert found["best"] is None and [p["rate"] for p in found["points"]] == [20.0, 10.0]


def test_rate_search_against_a_real_server(tiny_server: Tiny) -> None:
    """measure_open through the search: a loose SLO is met at the start, an impossible one nowhere."""

    def measure(slo_ms: float) -> dict[str, Any]:
        return h.max_rate_within_slo(
            lambda r: h.measure_open(tiny_server.url, BODIES, rate=r, seconds=1.5, connections=4, warmup_s=0.5),
            start=40.0, ceiling=60.0, slo_ms=slo_ms, steps=1)

    loose, tight = measure(2000.0), measure(1.0)  # every answer takes ≥ 10 ms
    assert loose["start"]["within_slo"] and loose["best"] == 50.0 and loose["start"]["rps"] == 40.0
    assert tight["best"] is None and tight["start"]["p99_ms"] >= 10.0


# --------------------------------------------------------------------------- processes and memory

SERVER = r"""
import subprocess, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
child = subprocess.Popen([sys.executable, "-c", "import time; b = b'x' * (64 << 20); time.sleep(600)"])
print(child.pid, flush=True)
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_server_waits_for_readyz_measures_the_tree_and_stops_the_group(tmp_path: Path) -> None:
    port = h.free_port()
    with h.server([sys.executable, "-c", SERVER, str(port)], port=port, name="t", log_dir=tmp_path,
                  ready_timeout=60) as proc:
        pids = h.tree_pids(proc.pid)
        assert len(pids) == 2 and pids[0] == proc.pid
        child = pids[1]
        # wait until the child has filled its 64 MiB (on a slow box the tree's peak RSS, interpreters
        # included, passes 64 MiB while the child is still filling; its private pages are the PSS floor)
        deadline = time.monotonic() + 20
        while h.tree_pss_mib(proc.pid) < 64 and time.monotonic() < deadline:
            time.sleep(0.1)
        rss = h.tree_peak_rss_mib(proc.pid)
        assert rss >= 64 + 5  # the child's 64 MiB plus both interpreters
        assert h.tree_peak_rss_mib(child) < rss  # the tree is more than the child alone
        assert 64 <= h.tree_pss_mib(proc.pid) <= rss + 1
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is not None and not _alive(child)  # the whole process group is gone
    assert math.isnan(h.tree_peak_rss_mib(proc.pid)) and math.isnan(h.tree_pss_mib(proc.pid))


def test_tree_cpu_counts_the_cpu_a_process_tree_spends() -> None:
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\ntime.sleep(30)"
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    parent = subprocess.Popen([sys.executable, "-c",
                               f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {busy!r}]); "
                               "time.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while h.tree_cpu_s([parent.pid]) < 0.6 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(h.tree_pids(parent.pid)) == 2
        assert 0.6 <= h.tree_cpu_s([parent.pid]) < 3.0  # the busy child's 0.6 s counted through its parent
        assert h.tree_cpu_s([idle.pid]) < 0.5
        assert h.tree_cpu_s([parent.pid, idle.pid]) >= 0.6
    finally:
        for p in [*h.tree_pids(parent.pid)[::-1], idle.pid]:
            with contextlib.suppress(OSError):
                os.kill(p, 9)
        parent.wait()
        idle.wait()


def test_server_that_exits_names_its_log(tmp_path: Path) -> None:
    with pytest.raises(NotReady, match=r"exited with 3.*t\.log"), h.server(
        [sys.executable, "-c", "print('boom'); raise SystemExit(3)"], port=h.free_port(), name="t", log_dir=tmp_path
    ):
        pass
    assert (tmp_path / "t.log").read_text().strip() == "boom"


def test_wait_ready_reports_a_server_that_exits() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    with pytest.raises(NotReady, match="exited with 3"):
        wait_ready("http://127.0.0.1:9", proc, timeout=5)


def test_server_env_drops_what_a_measured_server_must_not_inherit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROPS_REDIS_URL", "redis://x")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/tmp/x")
    env = h.server_env(CROPS_ENCODER_PRECISION="int8")
    assert "CROPS_REDIS_URL" not in env and "PROMETHEUS_MULTIPROC_DIR" not in env
    assert env["CROPS_CACHE"] == "none" and env["OMP_NUM_THREADS"] == "1" and env["CROPS_ENCODER_PRECISION"] == "int8"
    monkeypatch.setenv("CROPS_MAX_BATCH", "64")
    assert h.server_env()["CROPS_MAX_BATCH"] == "64"  # other settings pass through, unless isolated
    env = h.server_env(isolated=True, CROPS_DEADLINE_MS="50")
    assert "CROPS_MAX_BATCH" not in env and env["CROPS_DEADLINE_MS"] == "50" and env["CROPS_CACHE"] == "none"


def test_distinct_queries_never_repeat(tmp_path: Path) -> None:
    (tmp_path / "scifact").mkdir()
    (tmp_path / "scifact" / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(["alpha", "beta", "alpha"])))
    qs, source = h.distinct_queries(5000, tmp_path)
    assert len(qs) == len(set(qs)) == 5000 and qs[:2] == ["alpha", "beta"]
    assert "2 from the real query sets (scifact 2)" in source and "4998 from the generated" in source
    qs, source = h.distinct_queries(10, None)
    assert len(set(qs)) == 10 and "real" not in source


def test_search_queries_are_the_search_sets_shuffled(tmp_path: Path) -> None:
    def write(name: str, texts: list[str]) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "queries.jsonl").write_text(
            "".join(json.dumps({"_id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))

    write("microlens_mimics", [f"bing {i}" for i in range(50)] + ["bing 3"])
    write("trec_session", [f"trec {i}" for i in range(10)])
    write("activitynet", ["a caption sentence, not a search query"])
    qs, source = h.search_queries(tmp_path)
    assert sorted(qs) == sorted({f"bing {i}" for i in range(50)} | {f"trec {i}" for i in range(10)})
    assert qs != [f"bing {i}" for i in range(50)] + [f"trec {i}" for i in range(10)]  # shuffled
    assert h.search_queries(tmp_path)[0] == qs and h.search_queries(tmp_path, seed=1)[0] != qs  # by the seed
    assert source.startswith("60 distinct search queries (microlens_mimics 50, trec_session 10)")
    generated, source = h.search_queries(None)
    assert generated and len(set(generated)) == len(generated) and "generated query mix" in source


def test_bodies_cycle_through_the_pool_across_runs() -> None:
    b = Bodies(["a", "b", "c"])
    first, second = b.take(2), b.take(5)
    assert [json.loads(x)["query"] for x in first + second] == ["a", "b", "c", "a", "b", "c", "a"]
    assert json.loads(b.take(1)[0])["query"] == "b"  # the next run continues where the last stopped


def test_machine_info_and_other_cores() -> None:
    m = h.machine_info(tools=())
    assert m["cores"] >= 1 and m["mem_gib"] > 0 and "numpy" in m["versions"]
    # the benchmarks start their processes with the served heap setting and report it
    from service.heap import HUGE_PAGES_TUNABLE

    assert m["glibc_tunables"] == os.environ["GLIBC_TUNABLES"] and HUGE_PAGES_TUNABLE in m["glibc_tunables"]
    assert m["transparent_hugepage"]
    assert h.other_processes_cores(0.2) >= 0.0
    # the speed probe ran (a few ms on any machine this runs on) and heads the reports
    assert 0.1 < m["cpu_probe_ms"] < 1000
    assert h.describe_machine(m) == f"{m['cpu']} · {m['cores']} cores · CPU probe {m['cpu_probe_ms']:g} ms"
    assert h.describe_machine({**m, "cpu_probe_ms": None}) == f"{m['cpu']} · {m['cores']} cores"


# --------------------------------------------------------------------------- the report


def _result() -> dict[str, Any]:
    point = {"rate": 400.0, "rps": 399.0, "ok_rps": 398.0, "failures": 0, "p50_ms": 3.0, "p99_ms": 8.5, "p999_ms": 12.0,
             "server_cores": 1.5, "generator_cores": 0.3}
    row = {"title": "crops serve, 2 workers", "workers": 2, "at_rate": {**point, "within_slo": True},
           "search": [{**point, "rate": 440.0, "ok_rps": 420.0, "p99_ms": 11.0, "failures": 5, "within_slo": False}],
           "max_rps_within_slo": 400.0,
           "closed_loop": [{"connections": 32, "rps": 455.0, "p50_ms": 60.0, "p99_ms": 90.0, "failures": 0}],
           "max_rps_any_latency": 455.0, "rss_mib_per_worker": 700.0, "pss_mib_per_worker": 650.0}
    naive = {"title": "naive peer", "workers": 1, "at_rate": None, "search": [], "max_rps_within_slo": None,
             "closed_loop": [{"connections": 2, "rps": 6.8, "p50_ms": 290.0, "p99_ms": 390.0, "failures": 0}],
             "best_closed_loop": {"connections": 2, "rps": 6.8, "p99_ms": 390.0}, "max_rps_any_latency": 6.8,
             "rss_mib_per_worker": 4000.0, "pss_mib_per_worker": 3900.0}
    return {
        "limit_rps": 480.0, "service_rps": 400.0, "service_over_limit": 0.833, "service_over_peer": 1.05,
        "service_over_naive": 58.8, "connections": 32, "fixed_rate": 400.0, "slo_p99_ms": 10.0, "seconds": 10.0,
        "recall_at_100": 0.9821, "recall_how": "on 300 queries", "encoder": "int8", "queries": "distinct",
        "index": {"factory": "IVF1024,PQ48,RFlat", "ntotal": 1_000_000, "nprobe": 32, "k_factor": 8.0,
                  "vectors": "expanded"},
        "limit": [{"rps": 470.0, "p50_ms": 4.0, "p99_ms": 5.5, "peak_rss_mib": 1400.0}, {"rps": 490.0}],
        "rows": {"service": row, "naive": naive},
        "skipped": {"nginx": "nginx is not installed (apt-get install nginx-light)"}, "failed": {},
        "core_split": "2 cores", "other_cores_at_start": 0.0, "loadavg_start": [0.1], "loadavg_end": [1.9],
        "noisy": False, "started": "2026-01-01T00:00:00+00:00", "command": "python -m benchmarks.fleet --publish",
        "compute_cores_at_rate": 1.667, "service_cores_at_rate": 1.5, "generator_cores_at_rate": 0.3,
        "limit_cpu_ms_per_query": 4.17, "cpu_ms_per_request": {"service": 3.75}, "cpu_ceiling_rps": {"service": 466.7},
        "machine": {"cpu": "cpu", "cores": 2, "mem_gib": 8.0, "kernel": "6", "git": "abc", "python": "3.11",
                    "versions": {"numpy": "2"}},
    }


def test_report_renders_every_row_and_says_what_was_not_measured(tmp_path: Path) -> None:
    md = render_markdown(_result())
    service = ("| service | crops serve, 2 workers | 3.00 / 8.50 / 12.00 | 0 | 400.0 | 0.833 | 420.0 | 455.0 | 700.0 "
               "| 650.0 |")
    assert service in md
    assert "| naive | naive peer | – | – | – | n/a | – | 6.8 | 4000.0 | 3900.0 |" in md
    nginx = "| nginx | nginx least_conn + 1 replica (1 worker x 2 batch slots) | not measured: nginx is not installed"
    assert nginx in md
    assert "**service / limit = 0.833**" in md and "470.0 req/s before the HTTP rows, 490.0 after" in md
    assert "| 440 | 399.0 | 3.00 | 11.00 | 12.00 | 5 | no | 1.50 | 0.30 |" in md  # the search point over the SLO
    assert "**Cores at 400 req/s** (of 2): encode + search alone need 1.67" in md
    assert "the service's processes used 1.50 and the load generator 0.30" in md
    assert "spends 4.17 ms a query" in md
    assert "service 3.75 ms an answered request, so 400 answers a second would need 1.50 of the 2 cores" in md
    from benchmarks.fleet import cpu_ceiling_rps, cpu_ms_per_request

    row = _result()["rows"]["service"]
    assert cpu_ms_per_request(row) == round(1.5e3 / 420, 2)  # the busiest point: 420 answered a second at 440
    row["search"][0]["ok_rps"] = 300.0
    assert cpu_ms_per_request(row) == round(1.5e3 / 398, 2)  # now the 400 req/s point answered more
    assert cpu_ms_per_request(_result()["rows"]["naive"]) is None
    # ceiling: 2 cores over (1.5 server + 0.3 generator cores) / 420 answers a second
    assert cpu_ceiling_rps(_result()["rows"]["service"], 2) == round(2 * 420 / 1.8, 1)
    assert cpu_ceiling_rps(_result()["rows"]["naive"], 2) is None
    assert "at most service 466.7 req/s" in md and "ceiling is 0.972 × the limit" in md
    assert f"needs ≤ {2e3 / (0.9 * 480):.2f} ms an answer" in md
    assert "`python -m benchmarks.fleet --publish`" in md
    noisy = render_markdown({**_result(), "noisy": True, "service_rps": None, "service_over_limit": None})
    assert "numbers are noisy" in noisy and "**service / limit = n/a**" in noisy


def test_write_report_writes_markdown_json_and_png(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.fleet import figure

    fig = figure(_result())
    paths = h.write_report(tmp_path / "out" / "bench.md", "# hello", _result(), figure=fig)
    plt.close(fig)
    assert [p.name for p in paths] == ["bench.md", "bench.json", "bench.png"]
    assert (tmp_path / "out" / "bench.md").read_text() == "# hello\n"
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["service_rps"] == 400.0
    assert (tmp_path / "out" / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bench.json", "bench.md", "bench.png"]


def test_markdown_table_and_fmt() -> None:
    assert h.markdown_table(["a", "b"], [[1, "x|y"]]) == ["| a | b |", "|---|---|", "| 1 | x\\|y |"]
    assert (h.fmt(None), h.fmt(math.nan), h.fmt(2.345, 2), h.fmt(7)) == ("n/a", "n/a", "2.35", "7")


def test_nginx_conf_keeps_the_shipped_limits_and_points_at_local_replicas(tmp_path: Path) -> None:
    template = (ROOT / "deploy" / "nginx" / "nginx.conf").read_text()
    conf = h.nginx_conf(template, [18001, 18002], 18000, tmp_path)
    assert "crops:8000" not in conf and f"pid {tmp_path / 'nginx.pid'};" in conf
    assert "listen 127.0.0.1:18000;" in conf and "least_conn;" in conf
    shipped = template.split("server crops:8000", 1)[1].split(";", 1)[0]  # e.g. " max_fails=0 max_conns=4"
    assert f"server 127.0.0.1:18001{shipped}; server 127.0.0.1:18002{shipped};" in conf
    with pytest.raises(ValueError):
        h.nginx_conf("http { }", [1], 2, tmp_path)
    # the overload benchmark's sizing: its own per-replica limit (0: none) and one nginx worker process
    conf = h.nginx_conf(template, [18001], 18000, tmp_path, max_conns=6, worker_processes=1)
    assert "server 127.0.0.1:18001 max_fails=0 max_conns=6;" in conf and "\nworker_processes 1;" in conf
    # a directive is replaced on its own line, never words in a comment (nothing else is touched)
    assert "zone crops_upstream" in conf and conf.count("\n") == template.count("\n")
    assert "server 127.0.0.1:18001 max_fails=0;" in h.nginx_conf(template, [18001], 18000, tmp_path, max_conns=0)


# --------------------------------------------------------------------------- the limit script


def test_limit_script_measures_the_serving_path(tiny_bundle: Path, tmp_path: Path) -> None:
    queries = tmp_path / "q.json"
    queries.write_text(json.dumps(["cat video", "pasta recipe", "minecraft speedrun", "guitar cover"]))
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.limit", "--bundle", str(tiny_bundle), "--queries", str(queries),
         "--seconds", "1", "--cpus", "0"],
        capture_output=True, text=True, timeout=180, check=False, cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["processes"] == 1 and out["cpus"] == [0]
    assert out["rps"] > 0 and 0 < out["p50_ms"] <= out["p99_ms"]
    assert out["peak_rss_mib"] > 50  # a real model and index were loaded


def test_operating_point_serves_another_point_of_the_tuning_curve(tmp_path: Path, model_bundle: Path) -> None:
    import shutil

    import numpy as np

    from benchmarks.fleet import operating_point
    from core.manifest import verify_bundle
    from index_builder.build import build_from_vectors

    rng = np.random.default_rng(0)
    docs = rng.normal(size=(3000, 384)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    q = docs[:60] + 0.3 * rng.normal(size=(60, 384)).astype(np.float32)
    bundle = tmp_path / "b"
    shutil.copytree(model_bundle, bundle)
    build_from_vectors(bundle, docs, [f"d{i}" for i in range(len(docs))], q / np.linalg.norm(q, axis=1, keepdims=True),
                       ann=True, n_latency=5, use_gpu=False)
    built = verify_bundle(bundle, require_index=True).index
    assert built is not None and built.curve_json
    curve = json.loads((bundle / built.curve_json).read_text())["points"]
    other = next(p for p in curve if (p["nprobe"], p["k_factor"]) != (built.nprobe, built.k_factor))

    copy = operating_point(bundle, f"{other['nprobe']}/{other['k_factor']:g}", tmp_path)
    sec = verify_bundle(copy, require_index=True).index  # checksums still hold
    assert sec is not None and copy != bundle
    assert (sec.nprobe, sec.k_factor, sec.recall_at_100) == (other["nprobe"], other["k_factor"], other["recall"])
    assert verify_bundle(bundle, require_index=True).index.nprobe == built.nprobe  # type: ignore[union-attr]
    with pytest.raises(SystemExit, match=r"error: .*not on"):
        operating_point(bundle, "100000/3", tmp_path)
    with pytest.raises(SystemExit, match=r"error: .*not on"):  # an efSearch point: this is an IVF curve
        operating_point(bundle, "512", tmp_path)
    with pytest.raises(SystemExit, match="error: --search wants"):
        operating_point(bundle, "fast", tmp_path)
    with pytest.raises(SystemExit, match=r"error: .*no tuned index"):
        operating_point(model_bundle, "32/8", tmp_path)


def test_the_headline_is_the_deployed_topology_when_nginx_was_measured() -> None:
    import argparse

    from benchmarks.fleet import summarize

    res = _result()
    one_box = res["rows"]["service"]
    nginx = {**one_box, "title": "nginx", "max_rps_within_slo": 350.0, "at_rate": {**one_box["at_rate"], "p99_ms": 9.1},
             "rss_mib_per_worker": 690.0}
    a = argparse.Namespace(connections=32, rate=400.0)
    both = summarize({"service": one_box, "nginx": nginx}, res["limit"][:1], a)
    assert both["service_row"] == "nginx" and both["service_rps"] == 350.0 and both["p99_ms_at_400"] == 9.1
    assert both["rss_mib_per_worker"] == 690.0 and both["service_over_limit"] == round(350 / 470, 3)
    assert both["crops_serve_rps"] == 400.0 and both["crops_serve_p99_ms_at_400"] == 8.5
    alone = summarize({"service": one_box}, res["limit"][:1], a)
    assert alone["service_row"] == "service" and alone["service_rps"] == 400.0 and alone["p99_ms_at_400"] == 8.5
    md = render_markdown({**res, **both})
    assert "the service is the `nginx` row (the deployed topology" in md


def test_level0_degree_counts_the_bottom_layers_links() -> None:
    import faiss
    import numpy as np

    from benchmarks.graph_build_effort import level0_degree

    x = np.random.default_rng(0).random((300, 8), dtype=np.float32)
    index = faiss.IndexHNSWFlat(8, 4)
    index.add(x)
    hnsw = index.hnsw
    neighbors = faiss.vector_to_array(hnsw.neighbors)
    offsets = faiss.vector_to_array(hnsw.offsets)
    expected = np.mean([(neighbors[offsets[i] : offsets[i] + hnsw.nb_neighbors(0)] >= 0).sum() for i in range(300)])
    assert 0 < level0_degree(hnsw) <= 8  # at most 2 x M links on the bottom layer
    assert level0_degree(hnsw) == round(float(expected), 2)


@pytest.mark.parametrize("args", [
    ["--max-conns", "3", "--replicas", "2"],  # one configuration: nothing to compare
    ["--max-conns", "3", "--replicas", "2,0"],
    ["--max-conns", "2,x"],
    ["--max-conns", "2,3", "--rate", "0"],
])
def test_nginx_topology_comparison_refuses_what_it_cannot_compare(args: list[str]) -> None:
    from benchmarks import nginx_max_conns

    with pytest.raises(SystemExit) as e:
        nginx_max_conns.main([*args, "--bundle", "/nonexistent"])
    assert str(e.value).startswith("error: ") and "/nonexistent" not in str(e.value)


def test_a_peer_counts_at_any_latency_only_when_it_never_met_the_slo() -> None:
    import argparse

    from benchmarks.fleet import summarize

    res = _result()
    svc = res["rows"]["service"]
    late = {**svc, "title": "stock", "max_rps_within_slo": None, "max_rps_any_latency": 150.0,
            "at_rate": {**svc["at_rate"], "ok_rps": 170.0, "within_slo": False}, "search": []}
    a = argparse.Namespace(connections=32, rate=400.0)
    never = summarize({"service": svc, "stock": late}, res["limit"][:1], a)
    assert never["stock_peer_rps"] == 170.0 and never["stock_peer_within_slo"] is False  # its busiest fixed rate
    assert never["service_over_stock_peer"] == round(400 / 170, 2)
    met = summarize({"service": svc, "stock": {**late, "max_rps_within_slo": 100.0}}, res["limit"][:1], a)
    assert met["stock_peer_rps"] == 100.0 and met["stock_peer_within_slo"] is True
    assert met["service_over_stock_peer"] == 4.0
    info = {"factory": "HNSW32", "ef_construction": 40, "ef_search": 2048, "recall_at_100": 0.95,
            "recall_how": "on the same 300 held-out real queries"}
    md = render_markdown({**res, **never, "stock_index": info})
    assert "service / stock peer = 2.35 (the stock peer's most answers a second at any latency" in md
    assert "HNSW32 at efConstruction 40, efSearch 2048, recall@100 0.95" in md
    without = summarize({"service": svc}, res["limit"][:1], a)
    assert without["stock_peer_rps"] is None and "stock peer" not in render_markdown({**res, **without})
    assert without["peer_rps"] is None and without["peer_within_slo"] is None
    peer_late = summarize({"service": svc, "peer": late}, res["limit"][:1], a)  # the strong peer, same rule
    assert peer_late["peer_rps"] == 170.0 and peer_late["peer_within_slo"] is False
    assert "strong peer = 2.35 (the strong peer's most answers a second at any latency" in render_markdown(
        {**res, **peer_late})


def test_stock_index_refuses_missing_inputs_with_one_error_line(tiny_bundle: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import stock_index

    assert stock_index.main(["--bundle", str(tmp_path / "none"), "--vectors", str(tmp_path / "v.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert stock_index.main(["--bundle", str(tiny_bundle), "--model", str(tiny_bundle),
                             "--vectors", str(tmp_path / "v.npy")]) == 2
    assert "v.npy is missing" in capsys.readouterr().err
    (tmp_path / "bad.npy").write_text("not numpy")
    assert stock_index.main(["--bundle", str(tiny_bundle), "--model", str(tiny_bundle),
                             "--vectors", str(tmp_path / "bad.npy")]) == 2
    assert "bad.npy is not a .npy of vectors" in capsys.readouterr().err
    assert stock_index.main(["--bundle", str(tiny_bundle), "--model", str(tiny_bundle), "--out", str(tiny_bundle),
                             "--vectors", str(tmp_path / "bad.npy")]) == 2
    assert "would overwrite an input bundle" in capsys.readouterr().err
    assert (tiny_bundle / "manifest.json").is_file()
    assert stock_index.stock_bundle_path(Path("runs/realq/b/")) == Path("runs/realq/b_stock")


def test_stock_index_builds_faiss_defaults_tuned_to_the_served_target(
    tiny_bundle: Path, model_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from benchmarks import stock_index
    from core.manifest import load_id_map, verify_bundle

    served = verify_bundle(tiny_bundle, require_index=True).index
    assert served is not None
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(served.ntotal, served.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    np.save(tmp_path / "v.npy", vecs)
    queries = ["cat video", "how to cook pasta", "guitar cover", "minecraft speedrun", "funny dogs", "news today"]
    # the query source (the MIMICS-Manual files) replaced by a fixed list: this test is about the build
    monkeypatch.setattr(stock_index, "real_query_split", lambda n: (queries[:3], queries[3:], "fixed"))
    out = tmp_path / "stock"
    assert stock_index.main(["--bundle", str(tiny_bundle), "--model", str(model_bundle),
                             "--vectors", str(tmp_path / "v.npy"), "--out", str(out)]) == 0
    sec = verify_bundle(out, require_index=True).index  # checksums hold
    assert sec is not None and sec.factory == "HNSW32" and sec.ef_search and sec.ef_search >= 100
    assert sec.model_dump()["ef_construction"] == 40 and sec.target_recall == served.target_recall
    assert sec.recall_at_100 is not None and sec.recall_at_100 >= (served.target_recall or 0.95)
    assert load_id_map(out / sec.id_map_file)[:2] == ["v0000000", "v0000001"]  # rows in insertion order


def test_row_ab_medians_what_was_measured_and_refuses_bad_rows(tmp_path: Path) -> None:
    from benchmarks import row_ab

    assert row_ab.median([None, 2.0, 4.0]) == 3.0 and row_ab.median([None, None]) is None
    for rows in ("service", "service,service", "service,naive"):
        with pytest.raises(SystemExit, match="error: --rows takes two different rows"):
            row_ab.main(["--rows", rows])
    with pytest.raises(SystemExit, match=r"error: .* not found"):
        row_ab.main(["--rows", "service,stock", "--bundle", str(tmp_path / "none")])


def test_process_model_comparison_refuses_an_unknown_arm(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import batch_slots

    assert batch_slots.main(["--arms", "1x2,4x4"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown arm(s) 4x4")
    # an arm on another checkout needs that checkout named by --tree, and the tree must be a checkout
    assert batch_slots.main(["--arms", "1x2@before"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown arm(s) 1x2@before")
    assert batch_slots.main(["--tree", "before=/nonexistent", "--arms", "1x2@before"]) == 2
    assert capsys.readouterr().err.startswith("error: --tree before=/nonexistent: expected LABEL=PATH")
