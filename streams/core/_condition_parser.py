"""Tokenizer, syntax tree and recursive-descent parser of the condition language (spec section 3).

Private to `streams.core.conditions`, which re-exports what callers need.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import re2

from streams._text import short
from streams.errors import ConditionSyntaxError

__all__ = [
    "LIST_OPERATORS",
    "MAX_CONDITION_CHARS",
    "MAX_CONDITION_DEPTH",
    "OPERATORS",
    "And",
    "Compare",
    "Exists",
    "ListCompare",
    "ListItem",
    "MacroRef",
    "Node",
    "Not",
    "Or",
    "as_number",
    "as_text",
    "parse",
    "path_test",
    "regex_test",
]

SYMBOL_OPERATORS = frozenset({"=", "==", "!=", "<", "<=", ">", ">="})
WORD_OPERATORS = frozenset({"contains", "icontains", "startswith", "endswith", "glob", "regex"})
OPERATORS = SYMBOL_OPERATORS | WORD_OPERATORS
LIST_OPERATORS = frozenset({"in", "intersects", "pmatch"})
_CONNECTIVES = frozenset({"and", "or", "not"})
_KEYWORDS = OPERATORS | LIST_OPERATORS | _CONNECTIVES | {"exists"}
_EXPECTED_OPERATOR = (
    "=, ==, !=, <, <=, >, >=, contains, icontains, startswith, endswith, glob, regex, "
    "exists, in, intersects or pmatch"
)

_SYMBOL_CHARS = frozenset("=<>!")
# A run of these that is not a valid operator is reported as one unknown operator (`=~`, `~=`).
_OPERATOR_LIKE = frozenset("=<>!~")
_WORD_STOP = frozenset("(),'\"=<>!")
_ESCAPABLE = frozenset("\"'\\")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NUMBER_START = frozenset("+-.0123456789")
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad pattern is reported as a rule error, not on stderr
_RE2_OPTIONS.never_capture = True
try:
    _ANCHOR_BOTH: Any = re2._re2.RE2.Anchor.ANCHOR_BOTH
except AttributeError:  # another google-re2 layout: fall back to the public API
    _ANCHOR_BOTH = None

#: Nesting of one condition text (parentheses and `not`): deep enough for any real rule, and
#: keeps hostile or generated input from exhausting the stack (the parser recurses).
MAX_CONDITION_DEPTH = 100
#: Characters of one condition text (a macro's too, after `append` overrides).
MAX_CONDITION_CHARS = 65_536


@dataclass(frozen=True, slots=True)
class MacroRef:
    """A bare word used as a condition: a reference to a macro."""

    name: str
    offset: int


@dataclass(frozen=True, slots=True)
class Exists:
    field: str
    offset: int


@dataclass(frozen=True, slots=True)
class Compare:
    """`FIELD OP VALUE`; offsets point at the field and at the value."""

    field: str
    op: str
    value: str
    offset: int
    value_offset: int


@dataclass(frozen=True, slots=True)
class ListItem:
    """One item of a LIST; a bare (unquoted) item may name a list."""

    value: str
    quoted: bool
    offset: int


@dataclass(frozen=True, slots=True)
class ListCompare:
    """`FIELD LISTOP (item, ...)`."""

    field: str
    op: str
    items: tuple[ListItem, ...]
    offset: int


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node


@dataclass(frozen=True, slots=True)
class And:
    operands: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    operands: tuple[Node, ...]


Node: TypeAlias = Or | And | Not | MacroRef | Exists | Compare | ListCompare


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "word", "string", "symbol", "badop", "(", ")", ",", "end"
    text: str
    offset: int

    def describe(self) -> str:
        if self.kind == "end":
            return "end of condition"
        if self.kind == "string":
            return f"string {short(self.text)}"
        return f"'{self.text}'"


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "(),":
            tokens.append(_Token(ch, ch, i))
            i += 1
        elif ch in "'\"":
            value, i = _read_string(text, i)
            tokens.append(value)
        elif ch in _SYMBOL_CHARS or (ch == "~" and _tilde_operator(text, i)):
            j = i
            while j < n and text[j] in _SYMBOL_CHARS:
                j += 1
            if ch == "~" or (j < n and text[j] == "~" and _ends_word(text, j)):
                # `=~` / `~=`: swallow the whole run so the error names what the author wrote.
                j = i
                while j < n and text[j] in _OPERATOR_LIKE:
                    j += 1
            run = text[i:j]
            tokens.append(_Token("symbol" if run in SYMBOL_OPERATORS else "badop", run, i))
            i = j
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in _WORD_STOP:
                j += 1
            tokens.append(_Token("word", text[i:j], i))
            i = j
    tokens.append(_Token("end", "", n))
    return tokens


def _tilde_operator(text: str, i: int) -> bool:
    """`~=`-like: tildes directly followed by an operator character."""
    j = i
    while j < len(text) and text[j] == "~":
        j += 1
    return j < len(text) and text[j] in _SYMBOL_CHARS


def _ends_word(text: str, i: int) -> bool:
    """Whether the tildes at `i` end where a bare word would (so `=~/x` stays `= ~/x`)."""
    j = i
    while j < len(text) and text[j] == "~":
        j += 1
    return j == len(text) or text[j].isspace() or text[j] in "()'\","


def _read_string(text: str, start: int) -> tuple[_Token, int]:
    quote = text[start]
    out: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPABLE:
            out.append(text[i + 1])
            i += 2
        elif ch == quote:
            return _Token("string", "".join(out), start), i + 1
        else:
            # Any other backslash is kept as written so regexes like "\d+\.sh" survive.
            out.append(ch)
            i += 1
    raise ConditionSyntaxError(f"unterminated string: missing closing {quote}", start)


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.pos = 0
        self.depth = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.pos]

    def next(self) -> _Token:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def is_word(self, word: str) -> bool:
        tok = self.tokens[self.pos]
        return tok.kind == "word" and tok.text == word

    def parse(self) -> Node:
        if self.tok.kind == "end":
            raise ConditionSyntaxError("empty condition", 0)
        node = self.expr()
        tok = self.tok
        if tok.kind == ")":
            raise ConditionSyntaxError(
                "unbalanced parenthesis: ')' without a matching '('", tok.offset
            )
        if tok.kind != "end":
            raise ConditionSyntaxError(
                f"expected 'and', 'or' or end of condition, got {tok.describe()}{_case_hint(tok)}",
                tok.offset,
            )
        return node

    def expr(self) -> Node:
        operands = [self.and_expr()]
        while self.is_word("or"):
            self.next()
            operands.append(self.and_expr())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def and_expr(self) -> Node:
        operands = [self.not_expr()]
        while self.is_word("and"):
            self.next()
            operands.append(self.not_expr())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def not_expr(self) -> Node:
        self.depth += 1
        if self.depth > MAX_CONDITION_DEPTH:
            raise ConditionSyntaxError(
                f"condition nested too deeply (more than {MAX_CONDITION_DEPTH} levels)",
                self.tok.offset,
            )
        try:
            return self._not_expr()
        finally:
            self.depth -= 1

    def _not_expr(self) -> Node:
        tok = self.tok
        if tok.kind == "(":
            self.next()
            node = self.expr()
            close = self.tok
            if close.kind != ")":
                raise ConditionSyntaxError(
                    f"unbalanced parenthesis: expected ')' to close '(' at offset {tok.offset}, "
                    f"got {close.describe()}",
                    close.offset,
                )
            self.next()
            return node
        if tok.kind == "word" and tok.text == "not":
            self.next()
            return Not(self.not_expr())
        if tok.kind != "word" or tok.text in ("and", "or"):
            previous = self.tokens[self.pos - 1].text if self.pos else ""
            where = f" after '{previous}'" if previous else ""
            raise ConditionSyntaxError(
                f"expected a condition (field, macro, 'not' or '('){where}, got {tok.describe()}",
                tok.offset,
            )
        self.next()
        return self.after_word(tok)

    def after_word(self, word: _Token) -> Node:
        op = self.tok
        if op.kind in ("end", ")") or (op.kind == "word" and op.text in ("and", "or")):
            return MacroRef(word.text, word.offset)
        if op.kind == "badop":
            raise ConditionSyntaxError(
                f"unknown operator '{op.text}' (expected {_EXPECTED_OPERATOR})", op.offset
            )
        if op.kind == "word" and op.text == "exists":
            self.next()
            return Exists(word.text, word.offset)
        if op.kind == "word" and op.text in LIST_OPERATORS:
            self.next()
            return ListCompare(word.text, op.text, self.items(op), word.offset)
        if op.kind == "symbol" or (op.kind == "word" and op.text in WORD_OPERATORS):
            self.next()
            value = self.tok
            if value.kind == "string" or (value.kind == "word" and value.text not in _CONNECTIVES):
                self.next()
                return Compare(word.text, op.text, value.text, word.offset, value.offset)
            raise ConditionSyntaxError(
                f"missing value: expected a value after '{op.text}', got {value.describe()}"
                + (" (quote it to compare with that word)" if value.kind == "word" else ""),
                value.offset,
            )
        raise ConditionSyntaxError(
            f"expected an operator after field '{word.text}' ({_EXPECTED_OPERATOR}), "
            f"or 'and'/'or' after a macro name, got {op.describe()}{_case_hint(op)}",
            op.offset,
        )

    def items(self, op: _Token) -> tuple[ListItem, ...]:
        if self.tok.kind != "(":
            raise ConditionSyntaxError(
                f"expected '(' after '{op.text}', got {self.tok.describe()}", self.tok.offset
            )
        self.next()
        items: list[ListItem] = []
        while True:
            tok = self.tok
            if tok.kind not in ("word", "string"):
                raise ConditionSyntaxError(
                    f"expected a list item after '{self.tokens[self.pos - 1].text}', "
                    f"got {tok.describe()}",
                    tok.offset,
                )
            self.next()
            items.append(ListItem(tok.text, tok.kind == "string", tok.offset))
            sep = self.tok
            if sep.kind == ")":
                self.next()
                return tuple(items)
            if sep.kind != ",":
                raise ConditionSyntaxError(
                    f"expected ',' or ')' in the list after '{op.text}', got {sep.describe()}",
                    sep.offset,
                )
            self.next()


def _case_hint(tok: _Token) -> str:
    if tok.kind == "word" and tok.text not in _KEYWORDS and tok.text.lower() in _KEYWORDS:
        return " (keywords are lower case)"
    return ""


def parse(text: str) -> Node:
    """Parse a condition into its syntax tree; ConditionSyntaxError says what and where."""
    if len(text) > MAX_CONDITION_CHARS:
        raise ConditionSyntaxError(
            f"condition longer than {MAX_CONDITION_CHARS} characters ({len(text)})", 0
        )
    return _Parser(text).parse()


# Literals: how values read as numbers and text, and the path and regex matchers.


def as_number(value: object) -> int | float | None:
    """The value as a number when it is one or reads as one, else None."""
    if type(value) is int:  # the common case (uids, ports), ahead of the isinstance chain
        return value
    if isinstance(value, str):
        if not value or value[0] not in _NUMBER_START or _NUMBER.fullmatch(value) is None:
            return None
        try:
            return int(value)
        except ValueError:
            return float(value)
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    return None


def as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def regex_test(pattern: str, offset: int) -> Callable[[Any], bool]:
    """A full match on RE2, compiled once; an invalid or unsupported pattern is a syntax error."""
    try:
        compiled = re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid pattern"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ConditionSyntaxError(f"invalid regex {short(pattern)}: {reason}", offset) from None
    match = getattr(getattr(compiled, "_regexp", None), "Match", None)
    if match is None or _ANCHOR_BOTH is None:
        fullmatch = compiled.fullmatch
        return lambda value: fullmatch(value) is not None

    # The wrapper's fullmatch builds a Match object through a generator (~4 us); the binding
    # underneath answers the same question in a fraction of that.
    def full_match(value: str) -> bool:
        data = value.encode("utf-8", "surrogatepass")
        return bool(match(_ANCHOR_BOTH, data, 0, len(data))[0][0] != -1)

    return full_match


def path_test(paths: Sequence[str]) -> Callable[[Any], bool]:
    exact: set[str] = set()
    prefixes: list[str] = []
    for path in paths:
        trimmed = path.rstrip("/")
        if path and not trimmed:
            exact.add("/")
            prefixes.append("/")
        else:
            exact.add(trimmed)
            prefixes.append(trimmed + "/")
    exact_set, prefix_tuple = frozenset(exact), tuple(prefixes)
    return lambda value: value in exact_set or value.startswith(prefix_tuple)
