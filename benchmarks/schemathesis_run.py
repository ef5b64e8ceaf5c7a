"""schemathesis over every endpoint of a live `crops serve` (the admin ones with the token): counts
every generated request by endpoint and status from the HAR report and writes a markdown + JSON report.

    python benchmarks/schemathesis_run.py --bundle runs/b --seconds 120 --out docs/results/schemathesis
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/schemathesis_run.py` (the published command)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import secrets
import shutil
import subprocess
import tempfile
from collections import Counter
from urllib.parse import urlsplit

from benchmarks import harness as h
from loadtest.ready import NotReady

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
    "response_schema_conformance,negative_data_rejection"
)


def fuzz(url: str, token: str, a: argparse.Namespace, workdir: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    """schemathesis over ``url``'s OpenAPI schema (every check in CHECKS, a fixed seed); (its run, the HAR
    report's path)."""
    exe = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    har = workdir / "run.har"
    cmd = [exe, "run", f"{url}/openapi.json", "--checks", CHECKS, "--max-examples", str(a.max_examples),
           "--seed", "7", "--max-time", str(a.seconds), "-H", f"x-crops-admin-token: {token}",
           "--request-timeout", "30", "--no-color", "--report", "har", "--report-har-path", str(har)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, check=False), har


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=h.bundle_arg, required=True)
    p.add_argument("--seconds", type=int, default=120)
    p.add_argument("--max-examples", type=int, default=500)
    p.add_argument("--port", type=int, default=None, help="the server's port (default: a free one)")
    p.add_argument("--out", type=Path, required=True, help="path without suffix: .json and .md are written")
    a = p.parse_args()
    token = secrets.token_hex(8)
    # the server's own defaults (its cache included: what ships is fuzzed), no CROPS_* setting inherited
    env = h.server_env(isolated=True, CROPS_CACHE="auto", CROPS_ADMIN_TOKEN=token, CROPS_DEADLINE_MS="30000",
                       CROPS_MAX_QUEUE="100000")
    port = a.port or h.free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "crops", "serve", "--bundle", str(a.bundle), "--port", str(port)]
    tmp = Path(tempfile.mkdtemp(prefix="crops-fuzz-"))
    try:
        with h.server(cmd, port=port, name="schemathesis-serve", env=env, cwd=Path.cwd(), ready_timeout=120.0):
            proc, har = fuzz(url, token, a, tmp)
        entries = json.loads(har.read_text())["log"]["entries"] if har.exists() else []
    except NotReady as exc:
        print(f"error: crops serve did not start: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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
    table = h.markdown_table(["endpoint", "status", "requests"], [[k, s, n] for (k, s), n in sorted(by.items())])
    rows = "\n".join(table)
    md = f"""# schemathesis over every endpoint

Command: `{res["command"]}` (schemathesis checks: {CHECKS.replace(",", ", ")}; admin endpoints with the token).

**{total} generated requests, {fivexx} answered 5xx**; schemathesis exit code {proc.returncode}
(non-zero also for non-5xx findings, in the tail below).

{rows}

```
{proc.stdout[-2500:]}
```
"""
    h.write_report(a.out.with_suffix(".md"), md, res)
    print(md)


if __name__ == "__main__":
    main()
