{{
  config(
    materialized='table',
    alias='bar_features_audit'
  )
}}
-- Model inputs per instrument and bar, built into the AUDIT relation `bar_features_audit`
-- (only the run's requested partitions). The dbt tests judge this relation; the Dagster asset
-- then publishes the partitions that passed into `bar_features`, the table every consumer
-- reads (write-audit-publish, see docs/architecture.md).
--
-- Horizons are minutes of time, not bar counts: ret_k compares the close with the last close
-- at or before ts - k minutes (ASOF join), rolling statistics cover the k minutes ending at
-- ts (RANGE frames). Every window ends at the current row: a feature at t uses bars up to t.
--
-- History is what was published. A feature window never crosses a day that is not published
-- (missing, or quarantined with nothing published): the history splits into segments at such
-- a day, and a bar's features stay NULL (warm-up) until its segment holds 60 minutes of bars
-- before it. A day published empty because its session is closed keeps the segment going.
-- Only partitions of 1-minute bars (interval_s = 60 in published_partitions) are used: ret_1
-- cannot exist on 5-minute bars, so other intervals are refused (the asset quarantines them
-- with that reason).

with published_days as (
    select instrument, date
    -- written by the publish steps (not a dbt source: it is bookkeeping, not an asset)
    from published_partitions
    where layer = 'market_bars'
      and (interval_s is null or interval_s = 60)
      and {{ partition_filter() }}
),

segments as (
    -- gaps and islands: consecutive published days share a segment id
    select
        instrument,
        date,
        date - cast(row_number() over (partition by instrument order by date) as integer) as seg
    from published_days
),

bars as (
    select b.*, s.seg
    from {{ ref('stg_market_bars') }} b
    join segments s using (instrument, date)
    where {{ partition_filter(date_column='b.date', instrument_column='b.instrument') }}
),

prior as (
    -- the last close at or before ts - k minutes, in the same segment
    select
        b.*,
        min(b.ts) over (partition by b.instrument, b.seg) as seg_start,
        p1.close as close_1m,
        p5.close as close_5m,
        p15.close as close_15m,
        p60.close as close_60m
    from bars b
    asof left join bars p1 on b.instrument = p1.instrument and b.seg = p1.seg and b.ts - interval 1 minute >= p1.ts
    asof left join bars p5 on b.instrument = p5.instrument and b.seg = p5.seg and b.ts - interval 5 minute >= p5.ts
    asof left join bars p15 on b.instrument = p15.instrument and b.seg = p15.seg and b.ts - interval 15 minute >= p15.ts
    asof left join bars p60 on b.instrument = p60.instrument and b.seg = p60.seg and b.ts - interval 60 minute >= p60.ts
),

base as (
    select
        *,
        ln(close / close_1m) as ret_1,
        ln(close / close_5m) as ret_5,
        ln(close / close_15m) as ret_15,
        ln(close / close_60m) as ret_60,
        greatest(close - close_1m, 0) as gain,
        greatest(close_1m - close, 0) as loss
    from prior
),

rolling as (
    select
        *,
        stddev_samp(ret_1) over (partition by instrument, seg order by ts range between interval 14 minute preceding and current row) as rv_15,
        stddev_samp(ret_1) over (partition by instrument, seg order by ts range between interval 59 minute preceding and current row) as rv_60,
        -- clamped at 0: windowed sums of non-negative values can come out at -1e-17, which
        -- would put the RSI a hair outside [0, 100]
        greatest(avg(gain) over (partition by instrument, seg order by ts range between interval 13 minute preceding and current row), 0) as avg_gain_14,
        greatest(avg(loss) over (partition by instrument, seg order by ts range between interval 13 minute preceding and current row), 0) as avg_loss_14,
        avg(close) over (partition by instrument, seg order by ts range between interval 11 minute preceding and current row) as sma_12,
        avg(close) over (partition by instrument, seg order by ts range between interval 25 minute preceding and current row) as sma_26,
        avg(close) over (partition by instrument, seg order by ts range between interval 19 minute preceding and current row) as sma_20,
        stddev_samp(close) over (partition by instrument, seg order by ts range between interval 19 minute preceding and current row) as sd_20,
        avg(volume) over (partition by instrument, seg order by ts range between interval 59 minute preceding and current row) as vol_mean_60,
        stddev_samp(volume) over (partition by instrument, seg order by ts range between interval 59 minute preceding and current row) as vol_sd_60
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
        avg(macd_raw) over (partition by instrument, seg order by ts range between interval 8 minute preceding and current row) as macd_signal_raw
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
        ts >= seg_start + interval 60 minute as warm,
        ret_1,
        ret_5,
        ret_15,
        ret_60,
        rv_15,
        rv_60,
        case
            when avg_gain_14 + avg_loss_14 = 0 then 50.0
            -- the ratio first: (100 * g) / g can round to 100.00000000000001, g / g is exactly 1
            else 100.0 * (avg_gain_14 / (avg_gain_14 + avg_loss_14))
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

-- Warm-up: the first 60 minutes of a segment cannot fill the longest window; their features
-- are left NULL (training drops them) rather than computed on partial windows.
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
    case when warm then {{ col }} end as {{ col }}{% if not loop.last %},{% endif %}
    {% endfor %}
from features
where {{ requested_dates_filter() }}
