"""Promotion gates: pure functions that each test one property of a candidate model.

Every gate returns ``(passed, metadata)``; the metadata always carries the measured value(s),
the threshold(s) applied and, on failure, a human-readable ``reason``. The Dagster asset checks
on ``candidate_model`` and the ``registered_model`` asset (which re-checks before writing to
the registry) both call these, so a model can only reach the registry by passing all of them.

No Dagster imports.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from autotrader_assets.settings import Thresholds
from deploy_ops.models.bundle import ModelBundle
from deploy_ops.trading.metrics import sharpe_meaningful, sharpe_text

GateResult = tuple[bool, dict[str, Any]]


@dataclass(frozen=True)
class LeakageThresholds:
    """What counts as "too good to be true" for direction-of-return models on minute bars.

    Honest models on real 1-minute returns live a few hundredths above AUC 0.5 (the embedded
    replay's deliberate momentum allows about 0.67); a feature that peeks at the future lifts
    AUC towards 1. A model trained on *shuffled* labels cannot have
    learned anything, so its AUC on the real test labels must sit near 0.5 -- if it does not,
    information is reaching predictions by some path other than the labels. And a model that
    does clearly better on unseen rows than on the rows it was fitted on has seen the test set.
    """

    max_plausible_auc: float = 0.75
    max_gap_to_shuffled: float = 0.25
    max_shuffled_deviation: float = 0.10
    max_test_over_train: float = 0.05


def _finite(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.floating, np.integer))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _not_measured(name: str, value: Any, meta: dict[str, Any]) -> GateResult:
    return False, {**meta, "reason": f"{name} is not a finite number ({value!r}), so the gate cannot pass"}


def auc_gate(test_auc: float, floor: float) -> GateResult:
    """Test-period AUC must be strictly above ``floor`` (settings ``min_auc``)."""
    meta = {"test_auc": test_auc, "auc_floor": floor}
    if not _finite(test_auc):
        return _not_measured("test AUC", test_auc, meta)
    passed = float(test_auc) > floor
    if not passed:
        meta["reason"] = f"test AUC {float(test_auc):.4f} is not above the floor {floor:.4f}"
    return passed, meta


def sharpe_vs_production_gate(
    candidate_sharpe: float,
    production_sharpe: float | None,
    floor_without_production: float,
    production_version: int | None = None,
) -> GateResult:
    """Backtest Sharpe must not be worse than production's on the *same* test rows; with no
    production model yet it must reach ``floor_without_production``
    (settings ``min_sharpe_no_production``)."""
    meta: dict[str, Any] = {
        "candidate_sharpe": candidate_sharpe,
        "production_sharpe": production_sharpe,
        "production_version": production_version,
        "sharpe_floor_without_production": floor_without_production,
    }
    if not _finite(candidate_sharpe):
        return _not_measured("candidate Sharpe", candidate_sharpe, meta)
    if production_sharpe is None:
        meta["compared_to"] = "floor (no production model)"
        passed = float(candidate_sharpe) >= floor_without_production
        if not passed:
            meta["reason"] = (
                f"Sharpe {float(candidate_sharpe):.3f} is below the floor {floor_without_production:.3f} "
                "required when there is no production model"
            )
        return passed, meta
    if not _finite(production_sharpe):
        return _not_measured("production Sharpe", production_sharpe, meta)
    meta["compared_to"] = f"production v{production_version}" if production_version is not None else "production"
    passed = float(candidate_sharpe) >= float(production_sharpe)
    if not passed:
        meta["reason"] = (
            f"Sharpe {float(candidate_sharpe):.3f} is worse than production's {float(production_sharpe):.3f} "
            "on the same test period"
        )
    return passed, meta


def max_drawdown_gate(max_drawdown: float, limit: float) -> GateResult:
    """Backtest max drawdown (a fraction; sign ignored) must stay under ``limit``."""
    meta = {"max_drawdown": max_drawdown, "max_drawdown_limit": limit}
    if not _finite(max_drawdown):
        return _not_measured("max drawdown", max_drawdown, meta)
    depth = abs(float(max_drawdown))
    passed = depth < limit
    if not passed:
        meta["reason"] = f"max drawdown {depth:.2%} is not under the limit {limit:.2%}"
    return passed, meta


def weights_finite_gate(bundle: ModelBundle) -> GateResult:
    """Every weight, buffer and scaler statistic must be finite (no NaN/Inf from a diverged fit)."""
    bad: list[str] = []
    n_values = 0
    for name, tensor in bundle.model.state_dict().items():
        values = tensor.detach().cpu().numpy()
        n_values += values.size
        if not np.isfinite(values).all():
            bad.append(name)
    for name, values in (("scaler.mean", bundle.scaler.mean), ("scaler.std", bundle.scaler.std)):
        values = np.asarray(values, dtype=np.float64)
        n_values += values.size
        if not np.isfinite(values).all():
            bad.append(name)
    meta: dict[str, Any] = {"n_values_checked": int(n_values), "non_finite_tensors": bad}
    if bad:
        meta["reason"] = f"non-finite values in {', '.join(bad)}"
    return not bad, meta


def output_shape_range_gate(bundle: ModelBundle, probe: np.ndarray) -> GateResult:
    """On a probe batch of ``n`` feature rows the model must return ``n`` finite values in [0, 1]."""
    probe = np.asarray(probe, dtype=np.float64)
    if probe.ndim != 2 or len(probe) == 0:
        raise ValueError(f"the probe batch must be a non-empty 2-D array, got shape {probe.shape}")
    meta: dict[str, Any] = {"probe_rows": int(len(probe)), "expected_shape": [int(len(probe))], "range": [0.0, 1.0]}
    try:
        out = np.asarray(bundle.predict_proba(probe))
    except (ValueError, RuntimeError) as exc:
        # A model that cannot answer a well-formed batch fails this gate; the error is the reason.
        meta["reason"] = f"prediction on the probe batch raised {type(exc).__name__}: {exc}"
        return False, meta
    meta["output_shape"] = list(out.shape)
    problems = []
    if out.shape != (len(probe),):
        problems.append(f"shape {tuple(out.shape)} != ({len(probe)},)")
    finite = np.isfinite(out)
    if not finite.all():
        problems.append(f"{int((~finite).sum())} non-finite outputs")
    if finite.any():
        meta["output_min"] = float(out[finite].min())
        meta["output_max"] = float(out[finite].max())
        if (out[finite] < 0).any() or (out[finite] > 1).any():
            problems.append("outputs outside [0, 1]")
    if problems:
        meta["reason"] = "; ".join(problems)
    return not problems, meta


def leakage_gate(
    test_auc: float,
    shuffled_auc: float,
    train_auc: float,
    thresholds: LeakageThresholds = LeakageThresholds(),
) -> GateResult:
    """Flag a model whose performance is implausible for the problem (see LeakageThresholds)."""
    meta: dict[str, Any] = {
        "test_auc": test_auc,
        "shuffled_label_auc": shuffled_auc,
        "train_auc": train_auc,
        **asdict(thresholds),
    }
    for name, value in (("test AUC", test_auc), ("shuffled-label AUC", shuffled_auc), ("train AUC", train_auc)):
        if not _finite(value):
            return _not_measured(name, value, meta)
    test_auc, shuffled_auc, train_auc = float(test_auc), float(shuffled_auc), float(train_auc)
    meta["gap_to_shuffled"] = test_auc - shuffled_auc
    meta["test_minus_train"] = test_auc - train_auc
    reasons = []
    if test_auc > thresholds.max_plausible_auc:
        reasons.append(f"test AUC {test_auc:.3f} exceeds the plausible maximum {thresholds.max_plausible_auc:.3f}")
    if test_auc - shuffled_auc > thresholds.max_gap_to_shuffled:
        reasons.append(
            f"test AUC beats the shuffled-label baseline by {test_auc - shuffled_auc:.3f} "
            f"(> {thresholds.max_gap_to_shuffled:.3f})"
        )
    if abs(shuffled_auc - 0.5) > thresholds.max_shuffled_deviation:
        reasons.append(
            f"a model trained on shuffled labels scores AUC {shuffled_auc:.3f} on the real labels "
            f"(more than {thresholds.max_shuffled_deviation:.3f} from 0.5)"
        )
    if test_auc - train_auc > thresholds.max_test_over_train:
        reasons.append(
            f"test AUC {test_auc:.3f} beats train AUC {train_auc:.3f} by more than {thresholds.max_test_over_train:.3f}"
        )
    meta["leakage_suspected"] = bool(reasons)
    if reasons:
        meta["reason"] = "; ".join(reasons)
    return not reasons, meta


# -- the gates applied to a candidate report ---------------------------------------------------

#: The promotion gates, in the order they are reported; each is one asset check.
GATE_NAMES: tuple[str, ...] = (
    "auc_floor",
    "sharpe_vs_production",
    "max_drawdown",
    "weights_finite",
    "output_shape_range",
    "leakage",
)

GATE_DESCRIPTIONS: dict[str, str] = {
    "auc_floor": "Test-period AUC is above the settings floor (min_auc).",
    "sharpe_vs_production": "Backtest Sharpe is not worse than production's on the same test rows "
    "(or reaches min_sharpe_no_production when nothing is in production); from fewer than "
    "min_sharpe_returns daily returns the total return after costs is compared instead.",
    "max_drawdown": "Test-period backtest max drawdown stays under the settings limit (max_drawdown).",
    "weights_finite": "No NaN or infinite weight, buffer or scaler statistic.",
    "output_shape_range": "One probability per probe row, every one finite and within [0, 1].",
    "leakage": "Performance is plausible: not too good, near-random with shuffled labels, test not above train.",
}


def _sharpe_from_report(report: Mapping[str, Any], thresholds: Thresholds) -> GateResult:
    test = report["test"]
    floor = thresholds.min_sharpe_no_production
    n = test.get("sharpe_n_returns")
    minimum = thresholds.min_sharpe_returns
    convention = {
        "sharpe_annualization": test.get("sharpe_annualization"),
        "sharpe_returns": test.get("sharpe_returns"),
        "sharpe_n_returns": n,
        "min_sharpe_returns": minimum,
        # Reports written before the count was kept (n None) are judged on the Sharpe as then.
        "sharpe_meaningful": n is None or sharpe_meaningful(n, minimum),
        "candidate_sharpe_text": sharpe_text(
            test.get("sharpe"), n, minimum, returns=test.get("sharpe_returns") or "daily"
        ),
    }
    production = report.get("production")
    if production is not None and production.get("unavailable_reason"):
        return False, {
            "candidate_sharpe": test["sharpe"],
            "production_version": production["version"],
            "sharpe_floor_without_production": floor,
            "reason": production["unavailable_reason"],
            **convention,
        }
    if not convention["sharpe_meaningful"]:
        return _total_return_instead(test, production, floor, convention)
    if production is None:
        passed, meta = sharpe_vs_production_gate(test["sharpe"], None, floor)
    elif production["test"]["sharpe"] is None:
        # A production model whose Sharpe is undefined here (e.g. it never traded) gives
        # nothing to compare against, so the candidate must clear the no-production floor.
        passed, meta = sharpe_vs_production_gate(test["sharpe"], None, floor, production["version"])
        meta["compared_to"] = (
            f"floor (production v{production['version']} Sharpe undefined on this test period: "
            f"{production['test'].get('sharpe_reason')})"
        )
    else:
        passed, meta = sharpe_vs_production_gate(
            test["sharpe"], production["test"]["sharpe"], floor, production["version"]
        )
    if test["sharpe"] is None and test.get("sharpe_reason"):
        meta["reason"] = f"{meta.get('reason', '')} ({test['sharpe_reason']})".strip()
    if meta.get("reason") and n is not None:
        meta["reason"] += f"; both from {n} daily returns of the test period"
    return passed, {**meta, "judged_on": "sharpe", **convention}


def _total_return_instead(
    test: Mapping[str, Any], production: Mapping[str, Any] | None, floor: float, convention: dict[str, Any]
) -> GateResult:
    """Below ``min_sharpe_returns`` daily returns the Sharpe comparison is not applicable: an
    annualised Sharpe of 8 daily returns has a standard error near sqrt(365/8) ~ 6.8, so comparing
    two of them is a coin flip. Blocking would stop every weekly training (28 days, 30% test
    period: about 8 returns); passing blindly would register a model that lost money on unseen
    data. The gate judges what the Sharpe stands for, without the noisy volatility estimate: the
    test period's total return after costs must not be below production's on the same rows (or
    below 0 with no production model). The warning in the metadata says so."""
    n, minimum = convention["sharpe_n_returns"], convention["min_sharpe_returns"]
    cand = test.get("total_return")
    prod_test = (production or {}).get("test") or {}
    prod = prod_test.get("total_return") if production is not None else None
    meta: dict[str, Any] = {
        "candidate_sharpe": test.get("sharpe"),
        "production_sharpe": prod_test.get("sharpe") if production is not None else None,
        "production_version": production["version"] if production is not None else None,
        "sharpe_floor_without_production": floor,
        "judged_on": "total_return",
        "candidate_total_return": cand,
        "production_total_return": prod,
        "warning": (
            f"Sharpe not applicable: insufficient data ({n} daily returns, fewer than {minimum}); "
            f"judged on the test period's total return after costs instead"
        ),
        **convention,
    }
    if not _finite(cand):
        return _not_measured("candidate total return", cand, meta)
    if production is None or not _finite(prod):
        meta["compared_to"] = (
            "floor (no production model)"
            if production is None
            else (f"floor (production v{production['version']} total return unavailable)")
        )
        passed = float(cand) >= 0.0
        if not passed:
            meta["reason"] = (
                f"test-period total return {float(cand):.2%} after costs is below 0 "
                f"(Sharpe not judged: {n} daily returns, fewer than {minimum})"
            )
        return passed, meta
    meta["compared_to"] = f"production v{production['version']}"
    passed = float(cand) >= float(prod)
    if not passed:
        meta["reason"] = (
            f"test-period total return {float(cand):.2%} after costs is below production's "
            f"{float(prod):.2%} on the same rows (Sharpe not judged: {n} daily returns, "
            f"fewer than {minimum})"
        )
    return passed, meta


def run_gate(
    name: str,
    report: Mapping[str, Any],
    bundle: ModelBundle,
    thresholds: Thresholds,
    leakage: LeakageThresholds = LeakageThresholds(),
) -> GateResult:
    """Apply gate ``name`` to a candidate report (``CandidateOutcome.report()``) and its bundle."""
    if name == "auc_floor":
        return auc_gate(report["test"]["auc"], thresholds.min_auc)
    if name == "sharpe_vs_production":
        return _sharpe_from_report(report, thresholds)
    if name == "max_drawdown":
        return max_drawdown_gate(report["test"]["max_drawdown"], thresholds.max_drawdown)
    if name == "weights_finite":
        return weights_finite_gate(bundle)
    if name == "output_shape_range":
        return output_shape_range_gate(bundle, np.asarray(report["probe"], dtype=np.float64))
    if name == "leakage":
        return leakage_gate(report["test"]["auc"], report["shuffled_label_test_auc"], report["train"]["auc"], leakage)
    raise ValueError(f"unknown gate {name!r}; gates are {', '.join(GATE_NAMES)}")


def evaluate_gates(
    report: Mapping[str, Any],
    bundle: ModelBundle,
    thresholds: Thresholds,
    leakage: LeakageThresholds = LeakageThresholds(),
) -> dict[str, GateResult]:
    """Every gate's result, keyed by gate name."""
    return {name: run_gate(name, report, bundle, thresholds, leakage) for name in GATE_NAMES}
