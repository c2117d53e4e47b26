"""keyplane-gate, end to end, as an OpenAI user sees it.

The official `openai` client talks to keyplane-gate, which checks each request's
`kpi_` key with a real keyplane and forwards it to the OpenAI-compatible
upstream of upstream.py. Tests that stop keyplane get a keyplane (and a gate)
of their own; the others share one.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import datetime
from typing import Callable

import json
import urllib.error
import urllib.request

import openai
import pytest

from conftest import ALL_SCOPES, WHOLE_KEY, Gate, Keyplane, forge_key
from upstream import MODELS, Upstream, embedding_for, reply_for, reply_tokens

# Header values the upstream must never see: any keyplane key, whole or in part.
KEYPLANE_PREFIX = re.compile(r"kp[aine]_")


# -- helpers ------------------------------------------------------------------


def marker() -> str:
    """A unique model name, so each test finds its own requests at the upstream."""
    return f"probe-{uuid.uuid4().hex[:12]}"


def chat(client: openai.OpenAI, model: str | None = None, prompt: str = "Hello, gate", **options: object):
    return client.chat.completions.create(
        model=model or marker(), messages=[{"role": "user", "content": prompt}], **options
    )


def status_of(call: Callable[[], object]) -> int:
    """200 if `call` succeeded, else the HTTP status the client raised for."""
    try:
        call()
    except openai.APIStatusError as err:
        return err.status_code
    return 200


def denied(error: type[openai.APIStatusError], status: int, call: Callable[[], object], *, secret: str | None = None) -> dict:
    """Runs `call`, expecting the client to raise `error` for an OpenAI-shaped denial with `status`."""
    with pytest.raises(error) as caught:
        call()
    err = caught.value
    assert err.status_code == status, f"expected {status}, got {err.status_code}: {err.response.text}"
    body = err.response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"not OpenAI-shaped: {body}"
    detail = body["error"]
    assert isinstance(detail.get("message"), str) and detail["message"], detail
    assert isinstance(detail.get("type"), str) and detail["type"], detail
    assert "code" in detail, detail
    if secret is not None:
        assert secret not in err.response.text, "the denial repeats the key it refused"
    return detail


def mask(text: str) -> str:
    """Whole keys in `text` cut down to prefix and last four, for failure messages."""
    return WHOLE_KEY.sub(lambda m: m.group()[:4] + "…" + m.group()[-4:], text)


def without_key() -> dict:
    """Request options that send no Authorization header at all."""
    return {"extra_headers": {"Authorization": openai.Omit()}}


def assert_reached_upstream_cleanly(upstream: Upstream, model: str, count: int) -> list:
    """`count` requests tagged `model` reached the upstream, none carrying a keyplane key."""
    seen = upstream.requests_with(model)
    assert len(seen) == count, f"the upstream saw {len(seen)} requests for {model}, expected {count}"
    for request in seen:
        for name, value in request.headers:
            if KEYPLANE_PREFIX.search(value):
                pytest.fail(f"the upstream got a keyplane key in {name}: {mask(value)}")
    return seen


def wait_for_report(keyplane: Keyplane, node_id: str, timeout: float = 30) -> dict:
    """Polls GET /v1/nodes/{id} until it shows the gate's heartbeat."""
    deadline = time.monotonic() + timeout
    while True:
        node = keyplane.node(node_id)
        if node.get("reported"):
            return node
        if time.monotonic() > deadline:
            raise AssertionError(f"no heartbeat in GET /v1/nodes/{node_id} after {timeout}s: {node}")
        time.sleep(0.2)


# -- a good key ---------------------------------------------------------------


