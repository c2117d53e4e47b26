#!/usr/bin/env bash
# Runs a real nginx with deploy/nginx/keyplane-auth.conf between curl, a real
# keyplane and a stub inference server, and checks what gets through (see
# `proxy_checks` in lib.sh): a good key passes with its identity and without
# itself; no key, a malformed or revoked key, a key short of the route's
# scope, forged route and address headers and ambiguous paths do not. On top,
# refusals are OpenAI-shaped JSON, and with keyplane gone nginx fails closed
# (503).
#
# Installs nginx from Debian's packages if it is missing. nginx runs from a
# temporary prefix with its own nginx.conf, pid file, logs and temp paths:
# /etc/nginx and /var/lib/nginx are left alone.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# nginx-light is the smallest build with auth_request; newer Debian releases
# fold it into nginx.
need nginx nginx-light nginx
nginx=$(command -v nginx || echo /usr/sbin/nginx)

start_keyplane nginx
make_fixtures
start_upstream

nginx_port=$(free_port)
sed -e "s/\bKEYPLANE_LISTEN\b/127.0.0.1:$nginx_port/" \
    -e "s/\bKEYPLANE_ADDR\b/127.0.0.1:$keyplane_port/" \
    -e "s/\bKEYPLANE_UPSTREAM\b/127.0.0.1:$upstream_port/" \
    "$root/deploy/nginx/keyplane-auth.conf" >"$work/keyplane-auth.conf"
if grep -nE '\bKEYPLANE_(LISTEN|ADDR|UPSTREAM)\b' "$work/keyplane-auth.conf" >&2; then
  log "placeholders left in the rendered configuration"; exit 1
fi
# The node key file, as an operator would make it from the example.
(umask 077; sed -E "s/^set \\\$keyplane_node_key \".*\";/set \$keyplane_node_key \"$node_key\";/" \
  "$root/deploy/nginx/keyplane-node-key.conf.example" >"$work/keyplane-node-key.conf")
grep -q "\"$node_key\"" "$work/keyplane-node-key.conf" || { log "could not render the node key file"; exit 1; }

# A main nginx.conf around it. Workers run as root here only because the
# temporary prefix is root's; real deployments keep nginx's own user.
{
  [ "$(id -u)" = 0 ] && echo 'user root;'
  cat <<CONF
worker_processes 1;
events { worker_connections 64; }
http {
    access_log $work/access.log;
    client_body_temp_path $work/client_body;
    proxy_temp_path $work/proxy;
    fastcgi_temp_path $work/fastcgi;
    uwsgi_temp_path $work/uwsgi;
    scgi_temp_path $work/scgi;
    include keyplane-auth.conf;
}
CONF
} >"$work/nginx.conf"
# nginx honours only the last -g, so the test run repeats these settings;
# -e (nginx 1.19.5+) keeps even start-up errors out of /var/log/nginx.
nginx_args=(-p "$work" -c "$work/nginx.conf")
case "$("$nginx" -h 2>&1)" in *'-e filename'*) nginx_args+=(-e "$work/error.log") ;; esac
globals="pid $work/nginx.pid; error_log $work/error.log;"

if "$nginx" "${nginx_args[@]}" -g "$globals" -t >"$work/nginx-t.log" 2>&1; then
  pass "nginx -t accepts the rendered configuration"
else
  fail "nginx -t accepts the rendered configuration" "$(cat "$work/nginx-t.log")"
  exit 1
fi
"$nginx" "${nginx_args[@]}" -g "$globals daemon off;" >"$work/nginx.out" 2>&1 &
pids+=($!)
proxy_url="http://127.0.0.1:$nginx_port"
wait_for "$proxy_url/v1/models" "nginx" "$work/error.log"

proxy_checks

# Refusals are bodies an OpenAI client library understands.
json_error_code() { jq -er '.error | select(.message and .type) | .code' "$1" 2>/dev/null; }
for case in nokey:invalid_api_key malformed:invalid_api_key short:insufficient_permissions; do
  name=${case%%:*} code=${case#*:}
  if [ "$(json_error_code "$work/$name.json")" = "$code" ]; then
    pass "$name: OpenAI-shaped JSON error with code $code"
  else
    fail "$name: want an OpenAI-shaped JSON error with code $code" "body: $(cat "$work/$name.json")"
  fi
done

check_fails_closed 503
if [ "$(json_error_code "$work/down.json")" = service_unavailable ]; then
  pass "keyplane unreachable: OpenAI-shaped JSON error"
else
  fail "keyplane unreachable: want an OpenAI-shaped JSON error" "body: $(cat "$work/down.json")"
fi

finish "nginx $("$nginx" -v 2>&1 | sed 's|.*/||')" "$work/error.log"
