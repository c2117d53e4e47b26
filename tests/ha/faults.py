"""keyplane losing machines, with real processes and real faults.

The deployment is deploy/ha/ as written: etcd, two Patroni nodes (a primary
and a synchronous standby, synchronous_commit = remote_apply), HAProxy in
front of them and of three keyplane replicas (each with DATABASE_READ_URL on
the standby), gates in front of a small upstream: one (dev) naming the
replicas themselves, a prod and a mixed one (HTTPS) reaching them through
relays that can cut them off. Faults:

1. The primary's machine is lost (Patroni and the postmaster SIGKILLed)
   under a write every 50 ms: the standby is promoted; keyplane writes again
   within 30 s; every write answered 2xx before, during and after is there.
2. A key is revoked 100 ms before the new primary's machine is lost (the old
   one back as its standby first): the gate refuses it after the failover,
   the revocation is in the audit log, and the chain verifies.
3. The replica leading the scheduler, and serving a gate, is SIGKILLed
   under load: no request with a cached key fails at any gate, a key revoked
   just after is refused at every gate, the leadership moves.
4. The prod and mixed gates are cut off from every replica for 2 minutes
   (while faults 1 and 2 run): prod refuses a key once its cached answer
   ends, mixed serves it within its stale window and refuses it after; when
   keyplane is back each gate replays the revocation it missed and serves
   the good key again, never the revoked one.

Each fault prints: time to recover, requests failed, writes lost (must be
0), revoked keys served (must be 0). Every wait is bounded. Run by
tests/ha/run.sh (which scripts/test runs).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from harness import (
    Cluster, Gate, Load, Relay, Replica, Writer, free_port, http, instance_names, make_certificate, metric,
    ok, start_upstream, wait_until,
)

RECOVERY_BOUND = 30.0
# The scheduler's session advisory lock (keyplane_store::scheduler::LOCK)
# as pg_locks shows it, held on the primary.
SCHEDULER_LOCK_HELD = ("select count(*) from pg_locks where locktype = 'advisory' and granted"
                       " and classid = 1801812336 and objid = 1818324581 and objsubid = 1")
PARTITION = 120.0
# The partitioned gates' settings, and what may be served past them: a
# request's answer is timed when it arrives, up to a second late.
CACHE_TTL, STALE_WINDOW, SLACK = 10.0, 60.0, 1.0


def key(api: str, instance: dict, name: str) -> dict:
    status, body = http("POST", f"{api}/v1/instances/{instance['id']}/keys",
                        {"name": name, "scopes": ["inference:chat"]})
    assert status == 201, body
    return body


def revoke(api: str, key_id: str) -> None:
    """Revokes through the load balancer, again until it answers (a replica may be going down)."""
    wait_until(lambda: ok(http("POST", f"{api}/v1/keys/{key_id}/revoke", {"reason": "ha test"})),
               RECOVERY_BOUND, "the revocation to be answered")


def primary_lost(cluster: Cluster, api: str, before_kill=None) -> dict:
    """Faults 1 and 2: the primary's machine is lost under writes."""
    writer = Writer(api)
    writer.start()
    wait_until(lambda: len(writer.acked) >= 20, 30, "writes before the fault")
    if before_kill:
        before_kill()
    victim = cluster.primary()
    assert victim, "no primary to lose"
    killed_at = time.monotonic()
    cluster.lose_machine(victim)
    survivor = next(n for n in cluster.nodes if n != victim)
    wait_until(lambda: cluster.role(survivor) == "primary", 60, f"{survivor} to be promoted")

    def recovered() -> bool:
        last_failure = max((t for t, _ in writer.failures if t > killed_at), default=killed_at)
        return any(t > last_failure + 1 for t in writer.successes)

    wait_until(recovered, RECOVERY_BOUND + 30, "writes to work again")
    # The scheduler's leader lost its lock with the old primary: one takes
    # it again on the new one.
    wait_until(lambda: cluster.psql(SCHEDULER_LOCK_HELD, database="keyplane") == "1", RECOVERY_BOUND,
               "the scheduler's lock to be taken on the new primary")
    relocked_at = time.monotonic()
    writer.finish()
    failed = [f for f in writer.failures if f[0] > killed_at]
    last_failure = max((t for t, _ in failed), default=killed_at)
    recovered_at = min(t for t in writer.successes if t > last_failure)
    present = instance_names(api)
    return {
        "victim": victim,
        "recovery_s": round(recovered_at - killed_at, 2),
        "relocked_s": round(relocked_at - killed_at, 2),
        "failed": len(failed),
        "failed_statuses": sorted({s for _, s in failed}),
        "writes": len(writer.acked),
        "lost": sum(1 for name in writer.acked if name not in present),
    }