def test_good_key_streams_a_chat_completion_token_by_token(keyplane: Keyplane, gate: Gate, upstream: Upstream):
    key = keyplane.new_key(["inference:chat"])
    prompt = "stream these words one by one"
    chunks = []
    with upstream.lockstep() as steps:
        stream = chat(gate.client(key.secret), prompt=prompt, stream=True)
        for chunk in stream:
            # The upstream sends the next chunk only after release(): a chunk
            # that arrives after the upstream sent more means the gate held
            # the stream back (the upstream gives up waiting after 10 s).
            assert steps.sent == len(chunks) + 1, (
                f"chunk {len(chunks)} reached the client only after the upstream had sent {steps.sent}: "
                "the gate buffered the stream"
            )
            chunks.append(chunk)
            steps.release()
    assert not steps.timed_out, "the upstream waited in vain for the client to get a chunk"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len(chunks) == len(reply_tokens(prompt)) + 2  # role, one per word, finish
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply_for(prompt)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_good_key_gets_a_whole_chat_completion(keyplane: Keyplane, gate: Gate):
    key = keyplane.new_key(["inference:chat"])
    model = marker()
    answer = chat(gate.client(key.secret), model=model, prompt="what is keyplane?")
    assert answer.object == "chat.completion"
    assert answer.model == model
    assert answer.choices[0].message.content == reply_for("what is keyplane?")
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.total_tokens > 0


def test_upstream_gets_the_upstream_key_and_instance_never_the_client_key(
    keyplane: Keyplane, gate: Gate, upstream: Upstream, upstream_key: str
):
    key = keyplane.new_key(["inference:chat"])
    client = gate.client(key.secret)
    model = marker()
    chat(client, model=model)
    assert len(list(chat(client, model=model, stream=True))) > 0
    for request in assert_reached_upstream_cleanly(upstream, model, 2):
        assert request.header("Authorization") == [f"Bearer {upstream_key}"]
        assert request.header("X-Keyplane-Instance") == [key.instance_id]


def test_client_cannot_forge_the_instance_header_the_upstream_trusts(
    keyplane: Keyplane, gate: Gate, upstream: Upstream
):
    key = keyplane.new_key(["inference:chat"])
    model = marker()
    forged = {
        "X-Keyplane-Instance": str(uuid.uuid4()),
        "X-Keyplane-Scopes": "configs:admin models:write",
        "X-Keyplane-Anything": "trust me",
    }
    chat(gate.client(key.secret), model=model, extra_headers=forged)
    [request] = assert_reached_upstream_cleanly(upstream, model, 1)
    assert request.header("X-Keyplane-Instance") == [key.instance_id]
    assert request.header("X-Keyplane-Scopes") == []
    assert request.header("X-Keyplane-Anything") == []


def test_without_an_upstream_key_the_upstream_gets_no_authorization(
    keyplane: Keyplane, start_gate, upstream: Upstream
):
    gate = start_gate(keyplane, upstream_key=None)
    key = keyplane.new_key(["inference:chat"])
    model = marker()
    chat(gate.client(key.secret), model=model)
    [request] = assert_reached_upstream_cleanly(upstream, model, 1)
    assert request.header("Authorization") == []
    assert request.header("X-Keyplane-Instance") == [key.instance_id]


def test_embeddings_and_model_list_work_with_their_scopes(keyplane: Keyplane, gate: Gate, upstream: Upstream):
    key = keyplane.new_key(["inference:embeddings", "models:read"])
    client = gate.client(key.secret)
    model = marker()
    answer = client.embeddings.create(model=model, input=["alpha", "beta gamma"])
    assert [d.embedding for d in answer.data] == [embedding_for("alpha"), embedding_for("beta gamma")]
    assert [m.id for m in client.models.list(extra_query={"probe": model})] == MODELS
    assert_reached_upstream_cleanly(upstream, model, 2)


# -- refusals -----------------------------------------------------------------


def _real_key_cut_short(kp: Keyplane) -> str:
    return kp.new_key().secret[:-1]


def _real_key_with_a_wrong_checksum(kp: Keyplane) -> str:
    secret = kp.new_key().secret
    return secret[:-1] + ("A" if secret[-1] != "A" else "B")


BAD_KEYS: dict[str, Callable[[Keyplane], str | None]] = {
    "no key at all": lambda kp: None,
    "not a keyplane key": lambda kp: "sk-proj-not-a-keyplane-key",
    "empty bearer": lambda kp: "",
    "a key cut short": _real_key_cut_short,
    "a wrong checksum": _real_key_with_a_wrong_checksum,
    "a node key": lambda kp: kp.create_node().secret,
}


