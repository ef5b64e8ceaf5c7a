"""`crops serve` in a subprocess (the real entry point, 2 workers), and the exposure log read back."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.logs import EXPOSURE
from online.joinlogs import join_logs, read_jsonl_records, read_stream_records
from tests.service.conftest import REDIS_URL, LiveServer, free_port


def test_crops_serve_two_workers_end_to_end(tiny_bundle: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "CROPS_EXPOSURE_JSONL": str(tmp_path / "exposures.jsonl")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "crops", "serve", "--bundle", str(tiny_bundle), "--port", str(port),
         "--workers", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.time() < deadline, "crops serve did not become ready"
            time.sleep(0.2)
        # new connections each: both workers get requests
        for i in range(20):
            r = httpx.post(f"{url}/retrieve", json={"query": f"cat video {i}", "user_id": f"u{i}"}, timeout=10)
            assert r.status_code == 200, r.text
            assert len(r.json()["candidates"]) == 100
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        # multiprocess metrics: whichever worker answers, it reports all 20 requests
        line = next(x for x in metrics.splitlines()
                    if x.startswith("crops_requests_total{") and 'endpoint="/retrieve"' in x and '"200"' in x)
        assert float(line.rsplit(" ", 1)[1]) == 20.0, line
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    records = list(read_jsonl_records(tmp_path / "exposures.jsonl"))
    assert len(records) == 20  # written by both workers, flushed at shutdown
    # what the service wrote is the exposure contract, column for column and type for type
    assert set(records[0]) == set(EXPOSURE.columns)
    EXPOSURE.check(pa.Table.from_pylist(records, schema=EXPOSURE.schema).schema)
    out = tmp_path / "search_log.parquet"
    subprocess.run([sys.executable, "-m", "crops", "exposures", "--jsonl", str(tmp_path / "exposures.jsonl"),
                    "--out", str(out)], check=True, capture_output=True)
    table = pq.read_table(out)
    assert table.num_rows == 20 * 100
    assert {"request_id", "user_id", "ts", "query", "video_id", "stage", "position", "clicked",
            "play_ms"} <= set(table.column_names)


@pytest.mark.redis
def test_exposure_stream_reads_back_as_search_log(tiny_bundle: Path, redis_prefix: str) -> None:
    with LiveServer(bundle=tiny_bundle, redis_url=REDIS_URL, redis_prefix=redis_prefix, exposure_stream=True,
                    exposure_stream_maxlen=100) as srv:
        sent = [srv.retrieve(f"guitar cover {i}", user_id=f"user{i}", top_k=3).json() for i in range(5)]
        deadline = time.time() + 5
        while len(list(read_stream_records(REDIS_URL, redis_prefix + "exposures"))) < 5:
            assert time.time() < deadline, "exposures not in the stream"
            time.sleep(0.05)
    records = list(read_stream_records(REDIS_URL, redis_prefix + "exposures"))
    assert [r["request_id"] for r in records] == [s["request_id"] for s in sent]
    assert records[0]["video_ids"] == [c["video_id"] for c in sent[0]["candidates"]]
    assert records[0]["arm"] == "default" and records[0]["user_id"] == "user0"
    rows = join_logs(records, [])[0].to_pylist()
    assert len(rows) == 15
    assert rows[0]["position"] == 0 and rows[2]["position"] == 2 and rows[0]["query"] == "guitar cover 0"
