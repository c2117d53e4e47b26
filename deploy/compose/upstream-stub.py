"""A stand-in for an OpenAI-compatible server, behind the gate in docker-compose.yml.

It answers GET /v1/models and POST /v1/chat/completions (and /v1/completions,
/v1/embeddings) with fixed JSON, and 404 to anything else. It logs whether the
gate removed the client's key and added X-Keyplane-Instance. Replace it with
Cortex, llama.cpp server, Ollama or vLLM: point KEYPLANE_GATE_UPSTREAM at it.
"""

import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "stub-model"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return {}

    def do_GET(self):
        if self.path.split("?")[0] == "/v1/models":
            self._answer(200, {"object": "list", "data": [
                {"id": MODEL, "object": "model", "created": 0, "owned_by": "stub"}]})
        else:
            self._answer(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def do_POST(self):
        body = self._read_body()
        path = self.path.split("?")[0]
        now = int(time.time())
        if path == "/v1/chat/completions":
            self._answer(200, {
                "id": "chatcmpl-stub", "object": "chat.completion", "created": now,
                "model": body.get("model", MODEL),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "Hello from the stub."}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}})
        elif path == "/v1/completions":
            self._answer(200, {
                "id": "cmpl-stub", "object": "text_completion", "created": now,
                "model": body.get("model", MODEL),
                "choices": [{"index": 0, "text": "Hello from the stub.", "finish_reason": "stop"}]})
        elif path == "/v1/embeddings":
            self._answer(200, {"object": "list", "model": body.get("model", MODEL),
                               "data": [{"object": "embedding", "index": 0, "embedding": [0.0, 0.0, 0.0]}]})
        else:
            self._answer(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def log_message(self, fmt, *args):
        client_key = "present" if self.headers.get("Authorization") else "absent"
        instance = self.headers.get("X-Keyplane-Instance", "-")
        print(f"{self.command} {self.path} -> {args[1] if len(args) > 1 else '-'}"
              f" client key {client_key}, instance {instance}", flush=True)


if __name__ == "__main__":
    # As PID 1 in a container, SIGTERM does nothing unless handled.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8000"))), Handler).serve_forever()
