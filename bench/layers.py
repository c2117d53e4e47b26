#!/usr/bin/env python3
"""Where a server's CPU goes, layer by layer, in µs a request.

Reads `perf script -F ip,sym` (samples with their call stacks, as
bench/profile.sh records them) on stdin, puts each sample in the layer of
the innermost frame that names one (allocation, copies and the like count
for the layer that asked for them), and prints each layer's share as µs
of CPU a request:

    perf script -i perf.data -F ip,sym | bench/layers.py --requests N --hz 999

N is the number of requests served while perf sampled. Inlined frames do
not appear in perf's stacks: what the compiler folded into a caller counts
for the caller's layer.
"""
import argparse
import re
import sys
from collections import Counter

# Kernel samples, by the system call under them.
KERNEL = [
    ("kernel: send (writev; loopback delivery to the peer included)",
     re.compile(r"writev|sock_write_iter|sock_sendmsg")),
    ("kernel: receive (recvfrom, read)", re.compile(r"recvfrom|tcp_recvmsg|__libc_recv|sys_read")),
    ("kernel: wait and wake (epoll, futex, scheduling)",
     re.compile(r"epoll_wait|futex|schedule|nanosleep|sched_yield")),
]

# User-space layers, innermost first; a frame that names none is skipped.
LAYERS = [
    ("handler (its work and its JSON)", re.compile(
        r"keyplane_server::(routes|introspection|auth|node|digest_cache|lookups|ops::health)|"
        r"axum::handler|axum::json|keyplane_bench_hello|serde|keyplane_domain::key")),
    ("the gate (key check, limits, forwarding, metering)", re.compile(r"keyplane_gate|keyplane_client")),
    ("metrics by route", re.compile(r"keyplane_server::(metrics|request::Observe)")),
    ("envelope (request id, span, security headers, problem body)", re.compile(
        r"keyplane_server::(envelope|request::RequestId|error::render)|keyplane_telemetry|tracing")),
    ("timeout (a timer a request)", re.compile(r"tower_http::timeout|tokio::time::sleep")),
    ("routing (axum)", re.compile(
        r"axum::routing|matchit|matched_path|url_params|boxed_clone|default_body_limit")),
    ("serve loop (peer, body watch, in-flight count)", re.compile(
        r"keyplane_tls::serve::(watch_body|Tracked|Left|Watched|Activity|InFlight)|ServiceFn|"
        r"hyper_util::service|axum::serve")),
    ("hyper (HTTP/1 parse, encode, dispatch, buffers)", re.compile(r"hyper::|httparse|hyper_util")),
    ("tokio (scheduling, I/O readiness, timers)", re.compile(r"tokio::")),
]


def samples(lines):
    """Yields each sample's frames, leaf first."""
    stack = []
    for line in lines:
        line = line.strip()
        if not line:
            if stack:
                yield stack
            stack = []
            continue
        parts = line.split(None, 1)
        if len(parts) == 2 and re.fullmatch(r"[0-9a-f]+", parts[0]):
            stack.append((parts[0], parts[1]))
    if stack:
        yield stack


def layer(stack):
    address, _ = stack[0]
    if len(address) == 16 and address.startswith("ffffffff"):
        for name, pattern in KERNEL:
            if any(pattern.search(symbol) for _, symbol in stack):
                return name
        return "kernel: other"
    for _, symbol in stack:
        for name, pattern in LAYERS:
            if pattern.search(symbol):
                return name
    return "other (libc, allocator, threads' start)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=float, required=True)
    parser.add_argument("--hz", type=float, default=999)
    args = parser.parse_args()
    counts = Counter(layer(stack) for stack in samples(sys.stdin))
    total = sum(counts.values())
    per_sample = 1e6 / args.hz / args.requests
    for name, count in counts.most_common():
        print(f"{count * per_sample:6.2f} µs  {100 * count / total:5.1f}%  {name}")
    print(f"{total * per_sample:6.2f} µs  100.0%  in all ({total} samples)")


if __name__ == "__main__":
    main()
