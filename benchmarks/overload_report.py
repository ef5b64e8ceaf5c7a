"""The overload benchmark's report (``benchmarks.overload``): the markdown of each mode from its JSON
result, and the overload run's figure (latency of every request and goodput over time)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.harness import markdown_table
from benchmarks.overload_client import Shot


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    return "\n".join(markdown_table(header, rows))


def render_md(mode: str, r: dict[str, Any]) -> str:
    """The markdown report of ``mode`` (overload, process-models, profile) from its result ``r``."""
    if mode == "profile":
        return render_profile(r)
    if mode == "overload":
        return render_overload(r)
    return render_process_models(r)


def render_profile(r: dict[str, Any]) -> str:
    ip = r["in_process_ms"]
    steps = _table(
        ["step", "batch 1", "batch 4 (the whole batch)"],
        [[label, f"{ip[f'{key}_b1'][0]} / {ip[f'{key}_b1'][1]}", f"{ip[f'{key}_b4'][0]} / {ip[f'{key}_b4'][1]}"]
         for label, key in (("encode", "encode"), ("search (top 100)", "search"))],
    )
    return f"""# What one query costs

Command: `{r["command"]}` ({r["nproc"]} cores, load average {r["loadavg_1m"]} at the end). Bundle
`{r["bundle"]}` ({r["ntotal"]} vectors), query tower {r["precision"]}; one thread; ms p50 / p99.

{steps}

One keep-alive connection, closed loop, cache misses, through `crops serve`
({"nginx in front" if r["round_trip_front"] == "nginx" else "no balancer"}): round trip
{r["round_trip_ms"][0]} / {r["round_trip_ms"][1]} ms.
"""


def render_overload(r: dict[str, Any]) -> str:
    goals = _table(["goal", "met"], [[k, "yes" if ok else "**no**"] for k, ok in r["verdict"].items()])
    ramp = _table(
        ["offered req/s", "goodput", "admitted p99 ms", "shed", "within the SLO"],
        [[x["rate"], x["goodput_rps"], x["ok_p99_ms"], x["shed"], _yes(x["within_slo"])] for x in r["ramp"]],
    )
    gc = r["goodput_over_capacity"]
    if r.get("front") == "nginx":
        serving = (
            "nginx least_conn (deploy/nginx/nginx.conf, one worker process) in front of "
            f"{r['replicas']} one-worker `crops serve` replicas, `max_conns={r['max_conns']}` per replica "
            "in the overload run (none in the capacity ramp)"
        )
        front_cpu = " and nginx"
    else:
        serving = f"one `crops serve --workers {r['workers']}`, no balancer"
        front_cpu = ""
    if r.get("batch_slots"):
        serving += f"; `CROPS_BATCH_SLOTS={r['batch_slots']}` in every worker"
    if r.get("server_nice"):
        serving += (
            f"; every `crops serve` under `nice -n {r['server_nice']}`, so the load generator"
            f"{' and nginx' if front_cpu else ''} get CPU first, as on machines of their own"
        )
    sweep = ""
    if r.get("sweep"):
        rows = _table(
            ["max_conns", "goodput req/s (x capacity)", "admitted p99 ms", "shed", "shed p50 / p99 ms",
             "by nginx / replica", "goals"],
            [[x["max_conns"], f"{x['goodput_rps']} ({x['goodput_over_capacity']} x)", x["ok_p99_ms"], x["shed"],
              f"{x['shed_p50_ms']} / {x['shed_p99_ms']}", f"{x['shed_by_balancer']} / {x['shed_by_replica']}",
              f"{sum(x['verdict'].values())} of {len(x['verdict'])}"] for x in r["sweep"]],
        )
        sweep = f"""
Sizing sweep: the same overload once per nginx `max_conns` (same replicas, in this order); the headline
above is the run meeting most goals, then with the most goodput.

{rows}
"""
    by_who = (
        f"{r.get('shed_by_balancer', 0)} ({r.get('shed_by_balancer_p99_ms')} ms) / "
        f"{r.get('shed_by_replica', r['shed'])} ({r.get('shed_by_replica_p99_ms')} ms)"
    )
    numbers = _table(
        ["what", "number"],
        [
            ["goodput (200/s)", f"{r['goodput_rps']} req/s = **{gc if gc is not None else 'n/a'} x capacity**"],
            ["admitted latency p50 / p99", f"{r['ok_p50_ms']} / **{r['ok_p99_ms']} ms**"],
            ["shed (503)",
             f"{r['shed']} of {r['sent']}, latency p50 {r['shed_p50_ms']} / p99 **{r['shed_p99_ms']} ms**"],
            ["503 with Retry-After", f"{r['shed_with_retry_after']} of {r['shed']}"],
            ["refused by nginx / by a replica (latency p99)", by_who],
            ["other statuses", r["other"] or "none"],
            ["load generator's own schedule lag p99", f"{r['generator_lag_p99_ms']} ms"],
        ],
    )
    return f"""# Overload at {r["factor"]:g}x capacity

