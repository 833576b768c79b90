"""Incident output templates: Jinja2 in a sandbox, over read-only views of events.

Templates come from rule files (trusted authors); event content is data passed in as values and
is never compiled as a template.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from jinja2 import StrictUndefined, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from streams.core.events import format_time

if TYPE_CHECKING:
    import jinja2

    from streams.core.events import Event

__all__ = ["MISSING", "TEMPLATE_ENV", "EventView", "TemplateSyntaxError", "compile_template"]

MISSING = "<NA>"

# StrictUndefined makes a typo such as `{{ stpes.shell }}` a counted runtime error with the
# default text instead of silently rendering an empty string.
TEMPLATE_ENV = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False
)


def compile_template(source: str) -> jinja2.Template:
    """Compile once at load time; raises TemplateSyntaxError with a line number."""
    return TEMPLATE_ENV.from_string(source)


class EventView(Mapping[str, Any]):
    """What a template sees of an event: `event['container.id']`, missing fields as `<NA>`."""

    __slots__ = ("_event", "step")

    def __init__(self, event: Event, step: str) -> None:
        self._event = event
        self.step = step

    def __getitem__(self, name: str) -> Any:
        if name == "time":
            return format_time(self._event.time_ns)
        if name == "step":
            return self.step
        value = self._event.get(name)
        return MISSING if value is None else value

    def __iter__(self) -> Any:
        return iter(self._event.raw)

    def __len__(self) -> int:
        return len(self._event.raw)

    def __str__(self) -> str:
        output = self._event.get("output")
        return output if isinstance(output, str) else self._event.rule
