"""Processes and helpers for the gate's end-to-end tests.

The tests run the real binaries: `keyplane serve` (KEYPLANE_BIN) on a fresh
PostgreSQL database each, and `keyplane-gate` (KEYPLANE_GATE_BIN) in front of
the in-process OpenAI-compatible upstream of upstream.py, and talk to the gate
through the official `openai` package. tests/gate/run.sh sets everything up;
it needs KEYPLANE_TEST_DATABASE_URL (an admin URL) and KEYPLANE_PG_BIN, which
scripts/test exports.

Every process is started with subprocess, its stdout and stderr captured to a
file, waited for by polling with a deadline, and stopped at teardown.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import openai
import pytest

from upstream import Upstream

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

#: A whole keyplane key of any type; logs may show keys masked (`kpi_…9f2c`), never whole.
WHOLE_KEY = re.compile(r"kp[aine]_[0-9A-Za-z]{38}")

#: The scopes a key needs for everything the upstream serves.
ALL_SCOPES = ["inference:chat", "inference:embeddings", "models:read"]

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

T = TypeVar("T")


# -- small helpers ------------------------------------------------------------


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], T], *, timeout: float, what: str, interval: float = 0.05) -> T:
    """Polls `check` until it returns something truthy, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def forge_key(prefix: str = "kpi_") -> str:
    """A well-formed key (right length, alphabet and checksum) that keyplane never issued."""
    body = prefix + "".join(secrets.choice(_BASE62) for _ in range(32))
    value = zlib.crc32(body.encode())
    checksum = ""
    for _ in range(6):
        checksum = _BASE62[value % 62] + checksum
        value //= 62
    return body + checksum


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def http(
    method: str,
    url: str,
    *,
    body: object = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
    tls: ssl.SSLContext | None = None,
) -> Response:
    """One HTTP request with the standard library; any status is an answer, not an error."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=tls) as answer:
            return Response(answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read())
    except urllib.error.HTTPError as err:
        return Response(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def child_env(**settings: str) -> dict[str, str]:
    """The environment of a child process: ours without any keyplane setting, plus `settings`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KEYPLANE_") and k not in ("DATABASE_URL", "DATABASE_URL_FILE")
    }
    env["NO_COLOR"] = "1"
    env.update(settings)
    return env


def binary(variable: str, default: str) -> Path:
    path = Path(os.environ.get(variable) or ROOT / default)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{variable}: {path} is not an executable; build it first (cargo build)")
    return path


