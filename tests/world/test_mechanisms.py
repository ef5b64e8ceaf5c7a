"""World mechanisms: what the ranker's relevance model sees, the feed's lean, the ontology from a file,
and the statistics that report them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from core.errors import CropsError
from world import Platform, build_world, tiny_config
from world.mechanisms import mechanism_stats, write_mechanisms_report
from world.ontology import load_ontology

SECOND = Path(__file__).resolve().parents[2] / "world" / "ontologies" / "money_home_media.txt"


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mech")
    out = {}
    for name, over in (
        ("query_view", {}),
        ("user_view", {"legacy.relevance_view": "user"}),
        ("topic_lean", {"rec.lean_topic_share": 0.3}),
    ):
        out[name] = root / name
        build_world(out[name], tiny_config(**over), seed=0, progress=False)
    return out


def _get(rows: list[dict[str, object]], g: str) -> dict[str, object]:
    return next(r for r in rows if r["g"] == g)


def test_a_ranker_that_reads_the_query_cannot_see_the_users_sense(worlds: dict[str, Path]) -> None:
    q, u = mechanism_stats(worlds["query_view"]), mechanism_stats(worlds["user_view"])
    for g in ("head", "head/ambiguous"):
        held_q = _get(q["exposure_held_relevant"], g)["exposure_held_relevant"]
        held_u = _get(u["exposure_held_relevant"], g)["exposure_held_relevant"]
        assert isinstance(held_q, float) and isinstance(held_u, float)
        assert held_q < held_u, g
    # with the oracle gone, more reformulations follow a funnel that never showed the user's need
    miss_q = _get(q["reformulation_causes"], "all")
    miss_u = _get(u["reformulation_causes"], "all")
    assert miss_q["not_clicked"] < miss_u["not_clicked"]  # type: ignore[operator]


def test_causes_and_feed_grades_are_shares(worlds: dict[str, Path]) -> None:
    s = mechanism_stats(worlds["query_view"])
    for r in s["reformulation_causes"]:
        assert abs(r["retrieval_miss"] + r["ranking_miss"] + r["not_clicked"] - 1) < 1e-9
        assert 0 <= r["not_clicked_shown_low"] <= r["not_clicked"]
    for r in s["feed_lean_grades"]:
        assert abs(r["grade0"] + r["grade1"] + r["grade2"] + r["grade3"] - 1) < 1e-9
    senses = [r for r in s["bubble_by_sense"] if r["head"] == "apple"]
    assert senses and abs(sum(r["demand_share"] for r in senses) - 1) < 1e-9


def test_the_feed_leans_by_intent_unless_told_to_lean_by_topic(worlds: dict[str, Path]) -> None:
    def grade1(w: Path) -> float:
        rows = [r for r in mechanism_stats(w)["feed_lean_grades"] if r["g"] in ("torso", "tail")]
        return float(sum(r["grade1"] * r["items"] for r in rows) / sum(r["items"] for r in rows))

    assert grade1(worlds["query_view"]) < grade1(worlds["topic_lean"])


def test_a_world_on_another_ontology(tmp_path: Path) -> None:
    out = tmp_path / "b"
    info = build_world(out, tiny_config(), seed=1, progress=False, ontology=SECOND)
    onto = load_ontology(str(SECOND))
    assert info["ontology_file"] == "ontology.txt" and (out / "ontology.txt").read_text() == SECOND.read_text()
    topics = pq.read_table(out / "truth" / "topics.parquet").column("key").to_pylist()
    assert topics == [t.key for t in onto.topics]
    heads = set(pq.read_table(out / "truth" / "queries.parquet").column("surface").to_pylist())
    assert heads & {"bond", "stock", "pitch"}
    p = Platform.from_world(out)
    p.start_day(p.first_online_day)
    s = p.open_sessions(p.first_online_day, 5, seed=0)
    assert all(onto.topics[x.need.topic].key in topics for x in s)
    md = write_mechanisms_report([out], tmp_path / "rep", heads=("bond",))
    assert "bond" in md.read_text()


def test_cli_ontology_errors(tmp_path: Path) -> None:
    from crops.cli import app

    bad = tmp_path / "bad.txt"
    bad.write_text("TOPIC nonsense\n")
    for path, msg in ((tmp_path / "missing.txt", "does not exist"), (bad, "malformed")):
        res = CliRunner().invoke(app, ["world", "build", "--out", str(tmp_path / "w"), "--ontology", str(path)])
        assert isinstance(res.exception, CropsError) and msg in str(res.exception), res.output
    # the installed command turns it into one error line and exit code 2
    proc = subprocess.run(
        [sys.executable, "-m", "crops", "world", "build", "--out", str(tmp_path / "w"), "--ontology", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