@pytest.mark.parametrize("kind", list(BAD_KEYS))
def test_malformed_key_is_refused_with_401(kind: str, keyplane: Keyplane, gate: Gate, upstream: Upstream):
    secret = BAD_KEYS[kind](keyplane)
    model = marker()
    if secret is None:
        call = lambda: chat(gate.client(), model=model, **without_key())  # noqa: E731
    else:
        headers = {"Authorization": f"Bearer {secret}".rstrip()}
        call = lambda: chat(gate.client(), model=model, extra_headers=headers)  # noqa: E731
    denied(openai.AuthenticationError, 401, call, secret=secret or None)
    assert upstream.requests_with(model) == []


def test_well_formed_unknown_key_is_refused_with_401(keyplane: Keyplane, gate: Gate, upstream: Upstream):
    secret = forge_key()
    model = marker()
    denied(openai.AuthenticationError, 401, lambda: chat(gate.client(secret), model=model), secret=secret)
    assert upstream.requests_with(model) == []


def test_key_without_inference_chat_is_refused_with_403(keyplane: Keyplane, gate: Gate, upstream: Upstream):
    key = keyplane.new_key(["models:read"], ceiling=ALL_SCOPES)
    client = gate.client(key.secret)
    model = marker()
    denied(openai.PermissionDeniedError, 403, lambda: chat(client, model=model), secret=key.secret)
    denied(
        openai.PermissionDeniedError,
        403,
        lambda: client.embeddings.create(model=model, input="no scope for this"),
        secret=key.secret,
    )
    assert upstream.requests_with(model) == []
    # The key itself is good: a route its scope covers is served.
    assert [m.id for m in client.models.list()] == MODELS


def test_route_no_rule_maps_is_refused_with_403(keyplane: Keyplane, gate: Gate, upstream: Upstream):
    key = keyplane.new_key(ALL_SCOPES)
    client = gate.client(key.secret)
    model = marker()
    denied(
        openai.PermissionDeniedError, 403, lambda: client.post(f"/unmapped/{model}", cast_to=object, body={})
    )
    denied(
        openai.PermissionDeniedError, 403, lambda: client.get(f"/chat/completions?probe={model}", cast_to=object)
    )
    assert upstream.requests_with(model) == []


