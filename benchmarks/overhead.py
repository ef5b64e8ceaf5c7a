"""Where a request's time goes: one core's limit vs one service worker on that core.

    python benchmarks/overhead.py --bundle B [--seconds 10] [--profile runs/perf/overhead.svg]

Everything runs on core 0 except the load generator, which gets core 1 to itself, so the numbers are
the server's own cost per request:
1. limit, 1 process on core 0: normalise + tokenise + encode + search + id lookup in a loop.
2. ``crops serve`` (1 worker, cache off) on core 0; wrk on core 1 with 1 connection (latency: the
   request's path end to end) and 2 connections (the worker never waits for the client: its
   requests/s is 1 / the server's CPU time per request).
3. The server's own stage timings (Prometheus histogram sums: handler total, encode, search, queue),
   so the per-request cost splits into encode + search (the limit's work), the handler around them
   and what is left outside the handler (HTTP parsing, routing, validation, JSON, the event loop).

``--profile`` also samples the worker with py-spy during a saturated run and writes a flame graph.
Writes ``<bundle>_overhead.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench import free_port, log, server  # noqa: E402

from loadtest import wrk  # noqa: E402
from loadtest.querymix import load_mix  # noqa: E402


def stage_means(url: str) -> dict[str, float]:
    """Mean ms per request of each stage, from the service's Prometheus histograms."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            stage = s.labels.get("stage")
            if s.name == "crops_request_latency_seconds_sum" and stage:
                sums[stage] = sums.get(stage, 0.0) + s.value
            elif s.name == "crops_request_latency_seconds_count" and stage:
                counts[stage] = counts.get(stage, 0.0) + s.value
    return {k: round(sums[k] / counts[k] * 1e3, 3) for k in sums if counts.get(k)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--precision", default="int8", choices=["fp32", "int8"])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--profile", type=Path, default=None, help="py-spy flame graph (SVG) of the saturated worker")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    import limit

    from core.manifest import verify_bundle

    m = verify_bundle(a.bundle, require_index=True)
    assert m.model is not None
    onnx = m.model.variants[a.precision].file if a.precision in m.model.variants else None
    mix = load_mix(None)
    rng = random.Random(0)
    queries = [mix.sample(rng)[0] for _ in range(4000)]
    bodies = mix.request_bodies(4000, seed=1)

    log("limit: 1 process on core 0")
    lim = limit.run_limit(a.bundle, queries, seconds=a.seconds, cpus=[0], onnx_file=onnx)
    result: dict[str, Any] = {"limit_1core": lim}

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CROPS_CACHE": "none", "CROPS_ENCODER_PRECISION": a.precision}
    for k in ("CROPS_REDIS_URL", "CROPS_EXPERIMENTS", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(k, None)
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "crops", "serve", "--bundle", str(a.bundle),
           "--port", str(port)]
    script = wrk.write_script(bodies)
    try:
        for conns in (1, 2):
            with server(cmd, env, port, f"overhead-c{conns}") as proc:
                wrk.run_wrk(url, script, connections=conns, duration=2, cpus="1")  # warm-up
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
                log(f"service: 1 worker on core 0, wrk -c{conns} on core 1, {a.seconds:g}s")
                res = wrk.run_wrk(url, script, connections=conns, duration=a.seconds, cpus="1")
                res["stages_ms"] = stage_means(url)  # the warm-up's requests are in the means too
                result[f"service_c{conns}"] = res
                if spy is not None:
                    spy.wait(timeout=a.seconds + 60)
    finally:
        script.unlink(missing_ok=True)

    per_req_limit = 1e3 / lim["rps"]
    sat = result["service_c2"]
    per_req_service = 1e3 / sat["rps"]
    st = sat["stages_ms"]
    handler = st.get("total", float("nan"))
    result["breakdown_ms"] = {
        "limit_per_request": round(per_req_limit, 3),
        "service_cpu_per_request": round(per_req_service, 3),
        "overhead": round(per_req_service - per_req_limit, 3),
        "handler_total": handler,
        "encode": st.get("encode"),
        "search": st.get("search"),
        "queue": st.get("queue"),
        "outside_handler": round(per_req_service - handler, 3),
        "latency_c1_p50": result["service_c1"]["p50_ms"],
        "limit_p50": lim["p50_ms"],
    }
    result["service_over_limit_1core"] = round(sat["rps"] / lim["rps"], 3)
    out = a.out or Path(str(a.bundle).rstrip("/") + "_overhead.json")
    out.write_text(json.dumps(result, indent=2))
    b = result["breakdown_ms"]
    print(f"limit (1 core):            {lim['rps']:7.1f} req/s  = {b['limit_per_request']:.3f} ms/request")
    print(f"service (1 worker, wrk c2): {sat['rps']:7.1f} req/s  = {b['service_cpu_per_request']:.3f} ms/request "
          f"({result['service_over_limit_1core']:.3f} of the limit)")
    print(f"  handler {handler} ms (encode {b['encode']}, search {b['search']}, queue {b['queue']}); "
          f"outside the handler {b['outside_handler']} ms")
    print(f"latency, 1 connection: p50 {b['latency_c1_p50']} ms (limit p50 {b['limit_p50']} ms)")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
