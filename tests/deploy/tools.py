"""Find a command-line tool the tests need. Tests never install anything: CI does (``.ci/run``).

A missing tool fails the test with the install command (never a skip): CI must run these checks.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def which(name: str) -> str | None:
    return shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


def ensure_tool(name: str, apt_package: str | None = None, pip_package: str | None = None) -> str:
    """Path of ``name``; fails the test with how to install it when it is missing."""
    found = which(name)
    if found:
        return found
    how = " or ".join(
        x
        for x in (
            f"apt-get install -y {apt_package}" if apt_package else "",
            f"pip install {pip_package} (in the dev extra)" if pip_package else "",
        )
        if x
    )
    pytest.fail(f"{name} is not installed (.ci/run installs it): {how}", pytrace=False)
