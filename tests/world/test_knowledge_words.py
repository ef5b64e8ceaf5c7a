"""The simulated LLM reads queries from their words and the ontology, never from the truth tables."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from world.knowledge import SimulatedLLM
from world.ontology import load_ontology


def test_interpretation_ignores_the_truth_tables(tmp_path: Path) -> None:
    onto = load_ontology()
    cooking = next(t.topic_id for t in onto.topics if t.key == "ramen")
    (tmp_path / "truth").mkdir()
    # a truth table that lies about "transformer": an LLM that read it would answer ramen
    pq.write_table(
        pa.table({"query": ["transformer"], "topic_ids": [[cooking]], "facet": [None], "modifier": [None]}),
        tmp_path / "truth" / "queries.parquet",
    )
    llm = SimulatedLLM(tmp_path, error_rate=0.0)
    topics, _, _ = llm.interpret("transformer")
    assert sorted(topics) == sorted(onto.surface_topics["transformer"]) and cooking not in topics
    # a string of no known word is not understood: every description is then wrong
    assert llm.interpret("zzqx") == ([], None, None)
    assert all(g.is_error for g in llm.generate_labeled("zzqx", "a video", 5))
