"""Paper trading: the deployed model trades on paper against real bars, the desk's metrics, the
circuit breaker (check + sensor), the jobs that run them and their schedules."""

from autotrader_assets.defs.trading.assets import PaperTradingConfig, paper_trading, trading_performance
from autotrader_assets.defs.trading.checks import circuit_breaker_check
from autotrader_assets.defs.trading.jobs import paper_trading_job, performance_report_job
from autotrader_assets.defs.trading.partitions import trading_partitions
from autotrader_assets.defs.trading.schedules import daily_paper_trading, weekly_performance_report
from autotrader_assets.defs.trading.sensors import (
    build_circuit_breaker_sensor,
    circuit_breaker_sensor,
    data_rollback_reprocess_sensor,
)

trading_assets = [paper_trading, trading_performance]
trading_checks = [circuit_breaker_check]
trading_jobs = [paper_trading_job, performance_report_job]
trading_sensors = [circuit_breaker_sensor, data_rollback_reprocess_sensor]
trading_schedules = [daily_paper_trading, weekly_performance_report]

__all__ = [
    "PaperTradingConfig",
    "build_circuit_breaker_sensor",
    "circuit_breaker_check",
    "circuit_breaker_sensor",
    "data_rollback_reprocess_sensor",
    "paper_trading",
    "paper_trading_job",
    "performance_report_job",
    "trading_assets",
    "trading_checks",
    "trading_jobs",
    "trading_partitions",
    "trading_schedules",
    "trading_sensors",
    "trading_performance",
]
