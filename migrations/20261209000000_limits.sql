-- Usage limits: rate limits and token budgets (a JSON object of positive
-- integers, absent = no limit) and a model allow-list (null = every model)
-- on keys and on instances; a key is held to the tighter of the two.
alter table api_keys
    add column limits jsonb not null default '{}',
    add column models text[];
alter table instances
    add column limits jsonb not null default '{}',
    add column models text[];

-- A key whose limits changed is announced on the revocation stream too
-- (reason 'changed'): nodes drop their cached answer and ask again.
alter table revocations drop constraint revocations_reason_check;
alter table revocations add constraint revocations_reason_check
    check (reason in ('revoked', 'disabled', 'rotated', 'suspended', 'decommissioned', 'expired',
                      'changed'));
