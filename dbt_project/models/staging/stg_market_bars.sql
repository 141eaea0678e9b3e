-- Typed, clean bars with the previous close attached: the base every feature model reads.
select
    instrument,
    cast(ts as timestamp) as ts,
    cast(date as date) as date,
    cast(open as double) as open,
    cast(high as double) as high,
    cast(low as double) as low,
    cast(close as double) as close,
    cast(volume as double) as volume,
    source
from {{ source('raw', 'market_bars') }}
where close > 0 and open > 0
