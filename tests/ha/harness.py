"""The pieces tests/ha/faults.py puts together: the PostgreSQL cluster of
deploy/ha/ (etcd, two Patroni nodes, HAProxy), keyplane replicas, gates, an
upstream for them, a writer, and relays that can cut a gate off. Real
processes throughout; standard library only; every wait bounded.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
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
# Shared by the replicas: each must open the signing keys the others sealed.
MASTER_KEY = secrets.token_hex(32)


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


def http(method: str, url: str, body: object = None, token: str | None = TOKEN, timeout: float = 10,
         context: ssl.SSLContext | None = None):
    """(status, parsed body); status 0 when nothing answered."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:
            raw = answer.read()
            try:
                return answer.status, (json.loads(raw) if raw else None)
            except ValueError:
                return answer.status, raw.decode(errors="replace")
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, None
    except OSError:
        return 0, None


def ok(answer):
    """The answer when it is a 200, else None (for wait_until)."""
    return answer if answer[0] == 200 else None


def metric(text: str, name: str) -> float | None:
    """One unlabelled sample from a Prometheus exposition."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", text or "", re.MULTILINE)
    return float(found.group(1)) if found else None


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without keyplane's or the database's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYPLANE_", "DATABASE"))}
    env.update(extra)
    return env


class Cluster:
    """etcd, two Patroni nodes and HAProxy (for PostgreSQL and for keyplane), in a scratch directory."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.etcd_port, self.etcd_peer = free_port(), free_port()
        self.primary_port, self.standby_port = free_port(), free_port()
        self.nodes = {
            name: {"pg": free_port(), "api": free_port(), "proc": None}
            for name in ("pg1", "pg2")
        }
        self.procs: list[subprocess.Popen] = []

    def spawn(self, argv: list[str], log: str, as_postgres: bool = False,
              env: dict[str, str] | None = None) -> subprocess.Popen:
        out = open(self.work / log, "ab")
        if as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        # In the scratch directory: the postgres user may not enter the
        # checkout (a clone made with mktemp -d is root's alone).
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=self.work, start_new_session=True, env=env)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        shutil.chown(self.work, "postgres", "postgres")
        self.spawn(["etcd", "--name", "ha", "--data-dir", str(self.work / "etcd"),
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
                      .replace("@LISTEN@", "127.0.0.1").replace("@HOST@", "127.0.0.1")
                      .replace("@API_PORT@", str(node["api"])).replace("@ETCD@", f"127.0.0.1:{self.etcd_port}")
                      .replace("@DATA@", str(self.work / name)).replace("@PG_BIN@", PG_BIN)
                      .replace("@WORK@", str(self.work)).replace("@PASSWORD@", PASSWORD))
            path = self.work / f"{name}.yml"
            path.write_text(config)
            shutil.chown(path, "postgres", "postgres")
        self.start_node("pg1")
        wait_until(lambda: self.role("pg1") == "primary", 60, "pg1 to lead")
        self.start_node("pg2")
        wait_until(lambda: self.sync_standby() == "pg2", 90, "pg2 to be the synchronous standby")

    def start_haproxy(self, keyplane_port: int, replica_ports: list[int]) -> None:
        """HAProxy as deploy/ha/haproxy.cfg.template says, for the database and for keyplane."""
        haproxy = (ROOT / "deploy/ha/haproxy.cfg.template").read_text()
        places = {"@BIND@": "127.0.0.1", "@KEYPLANE_CHECK@": "",
                  "@PRIMARY_PORT@": self.primary_port, "@STANDBY_PORT@": self.standby_port,
                  "@PG1@": f"127.0.0.1:{self.nodes['pg1']['pg']}", "@PG2@": f"127.0.0.1:{self.nodes['pg2']['pg']}",
                  "@API1_PORT@": self.nodes["pg1"]["api"], "@API2_PORT@": self.nodes["pg2"]["api"],
                  "@KEYPLANE_PORT@": keyplane_port}
        places.update({f"@KP{i + 1}@": f"127.0.0.1:{port}" for i, port in enumerate(replica_ports)})
        for key, value in places.items():
            haproxy = haproxy.replace(key, str(value))
        assert "@" not in re.sub(r"#.*", "", haproxy), "a place in haproxy.cfg.template left unfilled"
        (self.work / "haproxy.cfg").write_text(haproxy)
        self.spawn(["haproxy", "-db", "-f", str(self.work / "haproxy.cfg")], "haproxy.log")
        wait_until(lambda: self.psql("select 1") == "1", 30, "HAProxy to reach the primary")
        wait_until(lambda: self.psql("create database keyplane") is not None
                   or self.psql("select 1 from pg_database where datname = 'keyplane'") == "1",
                   30, "the keyplane database")

    def start_node(self, name: str) -> None:
        self.nodes[name]["proc"] = self.spawn(["patroni", str(self.work / f"{name}.yml")],
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


class Replica:
    """One keyplane process of several sharing the cluster's database."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = clean_env(
            DATABASE_URL=self.cluster.url(self.cluster.primary_port),
            DATABASE_READ_URL=self.cluster.url(self.cluster.standby_port),
            KEYPLANE_LISTEN=f"127.0.0.1:{self.port}",
            KEYPLANE_BOOTSTRAP_TOKEN=TOKEN,
            KEYPLANE_MASTER_KEY=MASTER_KEY,
            KEYPLANE_DATA_DIR=str(self.cluster.work / self.name),
            KEYPLANE_DB_MAX_CONNECTIONS="5",
            KEYPLANE_SCHEDULER_INTERVAL="500ms",
            RUST_LOG="warn,keyplane_server::scheduler=info",
        )
        self.proc = self.cluster.spawn([KEYPLANE_BIN, "serve"], f"{self.name}.log", env=env)

    def ready(self) -> bool:
        return http("GET", self.base + "/readyz", token=None, timeout=3)[0] == 200

    def metrics(self) -> str:
        status, text = http("GET", self.base + "/metrics", token=None, timeout=3)
        return text if status == 200 and isinstance(text, str) else ""

    def leads(self) -> bool:
        return metric(self.metrics(), "keyplane_scheduler_leader") == 1

    def kill(self) -> None:
        """SIGKILL: the machine is gone; its connections close with it."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


class Relay:
    """A TCP hop between a gate and one keyplane replica that a test can cut,
    as a network partition does: while cut, nothing passes either way, new
    connections are taken but never answered, and those open hang (a peer
    notices only by its own timeouts). Healing drops every connection of
    the partition; new ones pass again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.listener.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.cut = threading.Event()
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _track(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.add(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._track(client)
            if not self.cut.is_set():
                threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
        except OSError:
            client.close()  # the replica is down: refused, as it would be
            return
        upstream.settimeout(None)
        self._track(upstream)
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if not self.cut.is_set():
                    sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def partition(self) -> None:
        self.cut.set()

    def heal(self) -> None:
        with self.lock:
            held, self.sockets = self.sockets, set()
        for sock in held:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self.cut.clear()


def make_certificate(directory: Path) -> tuple[Path, Path, ssl.SSLContext]:
    """A throwaway CA and a certificate it signs for 127.0.0.1 (the openssl
    command): the certificate, its key, and a client context trusting the CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca-key.pem"
    cert, key, csr = directory / "gate.pem", directory / "gate-key.pem", directory / "gate.csr"
    extensions = directory / "gate.ext"
    extensions.write_text("subjectAltName = IP:127.0.0.1\nbasicConstraints = critical, CA:FALSE\n"
                          "keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n"
                          "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n")
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for argv in (
        ["req", "-x509", *curve, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=keyplane HA tests CA"],
        ["req", "-new", *curve, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", extensions],
    ):
        subprocess.run(["openssl", *map(str, argv)], check=True, capture_output=True, timeout=60)
    return cert, key, ssl.create_default_context(cafile=str(ca))


class Gate:
    """A keyplane-gate in front of the upstream, registered as a node of its own."""

    def __init__(self, cluster: Cluster, name: str, api: str, upstream_port: int, keyplane_urls: list[str],
                 mode: str = "dev", tls: tuple[Path, Path, ssl.SSLContext] | None = None,
                 **settings: str) -> None:
        status, node = http("POST", api + "/v1/nodes", {"name": name})
        assert status == 201, node
        self.name = name
        self.port = free_port()
        self.context = tls[2] if tls else None
        scheme = "https" if tls else "http"
        self.base = f"{scheme}://127.0.0.1:{self.port}"
        env = clean_env(
            KEYPLANE_URL=",".join(keyplane_urls), KEYPLANE_NODE_KEY=node["secret"], KEYPLANE_MODE=mode,
            KEYPLANE_GATE_UPSTREAM=f"http://127.0.0.1:{upstream_port}",
            KEYPLANE_GATE_LISTEN=f"127.0.0.1:{self.port}", RUST_LOG="warn,keyplane_client=info",
            **settings,
        )
        if tls:
            env.update(KEYPLANE_TLS_CERT=str(tls[0]), KEYPLANE_TLS_KEY=str(tls[1]))
        self.proc = cluster.spawn([GATE_BIN], f"gate-{name}.log", env=env)
        wait_until(lambda: http("GET", self.base + "/_keyplane/healthz", token=None,
                                context=self.context)[0] == 200, 30, f"the {name} gate")

    def chat(self, secret: str, timeout: float = 10) -> int:
        return http("POST", self.base + "/v1/chat/completions",
                    {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                    token=secret, timeout=timeout, context=self.context)[0]

    def metric(self, name: str) -> float | None:
        status, text = http("GET", self.base + "/_keyplane/metrics", token=None, context=self.context)
        return metric(text if status == 200 and isinstance(text, str) else "", f"keyplane_gate_{name}")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


class Upstream(BaseHTTPRequestHandler):
    """An OpenAI-compatible server's smallest answer."""

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


def start_upstream() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


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

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=15)


class Load(threading.Thread):
    """One client sending a request after another through a gate with one
    key; each answer is kept with its time."""

    def __init__(self, gate: Gate, secret: str) -> None:
        super().__init__(daemon=True)
        self.gate = gate
        self.secret = secret
        self.stop = threading.Event()
        self.answers: list[tuple[float, int]] = []

    def run(self) -> None:
        while not self.stop.is_set():
            status = self.gate.chat(self.secret)
            self.answers.append((time.monotonic(), status))
            self.stop.wait(0.02)

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=30)


def instance_names(base: str) -> set[str]:
    names, cursor = set(), None
    while True:
        path = "/v1/instances?limit=500" + (f"&cursor={cursor}" if cursor else "")
        status, page = wait_until(lambda: ok(http("GET", base + path)), 30, "the instance list")
        names |= {item["name"] for item in page["items"]}
        cursor = page.get("next_cursor")
        if not cursor:
            return names
