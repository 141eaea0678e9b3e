"""The Grafana dashboards as code (grafana-foundation-sdk): the system dashboard (8 panels) and the
trading dashboard (11 panels), written to ``monitoring/grafana/dashboards/*.json``.

    .venv/bin/python monitoring/grafana/dashboards.py          # regenerate the JSON
    .venv/bin/python monitoring/grafana/dashboards.py --check  # exit 1 if the committed JSON is stale

The JSON is committed so Grafana (file provisioning or the import dialog) needs no Python;
``tests/unit/test_grafana_dashboards.py`` fails when it differs from what this file builds.

Every Prometheus query reads a series this project exports: the serving slots' own
``autotrader_serving_*`` (``deploy_ops/serving/app.py``) and ``process_*`` series, and the batch
metrics of ``deploy_ops/metrics_push.py``. Infrastructure panels read what an exporter this
project does not run provides, and say which in their description: the node exporter (host
CPU, memory, disk, network) and CloudWatch (the production database's connections).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, dashboard, gauge, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import cloudwatch as cw
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import cloudwatch as cw_models
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as prom_models

OUT = Path(__file__).resolve().parent / "dashboards"
PROM = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
CLOUDWATCH = dm.DataSourceRef(type_val="cloudwatch", uid="${cloudwatch}")

SERVING = 'job="autotrader-serving"'
PREDICT = f'{SERVING},endpoint="/predict"'
RATE = "5m"


def q(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> prometheus.Dataquery:
    query = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(PROM)
    if legend:
        query = query.legend_format(legend)
    if instant:
        query = query.instant().format(prom_models.PromQueryFormat.TABLE)
    return query


def steps(*pairs: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in pairs])
    )


def predict_requests(selector: str = "") -> str:
    extra = f",{selector}" if selector else ""
    return f"sum by (slot) (rate(autotrader_serving_requests_total{{{PREDICT}{extra}}}[{RATE}]))"


def latency(quantile: float) -> str:
    return (
        f"histogram_quantile({quantile}, sum by (slot, le) "
        f"(rate(autotrader_serving_request_duration_seconds_bucket{{{PREDICT}}}[{RATE}])))"
    )


def system_dashboard() -> dashboard.Dashboard:
    errors = predict_requests('status=~"5.."')
    # No 5xx series at all means no errors, not no data: "or ... * 0" gives the slots a 0.
    error_rate = f"({errors} or {predict_requests()} * 0) / {predict_requests()}"
    return (
        dashboard.Dashboard("autotrader: system")
        .uid("autotrader-system")
        .tags(["autotrader"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("utc")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(dashboard.DatasourceVariable("cloudwatch").label("CloudWatch").type("cloudwatch"))
        .with_panel(
            timeseries.Panel()
            .title("CPU")
            .span(12)
            .height(8)
            .unit("percentunit")
            .min(0)
            .description(
                "Host CPU busy fraction from the node exporter (node_cpu_seconds_total; run "
                "prometheus-node-exporter on each host); the serving processes' own CPU (cores) "
                "from their /metrics (process_cpu_seconds_total). 70% / 90% thresholds."
            )
            .with_target(
                q(f'1 - avg by (instance) (rate(node_cpu_seconds_total{{mode="idle"}}[{RATE}]))', "host {{instance}}")
            )
            .with_target(q(f"rate(process_cpu_seconds_total{{{SERVING}}}[{RATE}])", "slot {{slot_name}}", "B"))
            .thresholds(steps((None, "green"), (0.7, "orange"), (0.9, "red")))
        )
        .with_panel(
            timeseries.Panel()
            .title("Memory")
            .span(12)
            .height(8)
            .unit("percentunit")
            .min(0)
            .description(
                "Host memory in use from the node exporter (node_memory_MemAvailable_bytes / "
                "node_memory_MemTotal_bytes); the serving processes' resident memory (bytes) from "
                "their /metrics. 80% / 95% thresholds."
            )
            .with_target(q("1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes", "host {{instance}}"))
            .with_target(q(f"process_resident_memory_bytes{{{SERVING}}}", "slot {{slot_name}} RSS", "B"))
            .override_by_query("B", [dm.DynamicConfigValue(id_val="unit", value="bytes")])
            .thresholds(steps((None, "green"), (0.8, "orange"), (0.95, "red")))
        )
        .with_panel(
            timeseries.Panel()
            .title("Request rate")
            .span(8)
            .height(8)
            .unit("reqps")
            .min(0)
            .description("/predict requests per second per slot (autotrader_serving_requests_total).")
            .with_target(q(predict_requests(), "{{slot}}"))
        )
        .with_panel(
            timeseries.Panel()
            .title("Error rate")
            .span(8)
            .height(8)
            .unit("percentunit")
            .min(0)
            .description(
                "Fraction of /predict answered 5xx per slot; ServingErrorRateHigh pages above 1% "
                "for 5 minutes. 0.5% / 1% thresholds."
            )
            .with_target(q(error_rate, "{{slot}}"))
            .thresholds(steps((None, "green"), (0.005, "orange"), (0.01, "red")))
        )
        .with_panel(
            timeseries.Panel()
            .title("Latency p50 / p95 / p99")
            .span(8)
            .height(8)
            .unit("s")
            .min(0)
            .description(
                "Server-side /predict latency per slot from the histogram "
                "autotrader_serving_request_duration_seconds; ServingLatencyHigh warns when p99 "
                "stays above 200 ms for 10 minutes. 100 ms / 200 ms thresholds."
            )
            .with_target(q(latency(0.5), "p50 {{slot}}"))
            .with_target(q(latency(0.95), "p95 {{slot}}", "B"))
            .with_target(q(latency(0.99), "p99 {{slot}}", "C"))
            .thresholds(steps((None, "green"), (0.1, "orange"), (0.2, "red")))
        )
        .with_panel(
            timeseries.Panel()
            .title("Database connections")
            .span(8)
            .height(8)
            .min(0)
            .description(
                "Connections to the production registry/state PostgreSQL (RDS) from CloudWatch "
                "(AWS/RDS DatabaseConnections, the $cloudwatch data source). The local profile's "
                "SQLite has no connections to count, so this panel is empty locally."
            )
            .datasource(CLOUDWATCH)
            .with_target(
                cw.CloudWatchMetricsQuery()
                .ref_id("A")
                .datasource(CLOUDWATCH)
                .query_mode(cw_models.CloudWatchQueryMode.METRICS)
                .metric_query_type(cw_models.MetricQueryType.SEARCH)
                .metric_editor_mode(cw_models.MetricEditorMode.BUILDER)
                .region("default")
                .namespace("AWS/RDS")
                .metric_name("DatabaseConnections")
                .statistic("Maximum")
                .match_exact(False)
            )
        )
        .with_panel(
            gauge.Panel()
            .title("Disk")
            .span(8)
            .height(8)
            .unit("percentunit")
            .min(0)
            .max(1)
            .description(
                "Filesystem space in use per mount from the node exporter "
                "(node_filesystem_avail_bytes / node_filesystem_size_bytes). 80% / 90% thresholds."
            )
            .with_target(
                q(
                    '1 - node_filesystem_avail_bytes{fstype!~"tmpfs|overlay|squashfs"} / '
                    'node_filesystem_size_bytes{fstype!~"tmpfs|overlay|squashfs"}',
                    "{{instance}} {{mountpoint}}",
                )
            )
            .thresholds(steps((None, "green"), (0.8, "orange"), (0.9, "red")))
        )
        .with_panel(
            timeseries.Panel()
            .title("Network")
            .span(8)
            .height(8)
            .unit("Bps")
            .description(
                "Bytes received and sent per second per interface from the node exporter "
                "(node_network_receive_bytes_total, node_network_transmit_bytes_total)."
            )
            .with_target(
                q(f'rate(node_network_receive_bytes_total{{device!="lo"}}[{RATE}])', "rx {{instance}} {{device}}")
            )
            .with_target(
                q(f'rate(node_network_transmit_bytes_total{{device!="lo"}}[{RATE}])', "tx {{instance}} {{device}}", "B")
            )
        )
    )


def trading_dashboard() -> dashboard.Dashboard:
    money = "currencyUSD"
    return (
        dashboard.Dashboard("autotrader: trading")
        .uid("autotrader-trading")
        .tags(["autotrader"])
        .refresh("1m")
        .time("now-7d", "now")
        .timezone("utc")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_panel(
            stat.Panel()
            .title("Current PnL")
            .span(4)
            .height(5)
            .unit(money)
            .description("Paper account PnL since inception, pushed by trading_performance.")
            .with_target(q("autotrader_trading_pnl"))
            .thresholds(steps((None, "red"), (0, "green")))
        )
        .with_panel(
            stat.Panel()
            .title("Daily PnL")
            .span(4)
            .height(5)
            .unit(money)
            .description("PnL of the last computed date.")
            .with_target(q("autotrader_trading_daily_pnl"))
            .thresholds(steps((None, "red"), (0, "green")))
        )
        .with_panel(
            gauge.Panel()
            .title("Sharpe ratio")
            .span(4)
            .height(5)
            .min(0)
            .max(3)
            .decimals(2)
            .description("Annualised Sharpe of daily returns (sqrt(365), rf 0, ddof 1). 1.5 / 2.0 thresholds.")
            .with_target(q("autotrader_trading_sharpe_ratio"))
            .thresholds(steps((None, "red"), (1.5, "orange"), (2.0, "green")))
        )
        .with_panel(
            gauge.Panel()
            .title("Win rate")
            .span(4)
            .height(5)
            .unit("percentunit")
            .min(0)
            .max(1)
            .description(
                "Closed round trips with a positive PnL; WinRateLow warns below 50% for 4 hours. 50% / 55% thresholds."
            )
            .with_target(q("autotrader_trading_win_rate_ratio"))
            .thresholds(steps((None, "red"), (0.5, "orange"), (0.55, "green")))
        )
        .with_panel(
            stat.Panel()
            .title("Circuit breaker")
            .span(4)
            .height(5)
            .description(
                "ARMED while trading is allowed; TRIPPED (CircuitBreakerTripped pages) until an "
                "approved `autotrader breaker reset`."
            )
            .with_target(q("autotrader_circuit_breaker_tripped"))
            .mappings(
                [
                    dm.ValueMap(
                        options={
                            "0": dm.ValueMappingResult(text="ARMED", color="green"),
                            "1": dm.ValueMappingResult(text="TRIPPED", color="red"),
                        }
                    )
                ]
            )
            .thresholds(steps((None, "green"), (1, "red")))
        )
        .with_panel(
            stat.Panel()
            .title("Profit factor")
            .span(4)
            .height(5)
            .decimals(2)
            .description("Gross profit / gross loss of closed round trips (+Inf without a losing trade).")
            .with_target(q("autotrader_trading_profit_factor"))
            .thresholds(steps((None, "red"), (1, "green")))
        )
        .with_panel(
            timeseries.Panel()
            .title("PnL over time by instrument")
            .span(12)
            .height(9)
            .unit(money)
            .description("Each instrument's sleeve PnL since inception, as pushed after every paper-trading run.")
            .with_target(q("autotrader_trading_instrument_pnl", "{{instrument}}"))
        )
        .with_panel(
            timeseries.Panel()
            .title("Trades per minute")
            .span(12)
            .height(9)
            .min(0)
            .description("Fills per minute of market time over the account's history (trading_performance).")
            .with_target(q("autotrader_trading_trades_per_minute", "trades / min"))
        )
        .with_panel(
            bargauge.Panel()
            .title("Position sizes")
            .span(8)
            .height(9)
            .unit(money)
            .description("Open position per instrument at the last close (notional, negative = short).")
            .with_target(q("autotrader_trading_position_notional", "{{instrument}}"))
        )
        .with_panel(
            gauge.Panel()
            .title("Max drawdown")
            .span(8)
            .height(9)
            .unit("percentunit")
            .min(0)
            .max(0.25)
            .description(
                "Largest fall from the equity peak; the circuit breaker trips beyond 15%. 10% / 15% thresholds."
            )
            .with_target(q("autotrader_trading_max_drawdown_ratio"))
            .thresholds(steps((None, "green"), (0.10, "orange"), (0.15, "red")))
        )
        .with_panel(
            table.Panel()
            .title("Active positions")
            .span(8)
            .height(9)
            .description("Units and notional per instrument at the last computed bar.")
            .with_target(q("autotrader_trading_position_units", ref="A", instant=True))
            .with_target(q("autotrader_trading_position_notional", ref="B", instant=True))
            .with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
        )
    )


def build() -> dict[str, str]:
    """file name -> the dashboard's JSON text, exactly as committed."""
    boards = {"system.json": system_dashboard(), "trading.json": trading_dashboard()}
    return {
        name: json.dumps(board.build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
        for name, board in boards.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON differs")
    args = parser.parse_args(argv)
    stale = []
    for name, text in build().items():
        path = OUT / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"stale: {', '.join(stale)}; run .venv/bin/python monitoring/grafana/dashboards.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
