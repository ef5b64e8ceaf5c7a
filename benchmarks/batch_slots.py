"""crops serve (2 workers) with 1 and 2 batch slots per worker, alternating: p99 and CPU per answer.

    python -m benchmarks.batch_slots      # needs the make-bench bundle (runs/realq/bundle_HNSW32_SQ8)
"""

from __future__ import annotations

import json
import sys

from benchmarks import harness as h
from benchmarks.fleet import Bodies, serving

BUNDLE = h.ROOT / "runs" / "realq" / "bundle_HNSW32_SQ8"  # make bench's bundle


def main() -> int:
    qs, _ = h.search_queries()
    bodies = Bodies(qs)
    out = []
    for rnd in range(3):
        for slots in ((1, 2) if rnd % 2 == 0 else (2, 1)):
            env = h.server_env(CROPS_ENCODER_PRECISION="int8", CROPS_BATCH_SLOTS=str(slots))
            # 2 workers x 1 slot against 1 worker x 2 slots: two compute threads on the 2 cores either way
            with serving("service", BUNDLE, None, env, h.RUNS / "scratch" / "slots_logs",
                         workers=3 - slots) as (url, pids, _):
                h.measure_open(url + "/retrieve", bodies.take(800), rate=400, seconds=2)  # warm
                for rate in (400, 500):
                    pt = h.measure_open(url + "/retrieve", bodies.take(rate * 10), rate=rate, seconds=10,
                                        server_pids=pids)
                    row = {"round": rnd, "slots": slots, "rate": rate, "p50_ms": pt["p50_ms"], "p99_ms": pt["p99_ms"],
                           "failures": pt["failures"], "cpu_ms_per_answer": round(pt["server_cores"] * 1e3 / rate, 2)}
                    print(row, flush=True)
                    out.append(row)
    (h.RUNS / "scratch").mkdir(parents=True, exist_ok=True)
    (h.RUNS / "scratch" / "batch_slots.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
