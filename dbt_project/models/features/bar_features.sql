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
-- at or before ts - k minutes, rolling statistics cover the k minutes ending at ts (RANGE
-- frames). Every window ends at the current row: a feature at t uses bars up to t.
--
-- How it is computed, for speed (the results are those of an ASOF join per horizon and RANGE
-- frames on ts, bit for bit; docs/benchmarks.md has the measurements):
-- * the windows order by epoch_us(ts), a BIGINT (see macros/minute_frames.sql);
-- * "the last close at or before ts - k minutes" is lag(close, n) where n counts the bars in
--   (ts - k minutes, ts]: the bar n rows back is the newest one outside that span. One cheap
--   window stage instead of four ASOF joins, exact at any bar spacing and across gaps;
-- * the window stages carry only the columns they compute on; open, high, low and date join
--   back at the end (every window stage re-sorts what it carries).
--
{%- set return_horizons = [1, 5, 15, 60] %}

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

counted as (
    -- bars in (ts - k minutes, ts] for each return horizon k, and the segment's first bar
    select
        instrument,
        seg,
        ts,
        t_us,
        close,
        volume,
        first_value(ts) over w as seg_start,
        {%- for k in return_horizons %}
        count(*) over (w range between {{ minutes_us(k, minus_us=1) }} preceding and current row) as n_{{ k }}m{% if not loop.last %},{% endif %}
        {%- endfor %}
    from (select *, epoch_us(ts) as t_us from bars)
    window w as (partition by instrument, seg order by t_us)
),

prior as (
    -- the last close at or before ts - k minutes, in the same segment (NULL if none)
    select
        *,
        {%- for k in return_horizons %}
        lag(close, n_{{ k }}m) over w as close_{{ k }}m{% if not loop.last %},{% endif %}
        {%- endfor %}
    from counted
    window w as (partition by instrument, seg order by t_us)
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
        instrument,
        seg,
        ts,
        t_us,
        close,
        volume,
        seg_start,
        ret_1,
        ret_5,
        ret_15,
        ret_60,
        stddev_samp(ret_1) over (w range between {{ minutes_us(14) }} preceding and current row) as rv_15,
        stddev_samp(ret_1) over (w range between {{ minutes_us(59) }} preceding and current row) as rv_60,
        -- clamped at 0: windowed sums of non-negative values can come out at -1e-17, which
        -- would put the RSI a hair outside [0, 100]
        greatest(avg(gain) over (w range between {{ minutes_us(13) }} preceding and current row), 0) as avg_gain_14,
        greatest(avg(loss) over (w range between {{ minutes_us(13) }} preceding and current row), 0) as avg_loss_14,
        avg(close) over (w range between {{ minutes_us(11) }} preceding and current row) as sma_12,
        avg(close) over (w range between {{ minutes_us(25) }} preceding and current row) as sma_26,
        avg(close) over (w range between {{ minutes_us(19) }} preceding and current row) as sma_20,
        stddev_samp(close) over (w range between {{ minutes_us(19) }} preceding and current row) as sd_20,
        avg(volume) over (w range between {{ minutes_us(59) }} preceding and current row) as vol_mean_60,
        stddev_samp(volume) over (w range between {{ minutes_us(59) }} preceding and current row) as vol_sd_60
    from base
    window w as (partition by instrument, seg order by t_us)
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
        avg(macd_raw) over (partition by instrument, seg order by t_us range between {{ minutes_us(8) }} preceding and current row) as macd_signal_raw
    from macd
),

features as (
    -- open, high, low and date were left out of the window stages; they join back here
    select
        b.instrument,
        b.ts,
        b.date,
        b.open,
        b.high,
        b.low,
        b.close,
        b.volume,
        s.ts >= s.seg_start + interval 60 minute as warm,
        s.ret_1,
        s.ret_5,
        s.ret_15,
        s.ret_60,
        s.rv_15,
        s.rv_60,
        case
            when s.avg_gain_14 + s.avg_loss_14 = 0 then 50.0
            -- the ratio first: (100 * g) / g can round to 100.00000000000001, g / g is exactly 1
            else 100.0 * (s.avg_gain_14 / (s.avg_gain_14 + s.avg_loss_14))
        end as rsi_14,
        s.macd_raw as macd,
        s.macd_signal_raw as macd_signal,
        s.macd_raw - s.macd_signal_raw as macd_hist,
        case when s.sd_20 > 0 then (s.close - s.sma_20) / (2 * s.sd_20) else 0.0 end as bb_pos_20,
        case when s.vol_sd_60 > 0 then (s.volume - s.vol_mean_60) / s.vol_sd_60 else 0.0 end as volume_z_60,
        (b.high - b.low) / b.close as range_hl,
        (b.close - b.open) / b.open as range_co
    from signal s
    join bars b using (instrument, ts)
    where {{ requested_dates_filter(date_column='b.date') }}
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
