"""A Jinja2 sandbox whose renders are bounded in steps, time and size, and that evaluates nothing
when a template is loaded.

Jinja2's sandbox stops templates from reaching Python internals, not from burning CPU and memory:
`{{ 'x' * 2000000000 }}` and `{{ 'x'|center(2000000000) }}` were even evaluated while loading
(constant folding), and two nested `range(100000)` loops ran for minutes. Here:

- No expression is evaluated at load time: every operator is intercepted (intercepted operators
  are never folded) and every filter and test is wrapped as `pass_context` (never folded either).
- A render carries a `RenderBudget` (a context variable): loop iterations, calls, filters,
  operators and outputs each cost a step; every value they produce is measured (`deep_size`,
  with references counted, so `[big] * 65536` is as big as what it would print) and charged to
  the render's allocation budget; a wall-clock deadline is checked at every step. Exceeding any
  of them raises `TemplateBudgetError` (a SecurityError) out of the render.
- Loops and outputs are rewritten when the template is compiled so they go through the budget:
  `for x in ITER` iterates `budget_iter(ITER)`, `{{ EXPR }}` outputs `budget_out(EXPR)`. The
  helpers are imported names (`ImportedName`), which templates cannot see or shadow.
- Operations that amplify (`*`, `**`, `%`, `+`, `center`, `indent`, `replace`, `join`, `batch`,
  str methods `ljust`/`replace`/...) are checked before they run, from the sizes of their inputs.
- `str.format`/`format_map` (format specs can ask for any width) and the `lipsum` global are
  not available.

Private to streams.core.templates (rule outputs) and the webhook notifier (body templates).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, pass_context

__all__ = [
    "BudgetedSandbox",
    "RenderBudget",
    "RenderLimits",
    "TemplateBudgetError",
    "budget_iter",
    "budget_out",
    "deep_size",
]


class TemplateBudgetError(SecurityError):
    """A render went past one of its limits; the caller falls back to a default text."""


@dataclass(frozen=True, slots=True)
class RenderLimits:
    """The limits of one render (docs/rules.md, "Limits")."""

    max_output: int = 65_536  # characters rendered
    max_value: int = 1 << 20  # size of any one value a template builds (deep_size)
    max_alloc: int = 16 << 20  # total size of the values built during one render
    max_steps: int = 100_000  # loop iterations, calls, filters, operators, outputs
    max_seconds: float = 1.0  # wall time, a backstop for steps that are individually slow
    max_int_bits: int = 4_096  # integers a template computes


@dataclass
class RenderBudget:
    """What one render has used so far."""

    limits: RenderLimits
    clock: Callable[[], float] = time.monotonic
    steps: int = 0
    alloc: int = 0
    output: int = 0
    deadline: float = field(init=False)

    def __post_init__(self) -> None:
        self.deadline = self.clock() + self.limits.max_seconds

    def step(self, count: int = 1) -> None:
        self.steps += count
        if self.steps > self.limits.max_steps:
            raise TemplateBudgetError(f"template took more than {self.limits.max_steps} steps")
        if self.clock() > self.deadline:
            raise TemplateBudgetError(f"template ran longer than {self.limits.max_seconds:g} s")

    def produced(self, value: object) -> None:
        """Charge a value the template built; too big a value is an error on its own."""
        size = deep_size(value, self.limits.max_value)
        if size > self.limits.max_value:
            raise TemplateBudgetError(
                f"template built a value larger than {self.limits.max_value} characters"
            )
        self.alloc += size
        if self.alloc > self.limits.max_alloc:
            raise TemplateBudgetError(
                f"template built more than {self.limits.max_alloc} characters in all"
            )

    def check_size(self, size: int, what: str) -> None:
        """Before an operation whose result would be `size` characters or items."""
        if size > self.limits.max_value:
            raise TemplateBudgetError(
                f"{what} would build more than {self.limits.max_value} characters"
            )


_BUDGET: ContextVar[RenderBudget | None] = ContextVar("fc_render_budget", default=None)
# Without an active render (a direct `template.render()`), sizes are still checked.
_UNMETERED = RenderLimits()


def _budget() -> RenderBudget:
    budget = _BUDGET.get()
    if budget is None:
        budget = RenderBudget(_UNMETERED)
        budget.deadline = float("inf")
    return budget


def deep_size(value: object, limit: int) -> int:
    """Characters and items reachable from `value`, counting shared references each time (as
    printing would), stopping once past `limit`. Text counts its length, containers their
    items plus their contents, anything else 1; an object with a `template_size()` reports its
    own (event views: the size of their text)."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        current = stack.pop()
        if isinstance(current, str | bytes):
            total += len(current)
        elif isinstance(current, list | tuple | set | frozenset):
            total += len(current) + 1
            stack.extend(current)
        elif isinstance(current, dict):
            total += 2 * len(current) + 1
            stack.extend(current.keys())
            stack.extend(current.values())
        elif isinstance(current, int) and not isinstance(current, bool):
            total += current.bit_length() // 64 + 1
        elif hasattr(type(current), "template_size"):
            total += int(current.template_size())  # type: ignore[attr-defined]
        else:
            total += 1
    return total


