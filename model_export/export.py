"""``crops export``: checkpoint (or the pretrained model) → a bundle with ONNX towers + tokenizer."""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.atomic import atomic_path
from core.checkpoint import META_MAX_DOC_TOKENS, META_MAX_QUERY_TOKENS
from core.errors import CropsError, ErrorKind
from core.manifest import (
    MANIFEST_NAME,
    BundleManifest,
    ModelSection,
    compute_model_id,
    git_sha,
    register_file,
    verify_bundle,
    write_manifest,
)
from core.tokenizer import DEFAULT_MODEL_NAME, default_model_dir
from model_export.onnx_export import PROBE_QUERIES, check_parity, export_tower, parity_error
from model_export.variants import DEFAULT_MAX_RECALL_LOSS, build_variants
from towers.checkpoint import load_adapters, resolve_checkpoint
from towers.onnx import DEFAULT_OPSET
from towers.st_config import read_st_config

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-4
# Token limits of the pretrained model's bundle, and of a checkpoint that does not record its own.
DEFAULT_MAX_QUERY_TOKENS = 64
DEFAULT_MAX_DOC_TOKENS = 256


def token_limits(
    meta: dict[str, Any], max_query_tokens: int | None, max_doc_tokens: int | None, *, allow_mismatch: bool
) -> tuple[int, int, list[str]]:
    """(query limit, doc limit, mismatches) for a bundle of a checkpoint that trained with ``meta``.

    A limit not given is the trained one. A limit given that differs from the trained one is a
    train/serve skew (queries truncated differently from what the model learnt): refused with
    ``INCOMPATIBLE`` unless ``allow_mismatch``, then logged and recorded in the manifest.
    """
    trained: dict[str, int | None] = {
        k: (int(v) if v is not None else None)
        for k, v in (("query", meta.get(META_MAX_QUERY_TOKENS)), ("doc", meta.get(META_MAX_DOC_TOKENS)))
    }
    asked = {"query": max_query_tokens, "doc": max_doc_tokens}
    default = {"query": DEFAULT_MAX_QUERY_TOKENS, "doc": DEFAULT_MAX_DOC_TOKENS}
    chosen: dict[str, int] = {}
    for k, value in asked.items():
        chosen[k] = value if value is not None else (trained[k] or default[k])
    mismatches = [
        f"{k} tokens {chosen[k]} (trained with {trained[k]})"
        for k in chosen
        if trained[k] is not None and chosen[k] != trained[k]
    ]
    if mismatches and not allow_mismatch:
        raise CropsError(
            ErrorKind.INCOMPATIBLE,
            f"export with {', '.join(mismatches)} would serve other token limits than training; "
            "omit the limits to use the trained ones, or pass --allow-token-mismatch",
        )
    for m in mismatches:
        log.warning("exporting with %s: a train/serve skew, recorded in the manifest", m)
    return chosen["query"], chosen["doc"], mismatches