@dataclass
class Certificate:
    """A server certificate for 127.0.0.1 and the test CA that signed it."""

    cert: Path
    key: Path
    ca: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def make_certificate(directory: Path) -> Certificate:
    """A throwaway CA and a certificate it signs for 127.0.0.1, made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the openssl command is needed to make the prod gate's certificate (apt-get install openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca-key.pem"
    cert, key, csr = directory / "gate.pem", directory / "gate-key.pem", directory / "gate.csr"
    extensions = directory / "gate.ext"
    extensions.write_text(
        "subjectAltName = IP:127.0.0.1\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n"
    )
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for argv in (
        ["req", "-x509", *curve, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=keyplane gate tests CA"],
        ["req", "-new", *curve, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", extensions],
    ):
        subprocess.run([openssl, *map(str, argv)], check=True, capture_output=True, timeout=60)
    return Certificate(cert, key, ca)


# -- processes --------------------------------------------------------------


class Service:
    """A child process whose stdout and stderr go to one log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_ready(
        self, url: str, *, timeout: float, ready: Callable[[Response], bool], tls: ssl.SSLContext | None = None
    ) -> None:
        """Polls `url` until `ready` holds for its answer; fails early if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                code = self.proc.returncode if self.proc else None
                raise AssertionError(f"{self.name} exited with {code} before it was ready:\n{self.log_tail()}")
            try:
                if ready(http("GET", url, timeout=2, tls=tls)):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} was not ready after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """Stops it the way a crash or an unplugged host would: at once, with no goodbye."""
        if self.running:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def stop(self, grace: float = 10) -> None:
        """SIGTERM, then SIGKILL if it is still there after `grace` seconds."""
        if self.running:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)


@dataclass
class Key:
    id: str
    secret: str
    instance_id: str


@dataclass
class Node:
    id: str
    secret: str


class Databases:
    """Fresh databases on the test cluster, one per keyplane process."""

    def __init__(self, admin_url: str, pg_bin: str, prefix: str) -> None:
        self.admin_url = admin_url
        self.psql = str(Path(pg_bin) / "psql")
        self.prefix = prefix
        self.names: list[str] = []
        self._numbers = itertools.count(1)

    def _run(self, sql: str) -> None:
        subprocess.run(
            [self.psql, self.admin_url, "-qAt", "-v", "ON_ERROR_STOP=1", "-c", sql],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def create(self) -> str:
        name = f"{self.prefix}_{next(self._numbers)}"
        self._run(f"create database {name}")
        self.names.append(name)
        parts = urllib.parse.urlsplit(self.admin_url)
        return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))

    def drop(self, url: str) -> None:
        self._drop(urllib.parse.urlsplit(url).path.lstrip("/"))

    def drop_all(self) -> None:
        for name in list(self.names):
            self._drop(name)

    def _drop(self, name: str) -> None:
        self._run(f"drop database if exists {name} with (force)")
        self.names.remove(name)


class Keyplane(Service):
    """`keyplane serve` on its own database, driven through its management API."""

    def __init__(
        self, binary_path: Path, database_url: str, workdir: Path, mode: str = "dev", extra_env: dict | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = "gate-tests-bootstrap-" + secrets.token_hex(16)
        self.database_url = database_url
        self.mode = mode
        self._names = itertools.count(1)
        env = child_env(
            DATABASE_URL=database_url,
            KEYPLANE_LISTEN=f"127.0.0.1:{self.port}",
            KEYPLANE_BOOTSTRAP_TOKEN=self.token,
            KEYPLANE_MODE=mode,
            KEYPLANE_DATA_DIR=str(workdir / "data"),
            KEYPLANE_SHUTDOWN_GRACE="2s",
            # Background work (webhook deliveries) runs often and retries
            # soon, so tests that wait for a retry wait seconds, not minutes.
            KEYPLANE_SCHEDULER_INTERVAL="200ms",
            KEYPLANE_WEBHOOK_RETRY_BASE="500ms",
        )
        # The default filter (info) logs the revocation streams the tests wait for.
        env.pop("RUST_LOG", None)
        env.update(extra_env or {})
        super().__init__("keyplane", [str(binary_path), "serve"], env, workdir)

    def start(self) -> "Keyplane":
        super().start()
        self.wait_ready(f"{self.url}/readyz", timeout=60, ready=lambda r: r.status == 200)
        return self

    # -- management API ------------------------------------------------------

    def api(self, method: str, path: str, body: object = None) -> object:
        answer = http(
            method, self.url + path, body=body, headers={"Authorization": f"Bearer {self.token}"}
        )
        assert answer.status < 300, f"{method} {path}: {answer.status} {answer.text}"
        return answer.json() if answer.body else None

    def _name(self, kind: str) -> str:
        return f"gate-test-{kind}-{next(self._names)}-{secrets.token_hex(3)}"

    def create_instance(self, allowed_scopes: list[str]) -> str:
        created = self.api("POST", "/v1/instances", {"name": self._name("instance"), "allowed_scopes": allowed_scopes})
        return created["id"]

    def create_key(self, instance_id: str, scopes: list[str]) -> Key:
        created = self.api("POST", f"/v1/instances/{instance_id}/keys", {"name": self._name("key"), "scopes": scopes})
        assert created["secret"].startswith("kpi_")
        return Key(created["id"], created["secret"], instance_id)

    def new_key(self, scopes: list[str] = ALL_SCOPES, ceiling: list[str] = ALL_SCOPES) -> Key:
        """A key with `scopes`, of a new instance whose ceiling is `ceiling`."""
        return self.create_key(self.create_instance(ceiling), scopes)

    def create_node(self) -> Node:
        created = self.api("POST", "/v1/nodes", {"name": self._name("node")})
        assert created["secret"].startswith("kpn_")
        return Node(created["id"], created["secret"])

    def revoke(self, key_id: str) -> None:
        self.api("POST", f"/v1/keys/{key_id}/revoke", {})

    def node(self, node_id: str) -> dict:
        return self.api("GET", f"/v1/nodes/{node_id}")

    def wait_for_revocation_stream(self, node_id: str, timeout: float = 15) -> None:
        """Waits until keyplane has logged that `node_id` opened its revocation stream."""

        def opened() -> bool:
            return any(
                "revocation stream opened" in line and node_id in line for line in self.log_text().splitlines()
            )

        wait_until(opened, timeout=timeout, what=f"node {node_id} to open keyplane's revocation stream")


class Gate(Service):
    """`keyplane-gate` in front of an upstream, registered as its own node."""

    def __init__(
        self,
        binary_path: Path,
        workdir: Path,
        *,
        keyplane: Keyplane,
        node: Node,
        upstream_url: str,
        mode: str,
        upstream_key: str | None,
        settings: dict[str, str],
        certificate: Certificate | None,
    ) -> None:
        self.port = free_port()
        self.certificate = certificate
        self.url = f"{'https' if certificate else 'http'}://127.0.0.1:{self.port}"
        self.keyplane = keyplane
        self.node = node
        self.mode = mode
        self.upstream_key = upstream_key
        env = child_env(
            KEYPLANE_GATE_LISTEN=f"127.0.0.1:{self.port}",
            KEYPLANE_URL=keyplane.url,
            KEYPLANE_NODE_KEY=node.secret,
            KEYPLANE_GATE_UPSTREAM=upstream_url,
            KEYPLANE_MODE=mode,
        )
        if upstream_key is not None:
            env["KEYPLANE_GATE_UPSTREAM_KEY"] = upstream_key
        if certificate is not None:
            env["KEYPLANE_TLS_CERT"] = str(certificate.cert)
            env["KEYPLANE_TLS_KEY"] = str(certificate.key)
        env.update(settings)
        super().__init__(f"gate-{node.id[:8]}", [str(binary_path)], env, workdir)

    def start(self) -> "Gate":
        super().start()

        def healthy(answer: Response) -> bool:
            if answer.status != 200:
                return False
            body = answer.json()
            # Ready once it follows keyplane's revocations too: connecting to
            # the stream drops whatever was cached (or being fetched) before,
            # so tests that count on a cached answer start after that.
            stream = body.get("revocation_stream")
            return body.get("status") == "ok" and body.get("mode") == self.mode and stream in (None, "up")

        self.wait_ready(f"{self.url}/_keyplane/healthz", timeout=30, ready=healthy, tls=self.tls())
        return self

    def tls(self) -> ssl.SSLContext | None:
        """What a client needs to trust this gate's HTTPS, if it serves HTTPS."""
        return self.certificate.client_context() if self.certificate else None

    def get(self, path: str) -> Response:
        return http("GET", self.url + path, tls=self.tls())

    def wait_for_revocation_stream(self) -> None:
        """Waits until the gate listens to keyplane's revocations: before that,
        a revocation could reach it only through its cache running out."""
        self.keyplane.wait_for_revocation_stream(self.node.id)

    def client(self, api_key: str = "", **options: object) -> openai.OpenAI:
        """The official client pointed at the gate; no retries, so every answer is seen as it is."""
        options.setdefault("max_retries", 0)
        options.setdefault("timeout", 15)
        if self.certificate is not None:
            options.setdefault("http_client", openai.DefaultHttpxClient(verify=self.tls()))
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key or "unused", **options)