def _text_size(value: object) -> int:
    return len(value) if isinstance(value, str) else deep_size(value, 1 << 62)


def budget_iter(iterable: Iterable[Any]) -> Iterator[Any]:
    """What every `for` loop of a budgeted template iterates: one step per item."""
    budget = _budget()
    budget.step()
    for item in iterable:
        budget.step()
        yield item


def budget_out(value: object) -> str:
    """Template text repeated by a loop or a macro goes out through this (a call, charged by the
    sandbox's call hook like any other)."""
    return str(value)


@pass_context
def _finalize(_context: Context, value: object) -> object:
    """Every `{{ ... }}` output: measured before Jinja turns it into text. As `pass_context` it
    is never applied at load time."""
    budget = _budget()
    budget.step()
    budget.produced(value)
    return value


# -- amplifying operations, checked before they run --------------------------------------------

_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")


def _check_binop(budget: RenderBudget, operator: str, left: Any, right: Any) -> None:
    limits = budget.limits
    if operator == "*":
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(count, int):
                budget.check_size(deep_size(seq, limits.max_value) * max(count, 0), "'*'")
        if _is_int(left) and _is_int(right):
            _check_bits(budget, left.bit_length() + right.bit_length())
    elif operator == "**":
        if _is_int(right) and right > 0 and isinstance(left, int | float):
            base_bits = abs(int(left)).bit_length() if isinstance(left, int) else 1
            if isinstance(left, int) and base_bits > 1:
                _check_bits(budget, right * base_bits)
            elif right > limits.max_int_bits:
                _check_bits(budget, right)
    elif operator == "+":
        if isinstance(left, str | list | tuple) and type(left) is type(right):
            budget.check_size(_text_size(left) + _text_size(right), "'+'")
    elif operator == "%" and isinstance(left, str):
        args = right if isinstance(right, tuple) else (right,)
        width = len(left)
        for match in _PRINTF_SPEC.finditer(left):
            for part in match.groups():
                if part and part != "*":
                    width += int(part)
        width += sum(_text_size(a) for a in args if isinstance(a, str))
        width += sum(a for a in args if _is_int(a) and a > 0 and "*" in left)
        budget.check_size(width, "'%' formatting")


def _check_bits(budget: RenderBudget, bits: int) -> None:
    if bits > budget.limits.max_int_bits:
        raise TemplateBudgetError(f"template integer larger than {budget.limits.max_int_bits} bits")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _width(value: object, budget: RenderBudget) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return max(value, 0)
    if isinstance(value, str):
        return len(value)
    if isinstance(value, float):
        budget.check_size(int(min(value, 1e18)), "a width")
    return 0


