"""DeploymentStateStore: slots, the routing table (atomic changes), events and deployments,
on SQLite and on the PostgreSQL server at 127.0.0.1:5432."""

from __future__ import annotations

import datetime as dt
import os
import threading
import uuid

import numpy as np
import pytest
import sqlalchemy as sa

from deploy_ops.db import make_engine
from deploy_ops.state import (
    DEFAULT_ROUTE,
    DeploymentInProgressError,
    DeploymentNotFoundError,
    DeploymentStateStore,
    RoutingError,
    StateError,
    metadata,
)

PG_ADMIN_URL = os.environ.get("AUTOTRADER_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
INSTRUMENTS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "AVAXUSDT"]


@pytest.fixture(scope="module")
def pg_url():
    """A throw-away database on the local server, dropped at the end of the module."""
    admin = sa.create_engine(
        PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg2://"), isolation_level="AUTOCOMMIT"
    )
    name = f"autotrader_state_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc.orig}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    make_engine(url).dispose()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request, tmp_path):
    if request.param == "sqlite":
        return DeploymentStateStore(f"sqlite:///{tmp_path / 'state.db'}")
    url = request.getfixturevalue("pg_url")
    store = DeploymentStateStore(url)
    with store.engine.begin() as conn:  # the database is per module; every test starts empty
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
    return store


# -- slots -------------------------------------------------------------------------------------
def test_slot_roundtrip_and_status_change(store):
    assert store.get_slot("blue") is None
    recorded = store.set_slot(
        "blue", status="starting", version="v3", url="http://127.0.0.1:9001", host="127.0.0.1", port=9001, pid=4242
    )
    got = store.get_slot("blue")
    assert got == recorded
    assert got.updated_at.tzinfo is not None
    assert abs(got.updated_at - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(seconds=30)
    assert not got.is_ready

    ready = store.set_slot_status("blue", "ready")
    assert ready.is_ready and ready.version == "v3" and ready.port == 9001
    assert set(store.slots()) == {"blue"}

    # a full set clears the fields not given: a stopped slot keeps no stale pid
    store.set_slot("blue", status="stopped", version="v3")
    assert store.get_slot("blue").pid is None


def test_slot_rejects_bad_input_without_writing(store):
    with pytest.raises(StateError, match="unknown slot 'purple'"):
        store.set_slot("purple", status="ready")
    with pytest.raises(StateError, match="unknown slot status 'running'"):
        store.set_slot("green", status="running")
    with pytest.raises(StateError, match="never been recorded"):
        store.set_slot_status("green", "ready")
    assert store.slots() == {}


# -- routing -----------------------------------------------------------------------------------
def test_route_uses_own_row_then_default(store):
    with pytest.raises(RoutingError, match="no route for 'BTCUSDT'"):
        store.route("BTCUSDT")
    store.set_routes({DEFAULT_ROUTE: "blue"})
    assert store.route("BTCUSDT") == "blue"
    table = store.set_routes({"BTCUSDT": "green", "ETHUSDT": "green"})
    assert table == {DEFAULT_ROUTE: "blue", "BTCUSDT": "green", "ETHUSDT": "green"}
    assert store.route("BTCUSDT") == "green"
    assert store.route("SOLUSDT") == "blue"
    assert store.instruments_on("green", INSTRUMENTS) == ["BTCUSDT", "ETHUSDT"]
    assert store.instruments_on("blue", INSTRUMENTS) == INSTRUMENTS[2:]


def test_switch_all_and_replace(store):
    store.set_routes({DEFAULT_ROUTE: "blue", "BTCUSDT": "green"})
    assert store.switch_all("green") == {DEFAULT_ROUTE: "green", "BTCUSDT": "green"}
    assert all(store.route(i) == "green" for i in INSTRUMENTS)
    assert store.set_routes({DEFAULT_ROUTE: "blue"}, replace=True) == {DEFAULT_ROUTE: "blue"}
    assert store.route("BTCUSDT") == "blue"


def test_set_routes_validates_everything_before_writing(store):
    store.set_routes({DEFAULT_ROUTE: "blue"})
    with pytest.raises(StateError, match="unknown slot 'purple'"):
        store.set_routes({"BTCUSDT": "green", "ETHUSDT": "purple"})
    with pytest.raises(StateError, match="instrument must be"):
        store.set_routes({"": "green"})
    with pytest.raises(StateError, match="empty mapping"):
        store.set_routes({}, replace=True)
    with pytest.raises(StateError, match="unknown slot"):
        store.switch_all("red")
    assert store.routing_table() == {DEFAULT_ROUTE: "blue"}


@pytest.mark.parametrize("replace", [True, False])
def test_readers_never_see_a_half_applied_routing_change(store, replace):
    """A writer flips every instrument between blue and green while a second store (as another
    process would) reads: each read must show one whole mapping, never a mix."""
    all_blue = {DEFAULT_ROUTE: "blue", **{i: "blue" for i in INSTRUMENTS}}
    all_green = {DEFAULT_ROUTE: "green", **{i: "green" for i in INSTRUMENTS}}
    store.set_routes(all_blue, replace=True)
    reader = DeploymentStateStore(store.url)
    stop = threading.Event()
    seen: list[dict[str, str]] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            while not stop.is_set():
                seen.append(reader.routing_table())
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for n in range(40):
            store.set_routes(all_green if n % 2 == 0 else all_blue, replace=replace)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, errors
    assert len(seen) > 5
    mixed = [table for table in seen if table not in (all_blue, all_green)]
    assert mixed == []


# -- events ------------------------------------------------------------------------------------
def test_event_log_pages_by_id_and_filters(store):
    assert store.last_event_id() == 0
    first = store.record_event(
        "rollout_stage", "canary started", details={"stage": "canary", "p99_ms": np.float64(3.5)}
    )
    second = store.record_event(
        "rollback",
        "error rate 4% > 1%",
        severity="critical",
        details={"error_rate": 0.04, "at": dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)},
    )
    third = store.record_event("drift", "PSI 0.25 on rsi_14", severity="warning")
    assert first.id < second.id < third.id
    assert store.last_event_id() == third.id

    everything = store.events_since(0)
    assert [e.id for e in everything] == [first.id, second.id, third.id]
    assert everything[0].details == {"stage": "canary", "p99_ms": 3.5}
    assert everything[1].details["at"] == "2024-01-01T00:00:00+00:00"
    assert everything[0].at.tzinfo is not None

    assert [e.id for e in store.events_since(first.id)] == [second.id, third.id]
    assert [e.kind for e in store.events_since(0, kinds=["rollback"])] == ["rollback"]
    assert [e.kind for e in store.events_since(0, min_severity="warning")] == ["rollback", "drift"]
    assert [e.kind for e in store.events_since(0, min_severity="critical")] == ["rollback"]
    assert len(store.events_since(0, limit=2)) == 2


