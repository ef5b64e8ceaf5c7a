"""The artifact contracts in core: log tables, samples, checkpoint names."""

from __future__ import annotations

import typing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.errors import CropsError, ErrorKind
from core.logs import EXPOSURE, REC_LOG, SEARCH_LOG, TABLES, ExposureRecord, TableContract
from core.samples import LEVELS, POSITIVE_LEVEL, SAMPLE_SOURCES, SAMPLES_SCHEMA, SOURCE_PRIORITY, is_positive


def _search_rows(**override: pa.Array) -> pa.Table:
    cols = {
        "request_id": pa.array(["r1", "r1"]),
        "user_id": pa.array(["u1", "u1"]).dictionary_encode(),  # the world writes dictionaries
        "ts": pa.array([1, 1], pa.int64()),
        "query": pa.array(["cat video", "cat video"]),
        "video_id": pa.array(["v1", "v2"]),
        "stage": pa.array(["exposed", "rank_unexposed"]),
        "position": pa.array([0, 1], pa.int16()),  # any integer width
        "clicked": pa.array([True, False]),
        "play_ms": pa.array([1000, 0], pa.int64()),
    }
    cols.update(override)
    return pa.table(cols)


def test_stamped_table_round_trips_and_conforms(tmp_path: Path) -> None:
    path = tmp_path / SEARCH_LOG.file
    pq.write_table(SEARCH_LOG.stamp(_search_rows()), path)
    SEARCH_LOG.check_file(path)
    schema = pq.read_schema(path)
    assert schema.metadata[b"crops.schema_version"] == b"1"
    exact = SEARCH_LOG.conform(pq.read_table(path))
    assert exact.schema.equals(SEARCH_LOG.schema)
    assert exact.column("user_id").to_pylist() == ["u1", "u1"]


def test_missing_column_and_wrong_type_are_named() -> None:
    with pytest.raises(CropsError, match=r"needs columns \['play_ms'\]"):
        SEARCH_LOG.check(_search_rows().drop_columns(["play_ms"]).schema)
    with pytest.raises(CropsError, match="clicked is string"):
        SEARCH_LOG.check(_search_rows(clicked=pa.array(["yes", "no"])).schema)


def test_newer_schema_version_is_refused() -> None:
    table = _search_rows().replace_schema_metadata({b"crops.table": b"search_log", b"crops.schema_version": b"99"})
    with pytest.raises(CropsError) as err:
        SEARCH_LOG.check(table.schema)
    assert err.value.kind is ErrorKind.INCOMPATIBLE


def test_a_rec_log_is_not_a_search_log(tmp_path: Path) -> None:
    rec = pa.table({"user_id": ["u"], "ts": [1], "video_id": ["v"], "action": ["view"], "play_ms": [5]})
    pq.write_table(REC_LOG.stamp(rec), tmp_path / "rec.parquet")
    with pytest.raises(CropsError, match="search_log needs columns"):
        SEARCH_LOG.check_file(tmp_path / "rec.parquet")


def test_the_exposure_record_the_service_writes_is_the_exposure_contract() -> None:
    hints = typing.get_type_hints(ExposureRecord)
    assert list(hints) == list(EXPOSURE.columns)  # same names, same order
    families = {str: "string", int: "int", float: "float"}
    for field in EXPOSURE.schema:
        hint = hints[field.name]
        if pa.types.is_list(field.type):
            assert typing.get_origin(hint) is list, field.name
        else:
            base = next(a for a in (typing.get_args(hint) or (hint,)) if a is not type(None))
            assert families[base] == {"string": "string", "int64": "int"}.get(str(field.type)), field.name
    record: ExposureRecord = {
        "request_id": "r", "unit": "u", "user_id": None, "ts": 1, "query": "q", "normalized_query": "q",
        "arm": "a", "experiments": [["e", "a"]], "bundle_id": "b", "content_id": "c", "video_ids": ["v"],
        "scores": [0.5],
    }
    EXPOSURE.check(pa.Table.from_pylist([dict(record)], schema=EXPOSURE.schema).schema)


def test_every_contract_has_a_version_and_a_file() -> None:
    for name, contract in TABLES.items():
        assert isinstance(contract, TableContract) and contract.name == name
        assert contract.version >= 1 and contract.file and contract.columns


def test_levels_priority_and_the_positive_rule_agree() -> None:
    assert list(LEVELS.values()) == sorted(LEVELS.values(), reverse=True)  # priority never ranks a lower level first
    assert SOURCE_PRIORITY[0] == "p1_reformulation" and LEVELS["p1_reformulation"] == 5
    positives = {s.name for s in SAMPLE_SOURCES if is_positive(s.level)}
    assert positives == {"p0_click", "p1_reformulation", "p2_rec", "p3_llm"}
    assert not is_positive(POSITIVE_LEVEL - 1) and is_positive(POSITIVE_LEVEL)
    assert SAMPLES_SCHEMA.field("level").type == pa.int8()


def test_atomic_path_replaces_files_and_folders_and_cleans_up(tmp_path: Path) -> None:
    from core.atomic import atomic_path, atomic_write_parquet

    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_path(target) as tmp:
        assert not tmp.exists() and tmp.parent == tmp_path
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]

    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.mkdir()
        raise RuntimeError("crash mid-write")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]  # the old result is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp left behind

    atomic_write_parquet(pa.table({"a": [1, 2]}), tmp_path / "t.parquet")
    assert pq.read_table(tmp_path / "t.parquet").column("a").to_pylist() == [1, 2]


def test_samples_of_a_newer_schema_are_refused() -> None:
    from core.samples import check_samples_version

    check_samples_version(SAMPLES_SCHEMA.metadata, "samples.parquet")  # this code's own version
    check_samples_version(None, "old samples without metadata")
    with pytest.raises(CropsError) as err:
        check_samples_version({b"crops.schema_version": b"2"}, "samples.parquet")
    assert err.value.kind is ErrorKind.INCOMPATIBLE
