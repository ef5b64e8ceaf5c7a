"""Find a command-line tool the tests need; install it with apt-get when missing and possible.

A missing tool fails the test with the install command (never a skip): CI must run these checks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def which(name: str) -> str | None:
    return shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


def ensure_tool(name: str, apt_package: str | None = None, pip_package: str | None = None) -> str:
    """Path of ``name``; tries ``apt-get install -y apt_package`` (as root) once when it is missing."""
    found = which(name)
    if found:
        return found
    if apt_package and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300, check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", apt_package],
            capture_output=True,
            timeout=600,
            check=False,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
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
    pytest.fail(f"{name} is not installed and could not be installed here: {how}", pytrace=False)
