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

from conftest import ALL_SCOPES, Gate, Key, Keyplane, wait_until
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


# -- usage reports and budgets --------------------------------------------------

#: Gates of these tests report usage often, so a test waits a second, not ten.
FAST_REPORTS = {"KEYPLANE_GATE_USAGE_REPORT_EVERY": "300ms"}


def usage_rows(kp: Keyplane, key: Key, bucket: str = "hour") -> list[dict]:
    return kp.api("GET", f"/v1/usage?key_id={key.id}&bucket={bucket}")["items"]


def totals(rows: list[dict]) -> dict:
    return {
        field: sum(row[field] for row in rows)
        for field in ("requests", "prompt_tokens", "completion_tokens", "errors")
    }


def test_usage_reaches_keyplane_by_key_and_model(keyplane: Keyplane, start_gate) -> None:
    gate = start_gate(keyplane, settings=FAST_REPORTS)
    key = limited_key(keyplane)
    client = gate.client(key.secret)
    for _ in range(3):
        raw_chat(client, "one two three", model="usage-model-a")
    list(
        client.chat.completions.create(
            model="usage-model-b", messages=[{"role": "user", "content": "four five"}], stream=True
        )
    )
    client.embeddings.create(model="usage-embedder", input="six seven eight nine")

    def reported() -> list[dict] | None:
        rows = usage_rows(keyplane, key)
        return rows if totals(rows)["requests"] == 5 else None

    rows = wait_until(reported, timeout=20, what="the gate's usage report")
    by_model = {row["model"]: row for row in rows}
    # The upstream counts a word a token; its answer is "You said: <prompt>".
    assert by_model["usage-model-a"]["requests"] == 3
    assert by_model["usage-model-a"]["prompt_tokens"] == 9
    assert by_model["usage-model-a"]["completion_tokens"] == 3 * 5
    # The stream's tokens, though its client never asked for usage.
    assert by_model["usage-model-b"]["prompt_tokens"] == 2
    assert by_model["usage-model-b"]["completion_tokens"] == 4
    assert by_model["usage-embedder"]["prompt_tokens"] == 4
    assert all(row["instance_id"] == key.instance_id for row in rows)
    assert totals(usage_rows(keyplane, key, "day")) == totals(rows)


def test_a_spent_budget_is_insufficient_quota_and_not_retried(
    keyplane: Keyplane, gate: Gate, upstream: Upstream
) -> None:
    key = limited_key(keyplane, limits={"daily_tokens": 300})
    # Retries allowed: a spent budget must not be retried all the same.
    client = gate.client(key.secret, max_retries=3)
    marker = f"budget-{uuid.uuid4().hex[:8]}"
    spent = 0
    with pytest.raises(openai.RateLimitError) as caught:
        for _ in range(50):
            raw_chat(client, f"{marker} a b c d e f g h i j", max_tokens=20)
            spent += 1
    err = caught.value
    assert err.code == "insufficient_quota", err.body
    assert err.body["type"] == "insufficient_quota"
    assert err.response.headers["x-should-retry"] == "false"
    # About 23 tokens each: the budget let a dozen or so through, no more.
    assert 5 <= spent <= 300 // 23, spent
    assert len(upstream.requests_with(marker)) == spent, "a refused request was retried or forwarded"


def test_two_gates_sharing_a_budget_stay_within_it(keyplane: Keyplane, start_gate) -> None:
    budget = 5000
    gates = [start_gate(keyplane, settings=FAST_REPORTS) for _ in range(2)]
    key = limited_key(keyplane, limits={"daily_tokens": budget})
    clients = [g.client(key.secret) for g in gates]
    # 20 words in, 22 out: 42 tokens a request, each estimated at more
    # than that (a quarter of the body's bytes plus max_tokens), so the
    # stated bound is no overspend at all.
    prompt = " ".join(["w"] * 20)
    served = [0, 0]
    done = [False, False]
    for turn in range(400):
        i = turn % 2
        if done[i]:
            if all(done):
                break
            continue
        try:
            raw_chat(clients[i], prompt, max_tokens=50)
            served[i] += 1
        except openai.RateLimitError as err:
            assert err.code == "insufficient_quota", err.body
            done[i] = True
    assert all(done), f"the budget never ran out: {served}"
    assert min(served) > 0, f"one gate got the whole budget: {served}"

    def settled() -> dict | None:
        seen = totals(usage_rows(keyplane, key, "day"))
        return seen if seen["requests"] == sum(served) else None

    seen = wait_until(settled, timeout=20, what="both gates' usage reports")
    spent = seen["prompt_tokens"] + seen["completion_tokens"]
    assert spent == 42 * sum(served)
    assert spent <= budget, f"overspent: {spent} of {budget} ({served})"
    # What is left unspent is at most a lease held by the other gate.
    assert spent >= budget - 1000 - 2 * 42, f"underspent: {spent} of {budget} ({served})"
