"""``shown(value)``: a user's value as error messages echo it, never longer than ``MAX_SHOWN_CHARS``.

Every message that repeats what a user gave (a config value, a key, a path, an override) goes through
:func:`shown`, so a 50 MB ``model.name`` or a deeply nested list gives a short line, not a 50 MB one.
Long values keep their start and say how long they were; what was cut never has to be built first.
"""

from __future__ import annotations

import reprlib

MAX_SHOWN_CHARS = 200  # of one echoed value
_MAX_INT_BITS = 400  # about 120 decimal digits; repr() of a huge int is slow or refused (4,300 digits)


def _describe_int(value: int) -> str:
    digits = int(value.bit_length() * 0.30103) + 1
    return f"{'-' if value < 0 else ''}<an integer of about {digits} digits>"


class _Repr(reprlib.Repr):
    def repr_int(self, value: int, level: int) -> str:
        if value.bit_length() > _MAX_INT_BITS:
            return _describe_int(value)
        return super().repr_int(value, level)


_repr = _Repr()
_repr.maxstring = MAX_SHOWN_CHARS
_repr.maxother = MAX_SHOWN_CHARS
_repr.maxlong = MAX_SHOWN_CHARS
_repr.maxlevel = 3
for _name in ("maxlist", "maxtuple", "maxdict", "maxset", "maxfrozenset", "maxdeque", "maxarray"):
    setattr(_repr, _name, 6)


def shown(value: object) -> str:
    """``repr(value)`` for a message, cut to at most ``MAX_SHOWN_CHARS`` characters.

    Strings longer than that show their first characters and their length; containers show their first
    few items; integers too long to print show their size.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > _MAX_INT_BITS:
        return _describe_int(value)
    if isinstance(value, str) and len(value) > MAX_SHOWN_CHARS:
        keep = MAX_SHOWN_CHARS - 40
        return f"{value[:keep]!r}... ({len(value):,} characters)"
    try:
        text = _repr.repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails must not turn a message into a traceback
        text = f"<a {type(value).__name__}>"
    if len(text) > MAX_SHOWN_CHARS:
        text = text[:MAX_SHOWN_CHARS - 3] + "..."
    return text


def cut(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """Plain text (another library's message, say) on one line, at most about ``limit`` characters."""
    head = " ".join(text[:2 * limit].split())
    if len(head) > limit or len(text) > 2 * limit:
        return f"{head[:limit]}... ({len(text):,} characters)"
    return head
