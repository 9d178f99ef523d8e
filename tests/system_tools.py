"""The Debian tools the ops and monitoring tests run for real: a missing one fails the test, never skips it.

A skipped Prometheus test reads as green on a newcomer's machine while checking nothing, so the failure says
exactly how to install what is missing (`make install` runs the same script).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

INSTALL = "bash ops/system-deps.sh  (or: sudo apt-get install prometheus docker-compose kubernetes-client)"


def require_tool(name: str) -> str:
    """The path of ``name`` on PATH or beside this interpreter, or a test failure naming the install command."""
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail(f"{name} is not installed; run: {INSTALL}")
    return path
