"""The query mix: buckets by traffic share, sampling by frequency, reading a world's search log."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from core.errors import CropsError, ErrorKind
from loadtest.querymix import assign_buckets, default_mix, mix_from_world


def test_default_mix_is_deterministic_and_cut_in_traffic_thirds() -> None:
    a, b = default_mix(), default_mix()
    assert a.queries == b.queries and a.weights == b.weights
    shares = a.bucket_shares()
    for bucket in ("head", "torso", "tail"):
        assert 0.25 <= shares[f"{bucket}_traffic"] <= 0.42, shares
    # head: few frequent queries; tail: many rare ones
    assert shares["head_queries"] < shares["torso_queries"] < shares["tail_queries"]
    assert len(set(a.queries)) == len(a.queries)


def test_sampling_follows_frequencies() -> None:
    mix = default_mix()
    rng = random.Random(1)
    n = 20_000
    counts = Counter(mix.sample(rng)[0] for _ in range(n))
    expected = mix.weights[0] / sum(mix.weights)
    assert counts[mix.queries[0]] / n == pytest.approx(expected, rel=0.1)
    buckets = Counter(mix.sample(rng)[1] for _ in range(n))
    assert buckets["head"] / n == pytest.approx(mix.bucket_shares()["head_traffic"], abs=0.03)


def test_assign_buckets_top_query_is_head_even_when_it_dominates() -> None:
    assert assign_buckets([90.0, 5.0, 5.0]) == ["head", "tail", "tail"]
    assert assign_buckets([1.0] * 6) == ["head", "head", "torso", "torso", "tail", "tail"]


def test_request_bodies_are_valid_retrieve_requests() -> None:
    bodies = default_mix().request_bodies(50, top_k=7, seed=3)
    assert bodies == default_mix().request_bodies(50, top_k=7, seed=3)
    for raw in bodies:
        body = json.loads(raw)
        assert body["query"] and body["user_id"] and body["top_k"] == 7


def _write_log(path: Path) -> None:
    """'cat' in 3 requests of 2 rows each; 'dog' in 1 request of 10 rows (more rows, fewer requests)."""
    rows: dict[str, list[object]] = {
        "request_id": [],
        "user_id": [],
        "query": [],
        "video_id": [],
        "stage": [],
    }
    for r, (query, user, n_rows) in enumerate(
        [("cat", "u1", 2), ("cat", "u1", 2), ("cat", "u2", 2), ("dog", "u3", 10)]
    ):
        for i in range(n_rows):
            rows["request_id"].append(f"r{r}")
            rows["user_id"].append(user)
            rows["query"].append(query)
            rows["video_id"].append(f"v{i}")
            rows["stage"].append("exposed")
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(rows)
    # worlds write dictionary-encoded strings: the reader must cope
    table = table.set_column(2, "query", pc.dictionary_encode(table["query"]))
    pq.write_table(table, path)


def test_mix_from_world_counts_requests_not_candidate_rows(tmp_path: Path) -> None:
    _write_log(tmp_path / "world" / "train" / "search_log.parquet")
    mix = mix_from_world(tmp_path / "world")
    assert mix.queries == ["cat", "dog"]
    assert mix.weights == [3.0, 1.0]
    assert mix.users[0] == "u1" and mix.user_weights[0] == 2.0
    assert set(mix.users) == {"u1", "u2", "u3"}
    rng = random.Random(0)
    assert {mix.sample_user(rng) for _ in range(200)} == {"u1", "u2", "u3"}


def test_missing_search_log_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CropsError) as err:
        mix_from_world(tmp_path)
    assert err.value.kind is ErrorKind.NOT_FOUND and "search_log" in err.value.message
