"""Closed-loop throughput with wrk (Debian's ``wrk`` package): one run, and a sweep over connections.

wrk is light (C, one thread here), which matters when the load generator shares 2 cores with the
server. A Lua script cycles through pre-built request bodies drawn from the query mix and prints
wrk's latency percentiles as one JSON line that this module parses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import CropsError, ErrorKind

_LUA_TAIL = r"""
local counter = math.random(#bodies)
request = function()
  counter = counter % #bodies + 1
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, bodies[counter])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"status_errors":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def wrk_binary() -> str:
    """Path of wrk, or a clear error saying how to install it."""
    found = shutil.which("wrk")
    if not found:
        raise CropsError(ErrorKind.NOT_FOUND, "wrk is not installed: apt-get install -y wrk (make bench installs it)")
    return found


def write_script(bodies: Sequence[bytes], path: str = "/retrieve") -> Path:
    """A wrk Lua script that POSTs the given bodies round-robin (long-bracket strings: no escaping)."""
    lines = [f"path = {json.dumps(path)}", "bodies = {"]
    for b in bodies:
        text = b.decode()
        if "]==]" in text:
            raise CropsError(ErrorKind.INVALID_INPUT, "request body contains ']==]'")
        lines.append(f"[==[{text}]==],")
    lines.append("}")
    fd, name = tempfile.mkstemp(prefix="crops-wrk-", suffix=".lua")
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + _LUA_TAIL)
    return Path(name)


def parse_output(out: str) -> dict[str, Any]:
    """The WRKJSON line → rps, latency percentiles (ms) and error counts."""
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            raw = json.loads(line[len("WRKJSON ") :])
            secs = raw["duration_us"] / 1e6
            errors = sum(raw[k] for k in ("status_errors", "connect_errors", "read_errors", "write_errors", "timeouts"))
            return {
                "rps": round(raw["requests"] / secs, 1) if secs else 0.0,
                "requests": raw["requests"],
                "errors": errors,
                "status_errors": raw["status_errors"],
                "p50_ms": raw["p50_us"] / 1e3,
                "p90_ms": raw["p90_us"] / 1e3,
                "p99_ms": raw["p99_us"] / 1e3,
                "max_ms": raw["max_us"] / 1e3,
                "mean_ms": round(raw["mean_us"] / 1e3, 3),
            }
    raise CropsError(ErrorKind.BACKEND, f"wrk printed no result line; output was: {out[-500:]!r}")


def run_wrk(
    url: str,
    script: Path,
    *,
    connections: int,
    duration: float,
    threads: int = 1,
    cpus: str | None = None,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """One closed-loop run: ``connections`` keep-alive connections for ``duration`` seconds."""
    cmd = [
        wrk_binary(),
        f"-t{threads}",
        f"-c{max(connections, threads)}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={timeout_s:g}s",
        "-s",
        str(script),
        url.rstrip("/"),
    ]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
    if proc.returncode != 0:
        raise CropsError(ErrorKind.BACKEND, f"wrk failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
    res = parse_output(proc.stdout)
    res["connections"] = connections
    return res


def sweep(
    url: str,
    script: Path,
    *,
    slo_p99_ms: float,
    duration: float,
    connections: Sequence[int] = (1, 2, 3, 4, 6, 8, 12, 16),
    cpus: str | None = None,
    max_error_ratio: float = 0.001,
) -> dict[str, Any]:
    """Closed-loop runs at growing concurrency; the best rps whose p99 ≤ SLO and errors ≤ the ratio.

    Stops after two consecutive points over the SLO (more connections only queue).
    """
    points, over = [], 0
    for c in connections:
        p = run_wrk(url, script, connections=c, duration=duration, cpus=cpus)
        p["within_slo"] = p["p99_ms"] <= slo_p99_ms and p["errors"] <= max_error_ratio * max(1, p["requests"])
        points.append(p)
        over = 0 if p["within_slo"] else over + 1
        if over >= 2:
            break
    ok = [p for p in points if p["within_slo"]]
    best = max(ok, key=lambda p: p["rps"]) if ok else None
    return {"points": points, "best": best, "max_rps_within_slo": best["rps"] if best else 0.0}