class Partition:
    """Fault 4: the prod and mixed gates cut off from every replica; it
    runs while the main thread injects the database faults."""

    def __init__(self, api: str, instance: dict, relays: list[Relay], prod: Gate, mixed: Gate) -> None:
        self.api, self.relays, self.gates = api, relays, {"prod": prod, "mixed": mixed}
        self.good = key(api, instance, "through-the-partition")
        self.doomed = key(api, instance, "revoked-while-cut-off")
        for gate in self.gates.values():
            for k in (self.good, self.doomed):
                wait_until(lambda: gate.chat(k["secret"]) == 200, 30, f"{k['name']} to work at {gate.name}")
        self.evictions = {name: gate.metric("revocation_evictions_total") or 0
                          for name, gate in self.gates.items()}
        self.loads = {(name, which): Load(gate, k["secret"])
                      for name, gate in self.gates.items()
                      for which, k in (("good", self.good), ("doomed", self.doomed))}
        self.cut_at = time.monotonic()
        for relay in relays:
            relay.partition()
        revoke(api, self.doomed["id"])
        for load in self.loads.values():
            load.start()

    def heal(self) -> dict:
        wait_until(lambda: time.monotonic() >= self.cut_at + PARTITION, PARTITION + 60, "the partition's end")
        healed_at = time.monotonic()
        for relay in self.relays:
            relay.heal()

        def back(name: str) -> bool:
            gate = self.gates[name]
            return (any(t > healed_at and s == 200 for t, s in self.loads[(name, "good")].answers)
                    and gate.metric("revocation_stream_up") == 1
                    and (gate.metric("revocation_evictions_total") or 0) > self.evictions[name])

        for name in self.gates:
            wait_until(lambda: back(name), RECOVERY_BOUND, f"the {name} gate to replay what it missed")
        time.sleep(1)  # a few more requests for the revoked key, now that keyplane is back
        for load in self.loads.values():
            load.finish()
        result = {"partition_s": round(healed_at - self.cut_at, 1)}
        for name in self.gates:
            good, doomed = self.loads[(name, "good")].answers, self.loads[(name, "doomed")].answers
            during = [(t - self.cut_at, s) for t, s in good if t <= healed_at]
            result[name] = {
                "last_served_s": round(max((t for t, s in during if s == 200), default=0.0), 1),
                "refused": len([s for _, s in during if s != 200]),
                "refusals": sorted({s for _, s in during if s != 200}),
                "recovery_s": round(min(t for t, s in good if t > healed_at and s == 200) - healed_at, 2),
                "doomed_served_cut_off": sum(1 for t, s in doomed if t <= healed_at and s == 200),
                "doomed_served_after": sum(1 for t, s in doomed if t > healed_at and s == 200),
                "doomed_asked_after": sum(1 for t, _ in doomed if t > healed_at),
            }
        return result


