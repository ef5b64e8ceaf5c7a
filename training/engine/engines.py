"""Runners of the perspective SQL: embedded DuckDB (default) and Spark SQL (PySpark).

Both read Parquet tables registered by name and write each result as Parquet, atomically (temp
path + rename), so a finished step is either fully there or absent. DuckDB writes one file; Spark
writes a folder of part files (what it does at scale); ``pyarrow.parquet.read_table`` reads both.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Protocol

import pyarrow.parquet as pq

from core.atomic import atomic_path
from core.errors import CropsError, ErrorKind


class SqlEngine(Protocol):
    name: str

    def register(self, table: str, path: Path) -> None: ...

    def write(self, sql: str, out: Path) -> int: ...

    def close(self) -> None: ...


def parquet_rows(path: Path) -> int:
    """Row count from Parquet footers (a file, or a folder of part files)."""
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    return sum(int(pq.ParquetFile(str(f)).metadata.num_rows) for f in files)


class DuckDBEngine:
    """In-process DuckDB over Parquet; ``threads`` caps its pool (the machine is shared)."""

    name = "duckdb"

    def __init__(self, threads: int = 2, memory_limit: str = "4GB") -> None:
        import duckdb

        self._con: Any = duckdb.connect(":memory:")
        self._con.execute(f"SET threads = {int(threads)}")
        self._con.execute(f"SET memory_limit = '{memory_limit}'")
        self._con.execute("SET preserve_insertion_order = false")

    def register(self, table: str, path: Path) -> None:
        src = str(path / "*.parquet") if path.is_dir() else str(path)
        src = src.replace("'", "''")
        self._con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM read_parquet('{src}')")

    def write(self, sql: str, out: Path) -> int:
        with atomic_path(out) as tmp:
            dest = str(tmp).replace("'", "''")
            self._con.execute(f"COPY ({sql}) TO '{dest}' (FORMAT PARQUET)")
        return parquet_rows(out)

    def close(self) -> None:
        self._con.close()


class SparkEngine:
    """Spark SQL on a local (or given) SparkSession; the same SQL text as DuckDB."""

    name = "spark"

    def __init__(self, master: str | None = None, spark: Any = None) -> None:
        self._own = spark is None
        if spark is None:
            spark = get_local_spark(master or os.environ.get("CROPS_SPARK_MASTER", "local[2]"))
        self._spark = spark

    def register(self, table: str, path: Path) -> None:
        self._spark.read.parquet(str(path)).createOrReplaceTempView(table)

    def write(self, sql: str, out: Path) -> int:
        with atomic_path(out) as tmp:
            self._spark.sql(sql).write.mode("overwrite").parquet(str(tmp))
            for junk in list(tmp.glob("_SUCCESS")) + list(tmp.glob(".*.crc")):
                junk.unlink()
        return parquet_rows(out)

    def close(self) -> None:
        if self._own:
            self._spark.stop()


def get_local_spark(master: str = "local[2]", *, small: bool = False) -> Any:
    """A local SparkSession (no UI, UTC). ``small`` tunes it for tiny inputs (tests): one shuffle
    partition, no whole-stage codegen, C1-only JIT — compile time dominates there, not data."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise CropsError(ErrorKind.NOT_FOUND, "the spark engine needs pyspark: pip install -e .[spark]") from exc
    if not shutil.which("java") and not os.environ.get("JAVA_HOME"):
        raise CropsError(ErrorKind.NOT_FOUND, "the spark engine needs Java 17 (java on PATH or JAVA_HOME)")
    builder = (
        SparkSession.builder.master(master)
        .appName("crops-mine")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "1" if small else "8")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", os.environ.get("CROPS_SPARK_DRIVER_MEMORY", "2g"))
        .config("spark.sql.parquet.compression.codec", "snappy")
    )
    if small:
        builder = (
            builder.config("spark.sql.codegen.wholeStage", "false")
            .config("spark.sql.adaptive.enabled", "false")
            .config("spark.driver.extraJavaOptions", "-XX:+UseSerialGC -XX:TieredStopAtLevel=1")
        )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def make_engine(name: str) -> SqlEngine:
    if name == "duckdb":
        return DuckDBEngine()
    if name == "spark":
        return SparkEngine()
    raise CropsError(ErrorKind.INVALID_INPUT, f"unknown engine {name!r} (choose duckdb or spark)")
