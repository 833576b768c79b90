"""Kept for imports inside the notifiers and enrichers: the implementation is streams.secrets."""

from streams.secrets import Secret, redact, resolve_secret

__all__ = ["Secret", "redact", "resolve_secret"]