Command: `{r["command"]}` ({r["nproc"]} cores shared with the load generator{front_cpu}, load average
{r["loadavg_1m"]} at the end). Bundle `{r.get("bundle", "?")}`, query tower {r.get("precision", "fp32")}. Every query
is a cache miss; {serving}; SLO = the replicas' deadline (`CROPS_DEADLINE_MS`) = {r["slo_ms"]:g} ms.

Closed loop (32 keep-alive connections, no deadline in the way): {r["closed_loop"]["goodput_rps"]} req/s at
p50 {r["closed_loop"]["ok_p50_ms"]} ms, p99 {r["closed_loop"]["ok_p99_ms"]} ms: the throughput of a deep queue,
not a rate served within the SLO.

Capacity = the highest open-loop rate served within the SLO (p99 of the admitted requests <= SLO,
<= 1 % shed, >= 97 % served), from a ramp of {r["ramp"][0]["sent"] / max(r["ramp"][0]["rate"], 1e-9):.0f} s steps:

{ramp}

**Capacity: {r["capacity_rps"]} req/s.**

Overload: open loop at **{r["offered_rps"]} req/s** for {r["duration_s"]:g} s over {r["connections"]}
keep-alive connections:

{numbers}

{goals}
{sweep}
![latency and goodput over time]({Path(r["out"]).name}.png)

Latency is measured by the client from the moment a request is released, including any wait for a
free connection (no coordinated omission).
"""


def render_process_models(r: dict[str, Any]) -> str:
    rounds = r["rounds"]
    n = len(next(iter(rounds.values())))
    table = _table(
        ["process model", *(f"round {i}" for i in range(n)), "mean"],
        [[name, *(f"{s['goodput_rps']} req/s, p99 {s['ok_p99_ms']} ms" for s in runs),
          f"**{r['mean_rps'][name]} req/s**"] for name, runs in rounds.items()],
    )
    return f"""# Two worker processes on one box: process models side by side

Command: `{r["command"]}` ({r["nproc"]} cores shared with other work, load average {r["loadavg_1m"]}).
Closed loop, {r["connections"]} keep-alive connections, every query a cache miss, {r["seconds"]:g} s per
round; all set up at once and measured in turn in every round (interleaved), so the shared box's
drifting load falls on each alike.

{table}
"""


def figure(shots: list[Shot], res: dict[str, Any]) -> Any:
    """The overload run's figure: every request's latency over time (admitted and shed), and goodput
    per second against the capacity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ok = [s for s in shots if s.status == 200]
    shed = [s for s in shots if s.status == 503]
    ax1.scatter([s.t for s in ok], [s.ms for s in ok], s=2, label="200 (admitted)")
    ax1.scatter([s.t for s in shed], [s.ms for s in shed], s=2, label="503 (shed)", alpha=0.5)
    ax1.axhline(2 * res["slo_ms"], color="k", ls="--", lw=0.8, label="2 x SLO")
    ax1.set_xlabel("s since start")
    ax1.set_ylabel("latency (ms)")
    ax1.set_yscale("log")
    ax1.legend(markerscale=4)
    ax1.set_title(f"offered {res['offered_rps']:.0f} req/s = {res['factor']:g} x capacity")
    secs = int(res["duration_s"])
    per_s = [sum(1 for s in ok if int(s.t) == i) for i in range(secs)]
    ax2.plot(range(secs), per_s, label="goodput (200/s)")
    ax2.axhline(res["capacity_rps"], color="k", ls="--", lw=0.8, label="capacity (within the SLO)")
    ax2.axhline(0.9 * res["capacity_rps"], color="r", ls=":", lw=0.8, label="0.9 x capacity")
    ax2.set_xlabel("s since start")
    ax2.set_ylabel("requests/s")
    ax2.set_ylim(bottom=0)
    ax2.legend()
    fig.tight_layout()
    return fig
