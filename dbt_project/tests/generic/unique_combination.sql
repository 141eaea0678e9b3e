{% test unique_combination(model, columns) %}
-- Rows whose combination of `columns` appears more than once, with their partition
-- (date, instrument) so the features asset quarantines exactly those.
select {{ columns | join(', ') }},
    {% if 'date' not in columns %}min(date) as date,{% endif %}
    {% if 'instrument' not in columns %}min(instrument) as instrument,{% endif %}
    count(*) as n
from {{ model }}
group by {{ columns | join(', ') }}
having count(*) > 1
{% endtest %}
