"""Incident output templates: Jinja2 in a sandbox, over read-only views of events.

Templates come from rule files; event content is data passed in as values and is never compiled
as a template. Nothing in a template is evaluated when it is loaded, and a render is bounded in
steps, time, output and the size of what it builds (streams/core/_sandbox.py): past a bound it
stops with TemplateBudgetError and the caller falls back to its default text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from jinja2 import StrictUndefined, TemplateSyntaxError

from streams.core._sandbox import BudgetedSandbox, RenderLimits, TemplateBudgetError
from streams.core.events import format_time

if TYPE_CHECKING:
    import jinja2

    from streams.core.events import Event

__all__ = [
    "MAX_TEMPLATE_CHARS",
    "MISSING",
    "TEMPLATE_ENV",
    "TEMPLATE_LIMITS",
    "BudgetedSandbox",
    "EventView",
    "RenderLimits",
    "TemplateBudgetError",
    "TemplateSyntaxError",
    "compile_template",
    "render_template",
]

MISSING = "<NA>"

#: Characters of one template's source.
MAX_TEMPLATE_CHARS = 65_536
#: The bounds of one render of an incident `output` (docs/rules.md, "Limits").
TEMPLATE_LIMITS = RenderLimits()

# StrictUndefined makes a typo such as `{{ stpes.shell }}` a counted runtime error with the
# default text instead of silently rendering an empty string.
TEMPLATE_ENV = BudgetedSandbox(
    TEMPLATE_LIMITS, undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False
)


def compile_template(source: str, env: BudgetedSandbox = TEMPLATE_ENV) -> jinja2.Template:
    """Compile once at load time, evaluating nothing; TemplateSyntaxError (with a line
    number) for a syntax error, a source over MAX_TEMPLATE_CHARS or one nested too deeply."""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateSyntaxError(f"template longer than {MAX_TEMPLATE_CHARS} characters", 1)
    try:
        template: jinja2.Template = env.compile_budgeted(source)
    except TemplateSyntaxError:
        raise
    except RecursionError:
        raise TemplateSyntaxError("template nested too deeply", 1) from None
    except (ValueError, SyntaxError, MemoryError, OverflowError) as exc:
        # The lexer's int() of a 5,000-digit literal, Python's own compiler limits, ...
        raise TemplateSyntaxError(f"cannot compile template: {exc}", 1) from None
    return template


def render_template(template: jinja2.Template, variables: Mapping[str, Any]) -> str:
    """Render within TEMPLATE_LIMITS; raises the template's error or TemplateBudgetError."""
    env = template.environment
    assert isinstance(env, BudgetedSandbox), "compile templates with compile_template"
    return env.render_budgeted(template, variables)


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

    def template_size(self) -> int:
        """What printing this view costs, for the render budget (not its whole payload)."""
        return len(str(self))
