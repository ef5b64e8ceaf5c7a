"""Full garbage collections in a service worker, with and without ``gc.freeze`` (service/heap.py).

    python -m benchmarks.gc_pauses --bundle runs/realq/bundle_HNSW32_SQ8 [--world runs/world_default] [--requests 4000]

For each setting of ``CROPS_GC_FREEZE`` it builds the service app in this process (cache on, int8 tower
when the bundle has it), sends ``--requests`` queries drawn from the query mix through the ASGI app
(no network: the point is the collector, not HTTP) and records every collection with ``gc.callbacks``.
Prints, per setting, the generation-2 collections and their pause in ms, and the time of one forced
full collection of the loaded heap.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import log
from loadtest.querymix import load_mix


def measure(bundle: Path, bodies: list[dict[str, Any]], freeze: bool) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import ServiceSettings

    gc.unfreeze()
    settings = ServiceSettings(
        bundle=bundle, cache="memory", encoder_precision="auto", gc_freeze=freeze, experiments=None
    )
    pauses: list[tuple[int, float]] = []
    started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((int(info["generation"]), (time.perf_counter() - started[0]) * 1e3))

    with TestClient(create_app(settings)) as client:
        gc.callbacks.append(on_gc)
        try:
            t0 = time.perf_counter()
            for body in bodies:
                client.post("/retrieve", json=body)
            seconds = time.perf_counter() - t0
        finally:
            gc.callbacks.remove(on_gc)
        t1 = time.perf_counter()
        gc.collect()
        forced_ms = (time.perf_counter() - t1) * 1e3
    gc.unfreeze()
    full = [round(ms, 1) for g, ms in pauses if g == 2]
    return {"freeze": freeze, "requests": len(bodies), "seconds": round(seconds, 1),
            "gen2_pauses_ms": full, "forced_full_collection_ms": round(forced_ms, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--world", type=Path, default=None, help="query mix from this world's search log")
    ap.add_argument("--requests", type=int, default=4000)
    a = ap.parse_args()
    if not (a.bundle / "manifest.json").is_file():
        raise SystemExit(f"gc_pauses: {a.bundle} is not a bundle (no manifest.json)")
    os.environ.pop("CROPS_BUNDLE", None)
    os.environ.pop("CROPS_EXPERIMENTS", None)
    mix = load_mix(a.world)
    rng = random.Random(0)
    bodies = [{"query": mix.sample(rng)[0], "user_id": mix.sample_user(rng)} for _ in range(a.requests)]
    for freeze in (False, True):
        log(f"gc_pauses: {a.requests} requests, CROPS_GC_FREEZE={str(freeze).lower()}")
        r = measure(a.bundle, bodies, freeze)
        print(f"freeze={str(freeze).lower():5s} {r['requests']} requests in {r['seconds']} s: "
              f"{len(r['gen2_pauses_ms'])} full collections {r['gen2_pauses_ms']} ms; "
              f"a forced full collection afterwards: {r['forced_full_collection_ms']} ms", flush=True)


if __name__ == "__main__":
    main()
