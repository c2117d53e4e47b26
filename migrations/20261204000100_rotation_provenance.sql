-- Who rotated a key, and when. A holder that lost the answer to its own
-- rotation may ask again for a short while; a rotation by an operator (often
-- made because the key leaked) is final for the old key. Keys rotated before
-- this migration count as rotated by an operator: final.
alter table api_keys
    add column rotated_at timestamptz,
    add column rotated_by text
        constraint api_keys_rotated_by_check check (rotated_by in ('holder', 'operator'));

-- An instance may be barred from rotating its own keys (POST /v1/self/rotate).
alter table instances
    add column self_rotation boolean not null default true;
