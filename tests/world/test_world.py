"""The world simulator on a tiny config: determinism, schemas, the bubble, reformulations, knobs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from core.errors import CropsError
from world.build import build_world
from world.catalog import generate_catalog
from world.config import WorldConfig, load_config, tiny_config
from world.ontology import load_ontology
from world.population import make_users
from world.report import world_stats
from world.simulate import simulate

UNBIASED = {"legacy.popularity_weight": 0.0, "legacy.query_category_weight": 0.0, "legacy.feedback_weight": 0.0}
TABLES = (
    "videos.parquet",
    "train/search_log.parquet",
    "test/search_log.parquet",
    "train/rec_log.parquet",
    "test/rec_log.parquet",
    "truth/relevance.parquet",
    "truth/queries.parquet",
    "truth/requests.parquet",
    "truth/video_intents.parquet",
    "eval/ct.parquet",
    "eval/qr.parquet",
    "eval/graded.parquet",
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    build_world(out, tiny_config(), seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def unbiased_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "u"
    build_world(out, tiny_config(**UNBIASED), seed=0, progress=False)
    return out


def _read(world: Path, rel: str) -> pa.Table:
    return pq.read_table(world / rel)


def _sim(**over: object):  # type: ignore[no-untyped-def]
    """Simulate without writing (faster) for knob tests."""
    cfg = tiny_config(**over)
    onto = load_ontology()
    cat = generate_catalog(cfg.catalog, 0, start_ts_ms=cfg.start_ts_ms, log_days=cfg.days, progress=False)
    logs, book = simulate(cat, onto, make_users(onto, cfg, 0), cfg, 0, progress=False)
    return cfg, cat, logs, book


def test_same_seed_same_world_other_seed_differs(tmp_path: Path, world: Path) -> None:
    again = tmp_path / "again"
    build_world(again, tiny_config(), seed=0, progress=False)
    for rel in TABLES:
        assert _read(world, rel).equals(_read(again, rel)), rel
    other = tmp_path / "other"
    build_world(other, tiny_config(), seed=1, progress=False)
    assert not _read(world, "train/search_log.parquet").equals(_read(other, "train/search_log.parquet"))
    assert not _read(world, "videos.parquet").equals(_read(other, "videos.parquet"))


def test_schemas(world: Path) -> None:
    str_ = (pa.string(), pa.dictionary(pa.int32(), pa.string()))
    expect = {
        "videos.parquet": {
            "video_id": str_,
            "title": str_,
            "caption": str_,
            "tags": (pa.list_(pa.string()),),
            "category": str_,
            "upload_ts": (pa.int64(),),
        },
        "train/search_log.parquet": {
            "request_id": str_,
            "user_id": str_,
            "ts": (pa.int64(),),
            "query": str_,
            "video_id": str_,
            "stage": str_,
            "position": (pa.int16(),),
            "clicked": (pa.bool_(),),
            "play_ms": (pa.int64(),),
        },
        "train/rec_log.parquet": {
            "user_id": str_,
            "ts": (pa.int64(),),
            "video_id": str_,
            "action": str_,
            "play_ms": (pa.int64(),),
        },
        "truth/relevance.parquet": {"query": str_, "video_id": str_, "grade": (pa.int8(),)},
        "truth/queries.parquet": {
            "query": str_,
            "query_class": str_,
            "ambiguous": (pa.bool_(),),
            "intent_ids": (pa.list_(pa.int32()),),
        },
        "eval/ct.parquet": {"query": str_, "video_id": str_, "query_class": str_, "ambiguous": (pa.bool_(),)},
        "eval/qr.parquet": {"query": str_, "video_id": str_, "query_class": str_, "ambiguous": (pa.bool_(),)},
        "eval/graded.parquet": {
            "query": str_,
            "video_id": str_,
            "grade": (pa.int8(),),
            "query_class": str_,
            "ambiguous": (pa.bool_(),),
        },
    }
    for rel, cols in expect.items():
        schema = pq.read_schema(world / rel)
        for col, types in cols.items():
            assert col in schema.names, (rel, col)
            assert schema.field(col).type in types, (rel, col, schema.field(col).type)
    info = json.loads((world / "world.json").read_text())
    log = _read(world, "train/search_log.parquet").to_pandas()
    assert set(log["stage"].astype(str)) == {"prerank_filtered", "rank_unexposed", "exposed"}
    assert not log.loc[log["stage"] != "exposed", "clicked"].any()  # only exposed videos get clicks
    assert (log.loc[~log["clicked"], "play_ms"] == 0).all() and (log.loc[log["clicked"], "play_ms"] > 0).all()
    assert log["ts"].between(info["start_ts"], info["split_ts"] - 1).all()
    exposed = log[log["stage"] == "exposed"]
    assert exposed["position"].max() < info["config"]["legacy"]["expose_k"]
    test = _read(world, "test/search_log.parquet").column("ts").to_numpy()
    assert (test >= info["split_ts"]).all() and len(test) > 0
    videos = set(_read(world, "videos.parquet").column("video_id").to_pylist())
    assert set(log["video_id"].astype(str)) <= videos
    rel = _read(world, "truth/relevance.parquet").column("grade").to_numpy()
    assert rel.min() >= 1 and rel.max() == 3
    qs = _read(world, "truth/queries.parquet").to_pandas()
    assert set(qs["query_class"]) == {"head", "torso", "tail"} and qs["ambiguous"].any()
    g = _read(world, "eval/graded.parquet").column("grade").to_numpy()
    assert g.min() == 0 and g.max() == 3
    assert info["counts"]["ct_pairs"] > 0 and info["counts"]["qr_pairs"] > 0


def test_ct_and_qr_come_from_test_day_clicks(world: Path) -> None:
    log = _read(world, "test/search_log.parquet").to_pandas()
    clicked = set(
        zip(log.loc[log["clicked"], "query"].astype(str), log.loc[log["clicked"], "video_id"].astype(str), strict=True)
    )
    ct = _read(world, "eval/ct.parquet").to_pandas()
    assert set(zip(ct["query"].astype(str), ct["video_id"].astype(str), strict=True)) == clicked
    req = _read(world, "truth/requests.parquet").to_pandas()
    qr = _read(world, "eval/qr.parquet").to_pandas()
    originals = set(req.loc[req["split"] == "test", "query"].astype(str))
    assert set(qr["query"].astype(str)) <= originals


def test_bubble_exists_and_shrinks_when_the_stack_is_unbiased(world: Path, unbiased_world: Path) -> None:
    biased = world_stats(world)["bubble"]["ambiguous"]
    unbiased = world_stats(unbiased_world)["bubble"]["ambiguous"]
    assert biased["queries"] > 0
    assert biased["exposed_share"] < 1.0  # relevant videos that were never exposed exist
    assert biased["exposed_share"] < unbiased["exposed_share"]


def test_reformulations_fall_within_the_window(world: Path) -> None:
    req = _read(world, "truth/requests.parquet").to_pandas()
    parents = req.set_index("request_id")
    child = req[req["is_reformulation"]]
    assert len(child) > 0
    gap = (child["ts"].to_numpy() - parents.loc[child["parent_request_id"], "ts"].to_numpy()) / 1000
    window = json.loads((world / "world.json").read_text())["config"]["clicks"]["reformulation_window_s"]
    assert gap.min() > 0 and gap.max() <= window
    # a reformulation is about the same need as its parent, and follows an unsatisfied request
    assert (child["need_intent"].to_numpy() == parents.loc[child["parent_request_id"], "need_intent"].to_numpy()).all()
    assert not parents.loc[child["parent_request_id"], "satisfied"].any()


def test_knobs_change_what_they_claim() -> None:
    _, _, base, _ = _sim()
    # no reformulations when users never reformulate
    _, _, none, _ = _sim(**{"clicks.reformulate_prob": 0.0})
    assert (np.concatenate(base.req_parent) >= 0).any()
    assert not (np.concatenate(none.req_parent) >= 0).any()
    # a narrower window → every reformulation gap inside it
    _, _, narrow, _ = _sim(**{"clicks.reformulation_window_s": 20.0})
    parent = np.concatenate(narrow.req_parent)
    ts = np.concatenate(narrow.req_ts)
    kids = np.flatnonzero(parent >= 0)
    assert len(kids) and ((ts[kids] - ts[parent[kids]]) <= 20_000).all()
    # steeper position bias → clicks concentrate on the top slot

    def top_share(logs) -> float:  # type: ignore[no-untyped-def]
        pos, click = np.concatenate(logs.row_pos), np.concatenate(logs.row_click)
        return float((pos[click] == 0).mean())

    _, _, steep, _ = _sim(**{"clicks.position_decay": 2.0})
    _, _, flat, _ = _sim(**{"clicks.position_decay": 0.0})
    assert top_share(steep) > top_share(base) > top_share(flat)
    # the feed leans toward the search intent only when told to
    _, _, nolean, _ = _sim(**{"rec.lean_prob": 0.0})
    assert (np.concatenate(base.rec_session) >= 0).sum() > 0
    assert (np.concatenate(nolean.rec_session) >= 0).sum() == 0
    # exploration puts other candidates into exposed slots → more distinct videos exposed
    _, _, explore, _ = _sim(**{"legacy.exploration": 0.5})

    def distinct_exposed(logs) -> int:  # type: ignore[no-untyped-def]
        st, v = np.concatenate(logs.row_stage), np.concatenate(logs.row_vid)
        return len(np.unique(v[st == 2]))

    assert distinct_exposed(explore) > distinct_exposed(base)


def test_heavier_stages_see_relevance_only_when_told_to() -> None:
    """Pre-rank and rank see a noisy true grade: the stage a candidate reached then orders its mean
    grade (exposed > rank_unexposed > prerank_filtered) more steeply than with the knobs at 0."""

    def mean_grade_by_stage(logs) -> np.ndarray:  # type: ignore[no-untyped-def]
        st, g = np.concatenate(logs.row_stage), np.concatenate(logs.row_grade)
        return np.array([g[st == s].mean() for s in (0, 1, 2)])  # prerank_filtered, rank_unexposed, exposed

    _, _, base, _ = _sim()
    _, _, blind, _ = _sim(**{"legacy.prerank_relevance": 0.0, "legacy.rank_relevance": 0.0})
    on, off = mean_grade_by_stage(base), mean_grade_by_stage(blind)
    assert on[2] > on[1] > on[0]
    assert on[2] - on[0] > off[2] - off[0] + 0.2
    # more relevant exposure → more clicks
    assert np.concatenate(base.row_click).mean() > np.concatenate(blind.row_click).mean()


def test_report_measures_relevance_by_log_stage(world: Path) -> None:
    st = world_stats(world)["stages"]
    assert set(st) == {"exposed", "rank_unexposed", "prerank_filtered"}
    assert st["exposed"]["mean_grade"] > st["rank_unexposed"]["mean_grade"] > st["prerank_filtered"]["mean_grade"]
    assert all(0 <= d["relevant_share"] <= 1 and d["rows"] > 0 for d in st.values())


def test_feed_lean_raises_feed_relevance(tmp_path: Path, world: Path) -> None:
    nolean = tmp_path / "nolean"
    build_world(nolean, tiny_config(**{"rec.lean_prob": 0.0}), seed=0, progress=False)
    assert world_stats(world)["feed"]["relevant_share"] > world_stats(nolean)["feed"]["relevant_share"] + 0.1


def test_config_file_and_cli(tmp_path: Path) -> None:
    from crops.cli import app

    cfg_file = tmp_path / "w.yaml"
    cfg_file.write_text(
        "n_requests: 400\ndays: 3\ntest_days: 1\ngraded_queries: 9\nrelevance_min_grade: 2\n"
        "catalog: {n_videos: 300}\nusers: {n_users: 50}\n"
    )
    assert load_config(cfg_file).catalog.n_videos == 300
    assert load_config(cfg_file).legacy == WorldConfig().legacy  # partial sections keep defaults
    r = CliRunner().invoke(
        app,
        ["world", "build", "--out", str(tmp_path / "w"), "--config", str(cfg_file), "--seed", "2", "--videos", "250"],
    )
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "w" / "world.json").read_text())
    assert info["counts"]["videos"] == 250 and info["seed"] == 2
    assert pq.read_table(tmp_path / "w" / "truth" / "relevance.parquet").column("grade").to_numpy().min() == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("legacy: {retrieve_k: -3}\n")
    with pytest.raises(CropsError, match=r"bad\.yaml"):
        load_config(bad)
    r = CliRunner().invoke(app, ["world", "report", "--world", str(tmp_path / "nope"), "--no-dense"])
    assert r.exit_code != 0 and isinstance(r.exception, CropsError)


def test_grades_follow_intents_not_text(world: Path) -> None:
    rel = _read(world, "truth/relevance.parquet").to_pandas()
    qs = _read(world, "truth/queries.parquet").to_pandas().set_index("query")
    vi = _read(world, "truth/video_intents.parquet").to_pandas().set_index("video_id")
    rel = rel.join(vi, on="video_id")
    rel["query"] = rel["query"].astype(str)
    head = rel[rel["query"].map(qs["query_class"]) == "head"]
    topics = head["query"].map(qs["topic_ids"])
    three = head["grade"] == 3
    assert three.any()
    assert all(t in ts for t, ts in zip(head.loc[three, "primary_topic"], topics[three], strict=True))
    torso = rel[rel["query"].map(qs["query_class"]) == "torso"]
    intents = torso["query"].map(qs["intent_ids"])
    t3 = torso["grade"] == 3
    assert all(i in ii for i, ii in zip(torso.loc[t3, "primary_intent"], intents[t3], strict=True))
    # an ambiguous head query is relevant to every sense, whatever the logs showed
    amb = qs[(qs["query_class"] == "head") & qs["ambiguous"]]
    q = amb.index[0]
    senses = set(rel.loc[(rel["query"] == q) & (rel["grade"] == 3), "primary_topic"])
    assert senses == set(amb.loc[q, "topic_ids"]) & set(vi["primary_topic"])
