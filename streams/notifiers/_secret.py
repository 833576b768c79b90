"""Secrets from the config file: `${env:NAME}` or `${file:/path}`, resolved once at load.

A `Secret` never shows its value in repr/str, so configs can be logged and printed safely.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from streams.errors import ConfigError

__all__ = ["Secret", "redact", "resolve_secret"]

_REFERENCE = re.compile(r"\$\{(env|file):([^}]+)\}")
_REDACTED = "***"


class Secret:
    """A string that only `reveal()` shows; repr and str are redacted."""

    __slots__ = ("_source", "_value")

    def __init__(self, value: str, source: str = "literal") -> None:
        self._value = value
        self._source = source

    def reveal(self) -> str:
        return self._value

    @property
    def source(self) -> str:
        """Where the value came from (`env:NAME`, `file:/path`, `literal`): safe to show."""
        return self._source

    def __repr__(self) -> str:
        return f"Secret({_REDACTED} from {self._source})"

    def __str__(self) -> str:
        return _REDACTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def resolve_secret(value: object, key: str, env: Mapping[str, str] | None = None) -> Secret:
    """A secret from a literal string, `${env:NAME}` or `${file:/path}`; ConfigError names `key`.

    References are whole values: `Bearer ${env:T}` is a literal, so a value is never partly
    secret. File contents lose one trailing newline, as `echo x > file` writes one.
    """
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a non-empty string or ${{env:NAME}} / ${{file:/path}}")
    match = _REFERENCE.fullmatch(value.strip())
    if match is None:
        return Secret(value)
    kind, ref = match.group(1), match.group(2).strip()
    if kind == "env":
        environ = os.environ if env is None else env
        if ref not in environ or not environ[ref]:
            raise ConfigError(f"{key}: environment variable {ref} is not set or empty")
        return Secret(environ[ref], f"env:{ref}")
    try:
        text = Path(ref).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read secret file {ref}: {exc.strerror}") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ConfigError(f"{key}: secret file {ref} is empty")
    return Secret(text, f"file:{ref}")


def redact(text: str, secrets: Iterable[Secret]) -> str:
    """`text` with every secret value replaced, for error messages that may echo a URL."""
    for secret in secrets:
        value = secret.reveal()
        if value:
            text = text.replace(value, _REDACTED)
    return text
