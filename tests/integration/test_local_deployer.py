"""LocalDeployer with real slot processes: blue + green, routing through the state store, a
kill -9 seen by the health probe, refusals, clean stops, and no leaked processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from deploy_ops.models.bundle import ModelBundle, StandardScaler, build_model
from deploy_ops.procs import pid_running
from deploy_ops.serving.client import RoutedClient, ServingError
from deploy_ops.slots.local import LocalDeployer, MissingTokenError, SlotInUseError, SlotStartError
from deploy_ops.state import DEFAULT_ROUTE, DeploymentStateStore

FEATURES = ["ret_1", "ret_5", "rsi_14", "volume_z_60"]


def make_bundle(path: Path, seed: int) -> tuple[str, ModelBundle]:
    """A tiny bundle saved at ``path``; a different seed gives a different model."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    bundle = ModelBundle(
        model=build_model("mlp", len(FEATURES), hidden=(8,)),
        model_class="mlp",
        model_kwargs={"hidden": [8]},
        scaler=StandardScaler.fit(rng.normal(size=(100, len(FEATURES)))),
        feature_names=list(FEATURES),
    )
    return bundle.save(str(path)), bundle


@pytest.fixture
def state(tmp_path):
    return DeploymentStateStore(f"sqlite:///{tmp_path / 'state.db'}")


@pytest.fixture
def deployer(state, tmp_path):
    deployer = LocalDeployer(state, tmp_path / "slots", ready_timeout=60, stop_grace=5)
    yield deployer
    deployer.stop_all()
    leaked = [info.pid for info in state.slots().values() if info.pid and pid_running(info.pid)]
    assert leaked == [], f"slot processes left running: {leaked}"


@pytest.fixture
def bundles(tmp_path):
    made = {}
    for version, seed in (("v1", 1), ("v2", 2)):
        path = tmp_path / f"{version}.pt"
        sha, bundle = make_bundle(path, seed)
        made[version] = (path, sha, bundle)
    return made


