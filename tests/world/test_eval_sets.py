"""The eval-set files a build writes: sense-aware grades, seen/unseen CT pairs, typo flags, miss causes."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from world import build_world, tiny_config


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("evalsets") / "w"
    build_world(out, tiny_config(), seed=3, progress=False)
    return out


def _df(world: Path, rel: str):  # type: ignore[no-untyped-def]
    return pq.read_table(world / rel).to_pandas()


def test_ct_pairs_seen_in_training_match_the_train_log(world: Path) -> None:
    ct = _df(world, "eval/ct.parquet")
    slog = _df(world, "train/search_log.parquet")
    c = slog[slog.clicked]
    clicked = set(zip(c["query"].astype(str), c["video_id"].astype(str), strict=True))
    seen_q = set(slog["query"].astype(str))
    cols = (ct["query"], ct["video_id"], ct.pair_seen_in_training, ct.query_seen_in_training)
    for q, v, seen, qseen in zip(*cols, strict=True):
        assert seen == ((str(q), str(v)) in clicked)
        assert qseen == (str(q) in seen_q)
    assert 0 < ct.pair_seen_in_training.mean() < 1


def test_typo_flags(world: Path) -> None:
    qs = _df(world, "truth/queries.parquet")
    assert 0 < qs.typo.mean() < 0.5
    # a reformulation is typed without a slip: its strings include clean ones of the same meaning
    for name in ("eval/ct.parquet", "eval/qr.parquet", "eval/graded.parquet", "eval/graded_sense.parquet"):
        df = _df(world, name)
        flags = dict(zip(qs["query"], qs.typo, strict=True))
        assert all(flags[str(q)] == t for q, t in zip(df["query"], df.typo, strict=True)), name


def test_sense_aware_grades_follow_the_users_need(world: Path) -> None:
    g = _df(world, "eval/graded_sense.parquet")
    req = _df(world, "truth/requests.parquet").set_index("request_id")
    assert (g.need_topic.values == req.loc[g.request_id, "need_topic"].values).all()
    amb_head = g[g.ambiguous & (g.query_class == "head")]
    assert len(amb_head) > 0
    # for an ambiguous head query, the other sense's videos are relevant to the query, not to this user
    assert (amb_head.grade < amb_head.query_grade).mean() > 0.3
    assert (g.grade > 0).any() and set(g.query_class) >= {"head", "torso", "tail"}


def test_requests_say_whether_retrieval_or_ranking_missed(world: Path) -> None:
    req = _df(world, "truth/requests.parquet")
    assert (req.exposed_user_relevant <= req.retrieved_user_relevant).all()
    assert (req.retrieved_user_relevant <= req.n_candidates).all()
    # satisfied needs a click on a user-relevant exposed video
    assert (req.loc[req.satisfied, "exposed_user_relevant"] > 0).all()
    first = req.first_user_relevant_position
    assert ((first >= 0) == (req.exposed_user_relevant > 0)).all()
    assert first.max() < tiny_config().legacy.expose_k
