"""How one keyplane replica's revocation stream serves many nodes.

Registers N nodes, opens one revocation stream per node (as N gates would),
waits until every stream has said `ready`, then revokes keys one at a time
and times, for each stream, from the revoke call's answer to that key's
`revocation` event. The same is measured first with one stream, in the same
run, as the baseline. While N streams are open, a prober times cached
introspection calls, to show what the streams cost everyone else.

Standard library only (asyncio); the streams' reader shares the machine with
keyplane, so the figures include its own time to read N sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
import urllib.parse

from propagation import call, percentile  # bench/, beside this file


class Subscriber(asyncio.Protocol):
    """One node's stream, read over HTTP/1.0 (no chunked framing to undo).
    Reading costs as little as it can (the time and the bytes, parsed after
    each round), so that what is timed is keyplane rather than this reader."""

    def __init__(self, node_key: str, counter: list[int]) -> None:
        self.node_key, self.counter = node_key, counter
        self.buffer = bytearray()
        self.arrivals: list[tuple[int, float]] = []  # (end offset, when)
        self.ready = asyncio.Event()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(f"GET /v1/revocations/stream HTTP/1.0\r\nHost: keyplane\r\n"
                        f"Authorization: Bearer {self.node_key}\r\nAccept: text/event-stream\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.buffer += data
        self.arrivals.append((len(self.buffer), now))
        self.counter[0] += data.count(b"event: revocation")
        if not self.ready.is_set() and b"event: ready" in self.buffer:
            if not self.buffer.startswith(b"HTTP/1.1 200") and not self.buffer.startswith(b"HTTP/1.0 200"):
                raise RuntimeError(f"stream refused: {bytes(self.buffer[:64])!r}")
            self.ready.set()

    def arrival(self, needle: bytes) -> float:
        """When the bytes holding `needle` had all arrived."""
        end = self.buffer.find(needle) + len(needle)
        assert end >= len(needle), "never arrived"
        return next(when for offset, when in self.arrivals if offset >= end)


async def measure(args, node_keys: list[str], instance: str) -> dict:
    """Opens a stream per node key, then times `rounds` revocations to all of them."""
    url = urllib.parse.urlparse(args.base)
    loop = asyncio.get_running_loop()
    counter = [0]
    subscribers = []
    for node_key in node_keys:
        _, subscriber = await loop.create_connection(lambda k=node_key: Subscriber(k, counter),
                                                     url.hostname, url.port)
        subscribers.append(subscriber)
    await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in subscribers)), 120)
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
        expected = counter[0] + len(subscribers)
        await asyncio.to_thread(call, args.base, "POST", f"/v1/keys/{key['id']}/revoke", args.token, {})
        answered = time.monotonic()
        deadline = answered + 30
        while counter[0] < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expected - counter[0]} of {len(subscribers)} streams lack the event")
            await asyncio.sleep(0.001)
        # An event that beat the revoke's own answer counts as zero.
        times = [max(0.0, s.arrival(key["id"].encode()) - answered) for s in subscribers]
        delivery.extend(times)
        last.append(max(times))
    for subscriber in subscribers:
        subscriber.transport.close()
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
    args = parser.parse_args()
    tag = secrets.token_hex(4)
    instance = call(args.base, "POST", "/v1/instances", args.token,
                    {"name": f"fanout-{tag}", "allowed_scopes": ["inference:chat"]})["id"]
    node_keys: list[str] = []
    for start in range(0, args.streams, 50):
        made = await asyncio.gather(*(
            asyncio.to_thread(call, args.base, "POST", "/v1/nodes", args.token, {"name": f"fanout-{tag}-{i}"})
            for i in range(start, min(start + 50, args.streams))))
        node_keys.extend(node["secret"] for node in made)
    one = await measure(args, node_keys[:1], instance)
    report("1 stream", one)
    many = await measure(args, node_keys, instance)
    report(f"{args.streams} streams", many)
    print(f"ratio            delivery p99 {percentile(many['delivery'], 99) / percentile(one['delivery'], 99):.1f}x "
          f"the one-stream baseline; cached introspection p50 "
          f"{percentile(many['probe'], 50) / percentile(one['probe'], 50):.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
