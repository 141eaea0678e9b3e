"""The one truncation helper: text that fits is kept, longer text is cut with a visible mark."""
from __future__ import annotations

import pytest

from deploy_ops.text import MARK, MESSAGE, truncate


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
