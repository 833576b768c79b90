"""Where the deployment-checking tools are (`deploy/tools/install.sh`, run by `make test`).

Each tool is found through its variable (FC_HELM, FC_KUBECONFORM, FC_K8S_SCHEMAS, FC_CRD_SCHEMAS,
FC_PROMTOOL, as install.sh prints them), else in the install.sh cache, else on PATH. A missing
tool skips the test with the command that installs it; in CI (`CI` set) it fails the test, so a
tool that stopped installing cannot turn the checks into silent skips.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

__all__ = ["REPO", "require_path", "require_tool"]

REPO = Path(__file__).resolve().parents[2]
_CACHE_HOME = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
_CACHE = _CACHE_HOME / "falco-correlator" / "tools"
_CACHED = {
    "helm": "helm-v3.22.0/helm",
    "kubeconform": "kubeconform-v0.7.0/kubeconform",
    "k8s-schemas": "k8s-schemas-1.37.0-2",
    "crd-schemas": "crd-schemas-prometheus-operator-v0.85.0",
}


def _missing(what: str) -> None:
    message = f"{what} not found: run `deploy/tools/install.sh` (part of `make test`)"
    if os.environ.get("CI", "").lower() not in {"", "0", "false"}:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_tool(name: str) -> str:
    """The executable `name` (helm, kubeconform, promtool)."""
    configured = os.environ.get(f"FC_{name.upper()}")
    candidates = [configured] if configured else []
    if name in _CACHED:
        candidates.append(str(_CACHE / _CACHED[name]))
    candidates.append(shutil.which(name) or "")
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and Path(candidate).is_file():
            return candidate
    _missing(name)
    raise AssertionError("unreachable")


def require_path(name: str) -> Path:
    """A directory install.sh provides: `k8s-schemas` or `crd-schemas`."""
    variable = "FC_" + name.upper().replace("-", "_")
    configured = os.environ.get(variable)
    path = Path(configured) if configured else _CACHE / _CACHED[name]
    if not (path / ".complete").is_file():
        _missing(f"{name} ({path})")
    return path
