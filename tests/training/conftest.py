"""Hand-made inputs for the training tests: a tiny random BERT and a tiny world with samples.

The tiny BERT (2 layers, 32 dims, random weights, the MiniLM tokenizer) stands in for MiniLM so
the trainer tests run in seconds; it is a real HF model, not a fake.
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

TOPICS = {
    "cats": ["cat", "kitten", "meow", "whiskers", "purr", "feline"],
    "cooking": ["pasta", "recipe", "oven", "dinner", "bread", "sauce"],
    "gaming": ["minecraft", "speedrun", "console", "boss", "level", "arcade"],
    "music": ["guitar", "piano", "drums", "concert", "melody", "chords"],
    "power": ["substation", "voltage", "grid", "electrician", "wiring", "coil"],
    "ml": ["neural", "attention", "gradient", "tensor", "python", "model"],
}
FILLER = ["video", "clip", "best", "new", "today", "watch", "short", "fun", "daily", "top"]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import write_tiny_bert

    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def write_tiny_world(root: Path, n_per_topic: int = 40, seed: int = 0) -> dict[str, list[str]]:
    """videos.parquet, train/search_log.parquet, eval/{ct,qr,graded}.parquet, samples.parquet.

    Query "<topic word>" (ambiguous head query for 'power'/'ml': both use 'transformer') has all
    videos of its topic relevant; the legacy stack exposed and got clicks on only the first quarter
    of them; reformulation/rec positives cover the rest. Eval asks for all of them.
    """
    rng = random.Random(seed)
    vids, titles, captions, tags, cats = [], [], [], [], []
    by_topic: dict[str, list[str]] = {}
    for t, words in TOPICS.items():
        for i in range(n_per_topic):
            vid = f"{t}-{i:03d}"
            vids.append(vid)
            titles.append(" ".join(rng.sample(words, 2) + rng.sample(FILLER, 2)))
            captions.append(" ".join(rng.sample(words, 2) + rng.sample(FILLER, 3)))
            tags.append([t])
            cats.append(t)
            by_topic.setdefault(t, []).append(vid)
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "video_id": vids,
                "title": titles,
                "caption": captions,
                "tags": tags,
                "category": cats,
                "upload_ts": list(range(len(vids))),
            }
        ),
        root / "videos.parquet",
    )
    queries = {t: [f"{w} {rng.choice(FILLER)}" for w in words[:4]] for t, words in TOPICS.items()}
    log_rows: list[dict[str, object]] = []
    samples: list[dict[str, object]] = []
    for t, qs in queries.items():
        pool = by_topic[t]
        k = len(pool) // 4
        for q in qs[:3]:  # training queries
            for v in pool[:k]:
                log_rows.append(
                    {
                        "request_id": f"r-{q}",
                        "user_id": "u",
                        "ts": 0,
                        "query": q,
                        "video_id": v,
                        "stage": "exposed",
                        "position": 0,
                        "clicked": True,
                        "play_ms": 1000,
                    }
                )
                samples.append({"query": q, "video_id": v, "text": None, "level": 4, "source": "p0_click"})
            for v in pool[k : 2 * k]:
                samples.append(
                    {"query": q, "video_id": v, "text": None, "level": 5, "source": "p1_reformulation"}
                )
            for v in pool[2 * k : 3 * k]:
                samples.append({"query": q, "video_id": v, "text": None, "level": 4, "source": "p2_rec"})
            samples.append(
                {
                    "query": q,
                    "video_id": None,
                    "text": f"{' '.join(TOPICS[t][:3])} video",
                    "level": 4,
                    "source": "p3_llm",
                }
            )
            other = rng.choice([o for o in TOPICS if o != t])
            for v, lvl, src in (
                (by_topic[other][0], 3, "exposed_unclicked"),
                (by_topic[other][1], 2, "rank_unexposed"),
                (by_topic[other][2], 1, "prerank_filtered"),
            ):
                samples.append({"query": q, "video_id": v, "text": None, "level": lvl, "source": src})
                log_rows.append(
                    {
                        "request_id": f"r-{q}",
                        "user_id": "u",
                        "ts": 0,
                        "query": q,
                        "video_id": v,
                        "stage": "exposed" if lvl == 3 else "rank_unexposed",
                        "position": 1,
                        "clicked": False,
                        "play_ms": 0,
                    }
                )
    (root / "train").mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(log_rows), root / "train" / "search_log.parquet")
    schema = pa.schema(
        [
            ("query", pa.string()),
            ("video_id", pa.string()),
            ("text", pa.string()),
            ("level", pa.int8()),
            ("source", pa.string()),
        ]
    )
    pq.write_table(pa.Table.from_pylist(samples, schema=schema), root / "samples.parquet")
    (root / "eval").mkdir(exist_ok=True)
    ct, qr, graded = [], [], []
    for i, (t, qs) in enumerate(queries.items()):
        cls = ["head", "torso", "tail"][i % 3]
        for q in qs:
            for v in by_topic[t]:
                row = {"query": q, "video_id": v, "query_class": cls, "ambiguous": t in ("power", "ml")}
                ct.append(row)
                qr.append(row)
                graded.append({**row, "grade": 3 if v in by_topic[t][: len(by_topic[t]) // 2] else 1})
    for name, rows in (("ct", ct), ("qr", qr), ("graded", graded)):
        pq.write_table(pa.Table.from_pylist(rows), root / "eval" / f"{name}.parquet")
    return by_topic


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("world")
    write_tiny_world(root)
    return root
