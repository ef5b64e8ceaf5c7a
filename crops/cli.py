"""``crops``: one CLI whose sub-commands call the stages.

Each command imports its stage lazily, so ``crops serve`` works in an image without torch. Errors
of the project's own kind print one line (``error: ...``) and exit 2, never a traceback.
"""

from __future__ import annotations

import logging
import sys

import typer

from core.errors import CropsError
from crops import cmd_eval, cmd_export, cmd_index, cmd_serve

app = typer.Typer(
    name="crops",
    help="CroPS retrieval: world simulator, data engine, training, export, index, serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
cmd_export.register(app)
cmd_index.register(app)
cmd_serve.register(app)
cmd_eval.register(app)


def _register_optional() -> None:
    """Command groups that live in later modules register themselves here (one line each)."""
    import importlib

    for name in ("cmd_world", "cmd_mine", "cmd_train", "cmd_experiment", "cmd_bench", "cmd_online"):
        try:
            mod = importlib.import_module(f"crops.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"crops.{name}":
                continue  # that command group is not part of this build
            raise
        mod.register(app)


_register_optional()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app()
    except CropsError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
