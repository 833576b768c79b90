"""Short, bounded renderings of values for error messages.

Values in configuration and rule files may be huge (a YAML alias bomb is a few lines that stand
for billions of items) or secret-bearing: a message quotes at most a short prefix, computed
without walking the whole value.
"""

from __future__ import annotations

import reprlib

__all__ = ["printable", "short"]

class _ShortRepr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:  # repr() of a huge int is slow, and refused past 4300 digits
            return f"<integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)


_REPR = _ShortRepr()
_REPR.maxlevel = 3
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlong = 40
for _name in ("maxlist", "maxtuple", "maxdict", "maxset", "maxfrozenset", "maxdeque", "maxarray"):
    setattr(_REPR, _name, 4)


def short(value: object, limit: int = 60) -> str:
    """`repr(value)`, cut to about `limit` characters, in bounded time and memory."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a repr that fails must not turn an error message into a crash
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def printable(text: str) -> str:
    """`text` with control and other non-printable characters escaped (`\\n`, `\\x0c`), so a
    key or a name from a file cannot break an error message into forged lines."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )
