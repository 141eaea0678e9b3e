"""Helpers shared by the connector tests: a fake clock, query parsing, the shared data folder."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.pipeline import SHARED_DATA


class FakeClock:
    """Wall clock that moves only when the code under test sleeps."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def query(call) -> dict[str, str]:
    """The query string of a recorded ``responses`` call, one value per key."""
    return {k: v[0] for k, v in parse_qs(urlsplit(call.request.url).query).items()}


def shared_data_dir() -> Path:
    """../shared/data, or skip the test with the reason."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared market data folder {SHARED_DATA} is absent (set AUTOTRADER_SHARED_DATA to run)")
    return SHARED_DATA
