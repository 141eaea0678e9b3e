"""The serving app as a real process on loopback: readiness, correct predictions, auth, input
validation, metrics, checksum refusal and fault injection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from prometheus_client.parser import text_string_to_metric_families

from deploy_ops.models.bundle import ModelBundle, StandardScaler, build_model
from deploy_ops.serving.client import ServingClient, ServingError
from deploy_ops.serving.faults import FaultConfig
from deploy_ops.slots.local import free_port

TOKEN = "test-token-9f2c"
FEATURES = ["ret_1", "ret_5", "rsi_14", "volume_z_60"]
#: What the main slot serves (``--instruments``); every other symbol is refused.
INSTRUMENTS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def make_bundle(path: Path, seed: int = 0) -> tuple[str, ModelBundle]:
    """A tiny trained-shape bundle saved at ``path``; returns (sha256, bundle)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    scaler = StandardScaler.fit(rng.normal(0.0, 2.0, size=(200, len(FEATURES))))
    bundle = ModelBundle(
        model=build_model("mlp", len(FEATURES), hidden=(8,)),
        model_class="mlp",
        model_kwargs={"hidden": [8]},
        scaler=scaler,
        feature_names=list(FEATURES),
    )
    return bundle.save(str(path)), bundle


def serving_command(model: Path, sha256: str, port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "deploy_ops.serving",
        "--model",
        str(model),
        "--sha256",
        sha256,
        "--version",
        "v1",
        "--slot",
        "blue",
        "--port",
        str(port),
        *extra,
    ]


class Slot:
    """One serving process started straight from the command line (no deployer in between)."""

    def __init__(
        self,
        tmp: Path,
        model: Path,
        sha256: str,
        *,
        token: str | None = None,
        env: dict[str, str | None] | None = None,
        extra: list[str] = (),
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"slot-{self.port}.log"
        # The token variable in this process's environment must not reach the slot: the slot takes
        # its token from stdin only, which is what these tests check.
        child_env = {k: v for k, v in os.environ.items() if k != "AUTOTRADER_SERVING_TOKEN"}
        child_env.update({k: v for k, v in (env or {}).items() if v is not None})
        child_env["PYTHONPATH"] = str(PROJECT_ROOT)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                serving_command(model, sha256, self.port, *extra, "--token-stdin"),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE,
                env=child_env,
                start_new_session=True,
            )
            self.proc.stdin.write(f"{token or ''}\n".encode())
            self.proc.stdin.close()

    def wait_listening(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"slot exited early:\n{self.log()}"
            try:
                requests.get(f"{self.url}/health", timeout=0.5)
                return
            except requests.RequestException:
                time.sleep(0.05)
        raise AssertionError(f"slot never listened:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bundle") / "model.pt"
    sha, bundle = make_bundle(path)
    return path, sha, bundle


def make_overflowing_bundle(path: Path) -> str:
    """A linear model whose first two weights are +-1e38: rows of ordinary size overflow to +inf
    and -inf inside the network and sum to NaN, so its output is not finite though every input
    and every scaled input is."""
    model = build_model("logistic", len(FEATURES))
    with torch.no_grad():
        model.linear.weight.copy_(torch.tensor([[1e38, -1e38, 0.0, 0.0]]))
        model.linear.bias.zero_()
    scaler = StandardScaler(mean=np.zeros(len(FEATURES)), std=np.ones(len(FEATURES)))
    bundle = ModelBundle(
        model=model, model_class="logistic", model_kwargs={}, scaler=scaler, feature_names=list(FEATURES)
    )
    return bundle.save(str(path))


@pytest.fixture(scope="module")
def slots(bundle_file, tmp_path_factory):
    """Four processes started together so their imports overlap: the authenticated slot under
    test (serving three instruments), a fault-injection slot without a token, one given a wrong
    checksum, and one serving a model whose output overflows."""
    path, sha, _ = bundle_file
    tmp = tmp_path_factory.mktemp("slots")
    overflowing = tmp / "overflowing.pt"
    overflowing_sha = make_overflowing_bundle(overflowing)
    started = {
        "main": Slot(
            tmp,
            path,
            sha,
            token=TOKEN,
            extra=["--max-batch", "64", "--max-body-bytes", "65536", "--instruments", ",".join(INSTRUMENTS)],
        ),
        # the variables in its environment are ignored: the process takes its faults as arguments
        "faulty": Slot(
            tmp,
            path,
            sha,
            env={"AUTOTRADER_FAULT_ERROR_RATE": "0.0"},
            extra=["--fault-error-rate", "1.0", "--fault-latency-ms", "40"],
        ),
        "bad_checksum": Slot(tmp, path, "0" * 64, token=TOKEN),
        "overflowing": Slot(tmp, overflowing, overflowing_sha, token=TOKEN),
    }
    try:
        for slot in started.values():
            slot.wait_listening()
        yield started
    finally:
        for slot in started.values():
            slot.stop()


@pytest.fixture(scope="module")
def main_slot(slots):
    return slots["main"]


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post(url: str, body, headers=None) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"{url}/predict", data=data, headers=headers or auth(), timeout=5)


