"""The reference pages are generated from the code and kept in step with it."""

from __future__ import annotations

import typer.main

from core.logs import TABLES
from crops import docgen
from crops.cli import app


def test_reference_pages_match_the_code() -> None:
    assert docgen.main(["--check"]) == 0, "run: python -m crops.docgen"


def test_every_command_and_contract_is_documented() -> None:
    cli = docgen.render_cli()
    root = typer.main.get_command(app)
    for name, cmd in root.commands.items():  # type: ignore[attr-defined]
        if not getattr(cmd, "hidden", False):
            assert f"`crops {name}" in cli, name
    artifacts = docgen.render_artifacts()
    for name, table in TABLES.items():
        assert f"### `{name}` — version {table.version}" in artifacts
        for column in table.columns:
            assert f"| `{column}` |" in artifacts
