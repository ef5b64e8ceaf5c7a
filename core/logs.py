"""Table contracts: ``search_log``, ``rec_log``, the service's exposure record, the feedback event,
the ``videos`` catalog.

Writers (the world simulator, the service) and readers (the data engine, the online loop) name the
same ``TableContract``: its columns, their Arrow types and a schema version stamped into the Parquet
metadata. ``check`` accepts what a writer may reasonably produce (dictionary-encoded strings, any
integer width) and refuses missing columns, wrong type families and newer schema versions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypedDict

import pyarrow as pa

from core.errors import CropsError, ErrorKind
from core.feedback import FEEDBACK_SCHEMA, FEEDBACK_SCHEMA_VERSION, FeedbackBatch, FeedbackEvent

__all__ = [
    "EXPOSURE",
    "FEEDBACK",
    "FEEDBACK_SCHEMA",
    "FEEDBACK_SCHEMA_VERSION",
    "REC_LOG",
    "SEARCH_LOG",
    "SEARCH_STAGES",
    "TABLES",
    "VIDEOS",
    "ExposureRecord",
    "FeedbackBatch",
    "FeedbackEvent",
    "TableContract",
]

TABLE_KEY: Final = b"crops.table"
VERSION_KEY: Final = b"crops.schema_version"

#: ``search_log.stage`` values: how far a candidate got in the legacy search stack.
SEARCH_STAGES: Final[tuple[str, ...]] = ("exposed", "rank_unexposed", "prerank_filtered")


def _family(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return "list"
    return str(t)


@dataclass(frozen=True)
class TableContract:
    """One artifact table: name, version, Arrow schema, file name, and what its rows mean."""

    name: str
    version: int
    schema: pa.Schema
    file: str
    description: str

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.schema.names)

    @property
    def metadata(self) -> dict[bytes, bytes]:
        return {TABLE_KEY: self.name.encode(), VERSION_KEY: str(self.version).encode()}

    def stamp(self, table: pa.Table) -> pa.Table:
        """``table`` with this contract's name and version in its schema metadata (checked first)."""
        self.check(table.schema, where=f"{self.name} being written")
        return table.replace_schema_metadata({**(table.schema.metadata or {}), **self.metadata})

    def check(self, schema: pa.Schema, where: str = "") -> None:
        """Raise ``INVALID_INPUT`` unless ``schema`` carries every column in a compatible type."""
        where = where or self.name
        missing = [c for c in self.columns if c not in schema.names]
        if missing:
            raise CropsError(ErrorKind.INVALID_INPUT, f"{where}: {self.name} needs columns {missing}")
        wrong = [
            f"{f.name} is {schema.field(f.name).type}, expected {f.type}"
            for f in self.schema
            if _family(schema.field(f.name).type) != _family(f.type)
        ]
        if wrong:
            raise CropsError(ErrorKind.INVALID_INPUT, f"{where}: {'; '.join(wrong)}")
        meta = schema.metadata or {}
        if meta.get(TABLE_KEY, self.name.encode()) == self.name.encode() and VERSION_KEY in meta:
            version = int(meta[VERSION_KEY])
            if version > self.version:
                raise CropsError(
                    ErrorKind.INCOMPATIBLE,
                    f"{where}: {self.name} schema version {version} is newer than this code's {self.version}",
                )

    def check_file(self, path: object) -> None:
        """``check`` on a Parquet file's schema (reads the footer only)."""
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(str(path))
        except (OSError, pa.ArrowInvalid) as exc:
            raise CropsError(ErrorKind.INVALID_INPUT, f"{path}: not a readable Parquet file ({exc})") from exc
        self.check(schema, where=str(path))

    def conform(self, table: pa.Table) -> pa.Table:
        """This contract's columns of ``table`` cast to its exact types (extra columns dropped)."""
        self.check(table.schema)
        return table.select(list(self.columns)).cast(self.schema)


SEARCH_LOG: Final = TableContract(
    name="search_log",
    version=1,
    file="search_log.parquet",
    description="One row per (search request, candidate video) the legacy stack handled: how far it got "
    "(stage), where it was shown (position) and whether it was clicked and for how long.",
    schema=pa.schema(
        [
            ("request_id", pa.string()),
            ("user_id", pa.string()),
            ("ts", pa.int64()),  # milliseconds
            ("query", pa.string()),
            ("video_id", pa.string()),
            ("stage", pa.string()),  # one of SEARCH_STAGES
            ("position", pa.int32()),  # rank among the request's candidates at its stage
            ("clicked", pa.bool_()),
            ("play_ms", pa.int64()),
        ]
    ),
)

REC_LOG: Final = TableContract(
    name="rec_log",
    version=1,
    file="rec_log.parquet",
    description="One row per recommender-feed interaction: who watched what, when, and how.",
    schema=pa.schema(
        [
            ("user_id", pa.string()),
            ("ts", pa.int64()),  # milliseconds
            ("video_id", pa.string()),
            ("action", pa.string()),  # e.g. view, like, share, comment, skip
            ("play_ms", pa.int64()),
        ]
    ),
)

EXPOSURE: Final = TableContract(
    name="exposure",
    version=1,
    file="exposures.jsonl",
    description="One record per request the service answered (JSONL or a Redis stream): the candidates "
    "it returned, to which arm and bundle. Joined with feedback it becomes search_log rows.",
    schema=pa.schema(
        [
            ("request_id", pa.string()),
            ("unit", pa.string()),  # the A/B randomisation unit
            ("user_id", pa.string()),
            ("ts", pa.int64()),  # milliseconds
            ("query", pa.string()),
            ("normalized_query", pa.string()),
            ("arm", pa.string()),
            ("experiments", pa.list_(pa.list_(pa.string()))),  # (experiment, arm) per layer the unit is in
            ("bundle_id", pa.string()),
            ("content_id", pa.string()),  # checksums of the query tower, index and id map the answer came from
            ("video_ids", pa.list_(pa.string())),
            ("scores", pa.list_(pa.float32())),
        ]
    ),
)



class ExposureRecord(TypedDict):
    """One exposure record as the service writes it (JSON); its keys and types are ``EXPOSURE``'s
    columns, so the writer is checked by mypy and ``EXPOSURE.schema`` by a test that compares them."""

    request_id: str
    unit: str
    user_id: str | None
    ts: int
    query: str
    normalized_query: str
    arm: str
    experiments: list[list[str]]
    bundle_id: str
    content_id: str
    video_ids: list[str]
    scores: list[float]


FEEDBACK: Final = TableContract(
    name="feedback",
    version=FEEDBACK_SCHEMA_VERSION,
    file="feedback.parquet",
    description="One event per exposed video: clicked or not, play time (POST /feedback; core.feedback).",
    schema=FEEDBACK_SCHEMA,
)

VIDEOS: Final = TableContract(
    name="videos",
    version=1,
    file="videos.parquet",
    description="The catalog: one row per video. A video's text is its title plus, when present, its "
    "caption and tags (core.corpus); other columns (category, upload_ts, duration_ms) are kept.",
    schema=pa.schema([("video_id", pa.string()), ("title", pa.string())]),
)

#: Every table contract by name.
TABLES: Final[dict[str, TableContract]] = {t.name: t for t in (SEARCH_LOG, REC_LOG, EXPOSURE, FEEDBACK, VIDEOS)}
