"""Waits for a fresh keyplane to be ready and seeds it for tests/fuzz/run.sh.

Usage: setup.py BASE_URL OUT_ENV OUT_DICT, with the bootstrap token in
KEYPLANE_FUZZ_TOKEN. Registers the node whose key the node routes use, an
instance with a live API key (for introspection and forward auth), and a
spare instance, key, node and admin key whose ids the fuzzer may aim at.
Writes the secrets as shell assignments to OUT_ENV and the live values as a
schemathesis dictionary section to OUT_DICT; prints nothing secret.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

base, out_env, out_dict = sys.argv[1:4]
token = os.environ["KEYPLANE_FUZZ_TOKEN"]

deadline = time.monotonic() + 60
while True:
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=2) as response:
            if response.status == 200:
                break
    except Exception:
        pass
    if time.monotonic() > deadline:
        sys.exit("keyplane did not become ready at " + base + "/readyz")
    time.sleep(0.1)


def post(path, body):
    request = urllib.request.Request(
        base + path,
        method="POST",
        data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as err:
        sys.exit(f"setup: POST {path}: {err.code} {err.read().decode(errors='replace')}")


node = post("/v1/nodes", {"name": "fuzz"})
scopes = ["inference:chat", "models:read"]
live = post("/v1/instances", {"name": "fuzz-live"})
live_key = post(f"/v1/instances/{live['id']}/keys", {"name": "fuzz-live", "scopes": scopes})
spare = post("/v1/instances", {"name": "fuzz-spare"})
spare_key = post(f"/v1/instances/{spare['id']}/keys", {"name": "fuzz-spare", "scopes": scopes})
spare_node = post("/v1/nodes", {"name": "fuzz-spare"})
spare_admin = post("/v1/admin-keys", {"name": "fuzz-spare", "role": "viewer"})

old_umask = os.umask(0o077)
with open(out_env, "w") as f:
    f.write(f"KEYPLANE_FUZZ_NODE_KEY='{node['secret']}'\n")
    f.write(f"KEYPLANE_FUZZ_API_KEY='{live_key['secret']}'\n")
with open(out_dict, "w") as f:
    ids = [spare["id"], spare_key["id"], spare_node["id"], spare_admin["id"]]
    f.write("\n[dictionaries.ids]\nvalues = " + json.dumps(ids) + "\n")
    f.write("\n[dictionaries.live-keys]\nvalues = " + json.dumps([live_key["secret"]]) + "\n")
os.umask(old_umask)