def _check_str_method(budget: RenderBudget, text: str, name: str, args: tuple[Any, ...]) -> None:
    if name in ("center", "ljust", "rjust", "zfill") and args:
        budget.check_size(max(len(text), _width(args[0], budget)), f"str.{name}")
    elif name == "expandtabs":
        tab = _width(args[0], budget) if args else 8
        budget.check_size(len(text) + text.count("\t") * tab, "str.expandtabs")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str):
        old, new = args[0], args[1]
        count = len(text) + 1 if old == "" else text.count(old)
        if len(args) > 2 and _is_int(args[2]) and args[2] >= 0:
            count = min(count, args[2])
        budget.check_size(len(text) + count * _text_size(new), "str.replace")
    elif name == "join" and args:
        items = args[0]
        if isinstance(items, list | tuple):
            budget.check_size(
                sum(_text_size(i) for i in items) + len(items) * len(text), "str.join"
            )


# Filters that can turn small inputs into large results; checked from their arguments.
def _check_filter(
    budget: RenderBudget, name: str, args: tuple[Any, ...], kw: dict[str, Any]
) -> None:
    value = args[0] if args else None
    rest = args[1:]

    def arg(index: int, key: str, default: Any = None) -> Any:
        return rest[index] if len(rest) > index else kw.get(key, default)

    size = _text_size(value) if isinstance(value, str | list | tuple) else 0
    if name == "center":
        budget.check_size(max(size, _width(arg(0, "width", 80), budget)), "center")
    elif name == "indent" and isinstance(value, str):
        lines = value.count("\n") + 1
        budget.check_size(size + lines * _width(arg(0, "width", 4), budget), "indent")
    elif name == "wordwrap" and isinstance(value, str):
        wrap = arg(2, "wrapstring", "\n")
        budget.check_size(size * (1 + _text_size(wrap)), "wordwrap")
    elif name == "replace" and isinstance(value, str):
        _check_str_method(
            budget, value, "replace", tuple(rest[:3]) or (kw.get("old"), kw.get("new"))
        )
    elif name in ("batch", "slice"):
        budget.check_size(
            _width(arg(0, "linecount" if name == "batch" else "slices"), budget), name
        )
        fill = arg(1, "fill_with")
        if fill is not None:
            budget.check_size(
                _width(arg(0, "linecount" if name == "batch" else "slices"), budget)
                * max(_text_size(fill), 1),
                name,
            )
    elif name == "join" and isinstance(value, list | tuple):
        sep = arg(0, "d", "")
        budget.check_size(sum(_text_size(i) for i in value) + len(value) * _text_size(sep), "join")
    elif name == "format" and isinstance(value, str):
        _check_binop(budget, "%", value, tuple(rest) or tuple(kw.values()))
    elif name == "sum":
        start = arg(1, "start", 0)
        if not isinstance(start, int | float):
            raise TemplateBudgetError("sum: only numbers can be summed in templates")


