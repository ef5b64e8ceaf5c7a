"""Knobs of the data engine (paper constants as defaults) and their validation."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from core.errors import CropsError, ErrorKind


@dataclass(frozen=True)
class MineConfig:
    """Everything that changes the mined samples; its hash decides which finished steps are reused."""

    alpha: float = 0.6  # θ threshold (paper: 0.6); P1/P2 keep θ > α, P3 keeps θ ≥ α
    reformulation_window_s: float = 90.0  # P1: follow-up query of the same user within this many seconds
    rec_window_s: float = 1800.0  # P2: rec interactions within ± this many seconds of the query
    rec_cap_per_user: int = 100  # P2: at most this many rec videos per (query, user), nearest in time first
    rec_actions: tuple[str, ...] = ()  # P2: rec_log actions that count as interactions; () = every row
    rec_exclude_actions: tuple[str, ...] = ("skip",)  # P2: actions that are not interest (a skip)
    p3_n: int = 3  # P3: descriptions per query with p3_sampling "all" (0 = no P3)
    # P3: which queries the LLM is asked about. "demand": descriptions spread over the queries with a
    # click in proportion to their requests (a seeded multinomial draw), p3_volume × the number of
    # click pairs in all; "all": p3_n for every query with a click.
    p3_sampling: str = "demand"
    p3_volume: float = 1.0
    p3_max_per_query: int = 30  # "demand": at most this many descriptions for one query
    p3_max_queries: int = 0  # at most this many queries (a hash sample; 0 = no cap)
    p3_min_chars: int = 12
    p3_max_chars: int = 300
    alpha_sweep: tuple[float, ...] = field(default=(0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9))

    def validate(self) -> MineConfig:
        if not 0.0 <= self.alpha <= 1.0:
            raise CropsError(ErrorKind.INVALID_INPUT, f"alpha must be in [0, 1], got {self.alpha}")
        if self.reformulation_window_s <= 0 or self.rec_window_s <= 0:
            raise CropsError(ErrorKind.INVALID_INPUT, "time windows must be positive")
        if self.rec_cap_per_user < 1:
            raise CropsError(ErrorKind.INVALID_INPUT, f"rec cap must be >= 1, got {self.rec_cap_per_user}")
        if self.p3_sampling not in ("demand", "all"):
            raise CropsError(ErrorKind.INVALID_INPUT, f"p3_sampling must be demand or all, got {self.p3_sampling!r}")
        if self.p3_volume < 0 or self.p3_max_per_query < 1 or self.p3_max_queries < 0:
            raise CropsError(ErrorKind.INVALID_INPUT, "bad P3 settings (volume >= 0, max per query >= 1)")
        if self.p3_n < 0 or self.p3_min_chars < 1 or self.p3_max_chars < self.p3_min_chars:
            raise CropsError(ErrorKind.INVALID_INPUT, "bad P3 settings (n >= 0, 1 <= min_chars <= max_chars)")
        for a in (*self.rec_actions, *self.rec_exclude_actions):
            if not a.replace("_", "").isalnum():  # they are pasted into SQL: keep them plain words
                raise CropsError(ErrorKind.INVALID_INPUT, f"rec action {a!r} must be a plain word")
        return self

    def digest(self, *keys: str) -> str:
        """Short hash of the named fields (all fields when none are named)."""
        d = asdict(self)
        sel = {k: d[k] for k in (keys or tuple(d))}
        return hashlib.sha256(json.dumps(sel, sort_keys=True).encode()).hexdigest()[:16]
