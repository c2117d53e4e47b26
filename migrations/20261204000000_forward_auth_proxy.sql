-- Which reverse proxy calls forward auth for a node, and so which of the
-- headers it sends describe the client's request (the others are the
-- client's own, copied through). Null: the deployment's default
-- (KEYPLANE_FORWARD_AUTH_PROXY).
alter table nodes
    add column forward_auth_proxy text
        constraint nodes_forward_auth_proxy_check
        check (forward_auth_proxy in ('nginx', 'traefik', 'caddy', 'envoy'));
