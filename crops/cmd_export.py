"""``crops export`` (checkpoint → bundle), ``crops export-variants`` and ``crops export-verify``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _variant_list(value: str) -> list[str]:
    from core.onnx_encoder import available_providers

    if value == "auto":  # int8 everywhere; fp16 only where it can run (CUDA)
        return ["int8"] + (["fp16"] if "CUDAExecutionProvider" in available_providers() else [])
    if value in ("", "none"):
        return []
    return [v.strip() for v in value.split(",") if v.strip()]


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        out: Annotated[Path, typer.Option("--out", help="bundle folder to create")],
        checkpoint: Annotated[
            Path | None, typer.Option("--checkpoint", help="trained checkpoint folder (default: pretrained MiniLM)")
        ] = None,
        max_query_tokens: Annotated[
            int | None, typer.Option(min=2, max=512, help="default: the checkpoint's trained limit (pretrained: 64)")
        ] = None,
        max_doc_tokens: Annotated[
            int | None, typer.Option(min=2, max=512, help="default: the checkpoint's trained limit (pretrained: 256)")
        ] = None,
        allow_token_mismatch: Annotated[
            bool, typer.Option(help="export with other token limits than training (warned, recorded)")
        ] = False,
        tolerance: Annotated[float, typer.Option(help="parity gate: max abs error vs torch")] = 1e-4,
        variants: Annotated[
            str, typer.Option(help="auto (int8, + fp16 with CUDA), none, or a list: int8,fp16")
        ] = "auto",
        max_recall_loss: Annotated[
            float, typer.Option(min=0.0, max=0.99, help="refuse a variant losing more Recall@100 than this")
        ] = 0.10,
        eval_corpus: Annotated[
            Path | None, typer.Option(help="held-out corpus for the variant gate (default: built-in set)")
        ] = None,
        force: Annotated[bool, typer.Option(help="replace an existing bundle")] = False,
    ) -> None:
        """Export the query tower (and doc tower if separate) to ONNX with a parity gate vs torch."""
        from model_export.export import export_bundle

        m = export_bundle(
            out, checkpoint, max_query_tokens=max_query_tokens, max_doc_tokens=max_doc_tokens,
            allow_token_mismatch=allow_token_mismatch,
            tolerance=tolerance, force=force, variants=_variant_list(variants),
            max_recall_loss=max_recall_loss, eval_corpus=eval_corpus,
        )
        assert m.model is not None
        typer.echo(f"bundle {m.bundle_id} at {out}: model {m.model.model_id}, pooling {m.model.pooling}, "
                   f"tokens {m.model.max_query_tokens}/{m.model.max_doc_tokens}, "
                   f"parity max abs err {m.model.parity_max_abs_err:.2e}")
        for skew in m.model.token_limit_mismatch:
            typer.echo(f"  warning: {skew}")
        for name, v in m.model.variants.items():
            typer.echo(f"  variant {name}: {v.file}, cosine to fp32 {v.mean_cosine_to_fp32}, "
                       f"recall@100 delta {v.recall_at_100_delta}")
        for name, why in m.model.variants_refused.items():
            typer.echo(f"  variant {name} not kept: {why.get('reason')}")

    @app.command("export-variants")
    def export_variants(
        bundle: Annotated[Path, typer.Option("--bundle", help="existing bundle")],
        variants: Annotated[str, typer.Option(help="auto, or a list: int8,fp16")] = "auto",
        max_recall_loss: Annotated[float, typer.Option(min=0.0, max=0.99)] = 0.10,
        eval_corpus: Annotated[Path | None, typer.Option()] = None,
    ) -> None:
        """(Re)build and gate reduced-precision query towers of an existing bundle."""
        from model_export.variants import build_variants

        for rep in build_variants(bundle, _variant_list(variants), max_recall_loss=max_recall_loss,
                                  eval_corpus=eval_corpus):
            typer.echo(rep.line())

    @app.command("export-verify")
    def export_verify(
        bundle: Annotated[Path, typer.Option("--bundle")],
        checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="default: pretrained MiniLM")] = None,
        tolerance: Annotated[float, typer.Option()] = 1e-4,
    ) -> None:
        """Re-run the parity gate: does the bundle's ONNX reproduce this checkpoint?"""
        from model_export.export import verify_parity

        err = verify_parity(bundle, checkpoint, tolerance=tolerance)
        typer.echo(f"parity ok: max abs error {err:.2e} <= {tolerance:.1e}")