def test_bad_event_is_rejected_and_nothing_written(store):
    with pytest.raises(StateError, match="JSON-serialisable"):
        store.record_event("drift", "psi", details={"psi": float("nan")})
    with pytest.raises(StateError, match="JSON-serialisable"):
        store.record_event("drift", "psi", details={"obj": object()})
    with pytest.raises(StateError, match="unknown severity 'fatal'"):
        store.record_event("drift", "psi", severity="fatal")
    with pytest.raises(StateError, match="event kind"):
        store.record_event("", "psi")
    assert store.events_since(0) == []


# -- deployments -------------------------------------------------------------------------------
def test_deployment_lifecycle_and_single_running(store):
    dep = store.start_deployment("v7", slot="green", stage="canary")
    assert dep.is_running and store.active_deployment() == dep
    with pytest.raises(DeploymentInProgressError, match=f"deployment {dep.id} of version v7, stage canary"):
        store.start_deployment("v8")

    moved = store.update_deployment(dep.id, stage="25%")
    assert moved.stage == "25%" and moved.is_running
    done = store.finish_deployment(dep.id, "rolled_back", reason="p99 310 ms > 200 ms")
    assert (done.status, done.reason) == ("rolled_back", "p99 310 ms > 200 ms")
    assert done.finished_at is not None and done.finished_at >= done.started_at
    assert store.active_deployment() is None
    with pytest.raises(StateError, match="already finished"):
        store.finish_deployment(dep.id, "succeeded")
    with pytest.raises(StateError, match="already finished"):
        store.update_deployment(dep.id, stage="50%")
    with pytest.raises(StateError, match="terminal status"):
        store.finish_deployment(dep.id, "running")

    nxt = store.start_deployment("v8")
    assert [d.id for d in store.deployments()] == [nxt.id, dep.id]
    with pytest.raises(DeploymentNotFoundError):
        store.get_deployment(nxt.id + 100)


def test_concurrent_starts_let_exactly_one_deployment_run(store):
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def start(n: int) -> None:
        own = DeploymentStateStore(store.url)
        barrier.wait()
        try:
            own.start_deployment(f"v{n}")
            outcomes.append("started")
        except DeploymentInProgressError:
            outcomes.append("refused")

    threads = [threading.Thread(target=start, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(outcomes) == ["refused", "refused", "refused", "started"]
    assert len([d for d in store.deployments() if d.is_running]) == 1
