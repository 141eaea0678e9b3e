"""Free text: the checks on text a caller must supply (an actor, a reason, a resource name), and
text cut to a length before it is stored or shown, with a visible mark where it was cut.

Stored text is one line of printable characters: ``required_text`` and ``optional_text`` refuse
control characters (a newline in a ``--reason`` would print as a forged extra row of `registry
history`), and ``escape_controls`` escapes them in text a program composed.

Exception messages can be arbitrarily long (a serving log tail, a whole HTTP body, a pandas
repr); events, deployment reasons, gate details and error samples keep a readable size. The
named limits below are the only sizes deploy_ops and the code location use for stored text;
presentation code passes its own column widths.
"""

from __future__ import annotations

import unicodedata
from typing import Any

#: An event message or a deployment's closing reason: one paragraph an operator reads.
MESSAGE = 2000
#: A failure carrying the tail of a process log (a slot that would not start).
LOG_TAIL = 500
#: One error inside a report: a gate's detail, an error sample, a failed check.
DETAIL = 300
#: A quoted excerpt of a malformed payload in a refusal message.
EXCERPT = 200

#: Appended where text was cut, so a reader never takes a cut message for the whole one.
MARK = "…"


def truncate(text: object, limit: int) -> str:
    """``str(text)`` if it fits in ``limit`` characters, else its first ``limit - 1`` and :data:`MARK`.

    The result is never longer than ``limit``. ``limit`` must be at least 1 (a zero budget
    would silently drop the message).
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be an integer >= 1, got {limit!r}")
    text = str(text)
    if len(text) <= limit:
        return text
    return text[: limit - 1] + MARK


def control_characters(text: str) -> list[str]:
    """The characters of ``text`` that are not printable text, each shown as its escape.

    Control characters (newline, tab, carriage return, escape, DEL, C1), line and paragraph
    separators, and format characters such as the bidirectional overrides: in a one-line
    field they forge rows in `registry history` / `breaker history` or hide what was typed.
    """
    found = []
    for ch in text:
        if unicodedata.category(ch) in _REFUSED_CATEGORIES and ch not in found:
            found.append(ch)
    return [ch.encode("unicode_escape").decode("ascii") for ch in found]


#: Unicode categories refused in stored text: Cc control, Cf format (bidi overrides, zero-width),
#: Zl line and Zp paragraph separators. (Cs, Co and Cn cannot come from a valid UTF-8 terminal.)
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def _refuse_control(name: str, value: str, error: type[Exception]) -> str:
    bad = control_characters(value)
    if bad:
        raise error(
            f"{name} must be one line of printable text; it contains {', '.join(bad)} "
            f"(got {truncate(repr(value), EXCERPT)})"
        )
    return value


def required_text(name: str, value: Any, *, max_len: int | None = None, error: type[Exception] = ValueError) -> str:
    """``value`` without surrounding blanks; ``error`` naming ``name`` when it is not a string,
    is blank, is longer than ``max_len`` once stripped, or holds a control character
    (:func:`control_characters`) anywhere, surrounding blanks included: a refused value is
    never quietly altered into an accepted one.

    ``error`` lets a store raise its own refusal (``BreakerError``) for the same rule.
    """
    if not isinstance(value, str) or not value.strip():
        shown = truncate(repr(value), EXCERPT)
        raise error(f"{name} is required and must be a non-blank string, got {shown}")
    _refuse_control(name, value, error)
    value = value.strip()
    if max_len is not None and len(value) > max_len:
        raise error(f"{name} must be at most {max_len} characters, got {len(value)}")
    return value


def optional_text(name: str, value: Any, *, error: type[Exception] = ValueError) -> str:
    """``value`` as given, ``""`` for None; ``error`` naming ``name`` for anything but a string
    or for a control character (as :func:`required_text`)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise error(f"{name} must be a string, got {type(value).__name__}")
    return _refuse_control(name, value, error)


def escape_controls(text: object) -> str:
    """``str(text)`` with every control character replaced by its visible escape (a newline
    becomes ``\\n``): for text a program composed (an exception message, a log tail) that goes
    where :func:`required_text` is checked. People's input is refused instead, so what they
    typed is never stored altered."""
    out = []
    for ch in str(text):
        if unicodedata.category(ch) in _REFUSED_CATEGORIES:
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)
