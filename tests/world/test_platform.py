"""The session-step API (world.Platform): determinism, pluggable retrieval, follow-ups, feed, state."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from core.errors import CropsError
from world import LexicalRetriever, Platform, RequestOutcome, Retriever, SearchSession, build_world, tiny_config
from world.relevance import grade_pairs


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("platform") / "w"
    build_world(out, tiny_config(), seed=0, progress=False)
    return out


@pytest.fixture()
def platform(world: Path) -> Platform:
    p = Platform.from_world(world)
    p.start_day(p.first_online_day)
    return p


class EmptyRetrieverFake:
    """Unit-test fake: a retriever that finds nothing."""

    def retrieve(self, query: str, user_id: str, k: int) -> list[str]:
        return []


class NeedOracleRetrieverFake:
    """Unit-test fake: peeks at the session's true need and returns the videos graded 3 for it first,
    so that only retrieval differs from the lexical arm (same ranking stage, same users)."""

    def __init__(self, platform: Platform, sessions: Sequence[SearchSession]) -> None:
        self.p = platform
        self.by_user = {s.user_id: s for s in sessions}

    def retrieve(self, query: str, user_id: str, k: int) -> list[str]:
        s = self.by_user[user_id]
        cat = self.p.cat
        n = len(cat)
        g = grade_pairs(
            cat, np.arange(n), np.full(n, s.need.topic), np.full(n, s.need.intent), np.full(n, s.need.modifier)
        )
        order = np.argsort(-g, kind="stable")[:k]
        return [cat.video_id[i] for i in order if g[i] > 0]


def _summary(outcomes: Sequence[RequestOutcome]) -> list[tuple[object, ...]]:
    return [
        (
            o.request.request_id,
            o.request.query,
            tuple(o.video_ids),
            tuple((i.clicked, i.play_ms) for i in o.exposed),
            o.follow_up.query if o.follow_up else None,
        )
        for o in outcomes
    ]


def test_retrievers_satisfy_the_protocol(platform: Platform) -> None:
    assert isinstance(LexicalRetriever(platform.legacy, platform.video_ids), Retriever)
    assert isinstance(EmptyRetrieverFake(), Retriever)


def test_sessions_are_deterministic_and_independent_of_batching(world: Path) -> None:
    runs = []
    for split in (False, True):
        p = Platform.from_world(world)
        p.start_day(p.first_online_day)
        sessions = p.open_sessions(p.first_online_day, 80, seed=5)
        lex = LexicalRetriever(p.legacy, p.video_ids)
        if split:  # other batches, other order: each session's stream is its own
            p.run(sessions[40:][::-1], lex)
            p.run(sessions[:40], lex)
        else:
            p.run(sessions, lex)
        runs.append(sorted(_summary([o for s in sessions for o in s.outcomes])))
    assert runs[0] == runs[1]
    other = Platform.from_world(world)
    first = [(s.user_id, s.pending) for s in other.open_sessions(other.first_online_day, 80, seed=5)]
    again = [(s.user_id, s.pending) for s in other.open_sessions(other.first_online_day, 80, seed=5)]
    new = [(s.user_id, s.pending) for s in other.open_sessions(other.first_online_day, 80, seed=6)]
    assert first == again and first != new


def test_a_request_walks_the_funnel(platform: Platform) -> None:
    sessions = platform.open_sessions(platform.first_online_day, 60, seed=1)
    outcomes = platform.run(sessions, LexicalRetriever(platform.legacy, platform.video_ids))
    k = platform.cfg.legacy
    for o in outcomes:
        assert len(o.exposed) == min(k.expose_k, o.n_candidates)
        assert [i.position for i in o.exposed] == list(range(len(o.exposed)))
        assert o.stages.count("exposed") == len(o.exposed)
        assert all(i.play_ms > 0 for i in o.exposed if i.clicked)
        assert o.satisfied == any(i.clicked and i.grade >= platform.cfg.clicks.satisfied_grade for i in o.exposed)
        if o.follow_up is not None:
            assert not o.satisfied
            assert o.follow_up.parent_request_id == o.request.request_id
            assert o.follow_up.round == o.request.round + 1 <= platform.cfg.clicks.max_reformulations
            assert 0 < o.follow_up.ts - o.request.ts < platform.cfg.clicks.reformulation_window_s * 1000
    assert all(s.pending is None for s in sessions)
    assert any(o.clicks for o in outcomes)


def test_only_retrieval_differs_between_arms(world: Path) -> None:
    def play(make: str) -> tuple[float, float]:
        p = Platform.from_world(world)
        p.start_day(p.first_online_day)
        sessions = p.open_sessions(p.first_online_day, 200, seed=2)
        sessions = list({s.user_id: s for s in sessions[::-1]}.values())  # one per user: the fake peeks by user
        r: object = EmptyRetrieverFake() if make == "empty" else NeedOracleRetrieverFake(p, sessions)
        if make == "lexical":
            r = LexicalRetriever(p.legacy, p.video_ids)
        p.run(sessions, r)  # type: ignore[arg-type]
        first = [s.outcomes[0] for s in sessions]
        held = [any(i.grade >= 2 for i in o.exposed) for o in first]  # the user's need was shown
        return float(np.mean([s.satisfied for s in sessions])), float(np.mean(held))

    empty, lexical, oracle = play("empty"), play("lexical"), play("oracle")
    assert empty == (0.0, 0.0)  # nothing shown: nobody satisfied
    assert oracle[0] > lexical[0] > empty[0]
    assert oracle[1] > lexical[1]


def test_respond_checks_its_input(platform: Platform) -> None:
    sessions = platform.open_sessions(platform.first_online_day, 3, seed=9)
    with pytest.raises(ValueError):
        platform.respond(sessions, [[]])
    out = platform.respond(sessions[:1], [["not-a-video", platform.video_ids[0]]])
    assert out[0].n_candidates == 1
    sessions[0].pending = None
    with pytest.raises(ValueError):
        platform.respond(sessions[:1], [[]])


def test_feed_and_end_day_feed_the_ranking_stage(platform: Platform) -> None:
    sessions = platform.open_sessions(platform.first_online_day, 100, seed=4)
    outcomes = platform.run(sessions, LexicalRetriever(platform.legacy, platform.video_ids))
    feed = platform.feed_around(sessions)
    ids = {s.session_id for s in sessions}
    assert feed and all(e.session_id in ids for e in feed)
    views = platform.legacy.views.sum()
    fb = len(platform.legacy.fb_keys)
    platform.end_day(outcomes, feed)
    clicks = sum(o.clicks for o in outcomes)
    assert platform.legacy.views.sum() == views + clicks + sum(e.action != "skip" for e in feed)
    assert len(platform.legacy.fb_keys) > fb


def test_the_world_keeps_the_ranking_stage_it_learned(world: Path) -> None:
    p = Platform.from_world(world)
    assert p.legacy.views.sum() > 0 and len(p.legacy.fb_keys) > 0 and len(p.legacy.qkey_index) > 0


def test_a_world_without_the_ranking_state_is_refused(world: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(world, old)
    (old / "state" / "legacy_stack.npz").unlink()
    with pytest.raises(CropsError, match="rebuild"):
        Platform.from_world(old)
