"""Small PNG charts for asset metadata: training curves and backtest equity curves.

Rendered with matplotlib's Agg backend (no display on the run workers) and embedded as
base64 data URIs in markdown, so the Dagster UI shows them without any file server.

No Dagster imports.
"""

from __future__ import annotations

import base64
import io
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)
import pandas as pd  # noqa: E402

from autotrader_assets.defs.training.train import FoldReport  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=72)
    finally:
        plt.close(fig)
    return buf.getvalue()


def training_curves_png(folds: Sequence[FoldReport]) -> bytes:
    """Train (dashed) and validation (solid) loss per epoch for every fold, best epoch marked."""
    if not folds:
        raise ValueError("no folds to plot")
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for fold in folds:
        epochs = range(1, fold.curve.epochs_run + 1)
        (line,) = ax.plot(epochs, fold.curve.val_loss, label=f"fold {fold.index} val")
        ax.plot(epochs, fold.curve.train_loss, linestyle="--", color=line.get_color(), alpha=0.6)
        ax.axvline(fold.curve.best_epoch, color=line.get_color(), linestyle=":", alpha=0.5)
    ax.set_xlabel("epoch")
    ax.set_ylabel("BCE loss")
    ax.set_title("training curves (dashed: train, dotted: best epoch)")
    ax.legend(fontsize="small")
    return _png(fig)


def equity_curves_png(curves: Mapping[str, pd.Series]) -> bytes:
    """Account equity over the test period, one line per model, normalised to start at 1."""
    if not curves:
        raise ValueError("no equity curves to plot")
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, equity in curves.items():
        if len(equity) == 0:
            raise ValueError(f"equity curve {name!r} is empty")
        ax.plot(equity.index, equity.to_numpy() / float(equity.iloc[0]), label=name)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_ylabel("equity / start")
    ax.set_title("test-period backtest (fees and slippage included)")
    ax.legend(fontsize="small")
    fig.autofmt_xdate()
    return _png(fig)


def png_markdown(png: bytes, alt: str) -> str:
    """Markdown that displays ``png`` inline."""
    if not png.startswith(b"\x89PNG"):
        raise ValueError("not PNG data")
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
