"""``crops``: one CLI whose sub-commands call the stages.

Each command imports its stage lazily, so ``crops serve`` works in an image without torch. Errors
of the project's own kind print one line (``error: ...``) and exit 2, never a traceback.
"""

from __future__ import annotations

import logging
import sys

import typer
from pydantic import ValidationError

from core.errors import CropsError
from crops import (
    cmd_bench,
    cmd_eval,
    cmd_experiment,
    cmd_export,
    cmd_exposures,
    cmd_index,
    cmd_mine,
    cmd_online,
    cmd_serve,
    cmd_train,
    cmd_world,
)

app = typer.Typer(
    name="crops",
    help="CroPS retrieval: world simulator, data engine, training, export, index, serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Every command group, registered plainly so import-linter sees what the CLI depends on. Each
# command imports its stage inside the command, so `crops serve` runs in an image without torch.
for group in (
    cmd_export,
    cmd_index,
    cmd_serve,
    cmd_exposures,
    cmd_eval,
    cmd_world,
    cmd_mine,
    cmd_train,
    cmd_experiment,
    cmd_bench,
    cmd_online,
):
    group.register(app)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app()
    except CropsError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        sys.exit(2)
    except ValidationError as exc:  # e.g. a bad CROPS_* variable: pydantic-settings validates the environment
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or exc.title
        if exc.title.endswith("Settings"):
            where = f"CROPS_{where.upper()}"
        typer.echo(f"error: invalid {where}={first.get('input')!r}: {first['msg']}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
