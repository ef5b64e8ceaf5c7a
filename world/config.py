"""Every knob of the world, with defaults. A world is a pure function of (config, seed).

Load overrides from YAML/JSON (``--config FILE``); nested sections may be given partially. Knobs
state mechanisms (how strongly the legacy stack leans on popularity and its own past clicks, how
position-biased users are, how much the feed leans toward a search intent), never outcomes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import CropsError, ErrorKind


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CatalogKnobs(_Section):
    n_videos: int = Field(default=20_000, ge=50)
    supply_follows_demand: float = Field(default=0.6, ge=0, description="exponent of category popularity in supply")
    modifier_prob: float = Field(default=0.5, ge=0, le=1)
    secondary_prob: float = Field(default=0.25, ge=0, le=1, description="a video also expresses a second intent")
    upload_history_days: int = Field(default=180, ge=1)
    new_upload_share: float = Field(default=0.12, ge=0, le=1, description="share uploaded during the logged days")
    asr_prob: float = Field(
        default=0.7, ge=0, le=1, description="a video's hidden speech transcript names its topic (legacy indexes it)"
    )
    real_share: float = Field(default=0.5, ge=0, le=1, description="with --catalog: share of videos with real text")
    synonym_text_prob: float = Field(default=0.35, ge=0, le=1)
    clickbait_prob: float = Field(default=0.08, ge=0, le=1)
    noise_tag_prob: float = Field(default=0.5, ge=0, le=1)
    spam_tag_prob: float = Field(default=0.03, ge=0, le=1)


class UserKnobs(_Section):
    n_users: int = Field(default=8_000, ge=2)
    category_zipf: float = Field(default=1.0, ge=0, description="skew of global category popularity (0 = flat)")
    interest_concentration: float = Field(
        default=0.4, gt=0, description="Dirichlet concentration of a user's interests"
    )
    activity_pareto: float = Field(
        default=1.3, gt=0, description="Pareto shape of user activity (smaller = heavier tail)"
    )
    topic_concentration: float = Field(
        default=1.0, gt=0, description="Dirichlet concentration of topics within a category"
    )


class QueryKnobs(_Section):
    head_share: float = Field(
        default=0.45, ge=0, le=1, description="sessions that start with a head (topic-only) query"
    )
    tail_share: float = Field(default=0.25, ge=0, le=1, description="sessions that start with a tail query")
    need_modifier_prob: float = Field(default=0.5, ge=0, le=1, description="a need includes a specific modifier")
    typo_prob: float = Field(default=0.06, ge=0, le=1)
    slang_prob: float = Field(default=0.12, ge=0, le=1)
    synonym_query_prob: float = Field(default=0.15, ge=0, le=1)
    name_query_prob: float = Field(default=0.3, ge=0, le=1)


class LegacyKnobs(_Section):
    """The search stack that produced the logs: retrieve → pre-rank → rank → expose."""

    retrieve_k: int = Field(default=100, ge=2)
    prerank_k: int = Field(default=30, ge=1)
    expose_k: int = Field(default=10, ge=1)
    popularity_weight: float = Field(default=1.0, ge=0, description="weight of log observed popularity")
    query_category_weight: float = Field(
        default=2.0, ge=0, description="weight of log P(category|query) learned from clicks"
    )
    feedback_weight: float = Field(default=1.5, ge=0, description="weight of the (query, video) click history")
    lexical_weight: float = Field(default=1.0, ge=0)
    prerank_noise: float = Field(default=0.3, ge=0)
    rank_noise: float = Field(default=0.3, ge=0)
    prerank_relevance: float = Field(
        default=0.5, ge=0, description="weight of the pre-ranker's content-relevance feature (noisy true grade)"
    )
    rank_relevance: float = Field(
        default=1.5, ge=0, description="weight of the ranker's content-relevance feature (noisy true grade)"
    )
    relevance_noise: float = Field(
        default=0.3, ge=0, description="noise (std, in grade/3 units) of the heavier stages' relevance feature"
    )
    relevance_view: Literal["query", "user"] = Field(
        default="query",
        description="what the heavier stages' relevance model estimates: the video's grade for the query text "
        "(max over the query's senses: a model that reads the query cannot know which sense this user means) "
        "or, as in the first version of the world, for the user's own need (an oracle no ranker has)",
    )
    exploration: float = Field(default=0.0, ge=0, le=1, description="share of exposed slots given to random candidates")


class ClickKnobs(_Section):
    position_decay: float = Field(default=0.8, ge=0, description="P(examine position p) = 1/(1+p)^decay")
    click_prob: tuple[float, float, float, float] = (0.03, 0.12, 0.40, 0.75)  # by the user's true grade 0..3
    satisfied_grade: int = Field(default=2, ge=1, le=3, description="a click at this grade or higher satisfies")
    reformulate_prob: float = Field(default=0.75, ge=0, le=1, description="an unsatisfied user reformulates")
    max_reformulations: int = Field(default=2, ge=0)
    reformulation_window_s: float = Field(default=90.0, gt=1)
    topic_switch_prob: float = Field(
        default=0.05, ge=0, le=1, description="a quick follow-up query about something else"
    )


class RecKnobs(_Section):
    per_request: float = Field(default=3.0, ge=0, description="background feed interactions per search request")
    lean_prob: float = Field(default=0.6, ge=0, le=1, description="a search session's user sees intent-leaning items")
    lean_count: float = Field(default=3.0, ge=0, description="mean leaning items per leaning session")
    lean_noise: float = Field(default=0.25, ge=0, le=1, description="a leaning item is off-intent instead")
    lean_topic_share: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="share of the non-noise leaning items drawn from the session's whole topic instead of its "
        "intent (0: the feed leans by the session's intent; the first version of the world used 0.3)",
    )
    lean_window_s: float = Field(default=1800.0, gt=0, description="leaning items fall within ± this of the search")


class WorldConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    n_requests: int = Field(default=100_000, ge=10, description="target; sessions = this / requests_per_session")
    requests_per_session: float = Field(
        default=1.38, ge=1.0, description="expected requests per session (with reformulations), sizes the sessions"
    )
    days: int = Field(default=14, ge=2)
    test_days: int = Field(default=3, ge=1)
    start_ts_ms: int = 1_767_571_200_000  # 2026-01-05 00:00 UTC
    relevance_min_grade: int = Field(
        default=1, ge=1, le=3, description="truth/relevance rows kept (2 or 3 shrink it for 200k+ catalogs)"
    )
    graded_queries: int = Field(default=500, ge=1, description="test queries with 'human' graded labels")
    catalog: CatalogKnobs = CatalogKnobs()
    users: UserKnobs = UserKnobs()
    queries: QueryKnobs = QueryKnobs()
    legacy: LegacyKnobs = LegacyKnobs()
    clicks: ClickKnobs = ClickKnobs()
    rec: RecKnobs = RecKnobs()

    def with_overrides(self, **kw: Any) -> WorldConfig:
        """A copy with dotted overrides, e.g. ``with_overrides(**{"legacy.popularity_weight": 0})``."""
        data = self.model_dump()
        for key, value in kw.items():
            node = data
            *path, last = key.split(".")
            for p in path:
                node = node[p]
            node[last] = value
        return WorldConfig.model_validate(data)


def load_config(path: Path | None) -> WorldConfig:
    if path is None:
        return WorldConfig()
    if not path.is_file():
        raise CropsError(ErrorKind.NOT_FOUND, f"world config {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        return WorldConfig.model_validate(data)
    except (ValidationError, ValueError) as exc:
        first = str(exc).splitlines()
        raise CropsError(ErrorKind.CONFIG_INVALID, f"world config {path}: {' '.join(first[:3])}") from exc


def tiny_config(**overrides: Any) -> WorldConfig:
    """A world small enough for unit tests (a second or two)."""
    base = WorldConfig(
        n_requests=3_000,
        days=6,
        test_days=2,
        graded_queries=60,
        catalog=CatalogKnobs(n_videos=1_500),
        users=UserKnobs(n_users=400),
    )
    return base.with_overrides(**overrides) if overrides else base
