"""The latency the gate adds to a chat completion over calling its upstream
directly: one request at a time on a kept-alive connection each, direct,
through nginx's proxy_pass and through the gate in turn (so all three meet
the machine at the same moments), non-streamed (until the whole answer) and
streamed (until the last event). nginx's figure is what any proxy hop costs
here. Run by bench/gate.sh, which starts the upstream, nginx and the gate."""

import argparse
import http.client
import json
import time
import urllib.parse

CHAT = json.dumps(
    {"model": "bench-model", "max_tokens": 16, "messages": [{"role": "user", "content": "How fast is the gate?"}]},
    separators=(",", ":"),
)
STREAMED = CHAT[:-1] + ',"stream":true}'


class Caller:
    """Requests on one kept-alive connection, timed to the answer's last byte."""

    def __init__(self, base: str, key: str | None):
        url = urllib.parse.urlsplit(base)
        self.connection = http.client.HTTPConnection(url.hostname, url.port)
        self.headers = {"content-type": "application/json"}
        if key:
            self.headers["authorization"] = f"Bearer {key}"

    def chat(self, body: str) -> float:
        started = time.perf_counter_ns()
        self.connection.request("POST", "/v1/chat/completions", body, self.headers)
        answer = self.connection.getresponse()
        data = answer.read()
        elapsed = (time.perf_counter_ns() - started) / 1e6
        if answer.status != 200 or not data:
            raise SystemExit(f"answer {answer.status}: the run is void")
        if body is STREAMED and not data.rstrip().endswith(b"data: [DONE]"):
            raise SystemExit("a streamed answer did not end with [DONE]: the run is void")
        return elapsed


def pick(times: list[float], q: float) -> float:
    times = sorted(times)
    return times[min(len(times) - 1, int(q * len(times)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--direct", required=True)
    parser.add_argument("--nginx", required=True)
    parser.add_argument("--gate", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    direct, nginx, gate = Caller(args.direct, None), Caller(args.nginx, None), Caller(args.gate, args.key)
    for kind, body in (("non-streaming", CHAT), ("streaming", STREAMED)):
        for _ in range(50):  # warm connections, caches and the first lease
            for caller in (direct, nginx, gate):
                caller.chat(body)
        at_direct, at_nginx, at_gate = [], [], []
        for _ in range(args.samples):
            at_direct.append(direct.chat(body))
            at_nginx.append(nginx.chat(body))
            at_gate.append(gate.chat(body))
        d50, d99 = pick(at_direct, 0.5), pick(at_direct, 0.99)
        n50, n99 = pick(at_nginx, 0.5), pick(at_nginx, 0.99)
        g50, g99 = pick(at_gate, 0.5), pick(at_gate, 0.99)
        print(
            f"{kind:14} direct p50 {d50:.3f} ms p99 {d99:.3f} ms; added by nginx p50 {n50 - d50:+.3f} ms "
            f"p99 {n99 - d99:+.3f} ms; added by the gate p50 {g50 - d50:+.3f} ms (goal <= 0.100), "
            f"p99 {g99 - d99:+.3f} ms"
        )


if __name__ == "__main__":
    main()
