"""W3C trace context through the gate, exported over OTLP to a real receiver:
a client's request, the gate's handling of it, the introspection it caused at
keyplane and the upstream's view all share the client's trace."""

from __future__ import annotations

import secrets
import time

from conftest import Gate, Keyplane
from otlp import OtlpReceiver
from upstream import Upstream

#: Export quickly, so the test need not wait for the default 5 s batches.
OTEL = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}


def test_a_gate_request_and_its_introspection_share_the_callers_trace(start_keyplane, start_gate, upstream: Upstream):
    with OtlpReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, **OTEL}
        kp: Keyplane = start_keyplane(env=env)
        gate: Gate = start_gate(kp, settings=env)
        key = kp.new_key(["inference:chat"])

        trace_id = secrets.token_hex(16)
        caller_span = secrets.token_hex(8)
        marker = "traced-" + secrets.token_hex(4)
        client = gate.client(key.secret, default_headers={"traceparent": f"00-{trace_id}-{caller_span}-01"})
        client.chat.completions.create(model=marker, messages=[{"role": "user", "content": "hi"}])

        # The upstream was called within the caller's trace, by the gate's span.
        (seen,) = upstream.requests_with(marker)
        (upstream_parent,) = seen.header("traceparent")
        assert upstream_parent.split("-")[1] == trace_id, upstream_parent

        deadline = time.monotonic() + 30
        while True:
            spans = receiver.in_trace(trace_id)
            gate_spans = [s for s in spans if s.service == "keyplane-gate" and s.name == "gate request"]
            keyplane_spans = [
                s for s in spans if s.service == "keyplane" and s.attributes.get("route") == "/v1/introspect"
            ]
            if gate_spans and keyplane_spans:
                break
            assert time.monotonic() < deadline, f"spans of trace {trace_id} never all arrived: {spans}"
            time.sleep(0.1)

        (gate_span,) = gate_spans
        assert gate_span.parent_span_id == caller_span, "the gate's span is not the caller's child"
        assert upstream_parent.split("-")[2] == gate_span.span_id, "the upstream's parent is not the gate's span"
        # keyplane's introspection span hangs off the gate's request span.
        assert keyplane_spans[0].parent_span_id == gate_span.span_id
        assert gate_span.attributes.get("key_id") == key.id
        # Spans carry ids, never the key.
        assert not any(key.secret in str(s) for s in receiver.spans)
