"""Headless load test: ramp to a target rate, hold it, write the report, exit non-zero on a missed SLO.

    python -m loadtest.run --host http://127.0.0.1:8000 --rate 400 --duration 60 [--world WORLD]

Exit codes: 0 SLO met; 1 SLO missed (p99, achieved rate or failure ratio; the report says which);
2 bad input or the service unreachable. The same runs as ``crops loadtest``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import locust  # noqa: F401  (gevent monkey-patches the stdlib on import: do it before anything else)

from core.errors import CropsError, ErrorKind
from loadtest.report import Sample, Slo, summarize, write_report

log = logging.getLogger(__name__)


def _check_up(host: str) -> dict[str, Any]:
    """GET /readyz and /info once: an unreachable or unready service is a clear error, not 100% failures."""
    import json
    import urllib.request

    info: dict[str, Any] = {}
    try:
        with urllib.request.urlopen(f"{host.rstrip('/')}/readyz", timeout=10) as r:
            if r.status != 200:
                raise CropsError(ErrorKind.BACKEND, f"{host}/readyz answered {r.status}")
        try:
            with urllib.request.urlopen(f"{host.rstrip('/')}/info", timeout=10) as r:
                info = json.loads(r.read() or b"{}")
        except (OSError, ValueError):
            info = {}
    except OSError as exc:
        raise CropsError(ErrorKind.BACKEND, f"service not reachable or not ready at {host}: {exc}") from exc
    return info


def run_loadtest(
    host: str,
    *,
    rate: float = 400.0,
    duration: float = 60.0,
    ramp: float = 10.0,
    users: int | None = None,
    world: Path | None = None,
    batch_share: float = 0.05,
    batch_size: int = 8,
    top_k: int = 100,
    slo: Slo | None = None,
    out_dir: Path | None = None,
    seed: int = 0,
) -> tuple[dict[str, Any], Path]:
    """Run locust in-process against ``host``; returns (summary, report.md path)."""
    if rate <= 0 or duration <= 0 or ramp < 0:
        raise CropsError(ErrorKind.INVALID_INPUT, "need rate > 0, duration > 0, ramp >= 0")
    if not 0 <= batch_share <= 1 or not 1 <= top_k <= 100 or batch_size < 1:
        raise CropsError(
            ErrorKind.INVALID_INPUT, "need 0 <= batch-share <= 1, 1 <= top-k <= 100, batch-size >= 1"
        )
    slo = slo or Slo()
    info = _check_up(host)

    import gevent
    from locust.env import Environment

    from loadtest.locustfile import RetrieveUser
    from loadtest.querymix import load_mix

    mix = load_mix(world, seed=seed)
    # ~100 ms mean gap per user keeps a user's interval well above the SLO latency, so a user that waits
    # for a slow answer rarely delays its next request (the rate stays open-loop in practice).
    users = users or max(4, min(1000, int(rate / 10)))
    RetrieveUser.mix = mix
    RetrieveUser.rate_per_user = rate / users
    RetrieveUser.batch_share = batch_share
    RetrieveUser.batch_size = batch_size
    RetrieveUser.top_k = top_k
    RetrieveUser.seed = seed
    RetrieveUser._spawned = 0

    samples: list[Sample] = []
    t_start = time.time()

    def on_request(
        request_type: str,
        name: str,
        response_time: float,
        response_length: int,
        exception: Exception | None = None,
        context: dict[str, Any] | None = None,
        start_time: float | None = None,
        response: Any = None,
        **_: Any,
    ) -> None:
        ctx = context or {}
        status = int(getattr(response, "status_code", 0) or 0)
        samples.append(
            Sample(
                t=(start_time or time.time()) - t_start,
                endpoint=name,
                arm=str(ctx.get("arm", "?")),
                latency_ms=float(response_time),
                ok=exception is None,
                status=status,
                error="" if exception is None else str(exception)[:120],
                bucket=str(ctx.get("bucket", "")),
            )
        )

    env = Environment(user_classes=[RetrieveUser], host=host.rstrip("/"))
    env.events.request.add_listener(on_request)  # type: ignore[no-untyped-call]
    runner = env.create_local_runner()
    spawn_rate = users / ramp if ramp > 0 else users
    log.info(
        "load test: %d users, %.1f req/s each, ramp %.0fs, hold %.0fs", users, rate / users, ramp, duration
    )
    t_start = time.time()
    runner.start(users, spawn_rate=spawn_rate)
    gevent.sleep(ramp + duration)
    runner.quit()
    gevent.sleep(0.2)

    hold_start, hold_end = ramp, ramp + duration
    summary = summarize(samples, target_rate=rate, hold_start=hold_start, hold_end=hold_end, slo=slo)
    out_dir = out_dir or Path("runs/loadtest") / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    arms = info.get("arms") if isinstance(info, dict) else None
    meta: dict[str, Any] = {
        "host": host,
        "ramp": ramp,
        "hold_start": hold_start,
        "hold_end": hold_end,
        "generator": f"locust (in-process, {users} FastHttpUsers, Poisson arrivals)",
        "query mix": f"{mix.source}: {len(mix.queries)} distinct queries, {mix.bucket_shares()}",
        "batch share": f"{batch_share:.0%} of requests are /retrieve/batch of {batch_size}",
        "top_k": top_k,
        "arms (from /info)": ", ".join(sorted(arms)) if isinstance(arms, dict) else (arms or "n/a"),
        "started": datetime.fromtimestamp(t_start, timezone.utc).isoformat(timespec="seconds"),
    }
    md = write_report(out_dir, samples, summary, meta)
    return summary, md


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m loadtest.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--host", default="http://127.0.0.1:8000")
    ap.add_argument("--rate", type=float, default=400.0, help="target requests/s (default 400)")
    ap.add_argument("--duration", type=float, default=60.0, help="hold seconds at the target rate")
    ap.add_argument("--ramp", type=float, default=10.0, help="seconds to ramp up to the target")
    ap.add_argument("--users", type=int, default=None, help="simulated users (default rate/50)")
    ap.add_argument("--world", type=Path, default=None, help="world folder: its search log gives the mix")
    ap.add_argument("--batch-share", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--slo-p99-ms", type=float, default=10.0)
    ap.add_argument("--max-fail-ratio", type=float, default=0.001)
    ap.add_argument("--min-rate-share", type=float, default=0.95)
    ap.add_argument("--out", type=Path, default=None, help="report folder (default runs/loadtest/<time>)")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    a = build_parser().parse_args(argv)
    try:
        summary, md = run_loadtest(
            a.host,
            rate=a.rate,
            duration=a.duration,
            ramp=a.ramp,
            users=a.users,
            world=a.world,
            batch_share=a.batch_share,
            batch_size=a.batch_size,
            top_k=a.top_k,
            slo=Slo(a.slo_p99_ms, a.min_rate_share, a.max_fail_ratio),
            out_dir=a.out,
            seed=a.seed,
        )
    except CropsError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    ov = summary["by_endpoint"].get("/retrieve", summary["overall"])
    print(
        f"{summary['achieved_rate']:g} req/s (target {summary['target_rate']:g}); /retrieve p50 "
        f"{ov['p50_ms']} ms p99 {ov['p99_ms']} ms; failures {summary['overall']['failures']}; report {md}"
    )
    if summary["slo_met"]:
        print("SLO met")
        return 0
    print("SLO missed: " + "; ".join(summary["slo_violations"]))
    return 1


if __name__ == "__main__":
    sys.exit(main())
