"""The platform, step by step: users search through any retriever and the world's ranking stage.

This is the API other stages use to put the world's users in front of a retriever (the online A/B
loop puts them in front of the served arms). It runs the same mechanisms as the logged simulation
(``world.funnel``: the legacy pre-rank/rank, position-biased examination, clicks and plays by the
user's own need, reformulation after dissatisfaction, the feed leaning toward the session)::

    platform = Platform.from_world(Path("runs/world"))
    platform.start_day(platform.first_online_day)
    sessions = platform.open_sessions(platform.first_online_day, 1000, seed=7)
    outcomes = platform.run(sessions, retriever)            # any world.Retriever, e.g. over HTTP
    feed = platform.feed_around(sessions)
    platform.end_day(outcomes, feed)                        # the ranking stage learns, as it did in the logs

or, when the caller does the retrieval itself (e.g. concurrent HTTP requests)::

    while pending := [s for s in sessions if s.pending is not None]:
        ids = [my_http_retrieve(s.pending.query, s.pending.user_id) for s in pending]
        outcomes += platform.respond(pending, ids)

One thread at a time: the ranking stage keeps scratch buffers (call ``respond`` from one thread
and do the HTTP requests concurrently around it). Determinism: every session draws from its own
random stream (``seed``, day, session number), so its outcome does not depend on which other
sessions ran beside it, in what batches or order; the ranking stage's learned state changes only
in ``end_day``. Each ``RequestOutcome`` carries what a ranking service would report as feedback:
the request, every candidate's stage and position, the exposed items with clicks and play
time, and the follow-up query if the user reformulated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from core.errors import CropsError, ErrorKind
from world.catalog import Catalog
from world.config import WorldConfig
from world.funnel import (
    ACTIONS,
    STAGES,
    Draws,
    FeedSampler,
    candidate_matrix,
    follow_ups,
    leaning_feed,
    phrase_first,
    rank_expose_click,
)
from world.legacy import LegacyStack
from world.ontology import Ontology, load_ontology
from world.population import DAY_MS, Sessions, Users, make_sessions, make_users
from world.queries import QueryBook
from world.retrieval import IndexRetriever, Retriever, candidates_of
from world.seeding import stream
from world.textgen import QueryKnobs

STATE_FILE = "state/legacy_stack.npz"
LONG_PLAY_SHARE = 0.5  # a "long play": at least half of the video watched


@dataclass(frozen=True)
class Need:
    """What the user really wants (truth: never sent to a retriever)."""

    topic: int
    intent: int
    facet: str
    modifier: int  # global modifier id or -1
    modifier_text: str | None


@dataclass(frozen=True)
class SearchRequest:
    """One query as the service sees it."""

    request_id: str
    session_id: str
    user_id: str
    query: str
    ts: int  # ms since the epoch
    round: int  # 0 = the session's first query, 1.. = reformulations
    parent_request_id: str | None


@dataclass(frozen=True)
class Impression:
    """One exposed slot and what the user did with it."""

    video_id: str
    position: int
    clicked: bool
    play_ms: int
    duration_ms: int
    grade: int  # truth: the user's grade of the video for their need (0..3)

    @property
    def long_play(self) -> bool:
        """A click played for at least ``LONG_PLAY_SHARE`` of the video."""
        return self.clicked and self.play_ms >= LONG_PLAY_SHARE * self.duration_ms


@dataclass(frozen=True)
class RequestOutcome:
    """What happened to one request: the funnel's decisions and the user's behaviour."""

    request: SearchRequest
    n_candidates: int  # candidates the retriever returned that the catalog knows
    video_ids: list[str]  # every candidate, in final position order
    stages: list[str]  # per candidate: prerank_filtered / rank_unexposed / exposed (world.funnel.STAGES)
    exposed: list[Impression]
    satisfied: bool  # a click at grade ≥ clicks.satisfied_grade
    follow_up: SearchRequest | None  # the reformulation, if the user typed one

    @property
    def clicks(self) -> int:
        return sum(i.clicked for i in self.exposed)

    @property
    def long_plays(self) -> int:
        return sum(i.long_play for i in self.exposed)


@dataclass(frozen=True)
class FeedEvent:
    """One recommender-feed interaction (a row of rec_log)."""

    user_id: str
    ts: int
    video_id: str
    action: str  # world.funnel.ACTIONS
    play_ms: int
    session_id: str | None  # the search session the feed leaned toward (truth), None = background


@dataclass
class SearchSession:
    """A user's search session: the need (truth), the random stream and the requests so far."""

    session_id: str
    user: int
    user_id: str
    start_ts: int
    need: Need
    level: int  # specificity of the first query: 0 head, 1 torso, 2 tail
    topic_switch: bool
    rng: np.random.Generator
    pending: SearchRequest | None = None  # the next request to serve (None: the session is over)
    surface: str = ""  # the topic name the last query used (a reformulation avoids it)
    cur_level: int = 0
    outcomes: list[RequestOutcome] = field(default_factory=list)

    @property
    def satisfied(self) -> bool:
        return any(o.satisfied for o in self.outcomes)


