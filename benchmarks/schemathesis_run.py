"""schemathesis over every endpoint of a live `crops serve` (the admin ones with the token): counts
every generated request by endpoint and status from the HAR report and writes a markdown + JSON report.

    python benchmarks/schemathesis_run.py --bundle runs/b --seconds 120 --out docs/results/schemathesis
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
    "response_schema_conformance,negative_data_rejection"
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--seconds", type=int, default=120)
    p.add_argument("--max-examples", type=int, default=500)
    p.add_argument("--port", type=int, default=18160)
    p.add_argument("--out", type=Path, required=True, help="path without suffix: .json and .md are written")
    a = p.parse_args()
    if not (a.bundle / "manifest.json").is_file():
        print(f"error: {a.bundle} is not a bundle", file=sys.stderr)
        raise SystemExit(2)
    token = secrets.token_hex(8)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROPS_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"CROPS_ADMIN_TOKEN": token, "CROPS_DEADLINE_MS": "30000", "CROPS_MAX_QUEUE": "100000"})
    url = f"http://127.0.0.1:{a.port}"
    srv = subprocess.Popen(
        [sys.executable, "-m", "crops", "serve", "--bundle", str(a.bundle), "--port", str(a.port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tmp = Path(tempfile.mkdtemp(prefix="crops-fuzz-"))
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if srv.poll() is not None or time.time() > deadline:
                print("error: crops serve did not start", file=sys.stderr)
                raise SystemExit(2)
            time.sleep(0.3)
        exe = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
        har = tmp / "run.har"
        proc = subprocess.run(
            [
                exe,
                "run",
                f"{url}/openapi.json",
                "--checks",
                CHECKS,
                "--max-examples",
                str(a.max_examples),
                "--seed",
                "7",
                "--max-time",
                str(a.seconds),
                "-H",
                f"x-crops-admin-token: {token}",
                "--request-timeout",
                "30",
                "--no-color",
                "--report",
                "har",
                "--report-har-path",
                str(har),
            ],
            capture_output=True,
            text=True,
            cwd=tmp,
            check=False,
        )
    finally:
        srv.terminate()
        srv.wait(timeout=30)
    entries = json.loads(har.read_text())["log"]["entries"] if har.exists() else []
    by: Counter[tuple[str, int]] = Counter()
    for e in entries:
        by[(f"{e['request']['method']} {urlsplit(e['request']['url']).path}", int(e["response"]["status"]))] += 1
    total = sum(by.values())
    fivexx = sum(n for (_, s), n in by.items() if s >= 500)
    res = {
        "requests": total,
        "5xx": fivexx,
        "exit_code": proc.returncode,
        "by_endpoint_status": {f"{k} {s}": n for (k, s), n in sorted(by.items())},
        "summary_tail": proc.stdout[-3000:],
        "command": "python benchmarks/schemathesis_run.py " + " ".join(sys.argv[1:]),
    }
    shutil.rmtree(tmp, ignore_errors=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    from core.atomic import atomic_write_json, atomic_write_text

    atomic_write_json(a.out.with_suffix(".json"), res)
    rows = "\n".join(f"| {k} | {s} | {n} |" for (k, s), n in sorted(by.items()))
    md = f"""# schemathesis over every endpoint

Command: `{res["command"]}` (schemathesis checks: {CHECKS.replace(",", ", ")}; admin endpoints with the token).

**{total} generated requests, {fivexx} answered 5xx**; schemathesis exit code {proc.returncode}
(non-zero also for non-5xx findings, in the tail below).

| endpoint | status | requests |
|---|---|---|
{rows}

```
{proc.stdout[-2500:]}
```
"""
    atomic_write_text(a.out.with_suffix(".md"), md)
    print(md)


if __name__ == "__main__":
    main()
