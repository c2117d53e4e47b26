"""How fast a revocation reaches nodes.

1. SSE: from the answer to `POST /v1/keys/{id}/revoke` on keyplane A to the
   `revocation` event for that key at a client subscribed to A's stream.
2. Replicas: from the same answer to the moment keyplane B (another process
   on the same database, which had the key cached as good) answers inactive.

Only the standard library, so it runs anywhere bench/introspect.sh does.
"""

import argparse
import http.client
import json
import threading
import time
import urllib.parse
import urllib.request


def call(base, method, path, token, body=None, form=None):
    data, headers = None, {"Authorization": f"Bearer {token}"}
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


class Stream(threading.Thread):
    """Follows A's revocation stream, noting when each key's event arrives."""

    def __init__(self, base, node_key):
        super().__init__(daemon=True)
        self.url = urllib.parse.urlparse(base)
        self.node_key = node_key
        self.arrived = {}
        self.ready = threading.Event()
        self.changed = threading.Condition()

    def run(self):
        conn = http.client.HTTPConnection(self.url.hostname, self.url.port)
        conn.request("GET", "/v1/revocations/stream", headers={"Authorization": f"Bearer {self.node_key}"})
        response = conn.getresponse()
        self.ready.set()
        name, data = "", ""
        while True:
            line = response.readline().decode()
            if not line:
                return
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif line in ("\n", "\r\n"):
                if name == "revocation" and data:
                    event = json.loads(data)
                    with self.changed:
                        self.arrived[event["key_id"]] = time.perf_counter()
                        self.changed.notify_all()
                name, data = "", ""

    def wait_for(self, key_id, deadline=10.0):
        end = time.perf_counter() + deadline
        with self.changed:
            while key_id not in self.arrived:
                left = end - time.perf_counter()
                if left <= 0:
                    raise TimeoutError(f"no event for {key_id}")
                self.changed.wait(left)
            return self.arrived[key_id]


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def report(name, seconds):
    ms = [s * 1000 for s in seconds]
    print(f"{name:<10} n={len(ms)} p50 {percentile(ms, 50):.2f} ms  p99 {percentile(ms, 99):.2f} ms  max {max(ms):.2f} ms")


def main():
    parser = argparse.ArgumentParser()
    for flag in ("--a", "--b", "--token", "--node-key", "--instance"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()

    stream = Stream(args.a, args.node_key)
    stream.start()
    stream.ready.wait(10)
    sse, replicas = [], []
    for i in range(args.rounds):
        key = call(args.a, "POST", f"/v1/instances/{args.instance}/keys", args.token,
                   body={"name": f"p{i}", "scopes": ["inference:chat"]})
        assert call(args.b, "POST", "/v1/introspect", args.node_key, form={"token": key["secret"]})["active"]
        call(args.a, "POST", f"/v1/keys/{key['id']}/revoke", args.token, body={})
        answered = time.perf_counter()
        while call(args.b, "POST", "/v1/introspect", args.node_key, form={"token": key["secret"]})["active"]:
            if time.perf_counter() - answered > 10:
                raise TimeoutError("replica never saw the revocation")
        replicas.append(time.perf_counter() - answered)
        # An event that beat the revoke's own answer counts as zero.
        sse.append(max(0.0, stream.wait_for(key["id"]) - answered))
    report("sse", sse)
    report("replica", replicas)


if __name__ == "__main__":
    main()
