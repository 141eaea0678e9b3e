"""Training throughput and saved-model inference latency, against plain PyTorch, on CPU.

Part 1, training. "Ours" is ``autotrader_assets.defs.training.train.fit_model``, the function
that fits one model per walk-forward fold: it fits the ``StandardScaler`` on the training rows,
scales them, then runs Adam on ``BCEWithLogitsLoss`` in shuffled mini-batches under
``torch.use_deterministic_algorithms(True)``, computes the validation loss after every epoch and
deep-copies the best weights. Early stopping is neutralised (``patience`` > ``epochs``) so it runs
exactly ``--epochs`` epochs. The baseline is the SAME network (``MLPClassifier`` with the
``candidate_model`` defaults: hidden (32, 16), dropout 0.1, lr 1e-3, batch 512, seed 7) trained
by a plain loop written below: one ``randperm`` per epoch, tensor-slicing mini-batches over the
already-scaled float32 matrix, Adam, ``BCEWithLogitsLoss``; no DataLoader, no validation pass, no
weight snapshots, no deterministic mode. Both start from identical initial weights and use one
torch thread. Throughput is training rows x epochs / wall time; each side's time includes all
it does (ours: scaler fit/transform, per-epoch validation over ``--val-rows`` rows, best-state
copies). The figure is ``ratio ours/plain`` of samples/s: 1.00 means our training code path costs
nothing over the bare loop; 0.90 means it trains 10% slower.

Part 2, inference. A ``ModelBundle`` from part 1 is saved to a temporary file and loaded back with
``ModelBundle.load(path, expected_sha256)`` (checksum verified). ``bundle.predict_proba`` on raw
float64 feature rows is timed per call for one row and for a batch of 1024 rows; the baseline is
the loaded network called directly under ``torch.inference_mode()`` on already-scaled float32
tensors followed by ``torch.sigmoid``. ``ratio ours/plain`` of latency is the wrapper's overhead
(float64 conversion, NaN/inf check, scaling, numpy<->torch conversions): 1.5x means a call
through the bundle takes 1.5 times as long as the bare forward pass.

    .venv/bin/python benchmarks/training.py                 # 200k rows, 3 epochs, 5 rounds
    .venv/bin/python benchmarks/training.py --rows 50000 --epochs 2 --rounds 1
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from autotrader_assets.defs.training.train import TrainConfig, fit_model  # noqa: E402
from deploy_ops.models.bundle import ModelBundle, StandardScaler, build_model  # noqa: E402

N_FEATURES = 14  # the bar_features model input width
FEATURE_NAMES = [f"f{i}" for i in range(N_FEATURES)]


def make_data(n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unscaled float64 features (per-column offsets and scales) and 0/1 labels from a noisy
    logistic model of them, so the network has something to learn."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n_rows, N_FEATURES))
    x = z * rng.uniform(0.01, 5.0, N_FEATURES) + rng.uniform(-3.0, 3.0, N_FEATURES)
    w = rng.normal(0.0, 0.5, N_FEATURES)
    logit = z @ w + 0.5 * np.sin(2.0 * z[:, 0]) * z[:, 1]
    y = (rng.uniform(size=n_rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    return x, y


def train_ours(x_train, y_train, x_val, y_val, config: TrainConfig) -> ModelBundle:
    bundle, curve = fit_model(x_train, y_train, x_val, y_val, FEATURE_NAMES, config)
    if curve.epochs_run != config.max_epochs:
        raise RuntimeError(f"fit_model ran {curve.epochs_run} epochs, expected {config.max_epochs}")
    train_ours.last_loss = curve.train_loss[-1]  # type: ignore[attr-defined]
    return bundle


def train_plain(xs: torch.Tensor, ys: torch.Tensor, config: TrainConfig) -> nn.Module:
    """The baseline: same network, same init, same optimiser and batch size; nothing else."""
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model = build_model(config.model_class, n_features=xs.shape[1], **config.model_kwargs())
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    bs = config.batch_size
    for _ in range(config.max_epochs):
        perm = torch.randperm(len(xs), generator=gen)
        xe, ye = xs[perm], ys[perm]
        running = 0.0
        for start in range(0, len(xe), bs):
            xb, yb = xe[start : start + bs], ye[start : start + bs]
            optimizer.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            running += float(loss.detach()) * len(xb)
    train_plain.last_loss = running / len(xe)  # type: ignore[attr-defined]
    model.eval()
    return model


def round_times(fns: list[Callable[[], object]], rounds: int) -> list[np.ndarray]:
    """Wall time of each function in each round; they alternate within a round so background
    load on a shared machine hits both alike. The minimum is the least disturbed run."""
    times = [np.empty(rounds) for _ in fns]
    for r in range(rounds):
        for i, fn in enumerate(fns):
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times[i][r] = time.perf_counter() - t0
    return times


def call_latencies(fns: list[Callable[[], object]], calls: int) -> list[np.ndarray]:
    """Per-call latency in microseconds; the functions alternate call by call (same reason)."""
    out = [np.empty(calls) for _ in fns]
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()
    try:
        for k in range(calls):
            for i, fn in enumerate(fns):
                t0 = clock()
                fn()
                out[i][k] = (clock() - t0) / 1e3
    finally:
        gc.enable()
    return out


def pct(a: np.ndarray) -> tuple[float, float]:
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="training rows")
    parser.add_argument("--val-rows", type=int, default=20_000, help="validation rows (ours only)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5, help="timed training runs per side (best kept)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--single-calls", type=int, default=2000)
    parser.add_argument("--batch-calls", type=int, default=200)
    parser.add_argument("--infer-batch", type=int, default=1024)
    args = parser.parse_args(argv)
    if (
        min(
            args.rows,
            args.val_rows,
            args.epochs,
            args.rounds,
            args.batch_size,
            args.single_calls,
            args.batch_calls,
            args.infer_batch,
        )
        < 1
    ):
        parser.error("all counts must be >= 1")

    torch.set_num_threads(1)
    load1, load5, load15 = os.getloadavg()
    print(
        f"torch {torch.__version__}  numpy {np.__version__}  threads {torch.get_num_threads()}  "
        f"cpus {os.cpu_count()}  load average {load1:.2f} {load5:.2f} {load15:.2f}"
    )

    defaults = TrainConfig()  # the candidate_model defaults
    config = TrainConfig(
        model_class="mlp",
        hidden=defaults.hidden,
        dropout=defaults.dropout,
        learning_rate=defaults.learning_rate,
        weight_decay=defaults.weight_decay,
        batch_size=args.batch_size,
        max_epochs=args.epochs,
        patience=args.epochs + 1,
        seed=args.seed,
    )
    x_all, y_all = make_data(args.rows + args.val_rows, args.seed)
    x_train, y_train = x_all[: args.rows], y_all[: args.rows]
    x_val, y_val = x_all[args.rows :], y_all[args.rows :]
    # The baseline gets the matrix already scaled (outside its timing), as a plain script would.
    scaler = StandardScaler.fit(x_train)
    xs = torch.from_numpy(scaler.transform(x_train))
    ys = torch.from_numpy(y_train.copy())
    n_params = sum(p.numel() for p in build_model("mlp", N_FEATURES, **config.model_kwargs()).parameters())
    print(
        f"\n[training] rows {args.rows:,} x {N_FEATURES} features  val rows {args.val_rows:,} (ours only)  "
        f"epochs {args.epochs}  batch {args.batch_size}  MLP hidden {list(config.hidden)} "
        f"dropout {config.dropout} ({n_params} params)  seed {args.seed}"
    )

    # Warm-up: allocator, autograd and Adam first-call paths on a small slice, both sides.
    warm = TrainConfig(**{**config.as_params(), "hidden": config.hidden, "max_epochs": 1, "patience": 2})
    n_warm = min(args.rows, 20_000)
    fit_model(x_train[:n_warm], y_train[:n_warm], x_val[:2000], y_val[:2000], FEATURE_NAMES, warm)
    train_plain(xs[:n_warm], ys[:n_warm], warm)

    result: dict[str, object] = {}

    def run_ours() -> None:
        result["bundle"] = train_ours(x_train, y_train, x_val, y_val, config)

    def run_plain() -> None:
        result["plain"] = train_plain(xs, ys, config)

    all_ours, all_plain = round_times([run_ours, run_plain], args.rounds)
    t_ours, t_plain = float(all_ours.min()), float(all_plain.min())
    samples = args.rows * args.epochs
    sps_ours, sps_plain = samples / t_ours, samples / t_plain
    print(
        f"ours  (fit_model) : {sps_ours:>11,.0f} samples/s  ({t_ours:6.2f} s best, "
        f"{np.median(all_ours):6.2f} s median of {args.rounds}; "
        f"last-epoch train loss {train_ours.last_loss:.4f})"
    )  # type: ignore[attr-defined]
    print(
        f"plain (torch loop): {sps_plain:>11,.0f} samples/s  ({t_plain:6.2f} s best, "
        f"{np.median(all_plain):6.2f} s median of {args.rounds}; "
        f"last-epoch train loss {train_plain.last_loss:.4f})"
    )  # type: ignore[attr-defined]
    ratio = sps_ours / sps_plain
    verdict = (
        "same speed"
        if abs(ratio - 1) < 0.005
        else f"{(ratio - 1) * 100:.0f}% faster"
        if ratio > 1
        else f"{(1 - ratio) * 100:.0f}% slower"
    )
    print(
        f"ratio ours/plain (training throughput, best runs): {ratio:.2f}x  ({verdict}; "
        f"median runs: {np.median(all_plain) / np.median(all_ours):.2f}x)"
    )

    # ---- inference on the saved and reloaded bundle --------------------------------------------
    trained: ModelBundle = result["bundle"]  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.pt")
        sha = trained.save(path)
        size = os.path.getsize(path)
        bundle = ModelBundle.load(path, expected_sha256=sha)
    net = bundle.model
    net.eval()
    print(f"\n[inference] bundle saved ({size:,} bytes, sha256 {sha[:12]}...) and loaded with checksum verified")

    rng = np.random.default_rng(args.seed + 1)
    raw_batch = x_val[rng.integers(0, len(x_val), args.infer_batch)]
    raw_row = raw_batch[0].copy()
    scaled_batch = torch.from_numpy(bundle.scaler.transform(raw_batch))
    scaled_row = scaled_batch[:1].clone()

    def plain_predict(t: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.sigmoid(net(t))

    diff = np.abs(bundle.predict_proba(raw_batch) - plain_predict(scaled_batch).numpy()).max()
    if diff > 1e-6:
        raise RuntimeError(f"bundle and plain network disagree by {diff}")

    cases = [
        ("1 row", args.single_calls, lambda: bundle.predict_proba(raw_row), lambda: plain_predict(scaled_row)),
        (
            f"{args.infer_batch} rows",
            args.batch_calls,
            lambda: bundle.predict_proba(raw_batch),
            lambda: plain_predict(scaled_batch),
        ),
    ]
    for name, calls, ours_fn, plain_fn in cases:
        call_latencies([ours_fn, plain_fn], max(50, calls // 10))  # warm-up
        lat_ours, lat_plain = call_latencies([ours_fn, plain_fn], calls)
        (o50, o99), (p50, p99) = pct(lat_ours), pct(lat_plain)
        print(f"{name:>10}  ours  (bundle.predict_proba): p50 {o50:9.1f} us  p99 {o99:9.1f} us  ({calls} calls)")
        print(f"{name:>10}  plain (net + sigmoid)      : p50 {p50:9.1f} us  p99 {p99:9.1f} us")
        print(f"{name:>10}  ratio ours/plain (latency) : p50 {o50 / p50:.2f}x  p99 {o99 / p99:.2f}x")
    print(f"(max |bundle - plain| probability difference over the batch: {diff:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