def _sessions_array(sessions: Sequence[SearchSession]) -> Sessions:
    return Sessions(
        user=np.array([s.user for s in sessions], np.int64),
        start_ts=np.array([s.start_ts for s in sessions], np.int64),
        topic=np.array([s.need.topic for s in sessions], np.int32),
        intent=np.array([s.need.intent for s in sessions], np.int32),
        modifier=np.array([s.need.modifier for s in sessions], np.int32),
        modifier_text=[s.need.modifier_text for s in sessions],
        level=np.array([s.level for s in sessions], np.int8),
        topic_switch=np.array([s.topic_switch for s in sessions], bool),
    )


def load_catalog(world_dir: Path) -> Catalog:
    """The catalog of a built world (videos + their truth), as the simulation had it."""
    vt = pq.read_table(world_dir / "videos.parquet").to_pydict()
    it = pq.read_table(world_dir / "truth" / "video_intents.parquet").to_pydict()
    if vt["video_id"] != it["video_id"]:
        raise CropsError(ErrorKind.INVALID_INPUT, f"{world_dir}: videos and truth/video_intents disagree")
    return Catalog(
        video_id=vt["video_id"],
        title=vt["title"],
        caption=vt["caption"],
        tags=vt["tags"],
        category=vt["category"],
        upload_ts=np.array(vt["upload_ts"], np.int64),
        p_topic=np.array(it["primary_topic"], np.int32),
        p_intent=np.array(it["primary_intent"], np.int32),
        s_topic=np.array(it["secondary_topic"], np.int32),
        s_intent=np.array(it["secondary_intent"], np.int32),
        modifier=np.array(it["modifier"], np.int32),
        quality=np.array(it["quality"], np.float32),
        duration_ms=np.array(vt["duration_ms"], np.int64),
        real_text=np.array(it["real_text"], bool),
        asr=it["asr_text"],
    )


