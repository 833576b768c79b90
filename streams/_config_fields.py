"""The configuration file, read once with locations, and typed reads of its mappings.

`read_config_file` composes the YAML with the rule loader's checks (duplicate keys, YAML 1.1
surprises such as `1:30` or `yes`, size, depth and node limits) and returns plain data plus the
`file:line:col` of every value, by key path (`notifiers[0].slack.token`). `Fields` reads one
mapping of it: every error names the full key path, which `locate` (or `ConfigFile.read_section`)
turns into a location; `ConfigFile.known_keys` checks a section's keys against a fixed list;
`named_items` reads a list of named, typed items. The one configuration reader: the worker's
sections (streams/runtime/config.py), the notifiers, the enrichers, `doctor` and `replay
--enrich` all read through it. Values in messages are cut to a short prefix; secrets are never
quoted.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

import yaml

from streams._text import short
from streams.core._yaml_tree import MAX_YAML_BYTES, compose_checked, location, to_python
from streams.core.durations import NS_PER_UNIT, parse_duration
from streams.errors import ConfigError
from streams.secrets import Secret, resolve_secret

_R = TypeVar("_R")

__all__ = ["ConfigFile", "Fields", "NamedItem", "locate", "named_items", "read_config_file"]


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """A configuration file read once: its top-level mapping as plain data ({} when empty), and
    `file:line:col` by key path (`notifiers[0].slack.token`) of every value and every key."""

    data: dict[Any, Any]
    values: dict[str, str]
    keys: dict[str, str]
    path: str = ""

    def at(self, name: str) -> str:
        """`file:line:col` of the value at key path `name` (the file's path when unknown)."""
        return self.values.get(name, self.path)

    def read_section(self, name: str, read: Callable[[object], _R]) -> _R | None:
        """Top-level section `name` through its typed reader, None when absent or empty. The
        reader's ConfigError names a key path; it is raised again located
        (`worker.yaml:12:9: enrichment[0].harbor.url: required`)."""
        value = self.data.get(name)
        if value is None:
            return None
        try:
            return read(value)
        except ConfigError as exc:
            raise ConfigError(locate(str(exc), self.values)) from None

    def known_keys(
        self, data: Mapping[Any, Any], prefix: str, known: tuple[str, ...], errors: list[str]
    ) -> list[str]:
        """The keys of `data` (the mapping at key path `prefix`, "" for the top level) that are
        in `known`; each other key is an error at its place, with a did-you-mean."""
        keys = []
        for key in data:
            name = f"{prefix}{key}"
            where = self.keys.get(name, self.path)
            if not isinstance(key, str):
                errors.append(f"{where}: {prefix.rstrip('.') or 'top level'}: keys must be strings")
            elif key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
                kind = "key" if prefix else "section"
                errors.append(f"{where}: unknown {kind} {_cut_name(name)}{hint}")
            else:
                keys.append(key)
        return keys


def _cut_name(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_config_file(path: str) -> ConfigFile:
    """Read and check a configuration file; ConfigError lists every YAML problem, located."""
    file = Path(path)
    try:
        if file.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: file larger than {MAX_YAML_BYTES} bytes")
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror}") from None
    root, problems = compose_checked(path, text)
    if problems:
        raise ConfigError("\n".join(f"{where}: {message}" for where, message in problems))
    if root is None or (isinstance(root, yaml.ScalarNode) and root.tag == _NULL_TAG):
        return ConfigFile({}, {}, {}, path)
    if not isinstance(root, yaml.MappingNode):
        where = location(path, root)
        raise ConfigError(f"{where}: the configuration must be a mapping of sections")
    values, keys = _locations(path, root)
    return ConfigFile(to_python(root), values, keys, path)


_NULL_TAG = "tag:yaml.org,2002:null"


def _locations(path: str, root: yaml.Node) -> tuple[dict[str, str], dict[str, str]]:
    """Locations of values and of keys by key path. Iterative; a node reached again through an
    alias keeps its first path (its other paths fall back to an ancestor in `locate`)."""
    values: dict[str, str] = {}
    keys: dict[str, str] = {}
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, key = stack.pop()
        if key:
            values.setdefault(key, str(location(path, node)))
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    name = str(key_node.value)
                    child = f"{key}.{name}" if key else name
                    keys.setdefault(child, str(location(path, key_node)))
                    stack.append((value_node, child))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, f"{key}[{i}]") for i, child in enumerate(node.value))
    return values, keys


_LAST_PART = re.compile(r"(\.[^.\[\]]*|\[\d+\])$")


def locate(message: str, locations: Mapping[str, str]) -> str:
    """Prefix one ConfigError message that starts with a key path with the location of that key,
    or of its nearest ancestor that has one. Keys may hold `: ` (or a line break) themselves,
    so the longest prefix before a `: ` that is a known path wins."""
    heads = [message[:at] for at in _separators(message)]
    exact = [head for head in heads if head in locations]
    if exact:
        where: str | None = locations[exact[-1]]
    else:
        where = _nearest(heads[0], locations) if heads else None
    return f"{where}: {message}" if where else message


def _separators(line: str) -> list[int]:
    found: list[int] = []
    at = line.find(": ")
    while at > 0 and len(found) < 20:
        found.append(at)
        at = line.find(": ", at + 2)
    return found