def metric_samples(url: str) -> dict[tuple[str, frozenset], float]:
    text = requests.get(f"{url}/metrics", timeout=5).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# -- readiness and predictions -----------------------------------------------------------------
def test_health_and_ready_without_token(main_slot, bundle_file):
    _, sha, _ = bundle_file
    health = requests.get(f"{main_slot.url}/health", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "alive"
    ready = requests.get(f"{main_slot.url}/ready", timeout=5).json()
    assert ready["ready"] is True
    assert (ready["slot"], ready["model_version"], ready["sha256"]) == ("blue", "v1", sha)
    assert ready["feature_names"] == FEATURES
    assert ready["pid"] == main_slot.proc.pid


def test_predict_rows_match_in_process_model(main_slot, bundle_file):
    _, _, bundle = bundle_file
    rows = np.random.default_rng(42).normal(0.0, 2.0, size=(16, len(FEATURES)))
    response = post(main_slot.url, {"instrument": "BTCUSDT", "rows": rows.tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["instrument"], body["model_version"], body["slot"]) == ("BTCUSDT", "v1", "blue")
    np.testing.assert_allclose(body["probabilities"], bundle.predict_proba(rows), rtol=1e-6, atol=1e-9)
    # the model is not constant: a test on constant output would pass for a broken server too
    assert np.ptp(body["probabilities"]) > 1e-3


def test_predict_features_by_name_in_any_order(main_slot, bundle_file):
    _, _, bundle = bundle_file
    rows = np.random.default_rng(7).normal(size=(3, len(FEATURES)))
    records = [dict(reversed(list(zip(FEATURES, map(float, row))))) for row in rows]
    response = post(main_slot.url, {"instrument": "ETHUSDT", "features": records})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["probabilities"], bundle.predict_proba(rows), rtol=1e-6, atol=1e-9)


def test_serving_client_predict_and_errors(main_slot, bundle_file):
    _, _, bundle = bundle_file
    rows = np.random.default_rng(3).normal(size=(5, len(FEATURES)))
    with ServingClient(main_slot.url, token=TOKEN) as client:
        result = client.predict("SOLUSDT", rows)
        probabilities, version, latency_ms = result
        np.testing.assert_allclose(probabilities, bundle.predict_proba(rows), rtol=1e-6, atol=1e-9)
        assert version == "v1" and 0 < latency_ms < 5000
        with pytest.raises(ServingError) as wrong_width:
            client.predict("SOLUSDT", [[1.0, 2.0]])
        assert wrong_width.value.status == 422
    with ServingClient(main_slot.url, token="wrong") as client:
        with pytest.raises(ServingError) as denied:
            client.predict("SOLUSDT", rows)
        assert denied.value.status == 401
    with ServingClient(f"http://127.0.0.1:{free_port()}", token=TOKEN, connect_timeout=0.5) as client:
        with pytest.raises(ServingError) as unreachable:
            client.predict("SOLUSDT", rows)
        assert unreachable.value.status is None


# -- auth ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [{}, auth("not-the-token"), {"Authorization": TOKEN}, {"Authorization": "Basic x"}])
def test_predict_requires_the_bearer_token(main_slot, headers):
    response = requests.post(
        f"{main_slot.url}/predict", json={"instrument": "BTCUSDT", "rows": [[0, 0, 0, 0]]}, headers=headers, timeout=5
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert TOKEN not in response.text


# -- input validation ----------------------------------------------------------------------------
ROW = [0.1, -0.2, 0.3, 1.5]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "malformed JSON"),
        (b"\xff\xfe", 400, "malformed JSON"),
        (b"[1, 2]", 422, "JSON object"),
        ({"rows": [ROW]}, 422, "missing 'instrument'"),
        ({"instrument": 5, "rows": [ROW]}, 422, "'instrument' must be"),
        ({"instrument": "", "rows": [ROW]}, 422, "'instrument' must be"),
        ({"instrument": "BTCUSDT"}, 422, "exactly one of"),
        ({"instrument": "BTCUSDT", "rows": [ROW], "features": [{}]}, 422, "exactly one of"),
        ({"instrument": "BTCUSDT", "rows": [ROW], "model": "x"}, 422, "unknown request fields ['model']"),
        ({"instrument": "BTCUSDT", "rows": []}, 422, "empty batch"),
        ({"instrument": "BTCUSDT", "rows": ROW}, 422, "rows[0] must be a list"),
        ({"instrument": "BTCUSDT", "rows": [ROW, ROW[:3]]}, 422, "rows[1] has 3 values; the model expects 4"),
        ({"instrument": "BTCUSDT", "rows": [ROW + [1.0]]}, 422, "has 5 values"),
        ({"instrument": "BTCUSDT", "rows": [[0.1, "0.2", 0.3, 1.5]]}, 422, "rows[0][1] is '0.2', not a number"),
        ({"instrument": "BTCUSDT", "rows": [[0.1, True, 0.3, 1.5]]}, 422, "not a number"),
        ({"instrument": "BTCUSDT", "rows": [[0.1, None, 0.3, 1.5]]}, 422, "not a number"),
        (
            b'{"instrument": "BTCUSDT", "rows": [[0.1, NaN, 0.3, 1.5]]}',
            422,
            "NaN or infinite values in rows at index [0]",
        ),
        (b'{"instrument": "BTCUSDT", "rows": [[1,2,3,4], [0.1, Infinity, 0.3, 1.5]]}', 422, "at index [1]"),
        (b'{"instrument": "BTCUSDT", "rows": [[0.1, 1e999, 0.3, 1.5]]}', 422, "NaN or infinite"),
        ({"instrument": "BTCUSDT", "rows": [[0.1, 10**400, 0.3, 1.5]]}, 422, "too large"),
        # finite in JSON and float64, but beyond float32 once scaled: the network would answer NaN
        (
            {"instrument": "BTCUSDT", "rows": [ROW, [0.1, 1e300, 0.3, 1.5]]},
            422,
            "row 1, feature 'ret_5': 1e+300 is outside the range the model can take",
        ),
        (
            {"instrument": "BTCUSDT", "features": [dict(zip(FEATURES, ROW), rsi_14=-1e300)]},
            422,
            "row 0, feature 'rsi_14'",
        ),
        (
            {"instrument": "DOGEUSDT", "rows": [ROW]},
            422,
            "unknown instrument 'DOGEUSDT': this slot serves BTCUSDT, ETHUSDT, SOLUSDT",
        ),
        (
            {"instrument": "BTCUSDT", "features": [dict(zip(FEATURES, ROW), zzz=1.0)]},
            422,
            "unknown feature names ['zzz']",
        ),
        (
            {"instrument": "BTCUSDT", "features": [dict(zip(FEATURES[:3], ROW))]},
            422,
            "missing feature names ['volume_z_60']",
        ),
        ({"instrument": "BTCUSDT", "features": [dict(zip(FEATURES, ROW), rsi_14="x")]}, 422, "not a number"),
        ({"instrument": "BTCUSDT", "features": [ROW]}, 422, "features[0] must be an object"),
        ({"instrument": "BTCUSDT", "rows": [ROW] * 65}, 413, "batch of 65 rows exceeds the limit of 64"),
        ({"instrument": "BTCUSDT", "rows": [ROW] * 64, "pad": "x" * 70000}, 413, "exceeds the limit of 65536"),
    ],
)
def test_malformed_input_gets_a_clear_4xx(main_slot, body, status, fragment):
    response = post(main_slot.url, body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_batch_at_the_limit_is_accepted(main_slot):
    response = post(main_slot.url, {"instrument": "BTCUSDT", "rows": [ROW] * 64})
    assert response.status_code == 200
    assert len(response.json()["probabilities"]) == 64


def test_unknown_path_and_method(main_slot):
    assert requests.get(f"{main_slot.url}/nope", timeout=5).status_code == 404
    assert requests.get(f"{main_slot.url}/predict", headers=auth(), timeout=5).status_code == 405


# -- metrics -------------------------------------------------------------------------------------
def test_metrics_count_requests_predictions_and_confidence(main_slot):
    base = dict(slot="blue", model_version="v1")
    before = metric_samples(main_slot.url)
    rows = np.random.default_rng(11).normal(size=(2, len(FEATURES))).tolist()
    probabilities = []
    for _ in range(3):
        probabilities += post(main_slot.url, {"instrument": "BTCUSDT", "rows": rows}).json()["probabilities"]
    assert post(main_slot.url, {"instrument": "BTCUSDT", "rows": []}).status_code == 422
    requests.post(f"{main_slot.url}/predict", json={}, timeout=5)  # no token: 401
    after = metric_samples(main_slot.url)

    def delta(name: str, **labels) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    ok = dict(base, endpoint="/predict", status="200")
    assert delta("autotrader_serving_requests_total", **ok) == 3
    assert delta("autotrader_serving_requests_total", **dict(ok, status="422")) == 1
    assert delta("autotrader_serving_requests_total", **dict(ok, status="401")) == 1
    assert delta("autotrader_serving_predictions_total", **base) == 6
    assert delta("autotrader_serving_prediction_confidence_count", **base) == 6
    expected_confidence = sum(abs(p - 0.5) * 2 for p in probabilities)
    assert delta("autotrader_serving_prediction_confidence_sum", **base) == pytest.approx(expected_confidence)
    confidences = np.abs(np.asarray(probabilities) - 0.5) * 2
    for le in ("0.1", "0.3", "0.5", "1.0", "+Inf"):
        bound = float(le)
        assert (
            delta("autotrader_serving_prediction_confidence_bucket", **base, le=le) == (confidences <= bound).sum()
        ), le
    latency = dict(base, endpoint="/predict")
    assert delta("autotrader_serving_request_duration_seconds_count", **latency) == 5
    # fine buckets exist at the low end and reach seconds at the top
    assert ("autotrader_serving_request_duration_seconds_bucket", frozenset(dict(latency, le="0.001").items())) in after
    assert ("autotrader_serving_request_duration_seconds_bucket", frozenset(dict(latency, le="5.0").items())) in after
    assert (
        sample(
            after,
            "autotrader_serving_model_info",
            slot="blue",
            model_version="v1",
            sha256=requests.get(f"{main_slot.url}/ready", timeout=5).json()["sha256"],
            model_class="mlp",
            n_features="4",
        )
        == 1
    )
    assert sample(after, "autotrader_serving_model_ready", **base) == 1
    assert sample(after, "autotrader_serving_fault_error_rate", **base) == 0


# -- refusal to become ready ---------------------------------------------------------------------
def test_checksum_mismatch_keeps_the_slot_unready(slots):
    slot = slots["bad_checksum"]
    assert requests.get(f"{slot.url}/health", timeout=5).status_code == 200
    ready = requests.get(f"{slot.url}/ready", timeout=5)
    assert ready.status_code == 503
    assert ready.json()["status"] == "failed"
    assert "checksum mismatch" in ready.json()["error"]
    refused = post(slot.url, {"instrument": "BTCUSDT", "rows": [ROW]})
    assert refused.status_code == 503 and "model not loaded" in refused.json()["error"]
    assert sample(metric_samples(slot.url), "autotrader_serving_model_ready", slot="blue", model_version="v1") == 0
    assert "checksum mismatch" in slot.log()


# -- fault injection and the missing-token warning -----------------------------------------------
def test_fault_injection_fails_valid_requests_slowly(slots):
    slot = slots["faulty"]
    assert "no serving token given (AUTOTRADER_SERVING_TOKEN unset)" in slot.log()
    assert "FAULT INJECTION ACTIVE" in slot.log()
    started = time.perf_counter()
    response = post(slot.url, {"instrument": "BTCUSDT", "rows": [ROW]}, headers={})  # no token needed
    elapsed_ms = (time.perf_counter() - started) * 1000
    assert response.status_code == 500 and "injected fault" in response.json()["error"]
    assert elapsed_ms >= 40
    # validation still comes first: bad input is the client's fault, not the drill's
    assert post(slot.url, {"instrument": "BTCUSDT", "rows": []}, headers={}).status_code == 422
    samples = metric_samples(slot.url)
    base = dict(slot="blue", model_version="v1")
    assert sample(samples, "autotrader_serving_faults_injected_total", **base, kind="error") == 1
    assert sample(samples, "autotrader_serving_fault_error_rate", **base) == 1.0
    assert sample(samples, "autotrader_serving_fault_latency_ms", **base) == 40.0
    assert sample(samples, "autotrader_serving_requests_total", **base, endpoint="/predict", status="500") == 1


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"AUTOTRADER_FAULT_ERROR_RATE": "lots"}, "is not a number"),
        ({"AUTOTRADER_FAULT_ERROR_RATE": "1.5"}, "within [0, 1]"),
        ({"AUTOTRADER_FAULT_LATENCY_MS": "-5"}, "within [0, 600000]"),
    ],
)
def test_bad_fault_settings_are_rejected(environ, fragment):
    with pytest.raises(ValueError) as err:
        FaultConfig.from_env(environ)
    assert fragment in str(err.value)
    assert FaultConfig.from_env({}) == FaultConfig(0.0, 0.0)
    assert FaultConfig.from_env({"AUTOTRADER_FAULT_LATENCY_MS": " 25 "}).latency_ms == 25.0


