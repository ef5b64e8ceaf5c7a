"""The traffic a load test sends: distinct queries with frequencies (head/torso/tail) and user ids.

From a world's query log when one is given (``WORLD/train/search_log.parquet``: one row per
candidate, so a query's frequency is its number of distinct request ids), else an embedded default
mix: a Zipf-distributed generated query set, so the load test runs with no external data.

Buckets are cut on cumulative traffic share: the most frequent queries that make up the first
third of the traffic are *head*, the next third *torso*, the rest *tail*.
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import CropsError, ErrorKind

BUCKETS = ("head", "torso", "tail")


@dataclass(frozen=True)
class QueryMix:
    """Distinct queries (most frequent first), their weights, buckets and the user population."""

    queries: list[str]
    weights: list[float]
    buckets: list[str]
    users: list[str] = field(default_factory=list)
    user_weights: list[float] = field(default_factory=list)
    source: str = "default"

    def __post_init__(self) -> None:
        if not self.queries:
            raise CropsError(ErrorKind.INVALID_INPUT, f"query mix from {self.source} has no queries")
        if not (len(self.queries) == len(self.weights) == len(self.buckets)):
            raise CropsError(
                ErrorKind.INVALID_INPUT, "query mix: queries, weights and buckets differ in length"
            )
        object.__setattr__(self, "_cum", list(itertools.accumulate(self.weights)))
        object.__setattr__(self, "_ucum", list(itertools.accumulate(self.user_weights)))

    def sample(self, rng: random.Random) -> tuple[str, str]:
        """One (query, bucket) drawn by frequency."""
        cum: list[float] = self._cum  # type: ignore[attr-defined]
        i = bisect.bisect_right(cum, rng.random() * cum[-1])
        i = min(i, len(cum) - 1)
        return self.queries[i], self.buckets[i]

    def sample_user(self, rng: random.Random) -> str:
        """A user id: by activity when the log gave users, else uniform over a large synthetic pool."""
        if not self.users:
            return f"u{rng.randrange(1_000_000):06d}"
        ucum: list[float] = self._ucum  # type: ignore[attr-defined]
        i = min(bisect.bisect_right(ucum, rng.random() * ucum[-1]), len(ucum) - 1)
        return self.users[i]

    def bucket_shares(self) -> dict[str, float]:
        """Traffic share and distinct-query count per bucket (for the report)."""
        total = sum(self.weights)
        out: dict[str, float] = {}
        for b in BUCKETS:
            out[f"{b}_traffic"] = round(
                sum(w for w, x in zip(self.weights, self.buckets, strict=True) if x == b) / total, 3
            )
            out[f"{b}_queries"] = sum(1 for x in self.buckets if x == b)
        return out

    def request_bodies(self, n: int, *, top_k: int = 100, seed: int = 0) -> list[bytes]:
        """``n`` JSON bodies for ``POST /retrieve`` drawn from the mix (for ``loadtest.openloop``)."""
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            q, _ = self.sample(rng)
            body = {"query": q, "user_id": self.sample_user(rng), "top_k": top_k}
            out.append(json.dumps(body, ensure_ascii=False).encode())
        return out


def assign_buckets(freqs: list[float]) -> list[str]:
    """head/torso/tail for frequencies sorted descending, cut at 1/3 and 2/3 of cumulative traffic."""
    total = sum(freqs) or 1.0
    out, seen = [], 0.0
    for f in freqs:
        share = seen / total  # traffic share *before* this query: the top query is always head
        out.append("head" if share < 1 / 3 else "torso" if share < 2 / 3 else "tail")
        seen += f
    return out


# Embedded default: short-video topics, phrased from short/ambiguous (head) to long/specific (tail).
_HEAD = [
    "cat",
    "funny cats",
    "dog",
    "minecraft",
    "transformer",
    "recipe",
    "music",
    "dance",
    "asmr",
    "football",
    "makeup tutorial",
    "news",
    "prank",
    "vlog",
    "anime",
    "workout",
    "lofi",
    "car",
    "fortnite",
    "baby",
    "travel",
    "slime",
    "piano",
    "meme",
    "fishing",
]
_SUBJECTS = [
    "kitten",
    "puppy",
    "golden retriever",
    "pasta",
    "ramen",
    "sourdough bread",
    "street food",
    "guitar",
    "drum solo",
    "piano cover",
    "minecraft house",
    "speedrun",
    "power transformer",
    "transformer neural network",
    "attention mechanism",
    "python tutorial",
    "electric guitar",
    "skateboard trick",
    "yoga",
    "home workout",
    "cheap flights",
    "tokyo",
    "paris",
    "iceland",
    "bass fishing",
    "tesla",
    "vintage car",
    "makeup",
    "nail art",
    "hairstyle",
    "wedding dance",
    "k-pop",
    "ballet",
    "magic trick",
    "science experiment",
    "volcano",
    "solar panel",
    "wiring",
    "substation",
    "chess opening",
    "rubik cube",
    "origami",
    "lego",
    "drone footage",
    "surfing",
]
_MODIFIERS = [
    "tutorial",
    "for beginners",
    "compilation",
    "funny",
    "how to",
    "review",
    "live",
    "in 60 seconds",
    "explained",
    "tips",
    "fails",
    "best of 2025",
    "at home",
    "easy",
    "step by step",
    "slow motion",
]
_TAIL_EXTRA = [
    "without oven",
    "with subtitles",
    "part 2",
    "for kids",
    "on a budget",
    "in the rain",
    "left handed",
    "no talking",
    "vertical video",
    "4k",
    "1 minute",
    "from scratch",
    "by a chef",
    "at night",
    "in winter",
    "with my grandma",
]


def default_mix(seed: int = 0, n_tail: int = 3000, zipf_s: float = 1.05) -> QueryMix:
    """A deterministic generated mix: ~25 head, ~700 torso-ish and ``n_tail`` long queries, Zipf weights."""
    rng = random.Random(seed)
    torso = [f"{s} {m}" for s in _SUBJECTS for m in _MODIFIERS]
    rng.shuffle(torso)
    tail: set[str] = set()
    while len(tail) < n_tail:
        tail.add(f"{rng.choice(_MODIFIERS)} {rng.choice(_SUBJECTS)} {rng.choice(_TAIL_EXTRA)}")
    ordered = list(dict.fromkeys(_HEAD + torso + sorted(tail)))
    weights = [1.0 / (rank + 1) ** zipf_s for rank in range(len(ordered))]
    return QueryMix(ordered, weights, assign_buckets(weights), source="default (generated, Zipf)")


def _find_search_log(world: Path) -> Path:
    if world.is_file():
        return world
    candidates = [
        world / "train" / "search_log.parquet",
        world / "search_log.parquet",
        world / "train" / "search_log",
        world / "search_log",
    ]
    for c in candidates:
        if (c.is_file() and c.suffix == ".parquet") or (c.is_dir() and any(c.glob("*.parquet"))):
            return c
    raise CropsError(
        ErrorKind.NOT_FOUND,
        f"no search log under {world} (looked for train/search_log.parquet, search_log.parquet)",
    )


def mix_from_world(world: Path | str, *, max_queries: int = 50_000, max_users: int = 100_000) -> QueryMix:
    """Distinct queries and users from a world's search log, weighted by their number of requests."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = _find_search_log(Path(world))
    try:
        table = pq.read_table(path, columns=["request_id", "user_id", "query"])
    except Exception as exc:  # pyarrow raises several untyped errors for bad files
        raise CropsError(ErrorKind.INVALID_INPUT, f"cannot read search log {path}: {exc}") from exc
    # logs are often dictionary-encoded (and ids may be ints): aggregate plain strings
    table = pa.table({name: pc.cast(table[name], pa.string()) for name in table.column_names})
    reqs = table.group_by(["request_id"]).aggregate([("query", "min"), ("user_id", "min")])
    reqs = reqs.filter(pc.invert(pc.is_null(reqs["query_min"])))
    if reqs.num_rows == 0:
        raise CropsError(ErrorKind.INVALID_INPUT, f"search log {path} has no queries")
    per_q = (
        reqs.group_by(["query_min"])
        .aggregate([("request_id", "count")])
        .sort_by([("request_id_count", "descending"), ("query_min", "ascending")])
    )
    queries = per_q["query_min"].to_pylist()[:max_queries]
    freqs = [float(x) for x in per_q["request_id_count"].to_pylist()[:max_queries]]
    per_u = (
        reqs.group_by(["user_id_min"])
        .aggregate([("request_id", "count")])
        .sort_by([("request_id_count", "descending")])
    )
    users = [str(u) for u in per_u["user_id_min"].to_pylist()[:max_users]]
    uw = [float(x) for x in per_u["request_id_count"].to_pylist()[:max_users]]
    return QueryMix(queries, freqs, assign_buckets(freqs), users, uw, source=str(path))


def load_mix(world: Path | str | None, seed: int = 0) -> QueryMix:
    """The world's mix when a world is given, else the embedded default."""
    return mix_from_world(world) if world else default_mix(seed)
