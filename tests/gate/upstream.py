"""A small OpenAI-compatible server for the gate's end-to-end tests.

It runs in a thread of the test process (standard library only) and serves
`POST /v1/chat/completions` (JSON, or with `"stream": true` Server-Sent Events
of `chat.completion.chunk` objects ending in `data: [DONE]`, as OpenAI sends
them), `GET /v1/models` and `POST /v1/embeddings`. It records every request
it receives (method, path, headers, body), so tests can see what the gate
forwarded.

Streams can run in lockstep with the test (`Upstream.lockstep()`): after
sending chunk i the upstream waits until the test says it has received chunk
i through its client. A proxy that buffered the stream would make the upstream
wait in vain; after a generous timeout it sends the rest anyway and records
that it had to, so the test fails instead of hanging.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

MODELS = ["keyplane-test-model", "keyplane-test-embedder"]
EMBEDDING_DIMENSIONS = 4


def reply_for(prompt: str) -> str:
    """What the upstream answers to a user message: deterministic, and naming it."""
    return f"You said: {prompt}"


def reply_tokens(prompt: str) -> list[str]:
    """The content pieces a streamed answer is cut into: one word each, spaces kept."""
    words = reply_for(prompt).split(" ")
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


def embedding_for(text: str) -> list[float]:
    """A deterministic vector for a text, exactly representable as float32."""
    total = sum(text.encode())
    return [float(len(text)), float(total % 97), 0.5, -1.0][:EMBEDDING_DIMENSIONS]


@dataclass
class RecordedRequest:
    """One request as the upstream received it."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        """Every value of header `name` (case-insensitive), in order."""
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> object:
        return json.loads(self.body) if self.body else None


@dataclass
class Lockstep:
    """A streamed answer sent one chunk at a time, each only after the test released the previous."""

    timeout: float
    # How many chunks the upstream has begun to send (counted before writing,
    # so a client that holds chunk i always sees at least i + 1 here).
    sent: int = 0
    # Whether the upstream gave up waiting for the test and sent the rest at once.
    timed_out: bool = False
    _released: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0), repr=False)
    _closed: bool = field(default=False, repr=False)

    def release(self) -> None:
        """The test has received the chunk the upstream sent last: let it send the next."""
        self._released.release()

    def wait(self) -> None:
        """Called by the upstream after each chunk."""
        if self.timed_out or self._closed:
            return
        if not self._released.acquire(timeout=self.timeout):
            self.timed_out = True

    def close(self) -> None:
        self._closed = True
        self._released.release()


class Upstream:
    """The server. Use as a context manager, or call start() and stop()."""

    def __init__(self, lockstep_timeout: float = 10.0) -> None:
        self.lockstep_timeout = lockstep_timeout
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._lockstep: Lockstep | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> "Upstream":
        upstream = self

        class Handler(_Handler):
            owner = upstream

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="upstream", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._lockstep is not None:
            self._lockstep.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "Upstream":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "the upstream is not running"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """The URL to give the gate as KEYPLANE_GATE_UPSTREAM (no `/v1`)."""
        return f"http://127.0.0.1:{self.port}"

    # -- what the tests read -----------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_with(self, marker: str) -> list[RecordedRequest]:
        """The requests whose path or body contains `marker` (tests put one in each request)."""
        raw = marker.encode()
        return [r for r in self.requests if marker in r.path or raw in r.body]

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    @contextmanager
    def lockstep(self) -> Iterator[Lockstep]:
        """Streams started inside the block go chunk by chunk, paced by the test's release()."""
        steps = Lockstep(timeout=self.lockstep_timeout)
        self._lockstep = steps
        try:
            yield steps
        finally:
            self._lockstep = None
            steps.close()

    # -- used by the handler -------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A client (or the gate) dropping a pooled connection is not news;
        # anything else is printed as usual.
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    owner: Upstream
    protocol_version = "HTTP/1.1"
    # Each chunk must leave at once, not wait on an ACK for the previous one.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # keep pytest's output quiet

    # -- reading -------------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = bytearray()
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers, if any, end with an empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _begin(self) -> tuple[str, object]:
        body = self._read_body()
        path = self.path
        self.owner._record(
            RecordedRequest(
                method=self.command,
                path=path,
                headers=list(self.headers.items()),
                body=body,
            )
        )
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = ValueError
        return path.split("?", 1)[0], data

    # -- writing -------------------------------------------------------------

    def _json(self, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, code: str) -> None:
        self._json(
            status,
            {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}},
        )

    # -- routes --------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802
        path, _ = self._begin()
        if path == "/v1/models":
            created = int(time.time())
            self._json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": m, "object": "model", "created": created, "owned_by": "keyplane-tests"}
                        for m in MODELS
                    ],
                },
            )
        else:
            self._error(404, f"no route GET {path}", "unknown_url")

    def do_POST(self) -> None:  # noqa: N802
        path, data = self._begin()
        if data is ValueError or (data is not None and not isinstance(data, dict)):
            self._error(400, "the body is not a JSON object", "invalid_json")
        elif path == "/v1/chat/completions":
            self._chat(data or {})
        elif path == "/v1/embeddings":
            self._embeddings(data or {})
        else:
            self._error(404, f"no route POST {path}", "unknown_url")

    def do_PUT(self) -> None:  # noqa: N802
        path, _ = self._begin()
        self._error(404, f"no route PUT {path}", "unknown_url")

    def do_DELETE(self) -> None:  # noqa: N802
        path, _ = self._begin()
        self._error(404, f"no route DELETE {path}", "unknown_url")

    def _chat(self, data: dict) -> None:
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            self._error(400, "messages is required", "invalid_messages")
            return
        prompt = str(messages[-1].get("content", "")) if isinstance(messages[-1], dict) else ""
        model = str(data.get("model", MODELS[0]))
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        prompt_tokens = len(prompt.split())
        tokens = reply_tokens(prompt)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        }
        if not data.get("stream"):
            self._json(
                200,
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "fp_keyplane_tests",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply_for(prompt), "refusal": None},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                },
            )
            return

        def chunk(delta: dict, finish_reason: str | None) -> dict:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_keyplane_tests",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }

        chunks = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
        chunks += [chunk({"content": t}, None) for t in tokens]
        chunks.append(chunk({}, "stop"))
        options = data.get("stream_options") or {}
        if isinstance(options, dict) and options.get("include_usage"):
            last = chunk({}, None)
            last["choices"] = []
            last["usage"] = usage
            chunks.append(last)
        self._stream(chunks)

    def _stream(self, chunks: list[dict]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        steps = self.owner._lockstep
        try:
            for payload in chunks:
                # The usage-only chunk (no choices) may be the gate's own,
                # asked for on the client's behalf and never shown to it:
                # nothing to wait for.
                paced = steps is not None and payload.get("choices") != []
                if paced:
                    steps.sent += 1
                self._write_chunk(f"data: {json.dumps(payload)}\n\n".encode())
                if paced:
                    steps.wait()
            self._write_chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _write_chunk(self, data: bytes) -> None:
        # wfile is unbuffered (wbufsize = 0): this leaves at once.
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _embeddings(self, data: dict) -> None:
        given = data.get("input")
        texts = [given] if isinstance(given, str) else given
        if not isinstance(texts, list) or not texts:
            self._error(400, "input is required", "invalid_input")
            return
        texts = [t if isinstance(t, str) else " ".join(map(str, t)) for t in texts]
        base64_wanted = data.get("encoding_format") == "base64"
        items = []
        for i, text in enumerate(texts):
            vector = embedding_for(text)
            encoded: object = vector
            if base64_wanted:
                encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            items.append({"object": "embedding", "index": i, "embedding": encoded})
        tokens = sum(len(t.split()) for t in texts)
        self._json(
            200,
            {
                "object": "list",
                "data": items,
                "model": str(data.get("model", MODELS[1])),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )


if __name__ == "__main__":
    # For trying it by hand: python upstream.py, then point a client at the URL.
    with Upstream() as server:
        print(f"upstream on {server.base_url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