def test_a_path_that_decodes_into_another_route_is_refused_with_400(
    keyplane: Keyplane, gate: Gate, upstream: Upstream
):
    # A models:read key, and paths that read as a models route here but as a
    # chat route to a server that normalises after decoding.
    key = keyplane.new_key(["models:read"], ceiling=ALL_SCOPES)
    model = marker()
    for path in (
        f"/v1/models/%2e%2e/chat/completions?m={model}",
        f"/v1/models/..%2Fchat%2Fcompletions?m={model}",
        f"/v1/models/%2E%2e%5Cchat?m={model}",
    ):
        request = urllib.request.Request(gate.url + path, headers={"Authorization": f"Bearer {key.secret}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 400, path
        assert json.loads(refused.value.read())["error"]["code"] == "invalid_path", path
    assert upstream.requests_with(model) == []


def test_key_revoked_through_the_api_is_refused_within_a_second(keyplane: Keyplane, gate: Gate):
    key = keyplane.new_key(["inference:chat"])
    sibling = keyplane.create_key(key.instance_id, ["inference:chat"])
    client = gate.client(key.secret)
    chat(client)  # accepted, so the gate now holds a cached answer for it
    chat(gate.client(sibling.secret))
    gate.wait_for_revocation_stream()

    keyplane.revoke(key.id)
    revoked_at = time.monotonic()
    while True:
        started = time.monotonic()
        if started - revoked_at > 1.0:
            pytest.fail(f"the gate still accepted the key {started - revoked_at:.2f}s after it was revoked")
        if status_of(lambda: chat(client)) == 401:
            break
        time.sleep(0.02)
    denied(openai.AuthenticationError, 401, lambda: chat(client), secret=key.secret)
    # Only that key stopped: its instance's other key still works.
    chat(gate.client(sibling.secret))


# -- keyplane unreachable -----------------------------------------------------


def test_prod_gate_serves_a_cached_key_only_until_its_ttl_once_keyplane_is_down(start_keyplane, start_gate):
    ttl = 2.0
    kp = start_keyplane()
    gate = start_gate(kp, mode="prod", settings={"KEYPLANE_GATE_CACHE_TTL": "2s"})
    client = gate.client(kp.new_key(["inference:chat"]).secret)
    chat(client)
    cached_before = time.monotonic()  # the gate cached its answer before this instant
    kp.kill()

    assert status_of(lambda: chat(client)) == 200, "a cached key was refused within its TTL"
    while True:
        started = time.monotonic()
        status = status_of(lambda: chat(client))
        if status == 503:
            break
        assert status == 200, f"expected 200 (cached) or 503 (fail closed), got {status}"
        # A small allowance for the gate's clock granularity, no more.
        assert started - cached_before <= ttl + 0.25, (
            f"still accepted {started - cached_before:.2f}s after caching, with a {ttl}s TTL and keyplane down"
        )
        time.sleep(0.1)
    denied(openai.InternalServerError, 503, lambda: chat(client))


def test_prod_gate_refuses_a_key_it_never_saw_with_503_at_once_when_keyplane_is_down(start_keyplane, start_gate):
    kp = start_keyplane()
    gate = start_gate(kp, mode="prod", settings={"KEYPLANE_GATE_CACHE_TTL": "2s"})
    key = kp.new_key(["inference:chat"])  # good, but never shown to the gate
    chat(gate.client(kp.new_key(["inference:chat"]).secret))  # the gate works
    kp.kill()

    started = time.monotonic()
    denied(openai.InternalServerError, 503, lambda: chat(gate.client(key.secret)), secret=key.secret)
    assert time.monotonic() - started < 2.0, "the gate took its time to fail closed"


def test_mixed_gate_serves_a_cached_key_for_the_stale_window_once_keyplane_is_down(start_keyplane, start_gate):
    ttl = 1.0
    kp = start_keyplane()
    gate = start_gate(
        kp, mode="mixed", settings={"KEYPLANE_GATE_STALE_WINDOW": "60s", "KEYPLANE_GATE_CACHE_TTL": "1s"}
    )
    client = gate.client(kp.new_key(["inference:chat"]).secret)
    chat(client)
    cached_at = time.monotonic()
    kp.kill()

    # Through the TTL and well past it, the cached key keeps working.
    while True:
        started = time.monotonic()
        status = status_of(lambda: chat(client))
        assert status == 200, f"refused with {status} {started - cached_at:.2f}s after caching, within the stale window"
        if started - cached_at > ttl + 1.0:
            break
        time.sleep(0.1)


def test_mixed_gate_still_refuses_keys_refused_before_keyplane_went_down(start_keyplane, start_gate):
    kp = start_keyplane()
    gate = start_gate(
        kp, mode="mixed", settings={"KEYPLANE_GATE_STALE_WINDOW": "60s", "KEYPLANE_GATE_CACHE_TTL": "1s"}
    )
    unknown = gate.client(forge_key())
    key = kp.new_key(["inference:chat"])
    revoked = gate.client(key.secret)
    chat(revoked)  # accepted and cached first...
    gate.wait_for_revocation_stream()
    kp.revoke(key.id)
    # ...then refused, once the revocation reached the gate.
    refused_by = time.monotonic() + 1.0
    while status_of(lambda: chat(revoked)) != 401:
        assert time.monotonic() < refused_by, "the revocation did not reach the gate within 1 s"
        time.sleep(0.02)
    denied(openai.AuthenticationError, 401, lambda: chat(unknown))
    down_at = time.monotonic()
    kp.kill()

    # Past the cache TTL too: the stale window serves only answers that were yes.
    while time.monotonic() - down_at < 2.5:
        for name, client in (("an unknown key", unknown), ("a revoked key", revoked)):
            status = status_of(lambda: chat(client))
            assert status in (401, 503), f"{name} got {status} with keyplane down"
        time.sleep(0.1)


# -- public routes, heartbeat, health -----------------------------------------


def test_public_route_is_served_without_a_key_in_mixed_mode(keyplane: Keyplane, start_gate, upstream: Upstream):
    gate = start_gate(keyplane, mode="mixed", settings={"KEYPLANE_ROUTE_SCOPES": "GET /v1/models=public"})
    client = gate.client()
    model = marker()
    forged = {"Authorization": openai.Omit(), "X-Keyplane-Instance": str(uuid.uuid4())}
    assert [m.id for m in client.models.list(extra_headers=forged, extra_query={"probe": model})] == MODELS
    [request] = assert_reached_upstream_cleanly(upstream, model, 1)
    assert request.header("Authorization") == []
    assert request.header("X-Keyplane-Instance") == [], "a client-chosen instance reached the upstream"
    # Keyed routes still need a key.
    denied(openai.AuthenticationError, 401, lambda: chat(client, model=model, **without_key()))
    assert len(upstream.requests_with(model)) == 1


def test_heartbeat_shows_the_gate_mode_in_keyplane(keyplane: Keyplane, start_gate):
    gate = start_gate(keyplane, mode="dev")
    node = wait_for_report(keyplane, gate.node.id)
    reported = node["reported"]
    assert reported["mode"] == "dev"
    assert isinstance(reported["version"], str) and reported["version"]
    assert isinstance(reported["public_routes"], list)
    datetime.fromisoformat(reported["at"].replace("Z", "+00:00"))
    assert node["mode_weaker"] is False  # dev against a keyplane in dev


def test_heartbeat_reports_the_public_routes_of_a_mixed_gate(keyplane: Keyplane, start_gate):
    gate = start_gate(keyplane, mode="mixed", settings={"KEYPLANE_ROUTE_SCOPES": "GET /v1/models=public"})
    node = wait_for_report(keyplane, gate.node.id)
    assert node["reported"]["mode"] == "mixed"
    assert any("/v1/models" in str(route) for route in node["reported"]["public_routes"]), node["reported"]
    assert node["mode_weaker"] is False  # mixed is not weaker than keyplane's dev


def test_gate_answers_health_and_metrics_without_a_key(gate: Gate):
    health = gate.get("/_keyplane/healthz")
    assert health.status == 200
    assert health.json()["status"] == "ok" and health.json()["mode"] == "dev"
    metrics = gate.get("/_keyplane/metrics")
    assert metrics.status == 200
    samples = [line for line in metrics.text.splitlines() if line and not line.startswith("#")]
    assert samples and all(re.match(r"^[A-Za-z_:][A-Za-z0-9_:]*(\{.*\})? \S+( \d+)?$", s) for s in samples), (
        metrics.text[:500]
    )


# -- secrets stay secret ------------------------------------------------------


def test_no_whole_key_appears_in_the_gate_output(keyplane: Keyplane, start_gate, upstream_key: str, gate: Gate):
    own = start_gate(keyplane, upstream_key=upstream_key)
    good = keyplane.new_key(ALL_SCOPES)
    narrow = keyplane.new_key(["models:read"])
    revoked = keyplane.new_key(["inference:chat"])
    client = own.client(good.secret)
    chat(client)
    list(chat(client, stream=True))
    client.embeddings.create(model=marker(), input="x")
    chat(own.client(revoked.secret))
    own.wait_for_revocation_stream()
    keyplane.revoke(revoked.id)
    for secret in (forge_key(), forge_key("kpa_"), _real_key_with_a_wrong_checksum(keyplane), narrow.secret):
        status_of(lambda: chat(own.client(secret)))
    deadline = time.monotonic() + 1.0
    while status_of(lambda: chat(own.client(revoked.secret))) != 401 and time.monotonic() < deadline:
        time.sleep(0.02)
    metrics = own.get("/_keyplane/metrics").text
    own.stop()

    for name, text in (("its metrics", metrics), ("its log", own.log_text()), ("the shared gate's log", gate.log_text())):
        leaks = sorted(set(WHOLE_KEY.findall(text)))
        if leaks:
            pytest.fail(f"{name} shows whole keys: {[mask(k) for k in leaks]}")
        if upstream_key in text:
            pytest.fail(f"{name} shows the upstream key")
