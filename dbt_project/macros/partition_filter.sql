{# Rows of the requested (date, instrument) partitions, widened by `lookback_days` of history
   so rolling windows at the start of a day see the previous day's bars. #}
{% macro partition_filter(date_column='date', instrument_column='instrument', lookback=true) %}
  {%- set dates = var('dates', []) -%}
  {%- set instruments = var('instruments', []) -%}
  {%- set lookback_days = var('lookback_days', 1) if lookback else 0 -%}
  true
  {%- if dates | length > 0 %}
    and {{ date_column }} between cast('{{ dates | min }}' as date) - interval {{ lookback_days }} day
                               and cast('{{ dates | max }}' as date)
  {%- endif %}
  {%- if instruments | length > 0 %}
    and {{ instrument_column }} in ({% for i in instruments %}'{{ i }}'{% if not loop.last %}, {% endif %}{% endfor %})
  {%- endif %}
{% endmacro %}

{# Only the requested dates (the lookback rows are context, not output). A contiguous run of
   dates becomes a BETWEEN, which DuckDB prunes far faster than a long IN list. #}
{% macro requested_dates_filter(date_column='date') %}
  {%- set dates = var('dates', []) | sort -%}
  {%- set contiguous = dates | length > 0 and (modules.datetime.date.fromisoformat(dates[-1]) - modules.datetime.date.fromisoformat(dates[0])).days + 1 == dates | unique | list | length -%}
  true
  {%- if contiguous %}
    and {{ date_column }} between cast('{{ dates[0] }}' as date) and cast('{{ dates[-1] }}' as date)
  {%- elif dates | length > 0 %}
    and {{ date_column }} in ({% for d in dates %}cast('{{ d }}' as date){% if not loop.last %}, {% endif %}{% endfor %})
  {%- endif %}
{% endmacro %}
