"""Free text cut to a length before it is stored or shown, with a visible mark where it was cut.

Exception messages can be arbitrarily long (a serving log tail, a whole HTTP body, a pandas
repr); events, deployment reasons, gate details and error samples keep a readable size. The
named limits below are the only sizes deploy_ops and the code location use for stored text;
presentation code passes its own column widths.
"""
from __future__ import annotations

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
