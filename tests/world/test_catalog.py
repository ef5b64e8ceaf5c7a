"""The catalog alone: deterministic, BEIR-style jsonl, real-title loaders, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.corpus import load_corpus
from core.errors import CropsError
from tests.conftest import SHARED_DATA
from world.catalog import build_catalog_file, load_real_texts
from world.ontology import load_ontology


def test_catalog_jsonl_is_deterministic_and_readable(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    build_catalog_file(a, n_videos=500, seed=3, progress=False)
    build_catalog_file(b, n_videos=500, seed=3, progress=False)
    build_catalog_file(c, n_videos=500, seed=4, progress=False)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    docs = load_corpus(a)  # the service's own reader accepts it
    assert len(docs) == 500 and len({d.doc_id for d in docs}) == 500
    row = json.loads(a.read_text().splitlines()[0])
    assert set(row) == {"_id", "title", "text"} and row["title"]


def test_ontology_has_multi_sense_head_terms() -> None:
    onto = load_ontology()
    heads = onto.ambiguous_heads()
    assert "transformer" in heads and len(onto.surface_topics["transformer"]) >= 2
    cats = {onto.topics[t].category for t in onto.surface_topics["transformer"]}
    assert len(cats) >= 2
    # each sense is describable without the head term (what dense retrieval or an LLM can find)
    assert all(onto.topics[t].synonyms for t in onto.surface_topics["transformer"])


@pytest.mark.parametrize("name", ["microlens100k_titles", "activitynet_captions", "kuairec_captions"])
def test_real_sources_load(name: str) -> None:
    if not (SHARED_DATA / name).is_dir():
        pytest.fail(f"shared data {name} missing at {SHARED_DATA}")
    texts = load_real_texts(SHARED_DATA / name)
    assert len(texts) > 1000 and all(t.title for t in texts[:100])


def test_real_titles_mix_into_catalog(tmp_path: Path) -> None:
    src = tmp_path / "titles.jsonl"
    src.write_text(
        "".join(json.dumps({"title": f"my ball python shedding day {i}"}) + "\n" for i in range(50))
        + json.dumps("just a plain string title")
        + "\n"
    )
    out = tmp_path / "v.parquet"
    cat = build_catalog_file(out, n_videos=200, seed=0, source=str(src), progress=False)
    real = cat.real_text.nonzero()[0]
    assert len(real) == 51
    onto = load_ontology()
    snake = onto.topics[int(cat.p_topic[real][0])] if cat.p_topic[real][0] >= 0 else None
    assigned = {onto.topics[int(t)].key for t in cat.p_topic[real] if t >= 0}
    assert assigned == {"ball_python"}, (snake, assigned)
    assert (cat.p_topic[real] == -1).sum() == 1  # the unrelated title is background


def test_cli_catalog_errors(tmp_path: Path) -> None:
    from crops.cli import app

    r = CliRunner().invoke(app, ["world", "catalog", "--out", str(tmp_path / "x.txt")])
    assert r.exit_code != 0 and isinstance(r.exception, CropsError)
    with pytest.raises(CropsError, match="not found"):
        load_real_texts("no_such_source")
