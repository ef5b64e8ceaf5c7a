"""``crops export``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        out: Annotated[Path, typer.Option("--out", help="bundle folder to create")],
        checkpoint: Annotated[
            Path | None, typer.Option("--checkpoint", help="trained checkpoint folder (default: pretrained MiniLM)")
        ] = None,
        max_query_tokens: Annotated[int, typer.Option(min=2, max=512)] = 64,
        max_doc_tokens: Annotated[int, typer.Option(min=2, max=512)] = 256,
        tolerance: Annotated[float, typer.Option(help="parity gate: max abs error vs torch")] = 1e-4,
        force: Annotated[bool, typer.Option(help="replace an existing bundle")] = False,
    ) -> None:
        """Export the query tower (and doc tower if separate) to ONNX with a parity gate vs torch."""
        from model_export.export import export_bundle

        m = export_bundle(
            out, checkpoint, max_query_tokens=max_query_tokens, max_doc_tokens=max_doc_tokens,
            tolerance=tolerance, force=force,
        )
        assert m.model is not None
        typer.echo(f"bundle {m.bundle_id} at {out}: model {m.model.model_id}, "
                   f"parity max abs err {m.model.parity_max_abs_err:.2e}")
