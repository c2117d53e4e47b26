"""The suite's own upstream, checked with the openai client and no gate between.

If these fail, the gate tests' failures say nothing about the gate.
"""

from __future__ import annotations

import openai

from upstream import MODELS, Upstream, embedding_for, reply_for, reply_tokens


def client(server: Upstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="kpi_direct", max_retries=0, timeout=15)


def test_upstream_streams_in_lockstep_with_a_client_that_keeps_up(upstream: Upstream):
    prompt = "one two three"
    chunks = []
    with upstream.lockstep() as steps:
        stream = client(upstream).chat.completions.create(
            model="lockstep", messages=[{"role": "user", "content": prompt}], stream=True
        )
        for chunk in stream:
            assert steps.sent == len(chunks) + 1
            chunks.append(chunk)
            steps.release()
    assert not steps.timed_out
    assert len(chunks) == len(reply_tokens(prompt)) + 2
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply_for(prompt)


def test_upstream_gives_up_waiting_and_says_so_when_chunks_are_not_acknowledged():
    with Upstream(lockstep_timeout=0.3) as server, server.lockstep() as steps:
        stream = client(server).chat.completions.create(
            model="held", messages=[{"role": "user", "content": "a b"}], stream=True
        )
        chunks = list(stream)  # never released
    assert steps.timed_out
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply_for("a b")


def test_upstream_answers_chat_embeddings_and_models_and_records_headers(upstream: Upstream):
    c = client(upstream)
    answer = c.chat.completions.create(model="direct-chat", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == reply_for("hi")
    vectors = c.embeddings.create(model="direct-embed", input=["x", "yz"])  # base64 by default
    assert [d.embedding for d in vectors.data] == [embedding_for("x"), embedding_for("yz")]
    floats = c.embeddings.create(model="direct-embed-f", input="x", encoding_format="float")
    assert floats.data[0].embedding == embedding_for("x")
    assert [m.id for m in c.models.list(extra_query={"probe": "direct-models"})] == MODELS
    [request] = upstream.requests_with("direct-chat")
    assert request.header("authorization") == ["Bearer kpi_direct"]
    assert len(upstream.requests_with("direct-models")) == 1
