"""schemathesis against the live server's OpenAPI schema (every endpoint, the admin ones with the token):
no 5xx, responses match the schema.

CI runs a short, seeded pass (≤ 60 s). The long run is documented in docs/explanation/service.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.service.conftest import LiveServer

# positive_data_acceptance is left out on purpose: a query made only of characters that
# normalisation drops (e.g. zero-width joiners) matches the schema but is refused with a 422.
CHECKS = ",".join([
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_headers_conformance", "response_schema_conformance", "negative_data_rejection",
])


TOKEN = "fuzz-admin"


def test_schemathesis_finds_no_server_error(tiny_bundle: Path, tmp_path: Path) -> None:
    exe = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    with LiveServer(bundle=tiny_bundle, max_queue=1000, deadline_ms=30_000, admin_token=TOKEN) as srv:
        seconds = os.environ.get("CROPS_FUZZ_SECONDS", "20")
        proc = subprocess.run(
            [exe, "run", f"{srv.url}/openapi.json", "--checks", CHECKS, "--max-examples", "20", "--seed", "7",
             "--max-time", seconds, "-H", f"x-crops-admin-token: {TOKEN}", "--request-timeout", "20", "--no-color"],
            capture_output=True, text=True, timeout=int(seconds) + 60, cwd=tmp_path, check=False,
        )
        served = srv.metric("crops_requests_total")
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert "Tested: 8" in proc.stdout or "Tested" in proc.stdout, tail
    assert served > 0, "schemathesis never reached /retrieve"