def _nearest(key: str, locations: Mapping[str, str]) -> str | None:
    while key:
        if key in locations:
            return locations[key]
        parent = _LAST_PART.sub("", key)
        if parent == key:
            return None
        key = parent
    return None


_MISSING: Any = object()


class Fields:
    """A config mapping at `path` (`notifiers[1].webhook`). Every read marks its key as known;
    `finish()` rejects the keys nobody read, so typos fail loudly instead of being ignored."""

    def __init__(self, data: object, path: str, env: Mapping[str, str] | None = None) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__}")
        for key in data:
            if not isinstance(key, str):
                raise ConfigError(f"{path}: keys must be strings, got {short(key)}")
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
            typo = self._typo_of(name)
            if typo is not None:
                raise ConfigError(f"{self.key(typo)}: unknown key (did you mean {name}?)")
            raise ConfigError(f"{self.key(name)}: required")
        return default

    def _typo_of(self, name: str) -> str | None:
        """A key of the data, not read so far, that looks like a misspelling of `name`."""
        unread = [k for k in self.data if k not in self._read and k != name]
        close = difflib.get_close_matches(name, unread, n=1)
        return close[0] if close else None

    def string(self, name: str, default: Any = _MISSING) -> Any:
        value = self.raw(name, default)
        if value is default:
            return value
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{self.key(name)}: expected a non-empty string, got {short(value)}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.key(name)}: expected true or false, got {short(value)}")
        return value

    def integer(self, name: str, default: int, minimum: int = 1) -> int:
        value = self.raw(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(
                f"{self.key(name)}: expected an integer >= {minimum}, got {short(value)}"
            )
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
        least = minimum  # None: strictly positive; weights and scores pass 0.0
        if isinstance(value, bool) or not isinstance(value, int | float):
            ok = False
        else:
            ok = value > 0 if least is None else value >= least
        if not ok:
            wanted = "a positive number" if least is None else f"a number >= {least}"
            raise ConfigError(f"{self.key(name)}: expected {wanted}, got {short(value)}")
        return float(value)

    def seconds(self, name: str, default: float) -> float:
        """A duration as `250ms`/`10s`/`5m` or a number of seconds."""
        value = self.raw(name, default)
        if isinstance(value, bool):
            raise ConfigError(
                f"{self.key(name)}: expected a duration like '10s', got {short(value)}"
            )
        if isinstance(value, int | float):
            seconds = float(value)
        else:
            try:
                seconds = parse_duration(value) / NS_PER_UNIT["s"]
            except ValueError as exc:
                raise ConfigError(f"{self.key(name)}: {exc}") from None
        if seconds <= 0:
            raise ConfigError(f"{self.key(name)}: must be positive, got {short(value)}")
        return seconds

    def strings(self, name: str) -> tuple[str, ...]:
        """A list of non-empty strings (a single string is accepted as a one-item list)."""
        value = self.raw(name, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{self.key(name)}: expected a list of strings, got {short(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise ConfigError(f"{self.key(name)}[{index}]: expected a non-empty string")
        return tuple(value)

    def secret(self, name: str, required: bool = True) -> Secret | None:
        value = self.raw(name, _MISSING if required else None)
        if value is None:
            return None
        if isinstance(value, Secret):  # already resolved (a section read twice)
            return value
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
        """Reject the keys nobody read. Call it once every key is read and before checks that
        combine keys, so a typo is reported as itself (`passwrd`), not as what it left out."""
        unknown = sorted(set(self.data) - self._read)
        if unknown:
            known = sorted(self._read)
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(
                f"{self.key(unknown[0])}: unknown key ({hint}known: {', '.join(known)})"
            )


# --- lists of named, typed items (`notifiers:`, `enrichment:`) ---------------------------------

_T = TypeVar("_T")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


@dataclass(frozen=True, slots=True)
class NamedItem(Generic[_T]):
    """One item of a named list: its mapping (the caller reads the rest and calls `finish()`),
    its checked name and type, and what the registry holds for that type."""

    fields: Fields
    name: str
    type: str
    kind: _T


def named_items(
    section: object,
    path: str,
    types: Mapping[str, _T],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    name_defaults_to_type: bool = False,
) -> Iterator[NamedItem[_T]]:
    """The items of a list such as `notifiers:`: each a mapping with a `type` known to `types`
    and a unique `name` (letters, digits, `_.-`). Items are checked as they are taken, so the
    first problem raised (ConfigError naming its key) is the first in the file."""
    if section is None:
        return
    if not isinstance(section, list):
        raise ConfigError(f"{path}: expected a list of {what}s, got {type(section).__name__}")
    seen: set[str] = set()
    for index, item in enumerate(section):
        fields = Fields(item, f"{path}[{index}]", env)
        type_name = str(fields.string("type"))
        kind = types.get(type_name)
        if kind is None:
            raise ConfigError(
                f"{fields.key('type')}: unknown type {short(type_name)} (known: {', '.join(types)})"
            )
        default_name = type_name if name_defaults_to_type else _MISSING
        name = str(fields.string("name", default_name))
        if not _NAME.fullmatch(name):
            raise ConfigError(
                f"{fields.key('name')}: {short(name)} is not a valid name "
                "(letters, digits, '_', '.', '-'; at most 63 characters)"
            )
        if name in seen:
            raise ConfigError(f"{fields.key('name')}: duplicate {what} name {short(name)}")
        seen.add(name)
        yield NamedItem(fields, name, type_name, kind)
