"""keyplane through a PostgreSQL failover, with real processes and real faults.

The cluster is deploy/ha/ as written: etcd, two Patroni nodes (a primary
and a synchronous standby, synchronous_commit = remote_apply) and HAProxy
sending keyplane's connections to whichever node Patroni reports as the
primary. keyplane (with DATABASE_READ_URL on HAProxy's standby port) and a
keyplane-gate in front of a small upstream run against it. Faults:

1. The primary's machine is lost (Patroni and the postmaster SIGKILLed)
   under a write every 50 ms: the standby is promoted; keyplane writes again
   within 30 s; every write answered 2xx before, during and after is there.
2. A key is revoked 100 ms before the new primary's machine is lost (the old
   one back as its standby first): the gate refuses it after the failover,
   the revocation is in the audit log, and the chain verifies.

Each fault prints: time to recover, requests failed, writes lost (must be 0),
revoked keys served (must be 0). Every wait is bounded. Run by
tests/ha/run.sh (which scripts/test runs); standard library only.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PG_BIN = os.environ.get("KEYPLANE_PG_BIN", "/usr/lib/postgresql/15/bin")
KEYPLANE_BIN = os.environ.get("KEYPLANE_BIN", str(ROOT / "target/debug/keyplane"))
GATE_BIN = os.environ.get("KEYPLANE_GATE_BIN", str(ROOT / "target/debug/keyplane-gate"))
TOKEN = "ha-bootstrap-" + secrets.token_hex(16)
PASSWORD = secrets.token_hex(12)
RECOVERY_BOUND = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def http(method: str, url: str, body: object = None, token: str | None = TOKEN, timeout: float = 10):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            raw = answer.read()
            return answer.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, None
    except OSError:
        return 0, None


class Cluster:
    """etcd, two Patroni nodes and HAProxy, in a scratch directory."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.etcd_port, self.etcd_peer = free_port(), free_port()
        self.primary_port, self.standby_port = free_port(), free_port()
        self.nodes = {
            name: {"pg": free_port(), "api": free_port(), "proc": None}
            for name in ("pg1", "pg2")
        }
        self.procs: list[subprocess.Popen] = []

    def _spawn(self, argv: list[str], log: str, as_postgres: bool = False) -> subprocess.Popen:
        out = open(self.work / log, "ab")
        if as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        # In the scratch directory: the postgres user may not enter the
        # checkout (a clone made with mktemp -d is root's alone).
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=self.work, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        shutil.chown(self.work, "postgres", "postgres")
        self._spawn(["etcd", "--name", "ha", "--data-dir", str(self.work / "etcd"),
                     "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
                     "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
                     "--listen-peer-urls", f"http://127.0.0.1:{self.etcd_peer}",
                     "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.etcd_peer}",
                     "--initial-cluster", f"ha=http://127.0.0.1:{self.etcd_peer}",
                     "--enable-v2=true"], "etcd.log")
        wait_until(lambda: http("GET", f"http://127.0.0.1:{self.etcd_port}/health", token=None)[0] == 200,
                   30, "etcd")
        template = (ROOT / "deploy/ha/patroni.yml.template").read_text()
        for name, node in self.nodes.items():
            config = (template.replace("@NAME@", name).replace("@PG_PORT@", str(node["pg"]))
                      .replace("@API_PORT@", str(node["api"])).replace("@ETCD_PORT@", str(self.etcd_port))
                      .replace("@DATA@", str(self.work / name)).replace("@PG_BIN@", PG_BIN)
                      .replace("@WORK@", str(self.work)).replace("@PASSWORD@", PASSWORD))
            path = self.work / f"{name}.yml"
            path.write_text(config)
            shutil.chown(path, "postgres", "postgres")
        self.start_node("pg1")
        wait_until(lambda: self.role("pg1") == "primary", 60, "pg1 to lead")
        self.start_node("pg2")
        wait_until(lambda: self.sync_standby() == "pg2", 90, "pg2 to be the synchronous standby")
        haproxy = (ROOT / "deploy/ha/haproxy.cfg.template").read_text()
        for key, value in {"@PRIMARY_PORT@": self.primary_port, "@STANDBY_PORT@": self.standby_port,
                           "@PG1_PORT@": self.nodes["pg1"]["pg"], "@PG2_PORT@": self.nodes["pg2"]["pg"],
                           "@API1_PORT@": self.nodes["pg1"]["api"],
                           "@API2_PORT@": self.nodes["pg2"]["api"]}.items():
            haproxy = haproxy.replace(key, str(value))
        (self.work / "haproxy.cfg").write_text(haproxy)
        self._spawn(["haproxy", "-db", "-f", str(self.work / "haproxy.cfg")], "haproxy.log")
        wait_until(lambda: self.psql("select 1") == "1", 30, "HAProxy to reach the primary")
        wait_until(lambda: self.psql("create database keyplane") is not None
                   or self.psql("select 1 from pg_database where datname = 'keyplane'") == "1",
                   30, "the keyplane database")

    def start_node(self, name: str) -> None:
        self.nodes[name]["proc"] = self._spawn(["patroni", str(self.work / f"{name}.yml")],
                                               f"{name}.log", as_postgres=True)

    def role(self, name: str) -> str | None:
        api = self.nodes[name]["api"]
        for path, role in (("/primary", "primary"), ("/replica", "replica")):
            if http("GET", f"http://127.0.0.1:{api}{path}", token=None, timeout=2)[0] == 200:
                return role
        return None

    def sync_standby(self) -> str | None:
        for name, node in self.nodes.items():
            if http("GET", f"http://127.0.0.1:{node['api']}/sync", token=None, timeout=2)[0] == 200:
                return name
        return None

    def primary(self) -> str | None:
        return next((n for n in self.nodes if self.role(n) == "primary"), None)

    def lose_machine(self, name: str) -> None:
        """Patroni and the postmaster die at once, as with a machine pulled from the rack."""
        node = self.nodes[name]
        pid_file = self.work / name / "postmaster.pid"
        postmaster = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        os.killpg(node["proc"].pid, signal.SIGKILL)
        if postmaster:
            try:
                os.kill(postmaster, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node["proc"].wait(timeout=10)

    def psql(self, sql: str, port: int | None = None, database: str = "postgres") -> str | None:
        env = dict(os.environ, PGPASSWORD=PASSWORD, PGCONNECT_TIMEOUT="3")
        result = subprocess.run([f"{PG_BIN}/psql", "-h", "127.0.0.1", "-p", str(port or self.primary_port),
                                 "-U", "postgres", "-d", database, "-Atqc", sql],
                                env=env, capture_output=True, text=True, timeout=30)
        # Failures are retried by the callers' waits, which name what they waited for.
        return result.stdout.strip() if result.returncode == 0 else None

    def url(self, port: int) -> str:
        return f"postgres://postgres:{PASSWORD}@127.0.0.1:{port}/keyplane"

    def stop(self) -> None:
        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        # Postmasters Patroni started are in its session; any left are ours too.
        subprocess.run(["pkill", "-9", "-f", str(self.work)], check=False)


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = json.dumps({"id": "x", "object": "chat.completion", "choices": [],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Writer(threading.Thread):
    """A write every 50 ms: each instance answered 201 is one that must survive."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.stop = threading.Event()
        self.acked: list[str] = []
        self.failures: list[tuple[float, int]] = []
        self.successes: list[float] = []

    def run(self) -> None:
        while not self.stop.is_set():
            name = f"ha-{uuid.uuid4().hex[:12]}"
            status, body = http("POST", f"{self.base}/v1/instances", {"name": name})
            now = time.monotonic()
            if status == 201:
                self.acked.append(name)
                self.successes.append(now)
            else:
                self.failures.append((now, status))
            self.stop.wait(0.05)


def instance_names(base: str) -> set[str]:
    names, cursor = set(), None
    while True:
        path = "/v1/instances?limit=500" + (f"&cursor={cursor}" if cursor else "")
        status, page = wait_until(lambda: (lambda a: a if a[0] == 200 else None)(http("GET", base + path)),
                                  30, "the instance list")
        names |= {item["name"] for item in page["items"]}
        cursor = page.get("next_cursor")
        if not cursor:
            return names


def failover_under_writes(cluster: Cluster, base: str, before_kill=None) -> dict:
    writer = Writer(base)
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
    writer.stop.set()
    writer.join(timeout=15)
    failed = [f for f in writer.failures if f[0] > killed_at]
    last_failure = max((t for t, _ in failed), default=killed_at)
    recovered_at = min(t for t in writer.successes if t > last_failure)
    statuses = sorted({s for _, s in failed})
    present = instance_names(base)
    lost = [name for name in writer.acked if name not in present]
    return {
        "victim": victim,
        "recovery_s": round(recovered_at - killed_at, 2),
        "failed": len(failed),
        "failed_statuses": statuses,
        "writes": len(writer.acked),
        "lost": len(lost),
    }


def main() -> int:
    for tool in ("patroni", "etcd", "haproxy"):
        if not shutil.which(tool):
            print(f"failover.py: {tool} is missing (apt-get install patroni etcd-server haproxy)", file=sys.stderr)
            return 1
    work = Path(tempfile.mkdtemp(prefix="keyplane-ha-"))
    cluster = Cluster(work)
    started: list[subprocess.Popen] = []
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    ok = False
    try:
        cluster.start()
        port = free_port()
        env = dict(
            {k: v for k, v in os.environ.items() if not k.startswith("KEYPLANE_") and not k.startswith("DATABASE")},
            DATABASE_URL=cluster.url(cluster.primary_port),
            DATABASE_READ_URL=cluster.url(cluster.standby_port),
            KEYPLANE_LISTEN=f"127.0.0.1:{port}",
            KEYPLANE_BOOTSTRAP_TOKEN=TOKEN,
            KEYPLANE_DATA_DIR=str(work / "keyplane"),
            KEYPLANE_DB_MAX_CONNECTIONS="5",
            KEYPLANE_SCHEDULER_INTERVAL="500ms",
            RUST_LOG="warn",
        )
        started.append(subprocess.Popen([KEYPLANE_BIN, "serve"], env=env, stdin=subprocess.DEVNULL,
                                        stdout=open(work / "keyplane.log", "ab"), stderr=subprocess.STDOUT))
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: http("GET", base + "/readyz", token=None)[0] == 200, 60, "keyplane to be ready")

        status, node = http("POST", base + "/v1/nodes", {"name": "ha-gate"})
        assert status == 201, node
        status, instance = http("POST", base + "/v1/instances", {"name": "ha-jan", "allowed_scopes": ["inference:chat"]})
        assert status == 201, instance
        gate_port = free_port()
        gate_env = dict(
            {k: v for k, v in os.environ.items() if not k.startswith("KEYPLANE_")},
            KEYPLANE_URL=base, KEYPLANE_NODE_KEY=node["secret"],
            KEYPLANE_GATE_UPSTREAM=f"http://127.0.0.1:{upstream.server_address[1]}",
            KEYPLANE_GATE_LISTEN=f"127.0.0.1:{gate_port}", RUST_LOG="warn",
        )
        started.append(subprocess.Popen([GATE_BIN], env=gate_env, stdin=subprocess.DEVNULL,
                                        stdout=open(work / "gate.log", "ab"), stderr=subprocess.STDOUT))
        gate = f"http://127.0.0.1:{gate_port}"
        wait_until(lambda: http("GET", gate + "/_keyplane/healthz", token=None)[0] == 200, 30, "the gate")

        def chat(secret: str) -> int:
            return http("POST", gate + "/v1/chat/completions",
                        {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, token=secret)[0]

        # Fault 1: the primary's machine is lost under writes.
        one = failover_under_writes(cluster, base)
        print(f"fault 1 (primary lost under writes): recovered in {one['recovery_s']} s; "
              f"requests failed {one['failed']} {one['failed_statuses']}; writes {one['writes']}, "
              f"lost {one['lost']}; revoked keys served 0 (none revoked)")
        assert one["lost"] == 0, one
        assert one["recovery_s"] <= RECOVERY_BOUND, one
        assert all(s == 503 for s in one["failed_statuses"]), f"a failure other than 503: {one}"

        # The lost machine comes back as the synchronous standby.
        cluster.start_node(one["victim"])
        wait_until(lambda: cluster.sync_standby() == one["victim"], 120,
                   f"{one['victim']} to be the synchronous standby again")

        # Fault 2: a key revoked 100 ms before the new primary is lost.
        status, key = http("POST", f"{base}/v1/instances/{instance['id']}/keys",
                           {"name": "doomed", "scopes": ["inference:chat"]})
        assert status == 201, key
        assert wait_until(lambda: chat(key["secret"]) == 200, 30, "the key to work at the gate")

        def revoke() -> None:
            status, _ = http("POST", f"{base}/v1/keys/{key['id']}/revoke", {"reason": "ha test"})
            assert status == 200, status
            time.sleep(0.1)

        two = failover_under_writes(cluster, base, before_kill=revoke)
        served = sum(1 for _ in range(20) if chat(key["secret"]) == 200)
        status, verified = wait_until(
            lambda: (lambda a: a if a[0] == 200 else None)(http("GET", base + "/v1/audit/verify")),
            30, "the audit chain to verify")
        status, audit = http("GET", f"{base}/v1/audit?action=key.revoke&target={key['id']}")
        print(f"fault 2 (key revoked 100 ms before the primary was lost): recovered in {two['recovery_s']} s; "
              f"requests failed {two['failed']} {two['failed_statuses']}; writes {two['writes']}, lost {two['lost']}; "
              f"revoked keys served {served}; audit chain {'verifies' if verified.get('valid') else 'BROKEN'}, "
              f"revocation audited {len(audit['items'])}x")
        assert two["lost"] == 0 and served == 0, two
        assert verified.get("valid") is True, verified
        assert len(audit["items"]) == 1, audit
        ok = True
        return 0
    finally:
        for proc in started:
            proc.terminate()
        for proc in started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        cluster.stop()
        upstream.shutdown()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"failover.py: logs kept in {work}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