class Platform:
    """The world's users, its ranking stage (the legacy funnel) and its feed, for any retriever."""

    def __init__(
        self,
        cat: Catalog,
        onto: Ontology,
        users: Users,
        cfg: WorldConfig,
        seed: int,
        *,
        legacy: LegacyStack | None = None,
        first_online_day: int | None = None,
    ) -> None:
        self.cat, self.onto, self.users, self.cfg, self.seed = cat, onto, users, cfg, seed
        self.legacy = legacy if legacy is not None else LegacyStack(cat, cfg.legacy)
        q = cfg.queries
        self.book = QueryBook(onto, QueryKnobs(q.typo_prob, q.slang_prob, q.synonym_query_prob, q.name_query_prob))
        self.feed = FeedSampler(cat, onto, cfg, seed)
        self.user_ids = users.ids
        self.video_ids = cat.video_id
        self.index_of = {v: i for i, v in enumerate(cat.video_id)}
        self.first_online_day = cfg.days if first_online_day is None else first_online_day
        self.day: int | None = None
        self._requests = 0

    @classmethod
    def from_world(cls, world_dir: Path) -> Platform:
        """The platform of a built world, its ranking stage as it was at the end of the logged days."""
        from world.build import read_world_info

        info = read_world_info(world_dir)
        cfg = WorldConfig.model_validate(info["config"])
        seed = int(info["seed"])
        onto = load_ontology(str(world_dir / info["ontology_file"]) if info.get("ontology_file") else None)
        cat = load_catalog(world_dir)
        legacy = LegacyStack(cat, cfg.legacy)
        state = world_dir / STATE_FILE
        if not state.is_file():
            raise CropsError(
                ErrorKind.INCOMPATIBLE,
                f"{world_dir} has no {STATE_FILE} (built before the ranking stage's state was saved): rebuild it",
            )
        with np.load(state) as z:
            legacy.load_state_arrays({k: z[k] for k in z.files})
        return cls(cat, onto, make_users(onto, cfg, seed), cfg, seed, legacy=legacy)

    # ------------------------------------------------------------------ days
    def start_day(self, day: int) -> None:
        """Freeze the ranking stage's features for ``day`` (days count from the world's first logged day)."""
        self.day = day
        self.legacy.start_day(self.cfg.start_ts_ms + day * DAY_MS)

    def end_day(self, outcomes: Sequence[RequestOutcome], feed: Sequence[FeedEvent] = ()) -> None:
        """The ranking stage learns from the day's exposures and feed views (the feedback loop)."""
        q, v, c = [], [], []
        for o in outcomes:
            k = self.legacy.qkey(o.request.query)
            for imp in o.exposed:
                q.append(k)
                v.append(self.index_of[imp.video_id])
                c.append(imp.clicked)
        views = [self.index_of[e.video_id] for e in feed if e.action != "skip"]
        self.legacy.end_day(np.array(q, np.int64), np.array(v, np.int64), np.array(c, bool), np.array(views, np.int64))

    # ------------------------------------------------------------------ sessions
    def open_sessions(self, day: int, n: int, *, seed: int = 0, prefix: str = "s") -> list[SearchSession]:
        """``n`` sessions on ``day``: who searches, for what (the true need), and their first query.

        The same (world, day, n, seed) gives the same sessions; the world's own logged days used
        other streams, so online sessions are fresh draws from the same population."""
        s = make_sessions(
            self.onto, self.users, self.cfg, self.seed, day, n, stream_name=f"online-sessions-{seed}-{day}"
        )
        out = []
        for i in range(n):
            sid = f"{prefix}{day}-{seed}-{i}"
            need = Need(
                int(s.topic[i]),
                int(s.intent[i]),
                self.onto.intent_facet[int(s.intent[i])],
                int(s.modifier[i]),
                s.modifier_text[i],
            )
            rng = stream(self.seed, f"online-session-{seed}-{day}-{i}")
            sess = SearchSession(
                sid,
                int(s.user[i]),
                self.user_ids[int(s.user[i])],
                int(s.start_ts[i]),
                need,
                int(s.level[i]),
                bool(s.topic_switch[i]),
                rng,
            )
            sids, surf = phrase_first(self.book, self.onto, s, np.array([i]), rng.random((1, 10)))
            sess.surface, sess.cur_level = surf[0], sess.level
            sess.pending = SearchRequest(
                f"{sid}-q0", sid, sess.user_id, self.book.strings[sids[0]], sess.start_ts, 0, None
            )
            out.append(sess)
        return out

    def respond(self, sessions: Sequence[SearchSession], candidates: Sequence[Sequence[str]]) -> list[RequestOutcome]:
        """Serve each session's pending request with the given candidates (video ids, best first, e.g.
        a retriever's top-100): the ranking stage orders them, the top ``expose_k`` are shown, the user
        examines, clicks, plays, and may reformulate (``session.pending`` becomes the follow-up)."""
        if self.day is None:
            raise ValueError("call start_day before serving requests")
        if len(sessions) != len(candidates):
            raise ValueError("one candidate list per session")
        if any(s.pending is None for s in sessions):
            raise ValueError("a session has no pending request (it is over)")
        if not sessions:
            return []
        K = self.cfg.legacy.retrieve_k
        reqs = [s.pending for s in sessions if s.pending is not None]
        cands = [candidates_of(_Given(c), "", "", K, self.index_of) for c in candidates]
        V = candidate_matrix(cands, K)
        arr = _sessions_array(sessions)
        draws = Draws([s.rng for s in sessions])
        texts = [r.query for r in reqs]
        out = rank_expose_click(
            self.legacy, self.cat, self.cfg, texts, V, arr.topic, arr.intent, arr.modifier, draws, self.book
        )
        # follow-ups: only for sessions that may still reformulate
        can = np.array([r.round < self.cfg.clicks.max_reformulations for r in reqs])
        idx = np.flatnonzero(can)
        fu_of: dict[int, SearchRequest] = {}
        if len(idx):
            sub = [sessions[int(i)] for i in idx]
            fu = follow_ups(
                self.book,
                self.onto,
                self.cfg,
                Draws([s.rng for s in sub]),
                _sessions_array(sub),
                np.arange(len(sub)),
                np.array([s.cur_level for s in sub], np.int64),
                [s.surface for s in sub],
                np.array([reqs[int(i)].ts for i in idx], np.int64),
                out.satisfied[idx],
            )
            for j, b in enumerate(fu.idx.tolist()):
                i = int(idx[b])
                s, r = sessions[i], reqs[i]
                fu_of[i] = SearchRequest(
                    f"{s.session_id}-q{r.round + 1}",
                    s.session_id,
                    s.user_id,
                    self.book.strings[int(fu.sid[j])],
                    int(fu.ts[j]),
                    r.round + 1,
                    r.request_id,
                )
                s.surface, s.cur_level = fu.surface[j], int(fu.level[j])
        results = []
        starts = np.searchsorted(out.row, np.arange(len(reqs) + 1))
        for i, (s, r) in enumerate(zip(sessions, reqs, strict=True)):
            a, b = starts[i], starts[i + 1]
            order = np.argsort(out.pos[a:b], kind="stable") + a
            vids = [self.video_ids[int(v)] for v in out.vid[order]]
            stages = [STAGES[int(x)] for x in out.stage[order]]
            exposed = [
                Impression(
                    vids[j],
                    int(out.pos[o]),
                    bool(out.click[o]),
                    int(out.play[o]),
                    int(self.cat.duration_ms[out.vid[o]]),
                    int(out.grade[o]),
                )
                for j, o in enumerate(order)
                if out.stage[o] == 2
            ]
            res = RequestOutcome(r, len(cands[i]), vids, stages, exposed, bool(out.satisfied[i]), fu_of.get(i))
            s.outcomes.append(res)
            s.pending = res.follow_up
            results.append(res)
        self._requests += len(reqs)
        return results

    def run(self, sessions: Sequence[SearchSession], retriever: Retriever | IndexRetriever) -> list[RequestOutcome]:
        """Play every session to its end through ``retriever`` (a round of requests at a time)."""
        K = self.cfg.legacy.retrieve_k
        outcomes: list[RequestOutcome] = []
        while True:
            live = [s for s in sessions if s.pending is not None]
            if not live:
                return outcomes
            cands: list[Sequence[str]] = []
            for s in live:
                assert s.pending is not None
                idx = candidates_of(retriever, s.pending.query, s.user_id, K, self.index_of)
                cands.append([self.video_ids[int(i)] for i in idx])
            outcomes += self.respond(live, cands)

    def feed_around(self, sessions: Sequence[SearchSession]) -> list[FeedEvent]:
        """The feed items each session's user saw around the search (leaning toward its need)."""
        if not sessions:
            return []
        arr = _sessions_array(sessions)
        user, ts, vid, act, play, row = leaning_feed(
            self.cat, self.users, self.feed, self.cfg, arr, Draws([s.rng for s in sessions])
        )
        return [
            FeedEvent(
                self.user_ids[int(u)],
                int(t),
                self.video_ids[int(v)],
                ACTIONS[int(a)],
                int(p),
                sessions[int(r)].session_id,
            )
            for u, t, v, a, p, r in zip(user, ts, vid, act, play, row, strict=True)
        ]


class _Given:
    """A fixed candidate list as a retriever (what ``respond`` was handed)."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = list(ids)

    def retrieve(self, query: str, user_id: str, k: int) -> list[str]:
        return self.ids[:k]
