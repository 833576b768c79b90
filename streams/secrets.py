"""Secrets from configuration: `${env:NAME}`, `${file:/path}` or a literal, resolved once at load.

A `Secret` never shows its value in repr/str, so configurations can be logged and printed.
Dependency-free, so the worker's configuration and the notifiers share it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from streams.errors import ConfigError

__all__ = ["MAX_SECRET_BYTES", "Secret", "read_secret", "redact", "resolve_secret"]

_REFERENCE = re.compile(r"\$\{(env|file):([^}]+)\}")
_REDACTED = "***"
#: The largest secret file read (a token, a password, a URL).
MAX_SECRET_BYTES = 65_536


class Secret:
    """A string that only `reveal()` shows; repr, str and f-strings are redacted.

    Not a dataclass on purpose: `dataclasses.asdict` would copy the value out of it.
    """

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


def read_secret(value: str, env: Mapping[str, str] | None = None) -> Secret:
    """Resolve a literal or a whole-value reference; ValueError (never showing a value) otherwise.

    References are whole values: `Bearer ${env:T}` is a literal, so a value is never partly
    secret. File contents lose one trailing newline, as `echo x > file` and secret mounts write.
    """
    match = _REFERENCE.fullmatch(value.strip())
    if match is None:
        return Secret(value)
    kind, ref = match.group(1), match.group(2).strip()
    if kind == "env":
        environ = os.environ if env is None else env
        if not environ.get(ref):
            raise ValueError(f"secret environment variable {ref} is not set or empty")
        return Secret(environ[ref], f"env:{ref}")
    try:
        with Path(ref).open("rb") as handle:
            data = handle.read(MAX_SECRET_BYTES + 1)  # `/dev/zero` would never end
    except OSError as exc:
        raise ValueError(f"cannot read secret file {ref}: {exc.strerror}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise ValueError(f"secret file {ref} is larger than {MAX_SECRET_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # UnicodeDecodeError's own text quotes the offending byte: a byte of the secret.
        raise ValueError(f"secret file {ref} is not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ValueError(f"secret file {ref} is empty")
    return Secret(text, f"file:{ref}")


def resolve_secret(value: object, key: str, env: Mapping[str, str] | None = None) -> Secret:
    """`read_secret` for a configuration key: ConfigError names `key`."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a non-empty string or ${{env:NAME}} / ${{file:/path}}")
    try:
        return read_secret(value, env)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def redact(text: str, secrets: Iterable[Secret]) -> str:
    """`text` with every secret value replaced, for error messages that may echo a URL."""
    for secret in secrets:
        value = secret.reveal()
        if value:
            text = text.replace(value, _REDACTED)
    return text
