"""``crops export``: checkpoint (or the pretrained model) → a bundle with ONNX towers + tokenizer."""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
from model_export.onnx_export import DEFAULT_OPSET, PROBE_QUERIES, check_parity, export_tower, parity_error
from model_export.towers import load_adapters, resolve_checkpoint
from model_export.variants import DEFAULT_MAX_RECALL_LOSS, build_variants

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-4


def export_bundle(
    out: Path | str,
    checkpoint: Path | str | None = None,
    *,
    max_query_tokens: int = 64,
    max_doc_tokens: int = 256,
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
    """
    if max_query_tokens < 2 or max_doc_tokens < 2:
        raise CropsError(ErrorKind.INVALID_INPUT, "max token counts must be >= 2")
    if tolerance <= 0:
        raise CropsError(ErrorKind.INVALID_INPUT, f"tolerance must be > 0, got {tolerance}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise CropsError(
                ErrorKind.INVALID_INPUT, f"{out} exists and is not empty; pass --force to replace it"
            )
        if not (out / MANIFEST_NAME).is_file():
            raise CropsError(ErrorKind.INVALID_INPUT, f"{out} is not a bundle; refusing to delete it")
        shutil.rmtree(out)
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

    # Build in a sibling temp folder, then rename: a crash never leaves a half-written bundle.
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir(parents=True)
    try:
        manifest = BundleManifest(bundle_id=f"{out.name}-{uuid.uuid4().hex[:8]}", git_sha=git_sha())
        shutil.copyfile(query_dir / "tokenizer.json", tmp / "tokenizer.json")
        log.info("exporting query tower from %s", query_dir)
        export_tower(query_dir, tmp / "query_encoder.onnx", opset=opset, adapter=q_adapter)
        max_len = max(max_query_tokens, max_doc_tokens)
        err = parity_error(
            query_dir, tmp / "query_encoder.onnx", tmp / "tokenizer.json", max_len, adapter=q_adapter
        )
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
            build_variants(tmp, variants, max_recall_loss=max_recall_loss, eval_corpus=eval_corpus,
                           manifest=manifest)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
