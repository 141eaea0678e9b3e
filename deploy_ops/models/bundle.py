"""Model artifacts: the network classes, the feature scaler, and the on-disk bundle format.

A bundle is one file written with ``torch.save`` holding only tensors and plain Python values,
so it loads with ``weights_only=True`` (no pickle code execution). It carries everything needed
to answer a prediction: the model class and its constructor arguments, the weights, the scaler
fitted on training data only, and the ordered feature list.

No Dagster imports here: the serving app, the registry and the training assets all use it.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

BUNDLE_FORMAT_VERSION = 1


class MLPClassifier(nn.Module):
    """Feed-forward network emitting one logit: P(forward return > 0) after a sigmoid."""

    def __init__(self, n_features: int, hidden: tuple[int, ...] | list[int] = (64, 32), dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_features
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU(), nn.Dropout(dropout)]
            width = int(h)
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, n_features) -> (batch,)
        return self.net(x).squeeze(-1)


class LogisticClassifier(nn.Module):
    """A linear baseline with the same interface as the MLP."""

    def __init__(self, n_features: int):
        super().__init__()
        self.linear = nn.Linear(n_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)


#: Pluggable model classes: training picks one by name; the bundle stores the name.
MODEL_CLASSES: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLPClassifier,
    "logistic": LogisticClassifier,
}


def build_model(model_class: str, n_features: int, **kwargs: Any) -> nn.Module:
    try:
        factory = MODEL_CLASSES[model_class]
    except KeyError as exc:
        raise ValueError(f"unknown model class {model_class!r}; known: {sorted(MODEL_CLASSES)}") from exc
    return factory(n_features=n_features, **kwargs)


@dataclass
class StandardScaler:
    """Per-feature standardisation fitted on the training rows only."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> StandardScaler:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError("scaler needs a non-empty 2-D array")
        mean = np.nanmean(x, axis=0)
        std = np.nanstd(x, axis=0)
        std = np.where(std > 1e-12, std, 1.0)  # constant columns pass through centred, not divided by 0
        return cls(mean=mean, std=std)

    def transform(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.mean):
            raise ValueError(f"expected rows of {len(self.mean)} features, got shape {x.shape}")
        return ((x - self.mean) / self.std).astype(np.float32)


class ArtifactIntegrityError(RuntimeError):
    """The bytes on disk are not the bytes the registry recorded."""


@dataclass
class ModelBundle:
    """A trained model with its scaler and feature list: the unit that is registered and served."""

    model: nn.Module
    model_class: str
    model_kwargs: dict[str, Any]
    scaler: StandardScaler
    feature_names: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model.eval()

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probability that the forward return is positive, one per row."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        if not np.isfinite(x).all():
            raise ValueError("feature rows contain NaN or infinite values")
        return self.predict_scaled(self.scaler.transform(x))

    def predict_scaled(self, scaled: np.ndarray) -> np.ndarray:
        """The network on rows already standardised by ``self.scaler`` (float32, the model's input
        type): the serving app scales first so it can refuse rows that overflow float32 there."""
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32)))
            return torch.sigmoid(logits).numpy().astype(np.float64)

    # -- serialisation -------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        payload = {
            "format_version": BUNDLE_FORMAT_VERSION,
            "model_class": self.model_class,
            "model_kwargs": _plain(self.model_kwargs),
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "scaler_mean": torch.tensor(self.scaler.mean, dtype=torch.float64),
            "scaler_std": torch.tensor(self.scaler.std, dtype=torch.float64),
            "feature_names": list(self.feature_names),
            "metadata": _plain(self.metadata),
        }
        buf = io.BytesIO()
        torch.save(payload, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, expected_sha256: str | None = None) -> ModelBundle:
        if expected_sha256 is not None:
            actual = sha256_bytes(data)
            if actual != expected_sha256:
                raise ArtifactIntegrityError(
                    f"artifact checksum mismatch: expected sha256 {expected_sha256}, got {actual}"
                )
        payload = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        if payload.get("format_version") != BUNDLE_FORMAT_VERSION:
            raise ValueError(f"unsupported bundle format {payload.get('format_version')!r}")
        feature_names = list(payload["feature_names"])
        kwargs = dict(payload["model_kwargs"])
        model = build_model(payload["model_class"], n_features=len(feature_names), **kwargs)
        model.load_state_dict(payload["state_dict"])
        scaler = StandardScaler(mean=payload["scaler_mean"].numpy(), std=payload["scaler_std"].numpy())
        return cls(
            model=model,
            model_class=payload["model_class"],
            model_kwargs=kwargs,
            scaler=scaler,
            feature_names=feature_names,
            metadata=dict(payload.get("metadata") or {}),
        )

    def save(self, path: str) -> str:
        """Write the bundle to ``path`` and return its sha256."""
        data = self.to_bytes()
        with open(path, "wb") as fh:
            fh.write(data)
        return sha256_bytes(data)

    @classmethod
    def load(cls, path: str, expected_sha256: str | None = None) -> ModelBundle:
        with open(path, "rb") as fh:
            return cls.from_bytes(fh.read(), expected_sha256=expected_sha256)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _plain(value: Any) -> Any:
    """Coerce metadata to types ``torch.load(weights_only=True)`` accepts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
