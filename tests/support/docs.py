"""Helpers for tests that hold the docs to the code (runbook links, headings)."""

from __future__ import annotations

import re
from pathlib import Path


def heading_anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in path.read_text().splitlines():
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if m:
            out.add(re.sub(r"[^a-z0-9 -]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out
