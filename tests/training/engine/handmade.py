"""Hand-made logs with known answers, plus a fake θ scorer and a fake LLM (both named as fakes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

T0 = 1_700_000_000_000  # ms

SEARCH_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("user_id", pa.string()),
        ("ts", pa.int64()),
        ("query", pa.string()),
        ("video_id", pa.string()),
        ("stage", pa.string()),
        ("position", pa.int32()),
        ("clicked", pa.bool_()),
        ("play_ms", pa.int64()),
    ]
)
REC_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("ts", pa.int64()),
        ("video_id", pa.string()),
        ("action", pa.string()),
        ("play_ms", pa.int64()),
    ]
)


def video_text(vid: str) -> str:
    return f"video {vid} about things"


# θ of the fake scorer per video id (anything not listed: 0.9). The fake reads the id back from the
# video's text, so it exercises the same text path as the real discriminator.
FAKE_THETA: dict[str, float] = {"v7": 0.6, "v8": 0.2, "r_low": 0.1}


def fake_theta(queries: list[str], docs: list[str]) -> list[float]:
    out = []
    for d in docs:
        if d.startswith("video "):
            out.append(FAKE_THETA.get(d.split()[1], 0.9))
        else:  # P3 descriptions: the fake encodes θ in the text ("... theta=0.60 ...")
            out.append(float(d.split("theta=")[1].split()[0]) if "theta=" in d else 0.9)
    return out


@dataclass
class FakeGenerated:
    text: str
    is_error: bool


class FakeLLM:
    """A fake knowledge source: fixed descriptions covering every filter outcome; like the world's
    SimulatedLLM it can say which descriptions are hallucinated (here: the θ = 0.59 one)."""

    def generate_labeled(self, query: str, example_text: str, n: int) -> list[FakeGenerated]:
        return [FakeGenerated(t, "theta=0.59" in t) for t in self.generate(query, example_text, n)]

    def generate(self, query: str, example_text: str, n: int) -> list[str]:
        return [
            f"a great clip that fits {query} theta=0.60 well",  # θ == α → kept (P3 uses ≥)
            f"another clip that fits {query} theta=0.59 well",  # below α → dropped
            f"a great clip that fits {query} theta=0.60 well",  # duplicate
            example_text,  # copy of the example
            "short",  # too short
        ][:n]


def search_row(
    rid: str, user: str, ts: int, query: str, vid: str, stage: str, pos: int, clicked: bool = False
) -> dict[str, Any]:
    return {
        "request_id": rid,
        "user_id": user,
        "ts": ts,
        "query": query,
        "video_id": vid,
        "stage": stage,
        "position": pos,
        "clicked": clicked,
        "play_ms": 5000 if clicked else 0,
    }


def build_logs(root: Path) -> dict[str, Any]:
    """Write search_log, rec_log and videos under ``root`` and return the expected answers."""
    s: list[dict[str, Any]] = []
    # u1: "transformer" at T0 (v1 clicked, v2 exposed, v3 ranked-unexposed, v4 filtered) ...
    s += [
        search_row("r1", "u1", T0, "transformer", "v1", "exposed", 1, True),
        search_row("r1", "u1", T0, "transformer", "v2", "exposed", 2),
        search_row("r1", "u1", T0, "transformer", "v3", "rank_unexposed", 0),
        search_row("r1", "u1", T0, "transformer", "v4", "prerank_filtered", 0),
    ]
    # ... then "power transformer" exactly 90 s later: v5, v2, v7 (θ = α) and v8 (θ < α) clicked.
    s += [
        search_row("r2", "u1", T0 + 90_000, "power transformer", v, "exposed", i + 1, True)
        for i, v in enumerate(["v5", "v2", "v7", "v8"])
    ]
    # u2: "cat" then "kitten" 90.001 s later: just outside the window, no P1 for "cat".
    s += [
        search_row("r3", "u2", T0, "cat", "v9", "exposed", 1),
        search_row("r4", "u2", T0 + 90_001, "kitten", "v10", "exposed", 1, True),
    ]
    # u4: the same query again within the window is not a reformulation.
    s += [
        search_row("r5", "u4", T0, "dog", "v11", "exposed", 1),
        search_row("r6", "u4", T0 + 10_000, "dog", "v12", "exposed", 1, True),
    ]
    # u3: "guitar" at T0 (no clicks); its rec feed is below.
    s += [
        search_row("r7", "u3", T0, "guitar", "v13", "exposed", 1),
        search_row("r7", "u3", T0, "guitar", "v3", "exposed", 2),
    ]
    # u5 also searched "guitar" but its rec feed holds only a low-θ video.
    s += [search_row("r8", "u5", T0 + 5_000, "guitar", "v13", "exposed", 1, True)]

    rec: list[dict[str, Any]] = []
    window_ms = 1_800_000
    # 120 distinct rec videos for u3 at increasing distance from the query (alternating sides);
    # the 100 nearest are kept, the 20 farthest dropped by the cap.
    for i in range(120):
        dt = (i + 1) * 1000
        rec.append(
            {
                "user_id": "u3",
                "ts": T0 + (dt if i % 2 else -dt),
                "video_id": f"g{i:03d}",
                "action": "play",
                "play_ms": 3000,
            }
        )
    # the window edge: exactly at +window kept as candidate? only if within the cap: use another user.
    rec += [
        {"user_id": "u5", "ts": T0 + 5_000 + window_ms, "video_id": "edge_in", "action": "like", "play_ms": 1},
        {"user_id": "u5", "ts": T0 + 5_000 - window_ms - 1, "video_id": "edge_out", "action": "play", "play_ms": 1},
        {"user_id": "u5", "ts": T0 + 5_000, "video_id": "r_low", "action": "play", "play_ms": 1},
        {"user_id": "u5", "ts": T0 + 6_000, "video_id": "v13", "action": "play", "play_ms": 1},  # also clicked
        {"user_id": "u9", "ts": T0, "video_id": "other_user", "action": "play", "play_ms": 1},
    ]
    # u1's rec feed during "transformer": v3 (ranked-unexposed for it) becomes a P2 positive (4 > 2).
    rec.append({"user_id": "u1", "ts": T0 + 1_000, "video_id": "v3", "action": "play", "play_ms": 1})

    vids = sorted({r["video_id"] for r in s} | {r["video_id"] for r in rec})
    videos = pa.table(
        {
            "video_id": vids,
            "title": [video_text(v) for v in vids],
            "caption": [""] * len(vids),
            "tags": pa.array([[] for _ in vids], pa.list_(pa.string())),
            "category": ["c"] * len(vids),
            "upload_ts": pa.array([0] * len(vids), pa.int64()),
        }
    )
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(s, schema=SEARCH_SCHEMA), root / "search_log.parquet")
    pq.write_table(pa.Table.from_pylist(rec, schema=REC_SCHEMA), root / "rec_log.parquet")
    pq.write_table(videos, root / "videos.parquet")
    return {"rec_kept": {f"g{i:03d}" for i in range(100)}, "rec_dropped": {f"g{i:03d}" for i in range(100, 120)}}
