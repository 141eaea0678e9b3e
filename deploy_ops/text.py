"""Free text: the checks on text a caller must supply (an actor, a reason, a resource name), and
text cut to a length before it is stored or shown, with a visible mark where it was cut.

Exception messages can be arbitrarily long (a serving log tail, a whole HTTP body, a pandas
repr); events, deployment reasons, gate details and error samples keep a readable size. The
named limits below are the only sizes deploy_ops and the code location use for stored text;
presentation code passes its own column widths.
"""
from __future__ import annotations

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


def required_text(name: str, value: Any, *, max_len: int | None = None,
                  error: type[Exception] = ValueError) -> str:
    """``value`` without surrounding blanks; ``error`` naming ``name`` when it is not a string,
    is blank, or is longer than ``max_len`` once stripped.

    ``error`` lets a store raise its own refusal (``BreakerError``) for the same rule.
    """
    if not isinstance(value, str) or not value.strip():
        shown = truncate(repr(value), EXCERPT)
        raise error(f"{name} is required and must be a non-blank string, got {shown}")
    value = value.strip()
    if max_len is not None and len(value) > max_len:
        raise error(f"{name} must be at most {max_len} characters, got {len(value)}")
    return value


def optional_text(name: str, value: Any) -> str:
    """``value`` as given, ``""`` for None; ValueError naming ``name`` for anything but a string."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    return value