def _budgeted(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """A filter or test that charges the render budget, checks its inputs and its result; as
    `pass_context` it is never evaluated at load time."""
    passes = getattr(getattr(func, "jinja_pass_arg", None), "name", None)

    @pass_context
    def guarded(context: Context, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        _check_filter(budget, name, args, kwargs)
        if passes == "context":
            result = func(context, *args, **kwargs)
        elif passes == "eval_context":
            result = func(context.eval_ctx, *args, **kwargs)
        elif passes == "environment":
            result = func(context.environment, *args, **kwargs)
        else:
            result = func(*args, **kwargs)
        if isinstance(result, Iterator) and not isinstance(result, str):
            return _metered(result, budget)
        budget.produced(result)
        return result

    guarded.__name__ = f"budgeted_{name}"
    return guarded


def _metered(items: Iterator[Any], budget: RenderBudget) -> Iterator[Any]:
    for item in items:
        budget.step()
        budget.produced(item)
        yield item


class _BudgetedNamespace(Namespace):
    """`namespace()`: the one mutable object templates have; what it keeps is charged."""

    def __setitem__(self, name: str, value: Any) -> None:
        budget = _budget()
        budget.step()
        budget.produced(value)
        super().__setitem__(name, value)


# str methods that format with caller-chosen widths, or are not needed in output templates.
_BLOCKED_STR_METHODS = frozenset({"format", "format_map"})
_IMPORT_ITER = f"{__name__}.budget_iter"
_IMPORT_OUT = f"{__name__}.budget_out"


class BudgetedSandbox(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment + the bounds of this module; see the module docstring.

    Compile with `compile_budgeted(source)` and render with `render_budgeted(template, ...)`.
    """

    # Intercepted operators are never folded at load time, and are checked at run time.
    intercepted_binops = frozenset({"*", "**", "+", "-", "/", "//", "%"})
    intercepted_unops = frozenset({"-", "+"})

    def __init__(self, limits: RenderLimits | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("optimized", False)
        super().__init__(finalize=_finalize, **kwargs)
        self.limits = limits or RenderLimits()
        self.filters = {name: _budgeted(name, f) for name, f in self.filters.items()}
        self.tests = {name: _budgeted(name, f) for name, f in self.tests.items()}  # type: ignore[arg-type]
        self.globals.pop("lipsum", None)
        self.globals["namespace"] = _BudgetedNamespace

    # -- compile ----------------------------------------------------------------------------

    def compile_budgeted(self, source: str) -> Any:
        """Parse, route loops and outputs through the budget, compile. Evaluates nothing."""
        tree = self.parse(source)
        _rewrite(tree)
        return self.from_string(tree)

    # -- render -----------------------------------------------------------------------------

    def render_budgeted(
        self,
        template: Any,
        variables: Mapping[str, Any],
        clock: Callable[[], float] = time.monotonic,
    ) -> str:
        """The rendered text; TemplateBudgetError (or the template's own error) otherwise."""
        budget = RenderBudget(self.limits, clock)
        token = _BUDGET.set(budget)
        try:
            parts: list[str] = []
            size = 0
            for chunk in template.generate(variables):
                size += len(chunk)
                if size > self.limits.max_output:
                    raise TemplateBudgetError(
                        f"template output longer than {self.limits.max_output} characters"
                    )
                budget.step()
                parts.append(chunk)
            return "".join(parts)
        finally:
            _BUDGET.reset(token)

    # -- run-time hooks of the sandbox ------------------------------------------------------

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        return None  # no sandboxed str.format: is_safe_attribute refuses it instead

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and attr in _BLOCKED_STR_METHODS:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.step()
        _check_binop(budget, operator, left, right)
        result = super().call_binop(context, operator, left, right)
        if _is_int(result):
            _check_bits(budget, result.bit_length())
        budget.produced(result)
        return result

    def call_unop(self, context: Context, operator: str, arg: Any) -> Any:
        _budget().step()
        return super().call_unop(context, operator, arg)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        budget = _budget()
        budget.step()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            _check_str_method(budget, owner, getattr(__obj, "__name__", ""), args)
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, Iterator) and not isinstance(result, str):
            return _metered(result, budget)
        if not isinstance(result, Undefined):
            budget.produced(result)
        return result


def _rewrite(tree: nodes.Template) -> None:
    """`for x in E` -> `for x in budget_iter(E)`; template text inside loops and macros ->
    `{{ budget_out(text) }}`, so repeated text is charged (expressions go through `finalize`).
    Imported names are module-level aliases a template cannot see or shadow."""
    for loop in tree.find_all(nodes.For):
        loop.iter = nodes.Call(
            nodes.ImportedName(_IMPORT_ITER), [loop.iter], [], None, None, lineno=loop.lineno
        )
    repeated: list[nodes.Node] = [*tree.find_all((nodes.For, nodes.Macro, nodes.CallBlock))]
    for node in repeated:
        for output in node.find_all(nodes.Output):
            output.nodes = [
                nodes.Call(
                    nodes.ImportedName(_IMPORT_OUT),
                    [nodes.Const(child.data)],
                    [],
                    None,
                    None,
                    lineno=child.lineno,
                )
                if isinstance(child, nodes.TemplateData)
                else child
                for child in output.nodes
            ]