# -- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="session")
def databases() -> Iterator[Databases]:
    admin_url = os.environ.get("KEYPLANE_TEST_DATABASE_URL")
    pg_bin = os.environ.get("KEYPLANE_PG_BIN")
    if not admin_url or not pg_bin:
        pytest.fail("KEYPLANE_TEST_DATABASE_URL and KEYPLANE_PG_BIN are unset: run tests/gate/run.sh through scripts/test")
    prefix = os.environ.get("KEYPLANE_GATE_DB_PREFIX") or f"keyplane_gate_{os.getpid()}"
    dbs = Databases(admin_url, pg_bin, prefix)
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    with Upstream() as server:
        yield server


@pytest.fixture(scope="session")
def upstream_key() -> str:
    """What the gate sends upstream as its own credential (no keyplane prefix: it is the upstream's)."""
    return "upstream-secret-" + secrets.token_hex(16)


def _launch_keyplane(dbs: Databases, workdir: Path, mode: str = "dev", env: dict | None = None) -> Keyplane:
    return Keyplane(binary("KEYPLANE_BIN", "target/debug/keyplane"), dbs.create(), workdir, mode, env).start()


def _retire_keyplane(dbs: Databases, kp: Keyplane) -> None:
    kp.stop()
    dbs.drop(kp.database_url)


