"""The trading core: the backtest engine (fills, fees, PnL), the performance metrics, and the
circuit breaker's rules and store."""
