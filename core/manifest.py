"""The bundle manifest: what a bundle folder holds, and the checks a reader makes before trusting it.

A bundle is a folder with ``manifest.json`` plus the files it names, each with its sha256. The model
section (ONNX towers, tokenizer) and the index section (faiss index, id map) each record the
``model_id``; a reader refuses a bundle whose index was built by another model.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.atomic import atomic_write_json, sha256_file
from core.errors import CropsError, ErrorKind
from core.normalize import NORMALIZATION_VERSION

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: str
    bytes: int


class EncoderVariant(BaseModel):
    """A quantised or reduced-precision copy of the query tower (int8 on CPU, fp16 on GPU)."""

    model_config = ConfigDict(extra="allow")
    file: str
    precision: Literal["fp32", "int8", "fp16"]
    mean_cosine_to_fp32: float | None = None
    recall_at_100_delta: float | None = None
    min_cosine_to_fp32: float | None = None
    recall_at_100: float | None = None  # overlap with fp32's top-100 (or qrels recall) on the held-out set
    max_recall_loss: float | None = None  # the gate it passed
    eval_queries: int | None = None
    eval_docs: int | None = None
    providers: list[str] | None = None  # execution providers it was evaluated with


class ModelSection(BaseModel):
    model_config = ConfigDict(extra="allow")
    model_id: str
    base_model: str
    embedding_dim: int
    metric: Literal["ip"] = "ip"
    normalized: bool = True
    pooling: str = "mean"  # sentence-transformers pooling mode(s) of the towers: cls, mean, max, "cls+mean"...
    dense_layers: int = 0  # Dense modules after pooling (folded into the ONNX graph)
    max_query_tokens: int
    max_doc_tokens: int
    trained_max_query_tokens: int | None = None  # the limits the checkpoint trained with (None: pretrained)
    trained_max_doc_tokens: int | None = None
    token_limit_mismatch: list[str] = Field(default_factory=list)  # non-empty only when export was told to allow it
    normalization_version: int = NORMALIZATION_VERSION
    onnx_opset: int
    tokenizer: str = "tokenizer.json"
    query_onnx: str = "query_encoder.onnx"
    doc_onnx: str | None = None
    shared_towers: bool = True
    parity_max_abs_err: float
    parity_tolerance: float
    parity_probes: int
    variants: dict[str, EncoderVariant] = Field(default_factory=dict)
    variants_refused: dict[str, dict[str, Any]] = Field(default_factory=dict)  # name -> numbers + reason
    variants_eval: dict[str, Any] | None = None  # the held-out set the variants were gated on
    checkpoint: str | None = None


class IndexSection(BaseModel):
    model_config = ConfigDict(extra="allow")
    model_id: str
    factory: str
    ntotal: int
    dim: int
    metric: Literal["ip"] = "ip"
    nprobe: int | None = None
    k_factor: float | None = None
    ef_search: int | None = None  # HNSW indexes: the graph search's candidate list size
    recall_at_100: float | None = None
    recall_queries: int = 0
    index_file: str = "index.faiss"
    id_map_file: str = "id_map.json"
    corpus: str | None = None
    build_seconds: float | None = None
    # Written by the production index builder (all optional; older bundles lack them).
    target_recall: float | None = None
    target_met: bool | None = None
    built_on: str | None = None  # "gpu" or "cpu": where the IVF part was trained and filled
    chosen: dict[str, float] | None = None  # latency of the chosen point: b1_ms_p50, b1_ms_p99, b32_ms
    curve_json: str | None = None  # latency/recall curve over the tuning grid (checksummed files)
    curve_png: str | None = None
    recall_queries_file: str | None = None  # held-out query vectors the recall was measured on
    recall_at_100_report: float | None = None  # on a disjoint report query set, when given
    report_queries: int | None = None
    recall_by_level: dict[str, dict[str, float]] | None = None
    recall_stale: bool | None = None  # True after an update the builder could not re-measure
    index_bytes: int | None = None
    memory_budget_bytes: int | None = None
    timings: dict[str, float] | None = None
    updates: list[dict[str, Any]] = Field(default_factory=list)


class BundleManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    bundle_id: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    git_sha: str | None = None
    files: dict[str, FileEntry] = Field(default_factory=dict)
    model: ModelSection | None = None
    index: IndexSection | None = None
    training: dict[str, Any] | None = None


def git_sha() -> str | None:
    """The commit of the code that wrote a bundle, when it runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def compute_model_id(*file_shas: str) -> str:
    """A model's identity: the checksums of its tower files, hashed together."""
    return hashlib.sha256("|".join(file_shas).encode()).hexdigest()[:16]


def file_entry(path: Path) -> FileEntry:
    return FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size)


