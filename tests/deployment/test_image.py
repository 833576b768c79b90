"""deploy/Dockerfile and .dockerignore: multi-stage, non-root, base pinned by digest, and a
build context that holds what the COPY lines need and nothing else. (`make test` also runs the
build stage's deploy/image/install.sh and the shipped rules from that install.)"""

from __future__ import annotations

import fnmatch
import re

from .tools import REPO

DOCKERFILE = (REPO / "deploy" / "Dockerfile").read_text(encoding="utf-8")
DOCKERIGNORE = (REPO / ".dockerignore").read_text(encoding="utf-8")


def instructions(name: str) -> list[str]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [
        line.split(None, 1)[1] for line in text.splitlines() if line.split(None, 1)[:1] == [name]
    ]


def in_context(path: str) -> bool:
    """Whether .dockerignore (last matching pattern wins, `!` re-includes) keeps `path`."""
    kept = True
    for raw in DOCKERIGNORE.splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/").removeprefix("**/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes) or fnmatch.fnmatch(
            parts[-1], pattern
        ):
            kept = negate
    return kept


def test_multi_stage_on_one_base_pinned_by_digest() -> None:
    [base] = [a for a in instructions("ARG") if a.startswith("PYTHON_BASE=")]
    assert re.fullmatch(r"PYTHON_BASE=python:3\.11-slim-\w+@sha256:[0-9a-f]{64}", base)
    froms = instructions("FROM")
    assert len(froms) == 2
    assert all(f.split()[0] == "${PYTHON_BASE}" for f in froms)
    assert "COPY --from=build /opt/falco-correlator/venv /opt/falco-correlator/venv" in DOCKERFILE


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    [user] = instructions("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert int(uid) != 0
    assert gid.isdigit()
    assert int(gid) != 0
    assert DOCKERFILE.index("USER") > DOCKERFILE.rindex("RUN ")
    assert instructions("ENTRYPOINT") == ['["falco-correlator"]']


def test_the_build_stage_runs_the_install_script_make_test_runs() -> None:
    assert "COPY deploy/image/install.sh /usr/local/bin/install-falco-correlator" in DOCKERFILE
    assert "RUN install-falco-correlator /src /opt/falco-correlator/venv" in DOCKERFILE
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "deploy/image/install.sh" in makefile


def test_the_build_context_has_what_the_copies_need_and_no_secrets_or_caches() -> None:
    for copy in instructions("COPY"):
        if copy.startswith("--from"):
            continue
        for source in copy.split()[:-1]:
            assert in_context(source), source
    for path in ("streams/cli/main.py", "rules/shell-egress.yaml", "pyproject.toml"):
        assert in_context(path), path
    for path in (
        ".venv/bin/python",
        ".git/config",
        "tests/conftest.py",
        "docs/rules.md",
        "rules/tests/shell-egress.test.yaml",
        "streams/__pycache__/x.pyc",
        "deploy/worker.example.yaml",
        "worker.yaml",
    ):
        assert not in_context(path), path
