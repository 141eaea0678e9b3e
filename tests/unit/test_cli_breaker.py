"""``autotrader breaker`` through click's CliRunner against the state database of a temporary home."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from autotrader_assets.cli import main
from autotrader_assets.commands.breaker import group
from autotrader_assets.settings import get_settings
from deploy_ops.db import make_engine
from deploy_ops.trading.breaker import TRIP_EVENT, BreakerStore

AT = pd.Timestamp("2024-03-02 10:15", tz="UTC")


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTRADER_HOME", str(tmp_path))
    for name in ("AUTOTRADER_ENV", "AUTOTRADER_REGISTRY_URL"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    url = get_settings().registry_url
    yield BreakerStore(url)
    make_engine(url).dispose()
    get_settings.cache_clear()


def run(*args: str):
    return CliRunner().invoke(group, list(args), catch_exceptions=False)


def trip(store: BreakerStore):
    details = {"equity": 93_500.0, "day_loss": 0.065, "drawdown": 0.065}
    return store.trip("daily loss 6.50% > 5.00% of the day's opening equity", details, at=AT)


def test_breaker_is_a_group_of_the_autotrader_cli(store):
    result = CliRunner().invoke(main, ["breaker", "status"], catch_exceptions=False)
    assert result.exit_code == 0
    assert "armed" in result.output


def test_status_shows_a_trip_in_text_and_json(store):
    assert "armed (not tripped)" in run("status").output
    trip(store)
    text = run("status")
    assert text.exit_code == 0
    assert "TRIPPED" in text.output and "6.50%" in text.output and "93,500.00" in text.output
    assert AT.isoformat() in text.output
    assert "autotrader breaker reset --approved-by NAME --reason TEXT" in text.output
    data = json.loads(run("status", "--json").output)
    assert data["tripped"] is True and data["tripped_at"] == AT.isoformat()
    assert data["details"]["equity"] == 93_500.0


@pytest.mark.parametrize(
    "args, complaint",
    [
        (["reset", "--reason", "fixed"], "Missing option '--approved-by'"),
        (["reset", "--approved-by", "alice"], "Missing option '--reason'"),
        (["reset", "--approved-by", "  ", "--reason", "fixed"], "must not be blank"),
        (["reset", "--approved-by", "alice", "--reason", ""], "must not be blank"),
    ],
)
def test_reset_refuses_without_approver_and_reason(store, args, complaint):
    trip(store)
    result = run(*args)
    assert result.exit_code == 2
    assert complaint in result.output
    assert store.status().tripped
    assert [r.action for r in store.history()] == ["trip"]


def test_reset_with_approval_writes_the_audit_row_then_refuses_a_second_time(store):
    trip(store)
    result = run("reset", "--approved-by", "alice", "--reason", "rolled back to v3, loss explained")
    assert result.exit_code == 0, result.output
    assert "cleared by alice" in result.output
    status = store.status()
    assert not status.tripped and status.reset_by == "alice"
    reset_row = store.history()[0]
    assert (reset_row.action, reset_row.approved_by, reset_row.reason) == (
        "reset",
        "alice",
        "rolled back to v3, loss explained",
    )
    assert "armed" in run("status").output and "alice" in run("status").output

    again = run("reset", "--approved-by", "bob", "--reason", "again")
    assert again.exit_code == 1
    assert "not tripped" in again.output
    assert len(store.history()) == 2


def test_history_lists_trips_and_resets_newest_first(store):
    assert "no trips recorded" in run("history").output
    trip(store)
    run("reset", "--approved-by", "alice", "--reason", "ok")
    lines = run("history").output.strip().splitlines()
    assert "reset" in lines[0] and "approved by alice" in lines[0]
    assert "trip" in lines[1]
    data = json.loads(run("history", "--json", "--limit", "1").output)
    assert [d["action"] for d in data] == ["reset"]
    assert len(store.events.events_since(0, kinds=[TRIP_EVENT])) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["reset", "--approved-by", "alice\n  9  2024-01-01  reset  approved by mallory", "--reason", "ok"],
        ["reset", "--approved-by", "alice", "--reason", "ok\n  7  2024-01-01  reset: forged"],
        ["reset", "--approved-by", "alice", "--reason", "ok\r\x1b[2Kfine"],
        ["reset", "--approved-by", "ali\u202ece", "--reason", "ok"],
    ],
)
def test_reset_refuses_control_characters_and_history_stays_one_row_per_record(store, args):
    trip(store)
    result = run(*args)
    assert result.exit_code == 2
    assert "must be one line of printable text" in result.output
    assert store.status().tripped
    lines = run("history").output.strip().splitlines()
    assert len(lines) == 1 and "trip" in lines[0]


def test_the_breaker_store_refuses_control_characters_whoever_calls_it(store):
    from deploy_ops.trading.breaker import BreakerError

    trip(store)
    with pytest.raises(BreakerError, match="approved_by must be one line of printable text"):
        store.reset(approved_by="alice\nbob", reason="ok")
    with pytest.raises(BreakerError, match=r"reason must be one line of printable text; it contains \\t"):
        store.reset(approved_by="alice", reason="ok\there")
    assert store.status().tripped and [r.action for r in store.history()] == ["trip"]
