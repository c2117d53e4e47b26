-- Label selectors (`env=prod,team!=ml`, `tier in (gpu,cpu)`) filter
-- instances, and keys by their instance's labels. The `key=value` part is a
-- containment (`labels @> '{"env":"prod"}'`) that this index answers; the
-- rest is checked by labels_match on what the index leaves.
create index instances_labels_idx on instances using gin (labels jsonb_path_ops);

-- Whether `labels` meet every requirement of `requirements`, a JSON list of
-- {"op": "ne"|"in"|"notin"|"exists"|"absent", "key": ..., "values": [...]}.
-- `ne` and `notin` also hold for an instance without the label.
create function labels_match(labels jsonb, requirements jsonb) returns boolean
language sql immutable parallel safe as $$
    select coalesce(bool_and(
        case r->>'op'
            when 'exists' then labels ? (r->>'key')
            when 'absent' then not (labels ? (r->>'key'))
            when 'in' then coalesce(r->'values' ? (labels->>(r->>'key')), false)
            when 'notin' then labels->>(r->>'key') is null
                           or not (r->'values' ? (labels->>(r->>'key')))
            when 'ne' then labels->>(r->>'key') is distinct from (r->'values'->>0)
            else false
        end), true)
    from jsonb_array_elements(requirements) as r
$$;
