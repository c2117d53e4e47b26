"""How one keyplane replica's revocation stream serves many nodes.

Registers N nodes, opens one revocation stream per node (as N gates would),
waits until every stream has said `ready`, then revokes keys one at a time
and times, for each stream, from the revoke call's answer to that key's
`revocation` event. The same is measured first with one stream, in the same
run, as the baseline. While N streams are open, a prober times cached
introspection calls, to show what the streams cost everyone else.

The streams are read by bench/fanout-reader (Rust), which notes when each
event's bytes arrived (wall-clock, the same clock this script reads). With
the asyncio reader it replaced, on the same two cores, delivery p99 over
1,000 streams was 37-44 ms; with it, 13 ms (bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import tempfile
import time
import urllib.parse

from propagation import call, percentile  # bench/, beside this file


async def measure(args, node_keys: list[str], instance: str) -> dict:
    """Opens a stream per node key, then times `rounds` revocations to all of them."""
    url = urllib.parse.urlparse(args.base)
    with tempfile.NamedTemporaryFile("w", suffix=".keys", delete=False) as keys:
        keys.write("\n".join(node_keys) + "\n")
    reader = await asyncio.create_subprocess_exec(args.reader, keys.name, f"{url.hostname}:{url.port}",
                                                  stdout=asyncio.subprocess.PIPE, limit=16 * 1024 * 1024)
    try:
        line = await asyncio.wait_for(reader.stdout.readline(), 120)
        if line != b"ready\n":
            raise RuntimeError(f"the reader did not get every stream ready: {line!r}")
        probe, delivery, last = [], [], []
        for i in range(args.rounds):
            key = await asyncio.to_thread(call, args.base, "POST", f"/v1/instances/{instance}/keys", args.token,
                                          {"name": f"fanout-{i}", "scopes": ["inference:chat"]})
            # A cached introspection, timed while the streams are open.
            for _ in range(5):
                began = time.monotonic()
                await asyncio.to_thread(call, args.base, "POST", "/v1/introspect", node_keys[0],
                                        None, {"token": key["secret"]})
                probe.append(time.monotonic() - began)
            await asyncio.to_thread(call, args.base, "POST", f"/v1/keys/{key['id']}/revoke", args.token, {})
            answered = time.time_ns()
            line = await asyncio.wait_for(reader.stdout.readline(), 30)
            fields = line.split()
            if fields[:2] != [b"event", key["id"].encode()] or len(fields) != 2 + len(node_keys):
                raise RuntimeError(f"expected every stream's event for {key['id']}, got {line[:80]!r}")
            # An event that beat the revoke's own answer counts as zero.
            times = [max(0, int(at) - answered) / 1e9 for at in fields[2:]]
            delivery.extend(times)
            last.append(max(times))
    finally:
        if reader.returncode is None:
            reader.terminate()
        await reader.wait()
        os.unlink(keys.name)
    return {"delivery": delivery, "last": last, "probe": probe}


def report(name: str, result: dict) -> None:
    ms = lambda values, p: percentile(values, p) * 1000  # noqa: E731
    print(f"{name:<16} deliveries {len(result['delivery'])}: p50 {ms(result['delivery'], 50):.2f} ms, "
          f"p99 {ms(result['delivery'], 99):.2f} ms; last stream per revocation p50 {ms(result['last'], 50):.2f} ms, "
          f"p99 {ms(result['last'], 99):.2f} ms; cached introspection meanwhile p50 {ms(result['probe'], 50):.2f} ms")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--reader", default="target/release/keyplane-bench-fanout")
    args = parser.parse_args()
    tag = secrets.token_hex(4)
    instance = call(args.base, "POST", "/v1/instances", args.token,
                    {"name": f"fanout-{tag}", "allowed_scopes": ["inference:chat"]})["id"]
    node_keys: list[str] = []
    # One node more than streams: the baseline's own, so that no stream of
    # the many waits for keyplane to notice the baseline's has closed.
    for start in range(0, args.streams + 1, 50):
        made = await asyncio.gather(*(
            asyncio.to_thread(call, args.base, "POST", "/v1/nodes", args.token, {"name": f"fanout-{tag}-{i}"})
            for i in range(start, min(start + 50, args.streams + 1))))
        node_keys.extend(node["secret"] for node in made)
    one = await measure(args, node_keys[:1], instance)
    report("1 stream", one)
    many = await measure(args, node_keys[1:], instance)
    report(f"{args.streams} streams", many)
    print(f"ratio            delivery p99 {percentile(many['delivery'], 99) / percentile(one['delivery'], 99):.1f}x "
          f"the one-stream baseline; cached introspection p50 "
          f"{percentile(many['probe'], 50) / percentile(one['probe'], 50):.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