def read_manifest(bundle_dir: Path | str) -> BundleManifest:
    """Parse ``manifest.json`` without verifying files (cheap; for listing and /info)."""
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise CropsError(ErrorKind.NOT_FOUND, f"no {MANIFEST_NAME} in {bundle_dir}: not a bundle")
    try:
        return BundleManifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        first = str(exc).splitlines()[0]
        raise CropsError(ErrorKind.BUNDLE_INVALID, f"{path}: invalid manifest ({first})") from exc


def write_manifest(bundle_dir: Path | str, manifest: BundleManifest) -> None:
    """Refresh the checksum of every named file, then write the manifest atomically."""
    bundle_dir = Path(bundle_dir)
    for name in list(manifest.files):
        manifest.files[name] = file_entry(bundle_dir / name)
    atomic_write_json(bundle_dir / MANIFEST_NAME, manifest.model_dump(mode="json"))


def register_file(bundle_dir: Path | str, manifest: BundleManifest, name: str) -> None:
    """Add a file (relative to the bundle) to the manifest's checksummed set."""
    path = Path(bundle_dir) / name
    if not path.is_file():
        raise CropsError(ErrorKind.NOT_FOUND, f"{path} does not exist")
    manifest.files[name] = file_entry(path)


def verify_bundle(
    bundle_dir: Path | str,
    *,
    require_model: bool = True,
    require_index: bool = False,
    check_checksums: bool = True,
) -> BundleManifest:
    """Load a manifest and check everything a server must know before trusting the bundle.

    Checks: every named file exists with its recorded sha256; the text-normalisation version equals
    the running code's; the index was built by this bundle's model (same ``model_id``).
    """
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    if manifest.schema_version != SCHEMA_VERSION:
        raise CropsError(
            ErrorKind.INCOMPATIBLE,
            f"{bundle_dir}: schema_version {manifest.schema_version}, this code reads {SCHEMA_VERSION}",
        )
    if require_model and manifest.model is None:
        raise CropsError(ErrorKind.BUNDLE_INVALID, f"{bundle_dir}: bundle has no model section")
    if require_index and manifest.index is None:
        raise CropsError(
            ErrorKind.BUNDLE_INVALID,
            f"{bundle_dir}: bundle has no index; run `crops index build --bundle {bundle_dir}`",
        )
    if manifest.model is not None:
        if manifest.model.normalization_version != NORMALIZATION_VERSION:
            raise CropsError(
                ErrorKind.INCOMPATIBLE,
                f"{bundle_dir}: text normalisation v{manifest.model.normalization_version}, "
                f"this code is v{NORMALIZATION_VERSION}; re-export the bundle",
            )
        needed = [manifest.model.query_onnx, manifest.model.tokenizer]
        if manifest.model.doc_onnx:
            needed.append(manifest.model.doc_onnx)
        for name in needed:
            if name not in manifest.files:
                raise CropsError(ErrorKind.BUNDLE_INVALID, f"{bundle_dir}: {name} is not checksummed")
    if manifest.index is not None:
        if manifest.model is None or manifest.index.model_id != manifest.model.model_id:
            have = manifest.model.model_id if manifest.model else None
            raise CropsError(
                ErrorKind.INCOMPATIBLE,
                f"{bundle_dir}: index was built for model {manifest.index.model_id}, "
                f"bundle model is {have}; rebuild the index",
            )
        for name in (manifest.index.index_file, manifest.index.id_map_file):
            if name not in manifest.files:
                raise CropsError(ErrorKind.BUNDLE_INVALID, f"{bundle_dir}: {name} is not checksummed")
    if check_checksums:
        for name, entry in manifest.files.items():
            path = bundle_dir / name
            if not path.is_file():
                raise CropsError(ErrorKind.BUNDLE_INVALID, f"{bundle_dir}: missing file {name}")
            if path.stat().st_size != entry.bytes or sha256_file(path) != entry.sha256:
                raise CropsError(
                    ErrorKind.CHECKSUM_MISMATCH,
                    f"{bundle_dir}: {name} does not match its sha256 in the manifest (corrupt or replaced)",
                )
    return manifest


def load_id_map(path: Path | str) -> list[str]:
    """Row → document id list of an index (``id_map.json``)."""
    try:
        ids = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CropsError(ErrorKind.BUNDLE_INVALID, f"{path}: unreadable id map ({exc})") from exc
    if not isinstance(ids, list):
        raise CropsError(ErrorKind.BUNDLE_INVALID, f"{path}: id map must be a JSON list")
    for row, x in enumerate(ids):
        if isinstance(x, bool) or not isinstance(x, str | int):
            raise CropsError(ErrorKind.BUNDLE_INVALID, f"{path}: row {row} is {type(x).__name__}, not a string id")
    return [str(x) for x in ids]