def export_bundle(
    out: Path | str,
    checkpoint: Path | str | None = None,
    *,
    max_query_tokens: int | None = None,
    max_doc_tokens: int | None = None,
    allow_token_mismatch: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    variants: Sequence[str] = (),
    max_recall_loss: float = DEFAULT_MAX_RECALL_LOSS,
    eval_corpus: Path | str | None = None,
) -> BundleManifest:
    """Export the query tower (and the doc tower when separate) into a new bundle folder.

    Fails with ``PARITY_FAILED`` when ONNX Runtime and torch disagree above ``tolerance`` on the
    probe queries; the measured error goes into the manifest either way it passes.
    ``variants`` ("int8", "fp16") are built and gated on Recall@100 loss (see ``variants.py``).
    Token limits default to the ones the checkpoint trained with (``token_limits``).
    """
    if any(t is not None and t < 2 for t in (max_query_tokens, max_doc_tokens)):
        raise CropsError(ErrorKind.INVALID_INPUT, "max token counts must be >= 2")
    if tolerance <= 0:
        raise CropsError(ErrorKind.INVALID_INPUT, f"tolerance must be > 0, got {tolerance}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise CropsError(ErrorKind.INVALID_INPUT, f"{out} exists and is not empty; pass --force to replace it")
        if not (out / MANIFEST_NAME).is_file():
            raise CropsError(ErrorKind.INVALID_INPUT, f"{out} is not a bundle; refusing to delete it")
    adapters = None
    if checkpoint is None:
        meta: dict[str, Any] = {}
        query_dir, doc_dir = default_model_dir(), None
        base = DEFAULT_MODEL_NAME
    else:
        query_dir, doc_dir, meta = resolve_checkpoint(checkpoint)
        adapters = load_adapters(checkpoint)
        base = str(meta.get("base_model", DEFAULT_MODEL_NAME))
    q_adapter = adapters[0] if adapters else None
    d_adapter = adapters[1] if adapters else None
    max_query_tokens, max_doc_tokens, mismatches = token_limits(
        meta, max_query_tokens, max_doc_tokens, allow_mismatch=allow_token_mismatch
    )
    st = read_st_config(query_dir)

    # Build in a sibling temp folder, then rename: a crash never leaves a half-written bundle.
    with atomic_path(out) as tmp:
        tmp.mkdir()
        manifest = BundleManifest(bundle_id=f"{out.name}-{uuid.uuid4().hex[:8]}", git_sha=git_sha())
        shutil.copyfile(query_dir / "tokenizer.json", tmp / "tokenizer.json")
        log.info("exporting query tower from %s", query_dir)
        export_tower(query_dir, tmp / "query_encoder.onnx", opset=opset, adapter=q_adapter)
        max_len = max(max_query_tokens, max_doc_tokens)
        err = parity_error(query_dir, tmp / "query_encoder.onnx", tmp / "tokenizer.json", max_len, adapter=q_adapter)
        check_parity(err, tolerance, "query tower")
        for name in ("tokenizer.json", "query_encoder.onnx"):
            register_file(tmp, manifest, name)
        doc_onnx = None
        if doc_dir is not None:
            log.info("exporting doc tower from %s", doc_dir)
            export_tower(doc_dir, tmp / "doc_encoder.onnx", opset=opset, adapter=d_adapter)
            doc_err = parity_error(
                doc_dir, tmp / "doc_encoder.onnx", tmp / "tokenizer.json", max_len, adapter=d_adapter
            )
            check_parity(doc_err, tolerance, "doc tower")
            err = max(err, doc_err)
            register_file(tmp, manifest, "doc_encoder.onnx")
            doc_onnx = "doc_encoder.onnx"
        shas = [manifest.files["query_encoder.onnx"].sha256]
        if doc_onnx:
            shas.append(manifest.files[doc_onnx].sha256)
        from core.onnx_encoder import OnnxEncoder

        dim = OnnxEncoder(tmp / "query_encoder.onnx", tmp / "tokenizer.json", 8, use_gpu=False).dim
        manifest.model = ModelSection(
            model_id=compute_model_id(*shas),
            base_model=base,
            embedding_dim=dim,
            max_query_tokens=max_query_tokens,
            max_doc_tokens=max_doc_tokens,
            trained_max_query_tokens=meta.get(META_MAX_QUERY_TOKENS),
            trained_max_doc_tokens=meta.get(META_MAX_DOC_TOKENS),
            token_limit_mismatch=mismatches,
            pooling=st.pooling_name,
            dense_layers=len(st.dense),
            onnx_opset=opset,
            doc_onnx=doc_onnx,
            shared_towers=doc_onnx is None,
            parity_max_abs_err=err,
            parity_tolerance=tolerance,
            parity_probes=len(PROBE_QUERIES),
            checkpoint=str(checkpoint) if checkpoint else None,
        )
        manifest.training = meta or None
        write_manifest(tmp, manifest)
        if variants:
            build_variants(tmp, variants, max_recall_loss=max_recall_loss, eval_corpus=eval_corpus, manifest=manifest)

    log.info("bundle %s written to %s (parity %.2e)", manifest.bundle_id, out, err)
    return manifest


def verify_parity(
    bundle_dir: Path | str, checkpoint: Path | str | None = None, *, tolerance: float = DEFAULT_TOLERANCE
) -> float:
    """Re-run the parity gate of an existing bundle against a checkpoint; returns the max abs error.

    Fails with ``PARITY_FAILED`` (and the numbers) when the bundle's ONNX towers do not reproduce
    the checkpoint's torch towers, e.g. a bundle exported from other or corrupted weights.
    """
    bundle_dir = Path(bundle_dir)
    manifest = verify_bundle(bundle_dir)
    model = manifest.model
    assert model is not None
    adapters = None
    if checkpoint is None:
        query_dir, doc_dir = default_model_dir(), None
    else:
        query_dir, doc_dir, _ = resolve_checkpoint(checkpoint)
        adapters = load_adapters(checkpoint)
    q_adapter = adapters[0] if adapters else None
    d_adapter = adapters[1] if adapters else None
    if (doc_dir is None) != (model.doc_onnx is None):
        raise CropsError(ErrorKind.INCOMPATIBLE, f"{checkpoint} and {bundle_dir} disagree on separate towers")
    max_len = max(model.max_query_tokens, model.max_doc_tokens)
    tok = bundle_dir / model.tokenizer
    err = parity_error(query_dir, bundle_dir / model.query_onnx, tok, max_len, adapter=q_adapter)
    check_parity(err, tolerance, "query tower")
    if doc_dir is not None and model.doc_onnx:
        doc_err = parity_error(doc_dir, bundle_dir / model.doc_onnx, tok, max_len, adapter=d_adapter)
        check_parity(doc_err, tolerance, "doc tower")
        err = max(err, doc_err)
    return err