# -- non-finite model output ----------------------------------------------------------------------
def test_non_finite_output_is_refused_with_the_rows(slots):
    slot = slots["overflowing"]
    ok = post(slot.url, {"instrument": "BTCUSDT", "rows": [[0.0, 0.0, 1.0, 1.0]]})
    assert ok.status_code == 200 and ok.json()["probabilities"] == [0.5]
    before = metric_samples(slot.url)
    # rows 1 and 2 drive the two huge weights to +inf and -inf: NaN; row 0 alone would be fine
    response = post(
        slot.url, {"instrument": "BTCUSDT", "rows": [[0.0, 0.0, 1.0, 1.0], [4.0, 4.0, 0, 0], [5.0, 6.0, 0, 0]]}
    )
    assert response.status_code == 422, response.text
    assert response.json() == {
        "status": 422,
        "error": "the model's output is not finite for rows [1, 2]: their inputs are outside the range the "
        "model can score; nothing of this batch was scored",
    }
    after = metric_samples(slot.url)
    base = dict(slot="blue", model_version="v1")
    # a refused batch is not counted as scored: the confidence histogram never sees a NaN
    assert sample(after, "autotrader_serving_predictions_total", **base) == sample(
        before, "autotrader_serving_predictions_total", **base
    )


# -- the token is required where the profile says so ---------------------------------------------
@pytest.mark.parametrize("stdin", [None, b"\n", b"   \n"])
def test_require_token_without_a_token_exits_non_zero(bundle_file, stdin):
    path, sha, _ = bundle_file
    extra = ["--require-token"] + (["--token-stdin"] if stdin is not None else [])
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), AUTOTRADER_SERVING_TOKEN=TOKEN)  # never read for it
    done = subprocess.run(
        serving_command(path, sha, free_port(), *extra), input=stdin or b"", env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 2, done.stderr.decode()
    assert "refusing to serve without a bearer token" in done.stderr.decode()


def test_require_token_with_a_token_serves_and_demands_it(bundle_file, tmp_path):
    path, sha, _ = bundle_file
    slot = Slot(tmp_path, path, sha, token=TOKEN, extra=["--require-token"])
    try:
        slot.wait_listening()
        unauthenticated = requests.post(f"{slot.url}/predict", json={"instrument": "BTCUSDT", "rows": [ROW]}, timeout=5)
        assert unauthenticated.status_code == 401
        assert post(slot.url, {"instrument": "BTCUSDT", "rows": [ROW]}).status_code == 200
    finally:
        slot.stop()
