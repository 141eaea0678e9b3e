{{
  config(
    materialized='incremental',
    incremental_strategy='delete+insert',
    unique_key=['date', 'instrument'],
    on_schema_change='fail'
  )
}}
-- Model inputs per instrument and bar. Every window is ordered by ts and ends at the current
-- row, so a feature at time t uses bars up to and including t only (no look-ahead).
-- Windows count bars, not minutes: across a gap they reach further back in time.

with bars as (
    select * from {{ ref('stg_market_bars') }}
    where {{ partition_filter() }}
),

base as (
    select
        *,
        row_number() over w as n_hist,
        ln(close / lag(close, 1) over w) as ret_1,
        ln(close / lag(close, 5) over w) as ret_5,
        ln(close / lag(close, 15) over w) as ret_15,
        ln(close / lag(close, 60) over w) as ret_60,
        greatest(close - lag(close, 1) over w, 0) as gain,
        greatest(lag(close, 1) over w - close, 0) as loss
    from bars
    window w as (partition by instrument order by ts)
),

rolling as (
    select
        *,
        stddev_samp(ret_1) over (partition by instrument order by ts rows between 14 preceding and current row) as rv_15,
        stddev_samp(ret_1) over (partition by instrument order by ts rows between 59 preceding and current row) as rv_60,
        avg(gain) over (partition by instrument order by ts rows between 13 preceding and current row) as avg_gain_14,
        avg(loss) over (partition by instrument order by ts rows between 13 preceding and current row) as avg_loss_14,
        avg(close) over (partition by instrument order by ts rows between 11 preceding and current row) as sma_12,
        avg(close) over (partition by instrument order by ts rows between 25 preceding and current row) as sma_26,
        avg(close) over (partition by instrument order by ts rows between 19 preceding and current row) as sma_20,
        stddev_samp(close) over (partition by instrument order by ts rows between 19 preceding and current row) as sd_20,
        avg(volume) over (partition by instrument order by ts rows between 59 preceding and current row) as vol_mean_60,
        stddev_samp(volume) over (partition by instrument order by ts rows between 59 preceding and current row) as vol_sd_60
    from base
),

macd as (
    select
        *,
        (sma_12 - sma_26) / close as macd_raw
    from rolling
),

signal as (
    select
        *,
        avg(macd_raw) over (partition by instrument order by ts rows between 8 preceding and current row) as macd_signal_raw
    from macd
),

features as (
    select
        instrument,
        ts,
        date,
        open,
        high,
        low,
        close,
        volume,
        n_hist,
        ret_1,
        ret_5,
        ret_15,
        ret_60,
        rv_15,
        rv_60,
        case
            when avg_gain_14 + avg_loss_14 = 0 then 50.0
            else 100.0 * avg_gain_14 / (avg_gain_14 + avg_loss_14)
        end as rsi_14,
        macd_raw as macd,
        macd_signal_raw as macd_signal,
        macd_raw - macd_signal_raw as macd_hist,
        case when sd_20 > 0 then (close - sma_20) / (2 * sd_20) else 0.0 end as bb_pos_20,
        case when vol_sd_60 > 0 then (volume - vol_mean_60) / vol_sd_60 else 0.0 end as volume_z_60,
        (high - low) / close as range_hl,
        (close - open) / open as range_co
    from signal
)

-- The first 60 bars of an instrument's history cannot fill the longest window: their
-- features are left NULL (training drops them) rather than computed on partial windows.
select
    instrument,
    ts,
    date,
    open,
    high,
    low,
    close,
    volume,
    {% for col in ['ret_1', 'ret_5', 'ret_15', 'ret_60', 'rv_15', 'rv_60', 'rsi_14', 'macd', 'macd_signal', 'macd_hist', 'bb_pos_20', 'volume_z_60', 'range_hl', 'range_co'] %}
    case when n_hist > 60 then {{ col }} end as {{ col }}{% if not loop.last %},{% endif %}
    {% endfor %}
from features
where {{ requested_dates_filter() }}