def test_blue_green_routing_kill_and_stop(state, deployer, bundles, tmp_path):
    path1, sha1, bundle1 = bundles["v1"]
    path2, sha2, bundle2 = bundles["v2"]
    blue = deployer.start_slot("blue", path1, sha1, "v1")
    green = deployer.start_slot("green", path2, sha2, "v2")
    assert blue.is_ready and green.is_ready and blue.port != green.port
    assert state.get_slot("green").pid == green.pid and pid_running(green.pid)
    assert [e.kind for e in state.events_since(0)] == ["slot_started", "slot_started"]

    state.set_routes({DEFAULT_ROUTE: "blue", "BTCUSDT": "green", "ETHUSDT": "green"})
    rows = np.random.default_rng(5).normal(size=(4, len(FEATURES)))
    with RoutedClient(state, cache_seconds=0) as client:
        on_green = client.predict("BTCUSDT", rows)
        on_blue = client.predict("SOLUSDT", rows)
        assert on_green.model_version == "v2" and on_blue.model_version == "v1"
        np.testing.assert_allclose(on_green.probabilities, bundle2.predict_proba(rows), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(on_blue.probabilities, bundle1.predict_proba(rows), rtol=1e-6, atol=1e-9)
        assert all(deployer.slot_health(s).healthy for s in ("blue", "green"))

        os.kill(green.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while deployer.is_alive("green") and time.monotonic() < deadline:
            time.sleep(0.05)
        health = deployer.slot_health("green")
        assert (health.pid_alive, health.http_ok, health.healthy) == (False, False, False)
        assert f"process {green.pid} is not running" in health.detail
        assert deployer.slot_health("blue").healthy

        marked = deployer.reconcile()
        assert [h.slot for h in marked] == ["green"]
        assert state.get_slot("green").status == "failed"
        assert state.events_since(0, kinds=["slot_down"])[0].severity == "critical"
        with pytest.raises(ServingError, match="routed to slot green, which is failed"):
            client.predict("BTCUSDT", rows)

        # a live slot that still receives traffic is neither stopped nor replaced by accident
        with pytest.raises(SlotInUseError, match=r"routes \['\*'\] still point at it"):
            deployer.stop_slot("blue")
        with pytest.raises(SlotInUseError):
            deployer.start_slot("blue", path2, sha2, "v2")
        assert client.predict("SOLUSDT", rows).model_version == "v1"

    # another deployer (the CLI, a later Dagster run) stops a slot it did not start
    other = LocalDeployer(state, tmp_path / "slots")
    state.switch_all("green")
    stopped = other.stop_slot("blue")
    assert stopped.status == "stopped"
    deadline = time.monotonic() + 5
    while pid_running(blue.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_running(blue.pid)
    # the starting deployer reaps its own child; under load the exit status can lag /proc
    while deployer.is_alive("blue") and time.monotonic() < deadline + 5:
        time.sleep(0.05)
    assert not deployer.is_alive("blue")
    assert "slot_stopped" in [e.kind for e in state.events_since(0)]


def test_checksum_mismatch_fails_fast_with_the_reason(state, deployer, bundles):
    path, _, _ = bundles["v1"]
    started = time.monotonic()
    with pytest.raises(
        SlotStartError, match="refused to become ready: ArtifactIntegrityError: artifact checksum mismatch"
    ):
        deployer.start_slot("green", path, "ab" * 32, "v1")
    assert time.monotonic() - started < 30  # failed on the answer, not on the ready timeout
    info = state.get_slot("green")
    assert info.status == "failed" and not pid_running(info.pid)
    failure = state.events_since(0, kinds=["slot_start_failed"])
    assert len(failure) == 1 and failure[0].severity == "critical"
    assert "checksum mismatch" in deployer.log_path("green").read_text()


def test_start_errors_before_any_process(deployer, state, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        deployer.start_slot("blue", tmp_path / "missing.pt", "0" * 64, "v1")
    with pytest.raises(ValueError, match="unknown slot 'purple'"):
        deployer.start_slot("purple", tmp_path / "missing.pt", "0" * 64, "v1")
    with pytest.raises(RuntimeError, match="no resolver"):
        deployer.start_version("blue", "v1")
    assert state.slots() == {}


def test_process_that_exits_early_reports_its_log(state, deployer, bundles):
    path, sha, _ = bundles["v1"]
    with pytest.raises(SlotStartError, match=r"exited with code 2 before becoming ready(.|\n)*sha256 must be 64"):
        deployer.start_slot("blue", path, "not-a-sha256", "v1")
    assert state.get_slot("blue").status == "failed"


def test_a_deployer_that_requires_a_token_refuses_before_starting(state, tmp_path, bundles):
    path, sha, _ = bundles["v1"]
    deployer = LocalDeployer(state, tmp_path / "slots", require_token=True, instruments=["BTCUSDT"])
    with pytest.raises(MissingTokenError, match="requires a serving token and none is set"):
        deployer.start_slot("blue", path, sha, "v1")
    assert state.slots() == {}  # nothing was started or recorded
    assert not (tmp_path / "slots" / "blue.log").exists()


def test_the_deployer_hands_its_slots_the_token_and_instruments(state, tmp_path, bundles):
    path, sha, bundle = bundles["v1"]
    rows = np.random.default_rng(5).normal(size=(2, len(FEATURES)))
    with LocalDeployer(
        state, tmp_path / "slots", token="tok-3141", require_token=True, instruments=["BTCUSDT", "ETHUSDT"]
    ) as deployer:
        info = deployer.start_slot("blue", path, sha, "v1")
        assert "tok-3141" not in (Path("/proc") / str(info.pid) / "cmdline").read_bytes().decode(errors="replace")
        state.switch_all("blue")
        with RoutedClient(state, token="tok-3141") as client:
            np.testing.assert_allclose(
                client.predict("ETHUSDT", rows).probabilities, bundle.predict_proba(rows), rtol=1e-6, atol=1e-9
            )
            with pytest.raises(ServingError) as unknown:
                client.predict("SOLUSDT", rows)
            assert unknown.value.status == 422 and "unknown instrument 'SOLUSDT'" in str(unknown.value)
        with RoutedClient(state) as anonymous, pytest.raises(ServingError) as denied:
            anonymous.predict("ETHUSDT", rows)
        assert denied.value.status == 401
        deployer.stop_slot("blue", force=True)


def test_resolver_and_in_place_replacement_of_an_idle_slot(state, tmp_path, bundles):
    registry = {version: (str(path), sha) for version, (path, sha, _) in bundles.items()}
    with LocalDeployer(state, tmp_path / "slots", resolver=registry.__getitem__) as deployer:
        first = deployer.start_version("green", "v1")
        # nothing routes to green yet, so a new version may replace the old process in place
        second = deployer.start_version("green", "v2")
        assert second.version == "v2" and second.pid != first.pid
        assert not pid_running(first.pid)
        assert deployer.slot_health("green").healthy
    assert state.get_slot("green").status == "stopped" and not pid_running(second.pid)


def test_a_reused_pid_is_never_signalled(state, tmp_path):
    """The store says blue runs as pid N, but N is now some other program: leave it alone."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        state.set_slot("blue", status="ready", version="v1", url="http://127.0.0.1:9", pid=bystander.pid)
        deployer = LocalDeployer(state, tmp_path / "slots")
        assert not deployer.is_alive("blue")
        assert deployer.stop_slot("blue").status == "stopped"
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait(timeout=10)


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(state, tmp_path):
    """A slot stuck in shutdown must still go away: SIGKILL after the grace period."""
    # The marker argument makes the cmdline look like a serving process, as a wedged one would.
    term_ignoring = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)",
            "deploy_ops.serving",
        ],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert term_ignoring.stdout.readline() == b"up\n"  # the SIGTERM handler is installed
        state.set_slot("green", status="ready", version="v1", url="http://127.0.0.1:9", pid=term_ignoring.pid)
        deployer = LocalDeployer(state, tmp_path / "slots")  # not the parent: the /proc path is used
        assert deployer.is_alive("green")
        started = time.monotonic()
        assert deployer.stop_slot("green", grace=0.5).status == "stopped"
        assert 0.5 <= time.monotonic() - started < 10
        assert term_ignoring.wait(timeout=10) == -signal.SIGKILL
    finally:
        if term_ignoring.poll() is None:
            term_ignoring.kill()
            term_ignoring.wait(timeout=10)


def test_port_already_taken_is_reported(state, deployer, bundles):
    path, sha, _ = bundles["v1"]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(SlotStartError, match=f"port of http://127.0.0.1:{port} already in use"):
            deployer.start_slot("blue", path, sha, "v1", port=port)
    assert state.get_slot("blue").status == "failed"
