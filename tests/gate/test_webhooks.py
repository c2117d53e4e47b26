"""Webhooks end to end: a real keyplane delivers events to a receiver in this
process, and the official `standardwebhooks` package accepts what it sends.

They prove that a revoked key's event arrives signed with the endpoint's
`whsec_` secret (and that a changed body or another secret fails to verify),
that it names the key only masked, and that a delivery that found nobody
listening, or got an error status, is retried from keyplane's queue until it
is delivered: under the same `webhook-id`, which is the delivery's id in
`GET /v1/webhooks/{id}/deliveries`.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from conftest import WHOLE_KEY, Key, Keyplane, free_port, http, wait_until

#: Deliveries are retried every few hundred milliseconds (conftest sets
#: KEYPLANE_SCHEDULER_INTERVAL and KEYPLANE_WEBHOOK_RETRY_BASE); this is slack.
DEADLINE = 20


# -- a webhook receiver -------------------------------------------------------


@dataclass
class Received:
    """One request as the receiver got it (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A webhook endpoint on 127.0.0.1, served from a thread: it records every
    request and answers the next of `statuses`, then 200 once they run out."""

    def __init__(self, port: int = 0, statuses: tuple[int, ...] = ()) -> None:
        self._statuses = list(statuses)
        self._received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = Received("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, self._body())
                with receiver._lock:
                    receiver._received.append(request)
                    status = receiver._statuses.pop(0) if receiver._statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
                return body

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Receiver":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)


# -- helpers ------------------------------------------------------------------


def register(kp: Keyplane, url: str) -> dict:
    """Registers a webhook for key.revoked; the answer carries its secret."""
    events = ["key.revoked"]
    created = kp.api("POST", "/v1/webhooks", {"url": url, "events": events, "description": "gate tests"})
    assert created["url"] == url and created["events"] == events and created["enabled"] is True
    assert created["secret"].startswith("whsec_")
    assert base64.b64decode(created["secret"].removeprefix("whsec_") + "=="), "whsec_ and then base64"
    return created


def revoke_a_key(kp: Keyplane, reason: str = "webhook test") -> Key:
    key = kp.new_key()
    kp.api("POST", f"/v1/keys/{key.id}/revoke", {"reason": reason})
    return key


def deliveries(kp: Keyplane, webhook_id: str) -> list[dict]:
    return kp.api("GET", f"/v1/webhooks/{webhook_id}/deliveries")["items"]


def the_delivery(kp: Keyplane, webhook_id: str, *, when, what: str) -> dict:
    """Waits until the webhook's one delivery satisfies `when`; fails at once if it gave up."""

    def check() -> dict | None:
        items = deliveries(kp, webhook_id)
        assert len(items) <= 1, f"one event, several deliveries: {items}"
        if items:
            assert items[0]["status"] != "failed", f"the delivery gave up: {items[0]}"
            if when(items[0]):
                return items[0]
        return None

    return wait_until(check, timeout=DEADLINE, what=what, interval=0.1)


def verified(secret: str, request: Received) -> dict:
    """The event, once `standardwebhooks` has checked its signature."""
    assert request.method == "POST" and request.path == "/hook"
    assert request.headers["webhook-signature"].startswith("v1,")
    return Webhook(secret).verify(request.body, request.headers)


# -- tests --------------------------------------------------------------------


def test_signed_delivery_verifies_with_standardwebhooks(start_keyplane):
    kp: Keyplane = start_keyplane()
    with Receiver() as receiver:
        hook = register(kp, receiver.url)
        listed = {item["id"]: item for item in kp.api("GET", "/v1/webhooks")["items"]}
        assert listed[hook["id"]]["url"] == receiver.url
        assert "secret" not in listed[hook["id"]], "the secret is shown only when the webhook is created"

        key = revoke_a_key(kp, reason="leaked in a paste")
        (request,) = wait_until(lambda: receiver.received, timeout=DEADLINE, what="the key.revoked delivery")

        event = verified(hook["secret"], request)
        assert event["type"] == "key.revoked"
        sent_at = datetime.fromisoformat(event["timestamp"])
        assert abs(datetime.now(timezone.utc) - sent_at) < timedelta(minutes=5)
        data = event["data"]
        assert data["key_id"] == key.id and data["instance_id"] == key.instance_id
        assert data["reason"] == "leaked in a paste"
        assert data["masked_key"].startswith("kpi_") and data["masked_key"].endswith(key.secret[-4:])
        assert key.secret not in request.body.decode() and not WHOLE_KEY.search(request.body.decode())

        # A changed body, or another endpoint's secret, does not verify.
        tampered = request.body.replace(key.id.encode(), str(uuid.uuid4()).encode())
        assert tampered != request.body
        with pytest.raises(WebhookVerificationError):
            Webhook(hook["secret"]).verify(tampered, request.headers)
        other_secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        with pytest.raises(WebhookVerificationError):
            Webhook(other_secret).verify(request.body, request.headers)

        delivery = the_delivery(kp, hook["id"], when=lambda d: d["status"] == "delivered", what="status delivered")
        assert delivery["id"] == request.headers["webhook-id"]
        assert delivery["event"] == "key.revoked" and delivery["attempts"] >= 1
        assert delivery["delivered_at"]

        deleted = http("DELETE", f"{kp.url}/v1/webhooks/{hook['id']}", headers={"Authorization": f"Bearer {kp.token}"})
        assert deleted.status == 204, deleted.text
        assert hook["id"] not in {item["id"] for item in kp.api("GET", "/v1/webhooks")["items"]}


def test_delivery_is_retried_after_the_receiver_was_down(start_keyplane):
    kp: Keyplane = start_keyplane()
    port = free_port()  # nobody listens there yet
    hook = register(kp, f"http://127.0.0.1:{port}/hook")
    key = revoke_a_key(kp)

    failed_once = the_delivery(
        kp,
        hook["id"],
        when=lambda d: d["attempts"] >= 1 and d["status"] == "pending" and d["last_error"],
        what="a failed first attempt, queued for a retry",
    )
    assert failed_once["last_status"] is None, "nothing answered, so there is no HTTP status"

    with Receiver(port) as receiver:
        delivered = the_delivery(kp, hook["id"], when=lambda d: d["status"] == "delivered", what="the retry")
        assert delivered["id"] == failed_once["id"]
        assert delivered["attempts"] > failed_once["attempts"]
        (request,) = receiver.received
    assert request.headers["webhook-id"] == delivered["id"]
    assert verified(hook["secret"], request)["data"]["key_id"] == key.id


def test_receiver_errors_are_retried(start_keyplane):
    kp: Keyplane = start_keyplane()
    with Receiver(statuses=(503,)) as receiver:
        hook = register(kp, receiver.url)
        key = revoke_a_key(kp)
        delivered = the_delivery(kp, hook["id"], when=lambda d: d["status"] == "delivered", what="delivery after a 503")
        requests = receiver.received

    assert delivered["attempts"] >= 2 and len(requests) == delivered["attempts"]
    assert {r.headers["webhook-id"] for r in requests} == {delivered["id"]}
    for request in requests:
        event = verified(hook["secret"], request)
        assert event["type"] == "key.revoked" and event["data"]["key_id"] == key.id
    first, last = json.loads(requests[0].body), json.loads(requests[-1].body)
    assert (first["type"], first["data"]) == (last["type"], last["data"]), "a retry sends the same event"
