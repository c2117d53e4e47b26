-- Label selectors (`env=prod,team!=ml`, `tier in (gpu,cpu)`) filter
-- instances, and keys by their instance's labels. keyplane asks them as a
-- containment (`labels @> '{"env": "prod"}'`, the `key=value` part) that
-- this index answers, and a jsonpath predicate (`labels @@ '...'`) for the
-- whole selector, evaluated on what the index leaves.
create index instances_labels_idx on instances using gin (labels jsonb_path_ops);
