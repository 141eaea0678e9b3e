"""Paper trading: the deployed model trades on paper against real bars, the desk's metrics, the
circuit breaker (check + sensor) and the job that runs them."""
from autotrader_assets.defs.trading.assets import (
    PaperTradingConfig,
    build_circuit_breaker_sensor,
    circuit_breaker_check,
    circuit_breaker_sensor,
    paper_trading,
    paper_trading_job,
    trading_partitions,
    trading_performance,
)

from autotrader_assets.defs.trading.rollback_sensor import data_rollback_reprocess_sensor

trading_assets = [paper_trading, trading_performance]
trading_checks = [circuit_breaker_check]
trading_jobs = [paper_trading_job]
trading_sensors = [circuit_breaker_sensor, data_rollback_reprocess_sensor]

__all__ = [
    "PaperTradingConfig",
    "build_circuit_breaker_sensor",
    "circuit_breaker_check",
    "circuit_breaker_sensor",
    "paper_trading",
    "paper_trading_job",
    "trading_assets",
    "trading_checks",
    "trading_jobs",
    "trading_partitions",
    "trading_sensors",
    "trading_performance",
]
