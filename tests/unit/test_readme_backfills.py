"""The README's backfill examples select what their comments say: the same range with both CLIs."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_both_clis_backfill_the_range_the_comment_names():
    section = _section("Backfills from the Dagster CLI")
    ranges = re.findall(r'--partition-range "([^"]+)"', section)
    assert len(ranges) == 2 and ranges[0] == ranges[1], ranges
    first, last = ranges[0].split("...")
    (comment,) = re.findall(r"# (\d+-\d+ \w+ \d{4}), (\w+) and (\w+)", section)
    assert (first.split("|")[1], last.split("|")[1]) == (comment[1], comment[2])
