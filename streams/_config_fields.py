"""Typed reads of one configuration mapping; every error names the full key path.

Shared by the notifiers (`Fields`) and the enrichers (`Options`, whose numbers may be 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from streams.core.durations import NS_PER_UNIT, parse_duration
from streams.errors import ConfigError
from streams.secrets import Secret, resolve_secret

__all__ = ["Fields", "Options"]

_MISSING: Any = object()


class Fields:
    """A config mapping at `path` (`notifiers[1].webhook`). Every read marks its key as known;
    `finish()` rejects the keys nobody read, so typos fail loudly instead of being ignored."""

    #: `number()` accepts values >= this; None means strictly positive.
    number_minimum: float | None = None

    def __init__(self, data: object, path: str, env: Mapping[str, str] | None = None) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__}")
        for key in data:
            if not isinstance(key, str):
                raise ConfigError(f"{path}: keys must be strings, got {key!r}")
        self.data: Mapping[str, Any] = data
        self.path = path
        self.env = env
        self._read: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default: Any = _MISSING) -> Any:
        self._read.add(name)
        if name in self.data and self.data[name] is not None:
            return self.data[name]
        if default is _MISSING:
            raise ConfigError(f"{self.key(name)}: required")
        return default

    def string(self, name: str, default: Any = _MISSING) -> Any:
        value = self.raw(name, default)
        if value is default:
            return value
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{self.key(name)}: expected a non-empty string, got {value!r}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.key(name)}: expected true or false, got {value!r}")
        return value

    def integer(self, name: str, default: int, minimum: int = 1) -> int:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{self.key(name)}: expected an integer >= {minimum}, got {value!r}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.string(name, default)
        if value not in choices:
            raise ConfigError(f"{self.key(name)}: expected one of {', '.join(choices)}")
        return str(value)

    def number(self, name: str, default: Any = _MISSING, minimum: float | None = None) -> Any:
        value = self.raw(name, default)
        if value is default:
            return value
        least = self.number_minimum if minimum is None else minimum
        if isinstance(value, bool) or not isinstance(value, int | float):
            ok = False
        else:
            ok = value > 0 if least is None else value >= least
        if not ok:
            wanted = "a positive number" if least is None else f"a number >= {least}"
            raise ConfigError(f"{self.key(name)}: expected {wanted}, got {value!r}")
        return float(value)

    def seconds(self, name: str, default: float) -> float:
        """A duration as `250ms`/`10s`/`5m` or a number of seconds."""
        value = self.raw(name, default)
        if isinstance(value, bool):
            raise ConfigError(f"{self.key(name)}: expected a duration like '10s', got {value!r}")
        if isinstance(value, int | float):
            seconds = float(value)
        else:
            try:
                seconds = parse_duration(value) / NS_PER_UNIT["s"]
            except ValueError as exc:
                raise ConfigError(f"{self.key(name)}: {exc}") from None
        if seconds <= 0:
            raise ConfigError(f"{self.key(name)}: must be positive, got {value!r}")
        return seconds

    def strings(self, name: str) -> tuple[str, ...]:
        """A list of non-empty strings (a single string is accepted as a one-item list)."""
        value = self.raw(name, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{self.key(name)}: expected a list of strings, got {value!r}")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise ConfigError(f"{self.key(name)}[{index}]: expected a non-empty string")
        return tuple(value)

    def secret(self, name: str, required: bool = True) -> Secret | None:
        value = self.raw(name, _MISSING if required else None)
        if value is None:
            return None
        return resolve_secret(value, self.key(name), self.env)

    def items(self, name: str) -> list[Self]:
        """A list of mappings, each read at `key[i]`."""
        value = self.raw(name, [])
        if not isinstance(value, list):
            raise ConfigError(f"{self.key(name)}: expected a list, got {type(value).__name__}")
        kind = type(self)
        return [kind(item, f"{self.key(name)}[{i}]", self.env) for i, item in enumerate(value)]

    def section(self, name: str) -> Self:
        return type(self)(self.raw(name, {}), self.key(name), self.env)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self._read)
        if unknown:
            known = ", ".join(sorted(self._read))
            raise ConfigError(f"{self.key(unknown[0])}: unknown key (known: {known})")


class Options(Fields):
    """The enrichers' reads: the same, but numbers may be 0 (weights, scores)."""

    number_minimum = 0.0
