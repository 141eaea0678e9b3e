"""The paper account's parameters from the settings: the one place settings become them.

Costs come from the settings (``AUTOTRADER_FEE_BPS``, ``AUTOTRADER_SLIPPAGE_BPS``) and the
circuit breaker's limits from ``settings.thresholds`` (``breaker_daily_loss``,
``breaker_drawdown``); neither ``PaperParams`` nor ``deploy_ops.trading.breaker`` keeps a default
of its own. A run's config may override the costs, the starting capital and the signal.
"""

from __future__ import annotations

from autotrader_assets.defs.trading.paper import PaperParams, SignalParams
from autotrader_assets.settings import Settings
from deploy_ops.trading.backtest import DEFAULT_INITIAL_EQUITY


def paper_params_from(
    settings: Settings,
    *,
    fee_bps: float | None = None,
    slippage_bps: float | None = None,
    initial_equity: float = DEFAULT_INITIAL_EQUITY,
    signal: SignalParams | None = None,
) -> PaperParams:
    """``PaperParams`` for these settings; a cost given here replaces the settings' one."""
    return PaperParams(
        fee_bps=settings.fee_bps if fee_bps is None else float(fee_bps),
        slippage_bps=settings.slippage_bps if slippage_bps is None else float(slippage_bps),
        initial_equity=float(initial_equity),
        signal=SignalParams() if signal is None else signal,
        daily_loss_limit=settings.thresholds.breaker_daily_loss,
        drawdown_limit=settings.thresholds.breaker_drawdown,
    )
