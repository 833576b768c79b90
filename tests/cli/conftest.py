"""Run the real `falco-correlator` console script in a scratch directory."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from _cli_support import Run, console_script


@pytest.fixture
def run(tmp_path: Path) -> Run:
    """`run("replay", "--rules", PATH, stdin="...")`: the finished process, cwd = tmp_path."""
    script = console_script()
    if script is None:
        pytest.fail("the falco-correlator console script is not installed (pip install -e .)")

    def run_cli(*args: str | Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [script, *(str(a) for a in args)],
            cwd=tmp_path,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return run_cli