@pytest.fixture(scope="session")
def keyplane(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyplane]:
    """One keyplane for the tests that never stop it."""
    kp = _launch_keyplane(databases, tmp_path_factory.mktemp("keyplane-shared"))
    yield kp
    _retire_keyplane(databases, kp)


@pytest.fixture
def start_keyplane(databases: Databases, tmp_path: Path) -> Iterator[Callable[..., Keyplane]]:
    """Starts a keyplane of this test's own, for tests that stop it."""
    started: list[Keyplane] = []

    def start(mode: str = "dev", env: dict | None = None) -> Keyplane:
        kp = _launch_keyplane(databases, tmp_path / f"keyplane-{len(started) + 1}", mode, env)
        started.append(kp)
        return kp

    yield start
    for kp in started:
        _retire_keyplane(databases, kp)


def _launch_gate(
    workdir: Path,
    keyplane: Keyplane,
    upstream: Upstream,
    *,
    mode: str = "dev",
    upstream_key: str | None = None,
    settings: dict[str, str] | None = None,
    certificate: Certificate | None = None,
) -> Gate:
    if mode != "dev" and certificate is None:
        # prod serves HTTPS only (the contract's TLS rule), and so does mixed
        # on its keyed routes.
        certificate = make_certificate(workdir / "tls")
    gate = Gate(
        binary("KEYPLANE_GATE_BIN", "target/debug/keyplane-gate"),
        workdir,
        keyplane=keyplane,
        node=keyplane.create_node(),
        upstream_url=upstream.base_url,
        mode=mode,
        upstream_key=upstream_key,
        settings=settings or {},
        certificate=certificate,
    )
    try:
        return gate.start()
    except BaseException:
        gate.stop()
        raise


@pytest.fixture(scope="session")
def gate(
    keyplane: Keyplane, upstream: Upstream, upstream_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gate]:
    """One dev gate, with an upstream key, for the tests that keep keyplane up."""
    g = _launch_gate(tmp_path_factory.mktemp("gate-shared"), keyplane, upstream, upstream_key=upstream_key)
    yield g
    g.stop()


@pytest.fixture
def start_gate(upstream: Upstream, tmp_path: Path) -> Iterator[Callable[..., Gate]]:
    """Starts a gate of this test's own: start_gate(keyplane, mode=..., upstream_key=..., settings={...})."""
    started: list[Gate] = []

    def start(keyplane: Keyplane, **options: object) -> Gate:
        g = _launch_gate(tmp_path / f"gate-{len(started) + 1}", keyplane, upstream, **options)
        started.append(g)
        return g

    yield start
    for g in started:
        g.stop()