def replica_lost(replicas: list[Replica], api: str, gates: list[Gate], instance: dict) -> dict:
    """Fault 3: the replica leading the scheduler (and serving the first gate) dies under load."""
    leader = next(r for r in replicas if r.leads())
    good = key(api, instance, "through-a-lost-replica")
    doomed = key(api, instance, "revoked-as-a-replica-dies")
    for gate in gates:
        for k in (good, doomed):
            wait_until(lambda: gate.chat(k["secret"]) == 200, 30, f"{k['name']} to work at {gate.name}")
    connects = {gate.name: gate.metric("revocation_stream_connects_total") or 0 for gate in gates}
    streams = {r.name: int(metric(r.metrics(), "keyplane_revocation_streams") or 0) for r in replicas}
    loads = [Load(gate, good["secret"]) for gate in gates]
    writer = Writer(api)
    for worker in (*loads, writer):
        worker.start()
    time.sleep(1)
    killed_at = time.monotonic()
    leader.kill()
    revoke(api, doomed["id"])
    others = [r for r in replicas if r is not leader]
    wait_until(lambda: any(r.leads() for r in others), RECOVERY_BOUND, "another replica to lead the scheduler")
    led_at = time.monotonic()
    # The first gate named the leader first: its stream comes back elsewhere.
    wait_until(lambda: (gates[0].metric("revocation_stream_connects_total") or 0) > connects[gates[0].name]
               and gates[0].metric("revocation_stream_up") == 1, RECOVERY_BOUND,
               f"the {gates[0].name} gate's revocation stream to come back")
    back_at = time.monotonic()
    for gate in gates:
        wait_until(lambda: gate.chat(doomed["secret"]) != 200, 10, f"the revoked key to be refused at {gate.name}")
    served = sum(1 for gate in gates for _ in range(10) if gate.chat(doomed["secret"]) == 200)
    time.sleep(1)
    for worker in (*loads, writer):
        worker.finish()
    answers = [s for load in loads for t, s in load.answers if t > killed_at]
    present = instance_names(api)
    return {
        "leader": leader.name,
        "streams": streams,
        "leadership_s": round(led_at - killed_at, 2),
        "stream_back_s": round(back_at - killed_at, 2),
        "gate_requests": len(answers),
        "gate_failed": sum(1 for s in answers if s != 200),
        "writes": len(writer.acked),
        "writes_failed": len([f for f in writer.failures if f[0] > killed_at]),
        "writes_failed_statuses": sorted({s for t, s in writer.failures if t > killed_at}),
        "lost": sum(1 for name in writer.acked if name not in present),
        "served": served,
    }


