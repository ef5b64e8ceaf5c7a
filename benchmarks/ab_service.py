"""Paired A/B of service configurations on one core, against the in-process loop on that core.

    python -m benchmarks.ab_service --bundle B \\
        --config base:CROPS_BATCHER=thread,CROPS_FAST_PATH=false --config new: [--rounds 8] [--seconds 4]

Each configuration runs as one ``crops serve`` worker pinned to core 0 (cache off, int8 tower); the
closed-loop client (``loadtest.openloop``, in this process) gets core 1. Every round measures, back
to back: this process's own encode+search loop on core 0 (the limit), then each server under the
closed loop for the same time. The box's speed drifts by ±10% over
minutes, so comparisons are made within a round: the summary is each configuration's median
requests/s and median ratio to the limit of its round. ``--connections 1`` gives the per-request
round trip, 2 keeps the worker busy (its own CPU cost per request).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import time
from pathlib import Path

from benchmarks import harness as h
from loadtest.querymix import load_mix


def parse_config(text: str) -> tuple[str, dict[str, str]]:
    """``name:VAR=value,VAR=value`` → (name, env overrides)."""
    name, _, rest = text.partition(":")
    if not name:
        raise SystemExit(f"error: --config {text!r}: give NAME:VAR=value,...")
    env = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.startswith("CROPS_"):
            raise SystemExit(f"error: --config {text!r}: {item!r} is not CROPS_VAR=value")
        env[key] = value
    return name, env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--config", action="append", required=True, help="NAME:CROPS_VAR=value,... (repeat)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--precision", default="int8", choices=["fp32", "int8"])
    ap.add_argument("--out", type=Path, default=None, help="JSON with every round")
    a = ap.parse_args()
    configs = dict(parse_config(c) for c in a.config)
    mix = load_mix(None)
    rng = random.Random(0)
    queries = [mix.sample(rng)[0] for _ in range(4000)]
    bodies = mix.request_bodies(4000, seed=1)
    res: dict[str, list[float]] = {"limit": [], **{k: [] for k in configs}}
    with contextlib.ExitStack() as stack:
        urls = {}
        for name, extra in configs.items():
            port = h.free_port()
            env = h.server_env(CROPS_ENCODER_PRECISION=a.precision, **extra)
            cmd = ["taskset", "-c", "0", sys.executable, "-m", "crops", "serve", "--bundle", str(a.bundle),
                   "--port", str(port)]
            stack.enter_context(h.server(cmd, port=port, name=f"ab-{name}", env=env))
            urls[name] = f"http://127.0.0.1:{port}"
            with h.pinned([1]):
                h.measure_closed(urls[name], bodies, connections=a.connections, seconds=2)  # warm-up
        from service.engine import Retriever

        with h.pinned([0]):
            retriever = Retriever(a.bundle, precision=a.precision)
            for q in queries[:50]:
                retriever.retrieve([q], 100)
        i = 0
        for rnd in range(a.rounds):
            with h.pinned([0]):  # the limit: this process's own loop on the server's core
                n, t_end = 0, time.perf_counter() + a.seconds
                while time.perf_counter() < t_end:
                    retriever.retrieve([queries[i % len(queries)]], 100)
                    i, n = i + 1, n + 1
            res["limit"].append(n / a.seconds)
            line = f"round {rnd}: limit {n / a.seconds:6.1f}"
            for name, url in urls.items():
                with h.pinned([1]):  # the load generator on the other core
                    w = h.measure_closed(url, bodies, connections=a.connections, seconds=a.seconds, warmup_s=0.0)
                res[name].append(w["rps"])
                line += f" | {name} {w['rps']:6.1f} (p50 {w['p50_ms']:.2f} ms)"
            h.log(line)
    summary = {"limit_median_rps": statistics.median(res["limit"]), "connections": a.connections, "configs": {}}
    for name in configs:
        ratios = [s / lim for s, lim in zip(res[name], res["limit"], strict=True)]
        summary["configs"][name] = {
            "env": configs[name],
            "median_rps": statistics.median(res[name]),
            "median_ratio": round(statistics.median(ratios), 3),
            "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
        }
        print(f"{name:12s} median {statistics.median(res[name]):6.1f} req/s, median ratio to the limit "
              f"{statistics.median(ratios):.3f} ({min(ratios):.3f}..{max(ratios):.3f})")
    print(f"limit median {summary['limit_median_rps']:.1f} req/s (1 core)")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"summary": summary, "rounds": res}, indent=2))


if __name__ == "__main__":
    main()
