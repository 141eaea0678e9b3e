{# `minutes` minutes in microseconds: a RANGE frame offset on the windows' integer order key
   epoch_us(ts). bar_features orders its windows by that BIGINT rather than by the TIMESTAMP:
   DuckDB finds RANGE frame bounds on an integer key about twice as fast as on `ts - interval`,
   and the frames are the same rows (TIMESTAMP has microsecond resolution, and a minute interval
   has no month or day part). `minus_us` makes an offset exclusive: k minutes minus 1 us
   preceding is the half-open span (ts - k minutes, ts]. #}
{% macro minutes_us(minutes, minus_us=0) -%}
  {{ (minutes * 60000000 - minus_us) | int }}
{%- endmacro %}