def main() -> int:
    for tool in ("patroni", "etcd", "haproxy", "openssl"):
        if not shutil.which(tool):
            print(f"faults.py: {tool} is missing (apt-get install patroni etcd-server haproxy openssl)",
                  file=sys.stderr)
            return 1
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="keyplane-ha-"))
    cluster = Cluster(work)
    upstream = start_upstream()
    upstream_port = upstream.server_address[1]
    succeeded = False
    try:
        cluster.start()
        replicas = [Replica(cluster, f"kp{i}") for i in (1, 2, 3)]
        lb_port = free_port()
        cluster.start_haproxy(lb_port, [r.port for r in replicas])
        replicas[0].start()  # the first applies the migrations
        wait_until(replicas[0].ready, 60, "the first keyplane replica")
        for replica in replicas[1:]:
            replica.start()
        for replica in replicas:
            wait_until(replica.ready, 60, f"keyplane replica {replica.name}")
        api = f"http://127.0.0.1:{lb_port}"
        wait_until(lambda: ok(http("GET", api + "/readyz", token=None)), 30, "keyplane through the load balancer")

        status, instance = http("POST", api + "/v1/instances", {"name": "ha-jan", "allowed_scopes": ["inference:chat"]})
        assert status == 201, instance
        direct = Gate(cluster, "ha-direct", api, upstream_port, [r.base for r in replicas])
        relays = [Relay(r.port) for r in replicas]
        tls = make_certificate(work / "tls")
        bounds = {"KEYPLANE_GATE_CACHE_TTL": f"{CACHE_TTL:.0f}s", "KEYPLANE_GATE_STALE_WINDOW": f"{STALE_WINDOW:.0f}s"}
        prod = Gate(cluster, "ha-prod", api, upstream_port, [r.base for r in relays], mode="prod", tls=tls, **bounds)
        mixed = Gate(cluster, "ha-mixed", api, upstream_port, [r.base for r in relays], mode="mixed", tls=tls,
                     **bounds)

        # Fault 4 starts: the prod and mixed gates are cut off for 2 minutes,
        # while the database fails over twice.
        partition = Partition(api, instance, relays, prod, mixed)

        # Fault 1: the primary's machine is lost under writes.
        one = primary_lost(cluster, api)
        print(f"fault 1 (primary lost under writes): recovered in {one['recovery_s']} s; "
              f"requests failed {one['failed']} {one['failed_statuses']}; writes {one['writes']}, "
              f"lost {one['lost']}; revoked keys served 0 (none revoked); the scheduler's lock held on the new "
              f"primary within {one['relocked_s']} s", flush=True)
        assert one["lost"] == 0, one
        assert one["recovery_s"] <= RECOVERY_BOUND, one
        assert all(s == 503 for s in one["failed_statuses"]), f"a failure other than 503: {one}"

        # The lost machine comes back as the synchronous standby.
        cluster.start_node(one["victim"])
        wait_until(lambda: cluster.sync_standby() == one["victim"], 120,
                   f"{one['victim']} to be the synchronous standby again")

        # Fault 2: a key revoked 100 ms before the new primary is lost.
        doomed = key(api, instance, "doomed")
        wait_until(lambda: direct.chat(doomed["secret"]) == 200, 30, "the key to work at the gate")

        def revoke_then_wait() -> None:
            revoke(api, doomed["id"])
            time.sleep(0.1)

        two = primary_lost(cluster, api, before_kill=revoke_then_wait)
        served = sum(1 for _ in range(20) if direct.chat(doomed["secret"]) == 200)
        status, verified = wait_until(lambda: ok(http("GET", api + "/v1/audit/verify")), 30,
                                      "the audit chain to verify")
        status, audit = http("GET", f"{api}/v1/audit?action=key.revoke&target={doomed['id']}")
        print(f"fault 2 (key revoked 100 ms before the primary was lost): recovered in {two['recovery_s']} s; "
              f"requests failed {two['failed']} {two['failed_statuses']}; writes {two['writes']}, lost {two['lost']}; "
              f"revoked keys served {served}; audit chain {'verifies' if verified.get('valid') else 'BROKEN'}, "
              f"revocation audited {len(audit['items'])}x; the scheduler's lock held on the new primary within "
              f"{two['relocked_s']} s", flush=True)
        assert two["lost"] == 0 and served == 0, two
        assert verified.get("valid") is True, verified
        assert len(audit["items"]) == 1, audit

        # Fault 4 ends: the gates are back in touch.
        four = partition.heal()
        p, m = four["prod"], four["mixed"]
        print(f"fault 4 (prod and mixed gates cut off from every replica for {four['partition_s']} s): "
              f"prod served the good key until +{p['last_served_s']} s (cache TTL {CACHE_TTL:.0f} s), "
              f"mixed until +{m['last_served_s']} s (stale window {STALE_WINDOW:.0f} s); "
              f"requests failed while cut off: prod {p['refused']} {p['refusals']}, mixed {m['refused']} "
              f"{m['refusals']}; recovered in {p['recovery_s']} s (prod), {m['recovery_s']} s (mixed), "
              f"the missed revocation replayed at both; writes lost 0 (none through the gates); "
              f"revoked keys served after the return {p['doomed_served_after'] + m['doomed_served_after']} "
              f"of {p['doomed_asked_after'] + m['doomed_asked_after']} (while cut off, within the bounds above: "
              f"prod {p['doomed_served_cut_off']}, mixed {m['doomed_served_cut_off']})", flush=True)
        assert p["last_served_s"] <= CACHE_TTL + SLACK, four
        assert CACHE_TTL + SLACK < m["last_served_s"] <= CACHE_TTL + STALE_WINDOW + SLACK, four
        assert p["refusals"] == [503] and m["refusals"] == [503], f"a refusal other than 503: {four}"
        assert p["doomed_served_after"] == 0 and m["doomed_served_after"] == 0, four
        assert p["doomed_asked_after"] > 0 and m["doomed_asked_after"] > 0, four

        # Fault 3: a replica is lost under load. The direct gate is started
        # again naming the scheduler's leader first, so that the one replica
        # lost serves a gate and leads.
        direct.stop()
        leader = wait_until(lambda: next((r for r in replicas if r.leads()), None), RECOVERY_BOUND,
                            "a replica to lead the scheduler")
        order = [leader] + [r for r in replicas if r is not leader]
        first = Gate(cluster, "ha-leader-first", api, upstream_port, [r.base for r in order])
        three = replica_lost(replicas, api, [first, prod, mixed], instance)
        print(f"fault 3 (replica {three['leader']}, the scheduler's leader, lost under load; revocation streams "
              f"open by replica {three['streams']}): leadership moved "
              f"in {three['leadership_s']} s, the {first.name} gate's stream back in {three['stream_back_s']} s; "
              f"gate requests with cached keys failed {three['gate_failed']} of {three['gate_requests']}; "
              f"writes through the load balancer failed {three['writes_failed']} "
              f"{three['writes_failed_statuses']}, {three['writes']} answered, lost {three['lost']}; "
              f"revoked keys served {three['served']}", flush=True)
        assert three["gate_failed"] == 0, three
        assert three["lost"] == 0 and three["served"] == 0, three
        print(f"faults.py: four faults in {time.monotonic() - began:.0f} s")
        succeeded = True
        return 0
    finally:
        cluster.stop()
        upstream.shutdown()
        if succeeded:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"faults.py: logs kept in {work}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
