"""The two serving slots' names: the one definition every module uses (no imports, so the
serving process, the deployers and the state store can all share it)."""

from __future__ import annotations

BLUE, GREEN = "blue", "green"
SLOTS: tuple[str, str] = (BLUE, GREEN)


def other_slot(slot: str) -> str:
    """The other physical slot; ValueError for a name that is not a slot."""
    if slot not in SLOTS:
        raise ValueError(f"unknown slot {slot!r}; slots are {SLOTS}")
    return GREEN if slot == BLUE else BLUE
