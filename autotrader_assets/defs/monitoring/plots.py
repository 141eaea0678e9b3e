"""The drift check's pictures, as PNG bytes (rendered inline in the UI like the trading charts). No Dagster."""

from __future__ import annotations

import numpy as np
import pandas as pd

from autotrader_assets.defs.trading.performance import _png


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def psi_bars_png(frame: pd.DataFrame, warn: float, critical: float, title: str) -> bytes:
    """PSI per feature (worst first) against the warning and critical thresholds."""
    plt = _pyplot()
    shown = frame.dropna(subset=["psi"]).sort_values("psi")
    labels = [
        f"{f} (v{v})" if frame["model_version"].nunique() > 1 else f
        for f, v in zip(shown["feature"], shown["model_version"])
    ]
    values = shown["psi"].to_numpy(dtype=float)
    colors = np.where(values > critical, "#d62728", np.where(values > warn, "#ff7f0e", "#2ca02c"))
    fig, ax = plt.subplots(figsize=(8, 0.3 * max(len(values), 4) + 1.2))
    ax.barh(labels, values, color=colors)
    ax.axvline(warn, color="#ff7f0e", linestyle="--", linewidth=1.0, label=f"warning {warn:g}")
    ax.axvline(critical, color="#d62728", linestyle="--", linewidth=1.0, label=f"critical {critical:g}")
    ax.set_xlabel("PSI")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def histogram_png(feature: str, cuts: list[float], expected: list[float], actual: list[float], title: str) -> bytes:
    """Reference vs current proportions of one feature in the convention's bins."""
    plt = _pyplot()
    labels = (
        [f"< {cuts[0]:.3g}"] + [f"[{a:.3g}, {b:.3g})" for a, b in zip(cuts[:-1], cuts[1:])] + [f">= {cuts[-1]:.3g}"]
    )
    x = np.arange(len(expected))
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.bar(x - 0.2, expected, width=0.4, label="reference (training rows)", color="#1f77b4")
    ax.bar(x + 0.2, actual if actual else np.zeros(len(expected)), width=0.4, label="current day", color="#d62728")
    ax.set_xticks(x, labels, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("share of rows")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)
