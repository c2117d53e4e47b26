#!/usr/bin/env bash
# Opens /docs in a real, headless Chromium and checks that the API reference
# renders: the page's Content-Security-Policy lets only keyplane's own
# script run, so a page that still loaded Scalar from a CDN, or a script the
# policy blocks, would stay blank.
#
# Installs Chromium from Debian's packages if it is missing; uses the
# PostgreSQL server scripts/test starts (KEYPLANE_TEST_DATABASE_URL).
set -euo pipefail
source "$(dirname "$0")/../proxies/lib.sh"

need chromium chromium
chromium=$(command -v chromium)

start_keyplane nginx
# Flags as the machine's own checks use them: no sandbox (root), and no
# background calls to hosts this machine cannot reach.
timeout 120 "$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$work/chromium" --virtual-time-budget=15000 \
  --dump-dom "$keyplane_url/docs" >"$work/docs.html" 2>"$work/chromium.log" || true

# Scalar's script draws these; the page as served holds none of them.
if grep -q 'class="download-button"' "$work/docs.html" && grep -q 'Liveness and readiness' "$work/docs.html"; then
  pass "/docs renders the API reference under its Content-Security-Policy"
else
  fail "/docs renders the API reference" "$(head -c 600 "$work/docs.html")"
fi
if curl -s "$keyplane_url/docs" | grep -q 'class="download-button"'; then
  fail "the served page is not already the rendered one (the check above would prove nothing)"
else
  pass "the rendering is the script's work"
fi
finish "chromium $("$chromium" --version 2>/dev/null | awk '{print $2}')" "$work/chromium.log"
