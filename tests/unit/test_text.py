"""The one truncation helper: text that fits is kept, longer text is cut with a visible mark."""

from __future__ import annotations

import re

import pytest

from deploy_ops.text import MARK, MESSAGE, control_characters, escape_controls, optional_text, required_text, truncate


def test_text_that_fits_is_returned_unchanged():
    assert truncate("slot green stopped", 18) == "slot green stopped"
    assert truncate("x" * MESSAGE, MESSAGE) == "x" * MESSAGE


def test_longer_text_is_cut_to_the_limit_and_marked():
    cut = truncate("abcdefghij", 5)
    assert cut == "abcd" + MARK
    assert len(cut) == 5


def test_non_strings_are_rendered_first():
    assert truncate(ValueError("boom " * 100), 10) == "boom boom" + MARK


@pytest.mark.parametrize("limit", [0, -3, 2.5, True, None])
def test_a_limit_below_one_or_not_an_integer_is_refused(limit):
    with pytest.raises(ValueError, match="limit must be an integer >= 1"):
        truncate("text", limit)


def test_required_text_strips_and_refuses_blank_missing_or_long_text():
    assert required_text("actor", "  alice ") == "alice"
    for bad in ["", "   ", None, 7]:
        with pytest.raises(ValueError, match="actor is required and must be a non-blank string"):
            required_text("actor", bad)
    with pytest.raises(ValueError, match="approved_by must be at most 5 characters, got 6"):
        required_text("approved_by", " abcdef ", max_len=5)


def test_required_text_raises_the_callers_error():
    class Refused(ValueError):
        pass

    with pytest.raises(Refused, match="reason is required"):
        required_text("reason", "  ", error=Refused)


def test_optional_text_accepts_none_as_empty_and_refuses_other_types():
    assert optional_text("description", None) == ""
    assert optional_text("description", " kept as given ") == " kept as given "
    with pytest.raises(ValueError, match="description must be a string, got int"):
        optional_text("description", 3)


@pytest.mark.parametrize(
    "text, shown",
    [
        ("ok\nforged row", "\\n"),
        ("ok\r", "\\r"),
        ("tab\there", "\\t"),
        ("esc\x1b[31m", "\\x1b"),
        ("del\x7f", "\\x7f"),
        ("c1\x85", "\\x85"),
        ("line\u2028sep", "\\u2028"),
        ("bidi\u202etxt", "\\u202e"),
        ("zero\u200bwidth", "\\u200b"),
    ],
)
def test_control_characters_are_refused_by_both_checks_naming_them(text, shown):
    assert control_characters(text) == [shown]
    with pytest.raises(ValueError, match="reason must be one line of printable text; it contains " + re.escape(shown)):
        required_text("reason", text)
    with pytest.raises(ValueError, match="description must be one line of printable text"):
        optional_text("description", text)


def test_a_surrounding_newline_is_refused_not_stripped_into_an_accepted_value():
    with pytest.raises(KeyError, match="approved_by must be one line"):
        required_text("approved_by", "alice\n", error=KeyError)


def test_printable_text_in_any_script_is_accepted():
    assert required_text("reason", "  rollback après incident — 障害 ✓  ") == "rollback après incident — 障害 ✓"
    assert optional_text("description", "ünïcode, emoji 🚀, spaces") == "ünïcode, emoji 🚀, spaces"
    assert control_characters("plain") == []


def test_escape_controls_makes_composed_text_storable():
    composed = escape_controls("slot blue did not start:\nTraceback...\n\x1b[31mboom")
    assert composed == "slot blue did not start:\\nTraceback...\\n\\x1b[31mboom"
    assert required_text("reason", composed) == composed
