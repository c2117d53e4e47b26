"""A key's limits at the gate, as the official `openai` package meets them.

Limits are set in keyplane (per key, per instance); the gate enforces them
with no call to keyplane per request: requests and tokens per minute (429
`rate_limit_exceeded` with OpenAI's `x-ratelimit-*` headers and
`Retry-After`, so the package raises `RateLimitError` and retries when told
to), and model allow-lists (403 `model_not_allowed`, before the upstream
sees anything).
"""

from __future__ import annotations

import json
import time
import uuid

import openai
import pytest

from conftest import ALL_SCOPES, Gate, Key, Keyplane
from upstream import Upstream, reply_tokens


def limited_key(kp: Keyplane, *, limits: dict | None = None, models: list[str] | None = None) -> Key:
    """A key of a new instance, with `limits` and `models` of its own."""
    instance = kp.create_instance(ALL_SCOPES)
    body: dict = {"name": f"limited-{uuid.uuid4().hex[:8]}", "scopes": ALL_SCOPES}
    if limits is not None:
        body["limits"] = limits
    if models is not None:
        body["models"] = models
    created = kp.api("POST", f"/v1/instances/{instance}/keys", body)
    return Key(created["id"], created["secret"], instance)


def raw_chat(client: openai.OpenAI, prompt: str = "hello", model: str = "keyplane-test-model", **options: object):
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], **options
    )


def test_a_key_past_its_requests_per_minute_gets_rate_limit_error(keyplane: Keyplane, gate: Gate) -> None:
    key = limited_key(keyplane, limits={"rpm": 60})
    client = gate.client(key.secret)
    started = time.monotonic()
    admitted = 0
    with pytest.raises(openai.RateLimitError) as caught:
        for _ in range(200):
            answer = raw_chat(client)
            admitted += 1
            assert answer.headers["x-ratelimit-limit-requests"] == "60"
            assert int(answer.headers["x-ratelimit-remaining-requests"]) < 60
            assert answer.headers["x-ratelimit-reset-requests"].endswith("s")
            # No token limit: no token headers.
            assert "x-ratelimit-limit-tokens" not in answer.headers
    # A minute's worth at once, and one more a second while they ran.
    assert 60 <= admitted <= 61 + (time.monotonic() - started), admitted
    err = caught.value
    assert err.status_code == 429
    assert err.code == "rate_limit_exceeded", err.body
    headers = err.response.headers
    assert headers["x-ratelimit-limit-requests"] == "60"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    # One request a second comes back: the client is told to wait about that.
    assert headers["retry-after"] == "1"
    assert 0 < int(headers["retry-after-ms"]) <= 1000

    # The package's own retries honour Retry-After and get through.
    started = time.monotonic()
    answer = raw_chat(gate.client(key.secret, max_retries=3))
    assert answer.http_response.status_code == 200
    assert time.monotonic() - started < 10


def test_a_streamed_answer_is_counted_without_the_client_seeing_the_usage_chunk(
    keyplane: Keyplane, gate: Gate, upstream: Upstream
) -> None:
    key = limited_key(keyplane, limits={"tpm": 1000})
    client = gate.client(key.secret)
    marker = f"stream-{uuid.uuid4().hex[:8]}"
    # 460 words: a prompt of 460 tokens as the upstream counts them, and an
    # answer repeating it, 922 in all; the gate's estimate is a quarter of
    # the body's bytes (~260), so only counting the stream's usage refuses
    # the next request (with ten seconds of refill to spare).
    prompt = marker + " w" * 459
    stream = client.chat.completions.create(
        model="keyplane-test-model", messages=[{"role": "user", "content": prompt}], stream=True
    )
    chunks = list(stream)
    assert chunks and all(chunk.choices for chunk in chunks), "the gate's usage chunk reached the client"
    assert all(chunk.usage is None for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).startswith("You said:")
    sent = upstream.requests_with(marker)[-1].json()
    assert sent["stream_options"] == {"include_usage": True}

    used = 460 + len(reply_tokens(prompt))
    with pytest.raises(openai.RateLimitError) as caught:
        raw_chat(client, prompt)
    headers = caught.value.response.headers
    assert headers["x-ratelimit-limit-tokens"] == "1000"
    remaining = int(headers["x-ratelimit-remaining-tokens"])
    assert remaining < 1000 - used + 100, f"the stream's {used} tokens were not counted: {remaining} left"
    assert caught.value.code == "rate_limit_exceeded"


def test_a_client_that_asked_for_usage_gets_it(keyplane: Keyplane, gate: Gate) -> None:
    key = limited_key(keyplane, limits={"tpm": 100000})
    client = gate.client(key.secret)
    chunks = list(
        client.chat.completions.create(
            model="keyplane-test-model",
            messages=[{"role": "user", "content": "count me"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 2
    answer = raw_chat(client, "count me too")
    assert answer.headers["x-ratelimit-limit-tokens"] == "100000"
    assert int(answer.headers["x-ratelimit-remaining-tokens"]) < 100000


def test_a_model_outside_the_allow_list_never_reaches_the_upstream(
    keyplane: Keyplane, gate: Gate, upstream: Upstream
) -> None:
    key = limited_key(keyplane, models=["llama3*", "phi3"])
    client = gate.client(key.secret)
    assert raw_chat(client, model="llama3.1-8b").http_response.status_code == 200
    assert raw_chat(client, model="phi3").http_response.status_code == 200

    marker = f"forbidden-{uuid.uuid4().hex[:8]}"
    for model in ["mistral-7b", "phi3-mini", marker]:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            raw_chat(client, prompt=marker, model=model)
        assert caught.value.status_code == 403
        assert caught.value.code == "model_not_allowed", caught.value.body
        assert model in caught.value.message
    # Embeddings too, and a request that names no model at all.
    with pytest.raises(openai.PermissionDeniedError):
        client.embeddings.create(model="text-embedding-3-small", input=marker)
    answer = gate_post(gate, key, "/v1/chat/completions", {"messages": [{"role": "user", "content": marker}]})
    assert answer[0] == 403 and answer[1]["error"]["code"] == "model_not_allowed"
    assert upstream.requests_with(marker) == []

    # Every other key of the fleet is untouched.
    free = limited_key(keyplane)
    assert raw_chat(gate.client(free.secret), model="mistral-7b").http_response.status_code == 200


def gate_post(gate: Gate, key: Key, path: str, body: object) -> tuple[int, dict]:
    """A POST through the gate with the standard library: any status is an answer."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        gate.url + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {key.secret}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=gate.tls()) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
