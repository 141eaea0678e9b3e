"""The embedded replay source: deterministic synthetic 1-minute bars, no network.

Each (seed, instrument, date) is generated independently, so any partition can be produced
on its own and always comes out the same. Days stitch together: a daily path generated from
(seed, instrument) fixes every day's opening price, and the intraday path is bridged so the
day ends where the next one opens.

Two modes:

* ``realistic`` (default): GARCH(1,1) volatility clustering, a slowly mean-reverting latent
  drift (weak momentum a model can learn), Poisson price jumps, volume that rises with absolute
  returns, and occasional gaps (single missing minutes and rare outages).
* ``random_walk``: i.i.d. Gaussian returns with constant volatility and no drift: nothing is
  predictable, which is what the leakage guard is tested against.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from autotrader_assets.defs.market_data.schema import BAR_COLUMNS, empty_bars, with_bar_attrs

MINUTES_PER_DAY = 1440
_EPOCH = pd.Timestamp("2015-01-01", tz="UTC")

#: Rough price levels so the synthetic market looks like the real one.
BASE_PRICES: dict[str, float] = {
    "BTCUSDT": 42_000.0,
    "ETHUSDT": 2_300.0,
    "SOLUSDT": 100.0,
    "BNBUSDT": 310.0,
    "XRPUSDT": 0.62,
    "ADAUSDT": 0.55,
    "DOGEUSDT": 0.085,
    "AVAXUSDT": 36.0,
}


def _rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@dataclass(frozen=True)
class ReplaySource:
    """Deterministic synthetic bars; ``fetch_bars`` has the same contract as the brokers."""

    seed: int = 7
    mode: str = "realistic"
    daily_vol: float = 0.03
    gap_probability: float = 0.002
    outage_probability: float = 0.03
    jump_intensity_per_day: float = 1.5
    momentum: float = 0.2

    def __post_init__(self) -> None:
        if self.mode not in ("realistic", "random_walk"):
            raise ValueError(f"unknown replay mode {self.mode!r}; use 'realistic' or 'random_walk'")

    # -- public contract -------------------------------------------------------------------
    def fetch_bars(self, instrument: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """1-minute bars for ``instrument`` with open time in [start, end), UTC (``attrs`` as
        every source: a 60 s interval, no duplicates)."""
        start, end = _utc(start), _utc(end)
        if end <= start:
            return with_bar_attrs(empty_bars(), 60, 0)
        if start == start.floor("D") and end == start + pd.Timedelta(days=1):
            # one whole partition: nothing to cut
            return with_bar_attrs(self.day_bars(instrument, start), 60, 0)
        frames = []
        day = start.floor("D")
        while day < end:
            frames.append(self.day_bars(instrument, day))
            day += pd.Timedelta(days=1)
        out = pd.concat(frames, ignore_index=True)
        out = out[(out["ts"] >= start) & (out["ts"] < end)]
        return with_bar_attrs(out.reset_index(drop=True), 60, 0)

    def day_bars(self, instrument: str, day: pd.Timestamp | str) -> pd.DataFrame:
        """All bars of one UTC calendar day (with this source's gaps)."""
        return self._day(instrument, day)[0]

    def planted_outage(self, instrument: str, day: pd.Timestamp | str) -> tuple[pd.Timestamp, int] | None:
        """(start, minutes) of the outage this source plants in the day on purpose (about 3% of
        days lose 20-90 consecutive minutes, so the completeness check has something real to
        find), or None. Single missing minutes are not listed: they are too few to matter."""
        return self._day(instrument, day)[1]

    def _day(self, instrument: str, day: pd.Timestamp | str) -> tuple[pd.DataFrame, tuple[pd.Timestamp, int] | None]:
        day = _utc(pd.Timestamp(day)).floor("D")
        day_index = int((day - _EPOCH) / pd.Timedelta(days=1))
        if day_index < 0:
            raise ValueError(f"replay source starts at {_EPOCH.date()}, asked for {day.date()}")
        opens = self._daily_opens(instrument, day_index + 2)
        open_price, next_open = opens[day_index], opens[day_index + 1]
        rng = _rng(self.seed, instrument, day.date().isoformat(), self.mode)
        log_ret = self._intraday_returns(rng)
        # Bridge: spread the difference so the day closes where the next one opens.
        target = np.log(next_open / open_price)
        log_ret += (target - log_ret.sum()) / MINUTES_PER_DAY
        closes = open_price * np.exp(np.cumsum(log_ret))
        opens_1m = np.concatenate([[open_price], closes[:-1]])
        sigma = np.abs(log_ret).mean() + 1e-9
        wick_hi = np.abs(rng.normal(0.0, sigma * 0.6, MINUTES_PER_DAY))
        wick_lo = np.abs(rng.normal(0.0, sigma * 0.6, MINUTES_PER_DAY))
        high = np.maximum(opens_1m, closes) * np.exp(wick_hi)
        low = np.minimum(opens_1m, closes) * np.exp(-wick_lo)
        base_volume = 5e5 * (1.0 + (hash_unit(instrument) * 4.0))
        volume = (
            base_volume
            * np.exp(rng.normal(0.0, 0.35, MINUTES_PER_DAY))
            * (1.0 + 40.0 * np.abs(log_ret) / (self.daily_vol / np.sqrt(MINUTES_PER_DAY)))
            / 40.0
        )
        ts = day + pd.to_timedelta(np.arange(MINUTES_PER_DAY), unit="min")
        keep, outage = self._present_mask(rng)
        frame = pd.DataFrame(
            {
                "ts": ts[keep],
                "instrument": instrument,
                "open": opens_1m[keep],
                "high": high[keep],
                "low": low[keep],
                "close": closes[keep],
                "volume": volume[keep],
                "source": "replay",
            }
        )
        frame["ts"] = frame["ts"].astype("datetime64[ns, UTC]")
        planted = None if outage is None else (day + pd.Timedelta(minutes=outage[0]), outage[1])
        return frame[BAR_COLUMNS], planted

    # -- internals --------------------------------------------------------------------------
    def _daily_opens(self, instrument: str, n_days: int) -> np.ndarray:
        rng = _rng(self.seed, instrument, "daily", self.mode)
        # Generated in one pass from the epoch so every day's open is fixed whatever is asked.
        rets = rng.normal(0.0, self.daily_vol, n_days)
        base = BASE_PRICES.get(instrument, 10.0 + 990.0 * hash_unit(instrument))
        return base * np.exp(np.concatenate([[0.0], np.cumsum(rets)]))

    def _intraday_returns(self, rng: np.random.Generator) -> np.ndarray:
        n = MINUTES_PER_DAY
        sigma_bar = self.daily_vol / np.sqrt(n)
        eps = rng.standard_normal(n)
        if self.mode == "random_walk":
            return sigma_bar * eps
        # GARCH(1,1) on 1-minute returns: persistent volatility clusters. The recursion
        # var_t = omega + (alpha*eps_{t-1}^2 + beta) * var_{t-1} is linear in var, so it is
        # solved in closed form with cumulative products instead of a Python loop.
        omega, alpha, beta = sigma_bar**2 * 0.03, 0.07, 0.90
        coef = np.empty(n)
        coef[0] = beta  # the first step sees no previous return
        coef[1:] = alpha * eps[:-1] ** 2 + beta
        log_p = np.cumsum(np.log(coef))
        var = np.exp(log_p) * (sigma_bar**2 + omega * np.cumsum(np.exp(-log_p)))
        ret = np.sqrt(var) * eps
        # A latent OU drift gives the weak, learnable momentum real intraday markets show.
        phi = 0.995
        eta = rng.standard_normal(n) * sigma_bar * self.momentum * np.sqrt(1 - phi**2)
        drift = lfilter([1.0], [1.0, -phi], eta)
        jumps = rng.poisson(self.jump_intensity_per_day / n, n)
        jump_size = rng.normal(0.0, sigma_bar * 12.0, n) * jumps
        return ret + drift + jump_size

    def _present_mask(self, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int] | None]:
        """Which minutes are present, and the planted outage as (first minute, length) or None."""
        n = MINUTES_PER_DAY
        if self.mode == "random_walk":
            return np.ones(n, dtype=bool), None
        keep = rng.random(n) >= self.gap_probability
        outage = None
        if rng.random() < self.outage_probability:
            start = int(rng.integers(0, n - 90))
            length = int(rng.integers(20, 90))
            keep[start : start + length] = False
            outage = (start, length)
        keep[0] = True  # the day's open is always present so days stitch visibly
        return keep, outage


def hash_unit(text: str) -> float:
    """A stable number in [0, 1) from a string (instrument-specific constants)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") / 2**32


def _utc(ts: pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(ts)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
