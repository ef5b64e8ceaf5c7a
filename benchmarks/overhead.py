"""Where a request's time goes: one core's limit vs one service worker on that core.

    python -m benchmarks.overhead --bundle B [--seconds 10] [--profile runs/perf/overhead.svg]

Everything runs on core 0 except the load generator, which gets core 1 to itself, so the numbers are
the server's own cost per request:
1. limit, 1 process on core 0: normalise + tokenise + encode + search + id lookup in a loop.
2. ``crops serve`` (1 worker, cache off) on core 0; the closed-loop client (``loadtest.openloop``) on
   core 1 with 1 connection (latency: the request's path end to end) and 2 connections (the worker
   never waits for the client: its requests/s is 1 / the server's CPU time per request).
3. The server's own stage timings (Prometheus histogram sums: handler total, encode, search, queue),
   so the per-request cost splits into encode + search (the limit's work), the handler around them
   and what is left outside the handler (HTTP parsing, routing, validation, JSON, the event loop).

``--profile`` also samples the worker with py-spy during a saturated run and writes a flame graph.
Writes ``<bundle>_overhead.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import harness as h
from benchmarks.limit import run_limit


def stage_totals(url: str) -> dict[str, float]:
    """Cumulative sums/counts of the service's stage histograms and encoder batch sizes."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            stage = s.labels.get("stage")
            if stage and s.name == "crops_request_latency_seconds_sum":
                out[f"{stage}_sum"] = out.get(f"{stage}_sum", 0.0) + s.value
            elif stage and s.name == "crops_request_latency_seconds_count":
                out[f"{stage}_n"] = out.get(f"{stage}_n", 0.0) + s.value
            elif s.name in ("crops_encoder_batch_size_sum", "crops_encoder_batch_size_count"):
                out[s.name] = s.value
    return out


def stage_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean ms per request of each stage between two snapshots, and the mean encoder batch."""
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    means = {k[:-4]: round(d[k] / d[k[:-4] + "_n"] * 1e3, 3) for k in d if k.endswith("_sum") and d.get(k[:-4] + "_n")}
    batches = d.get("crops_encoder_batch_size_count", 0.0)
    means["mean_batch"] = round(d.get("crops_encoder_batch_size_sum", 0.0) / batches, 2) if batches else 0.0
    return means


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--precision", default="int8", choices=["fp32", "int8"])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--profile", type=Path, default=None, help="py-spy flame graph (SVG) of the saturated worker")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    from core.manifest import verify_bundle

    m = verify_bundle(a.bundle, require_index=True)
    assert m.model is not None
    onnx = m.model.variants[a.precision].file if a.precision in m.model.variants else None
    queries, _ = h.search_queries()  # the fleet bench's load
    bodies = [json.dumps({"query": q}).encode() for q in queries]

    h.log("limit: 1 process on core 0")
    lim = run_limit(a.bundle, queries, seconds=a.seconds, cpus=[0], onnx_file=onnx)
    result: dict[str, Any] = {"limit_1core": lim}

    port = h.free_port()
    url = f"http://127.0.0.1:{port}"
    env = h.server_env(CROPS_ENCODER_PRECISION=a.precision)
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "crops", "serve", "--bundle", str(a.bundle),
           "--port", str(port)]
    with h.pinned([1]):  # this process is the load generator: core 1 only
        for conns in (1, 2):
            with h.server(cmd, port=port, name=f"overhead-c{conns}", env=env) as proc:
                h.measure_closed(url, bodies, connections=conns, seconds=2)  # warm-up
                spy = None
                if a.profile and conns == 2:
                    if not shutil.which("py-spy"):
                        raise SystemExit("error: --profile needs py-spy (pip install py-spy)")
                    a.profile.parent.mkdir(parents=True, exist_ok=True)
                    spy = subprocess.Popen(
                        ["taskset", "-c", "1", "py-spy", "record", "--pid", str(proc.pid), "--rate", "200",
                         "--duration", str(int(a.seconds)), "--threads", "--native", "-o", str(a.profile)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )
                    time.sleep(1.0)
                h.log(f"service: 1 worker on core 0, closed loop on {conns} connections on core 1, {a.seconds:g}s")
                before = stage_totals(url)
                res = h.measure_closed(url, bodies, connections=conns, seconds=a.seconds, warmup_s=0.0)
                res["stages_ms"] = stage_means(before, stage_totals(url))
                result[f"service_c{conns}"] = res
                if spy is not None:
                    spy.wait(timeout=a.seconds + 60)

    per_req_limit = 1e3 / lim["rps"]
    sat = result["service_c2"]
    per_req_service = 1e3 / sat["rps"]
    one = result["service_c1"]
    st = one["stages_ms"]  # one connection: no request waits for another, so the stages add up
    handler = st.get("total", float("nan"))
    model = (st.get("encode") or 0.0) + (st.get("search") or 0.0)
    result["breakdown_ms"] = {
        "limit_per_request": round(per_req_limit, 3),
        "service_cpu_per_request": round(per_req_service, 3),
        "overhead": round(per_req_service - per_req_limit, 3),
        "c1_round_trip_mean": one["mean_ms"],
        "c1_handler_total": handler,
        "c1_encode_plus_search": round(model, 3),
        "c1_handler_rest": round(handler - model, 3),
        "c1_outside_handler": round(one["mean_ms"] - handler, 3),
        "c2_mean_batch": sat["stages_ms"].get("mean_batch"),
        # share of the busy worker's wall time inside encode + search: each job reports its batch's
        # time, so per-request means × requests / mean batch = time spent in batches
        "c2_model_share": round(
            ((sat["stages_ms"].get("encode") or 0.0) + (sat["stages_ms"].get("search") or 0.0))
            * sat["requests"] / max(sat["stages_ms"].get("mean_batch") or 1.0, 1.0) / (a.seconds * 1e3), 3
        ),
        "limit_p50": lim["p50_ms"],
    }
    result["service_over_limit_1core"] = round(sat["rps"] / lim["rps"], 3)
    out = a.out or Path(str(a.bundle).rstrip("/") + "_overhead.json")
    out.write_text(json.dumps(result, indent=2))
    b = result["breakdown_ms"]
    print(f"limit (1 core):            {lim['rps']:7.1f} req/s  = {b['limit_per_request']:.3f} ms/request")
    print(f"service (1 worker, 2 conns): {sat['rps']:7.1f} req/s  = {b['service_cpu_per_request']:.3f} ms/request "
          f"({result['service_over_limit_1core']:.3f} of the limit)")
    print(f"1 connection, mean round trip {b['c1_round_trip_mean']} ms = encode+search {b['c1_encode_plus_search']} "
          f"+ rest of the handler {b['c1_handler_rest']} + outside the handler (HTTP, event loop, kernel, "
          f"client) {b['c1_outside_handler']}")
    print(f"2 connections: the worker spends {b['c2_model_share']:.0%} of wall time in encode + search "
          f"(batches of {b['c2_mean_batch']})")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
