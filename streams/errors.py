"""The exception hierarchy: one root, narrow subclasses."""

from __future__ import annotations

from dataclasses import dataclass

from streams._text import printable

__all__ = [
    "ConditionSyntaxError",
    "ConfigError",
    "CorrelatorError",
    "EventError",
    "Location",
    "NotifyError",
    "RuleError",
    "RuleLoadError",
]


class CorrelatorError(Exception):
    """Root of every error raised by falco-correlator."""


@dataclass(frozen=True, slots=True)
class Location:
    """A place in a rules file; line and column are 1-based, as editors show them."""

    path: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


class RuleError(CorrelatorError):
    """One problem in a rules file, with where it is."""

    def __init__(self, location: Location, message: str) -> None:
        message = printable(message)  # names and keys from the file: one error, one line
        super().__init__(f"{location}: {message}")
        self.location = location
        self.message = message


class RuleLoadError(CorrelatorError):
    """Loading failed; carries every error found in every file, in file order."""

    def __init__(self, errors: list[RuleError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


class ConditionSyntaxError(CorrelatorError):
    """A condition that does not parse or refers to something unknown.

    `offset` is the 0-based character offset in the condition text, or -1 when the error
    is not tied to one place (e.g. a macro cycle).
    """

    def __init__(self, message: str, offset: int = -1) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


class EventError(CorrelatorError):
    """An input record that is not a usable Falco event."""


class ConfigError(CorrelatorError):
    """Invalid worker or notifier configuration; the message names the key."""


class NotifyError(CorrelatorError):
    """A notification that could not be delivered."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
