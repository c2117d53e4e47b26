//! What the gate reads of inference traffic: the model and an estimate of
//! the tokens on the way in, the upstream's `usage` block on the way out.
//!
//! A streamed answer carries `usage` only when the client asked for it
//! (`stream_options.include_usage`); when it did not, the gate asks on its
//! behalf and takes the extra chunk out again, so the client sees what it
//! asked for.

use axum::body::Bytes;
use axum::http::Method;
use serde::Deserialize;
use serde_json::Value;

/// The paths whose answers carry OpenAI's `usage` block.
const INFERENCE_PATHS: [&str; 4] = [
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/responses",
];

/// Whether a request is one whose tokens are counted.
pub fn is_inference(method: &Method, path: &str) -> bool {
    method == Method::POST && INFERENCE_PATHS.iter().any(|end| path.ends_with(end))
}

/// An inference request, as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Inference {
    /// The model it names.
    pub model: Option<String>,
    /// Its tokens, estimated before the upstream counts them: about four
    /// bytes a token for the prompt, plus the most it may generate.
    pub estimate: u64,
    /// The body to forward.
    pub body: Bytes,
    /// Whether the gate asked for `usage` on the client's behalf (to be
    /// taken out of the stream again).
    pub strip_usage: bool,
}

/// Reads an inference request's JSON body; None when it is not a JSON
/// object (the upstream will say what it thinks of it).
pub fn read_request(body: Bytes) -> Option<Inference> {
    let Ok(Value::Object(mut request)) = serde_json::from_slice::<Value>(&body) else {
        return None;
    };
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let most_generated = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
        .iter()
        .find_map(|field| request.get(*field).and_then(Value::as_u64))
        .unwrap_or(0);
    let estimate = (body.len() as u64)
        .div_ceil(4)
        .saturating_add(most_generated);
    let streaming = request.get("stream").and_then(Value::as_bool) == Some(true);
    let asked = request
        .get("stream_options")
        .and_then(|options| options.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true);
    if !streaming || asked {
        return Some(Inference {
            model,
            estimate,
            body,
            strip_usage: false,
        });
    }
    let options = request
        .entry("stream_options")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if !options.is_object() {
        *options = Value::Object(serde_json::Map::new());
    }
    if let Some(options) = options.as_object_mut() {
        options.insert("include_usage".to_owned(), Value::Bool(true));
    }
    let body = serde_json::to_vec(&request).map(Bytes::from).ok()?;
    Some(Inference {
        model,
        estimate,
        body,
        strip_usage: true,
    })
}

/// Tokens an answer used, as the upstream counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt (input) tokens.
    pub prompt: u64,
    /// Completion (output) tokens.
    pub completion: u64,
}

impl Usage {
    /// Both together.
    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }
}

/// `usage` as chat completions, completions, embeddings and responses spell it.
#[derive(Debug, Deserialize)]
struct Block {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    total_tokens: Option<u64>,
}

impl Block {
    fn usage(&self) -> Option<Usage> {
        let prompt = self.prompt_tokens.or(self.input_tokens);
        let completion = self.completion_tokens.or(self.output_tokens);
        match (prompt, completion, self.total_tokens) {
            (None, None, None) => None,
            (prompt, completion, total) => {
                let prompt = prompt.unwrap_or(0);
                let completion =
                    completion.unwrap_or_else(|| total.unwrap_or(0).saturating_sub(prompt));
                Some(Usage { prompt, completion })
            }
        }
    }
}

/// The `usage` block in `json` (a whole answer, or its tail): the last
/// `"usage":` followed by an object that reads as one.
fn find_usage(json: &[u8]) -> Option<Usage> {
    const NEEDLE: &[u8] = b"\"usage\"";
    let mut end = json.len();
    while let Some(at) = json[..end]
        .windows(NEEDLE.len())
        .rposition(|window| window == NEEDLE)
    {
        end = at;
        let rest = &json[at + NEEDLE.len()..];
        let rest = rest.trim_ascii_start();
        let Some(rest) = rest.strip_prefix(b":") else {
            continue;
        };
        let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<Block>();
        if let Some(Ok(block)) = values.next()
            && let Some(usage) = block.usage()
        {
            return Some(usage);
        }
    }
    None
}

/// A whole answer is kept up to this size to find `usage` in; past it,
/// only its last [`TAIL`] bytes (where OpenAI-compatible servers put it).
const KEEP_WHOLE: usize = 1 << 20;
const TAIL: usize = 64 << 10;
/// The longest Server-Sent Event held while waiting for its end.
const MAX_EVENT: usize = 1 << 20;

/// Reads `usage` out of an answer as it streams through, taking the chunk
/// the gate asked for out again; tells `done` what it found (None: the
/// answer said nothing, or was cut short) when it is dropped.
pub struct Meter {
    events: bool,
    strip: bool,
    pending: Vec<u8>,
    usage: Option<Usage>,
    done: Option<Box<dyn FnOnce(Option<Usage>) + Send>>,
}

impl Meter {
    /// Meters an answer: Server-Sent Events when `events`, else JSON.
    pub fn new(
        events: bool,
        strip: bool,
        done: impl FnOnce(Option<Usage>) + Send + 'static,
    ) -> Meter {
        Meter {
            events,
            strip: strip && events,
            pending: Vec::new(),
            usage: None,
            done: Some(Box::new(done)),
        }
    }

    /// Takes in the next chunk of the answer; answers what to send on.
    pub fn feed(&mut self, chunk: Bytes) -> Bytes {
        self.pending.extend_from_slice(&chunk);
        if !self.events {
            if self.pending.len() > KEEP_WHOLE {
                let cut = self.pending.len() - TAIL;
                self.pending.drain(..cut);
            }
            return chunk;
        }
        let complete = last_event_end(&self.pending);
        let events: Vec<u8> = self.pending.drain(..complete).collect();
        let kept = self.read_events(&events);
        if !self.strip {
            if self.pending.len() > MAX_EVENT {
                self.pending.clear();
            }
            return chunk;
        }
        let mut out = kept.unwrap_or(events);
        if self.pending.len() > MAX_EVENT {
            // Not events after all (or absurd ones): passed on unread from here.
            self.strip = false;
            out.append(&mut self.pending);
        }
        Bytes::from(out)
    }

    /// The answer ended: answers what is still held back.
    pub fn finish(&mut self) -> Bytes {
        let rest = std::mem::take(&mut self.pending);
        if !self.events {
            self.usage = find_usage(&rest);
            return Bytes::new();
        }
        let kept = self.read_events(&rest);
        match self.strip {
            true => Bytes::from(kept.unwrap_or(rest)),
            false => Bytes::new(),
        }
    }

    /// Reads the complete events in `events` for `usage`; when stripping
    /// and one of them is the usage-only chunk, answers the events without it.
    fn read_events(&mut self, events: &[u8]) -> Option<Vec<u8>> {
        let mut kept: Option<Vec<u8>> = None;
        let mut start = 0;
        while start < events.len() {
            let end = next_event_end(events, start).unwrap_or(events.len());
            let event = &events[start..end];
            let (usage, usage_only) = read_event(event);
            if usage.is_some() {
                self.usage = usage;
            }
            if self.strip && usage_only {
                kept.get_or_insert_with(|| events[..start].to_vec());
            } else if let Some(kept) = &mut kept {
                kept.extend_from_slice(event);
            }
            start = end;
        }
        kept
    }
}

impl Drop for Meter {
    /// The answer was sent, or its client went away: a body of known length
    /// is dropped once its last byte is out, without being polled to its
    /// end, so what is held is read here.
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.finish();
        }
        if let Some(done) = self.done.take() {
            done(self.usage);
        }
    }
}

/// Where the event starting at `from` ends (after its blank line).
fn next_event_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1] == b'\n' {
                return Some(i + 2);
            }
            if buf[i + 1] == b'\r' && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// Where the last complete event in `buf` ends (0: none is complete).
fn last_event_end(buf: &[u8]) -> usize {
    let mut end = 0;
    while let Some(next) = next_event_end(buf, end) {
        end = next;
    }
    end
}

/// One event's `usage`, and whether it is a chunk of usage alone (no choices).
fn read_event(event: &[u8]) -> (Option<Usage>, bool) {
    const NEEDLE: &[u8] = b"\"usage\"";
    if !event.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
        return (None, false);
    }
    let data: Vec<u8> = event
        .split(|&b| b == b'\n')
        .filter_map(|line| line.strip_prefix(b"data:"))
        .flat_map(|data| data.trim_ascii().iter().copied())
        .collect();
    let Ok(chunk) = serde_json::from_slice::<Value>(&data) else {
        return (None, false);
    };
    let usage = chunk
        .get("usage")
        .and_then(|block| serde_json::from_value::<Block>(block.clone()).ok())
        .and_then(|block| block.usage());
    let usage_only = usage.is_some()
        && chunk
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty);
    (usage, usage_only)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::json;

    use super::*;

    #[test]
    fn streaming_requests_ask_for_usage_and_say_so() {
        let body = json!({"model": "llama3", "stream": true, "max_tokens": 100,
                          "messages": [{"role": "user", "content": "hi"}]});
        let raw = Bytes::from(body.to_string());
        let read = read_request(raw.clone()).unwrap();
        assert_eq!(read.model.as_deref(), Some("llama3"));
        assert!(read.strip_usage);
        assert_eq!(read.estimate, (raw.len() as u64).div_ceil(4) + 100);
        let sent: Value = serde_json::from_slice(&read.body).unwrap();
        assert_eq!(sent["stream_options"], json!({"include_usage": true}));
        assert_eq!(sent["messages"], body["messages"]);

        // Asked already, or not streaming: forwarded as it came.
        for body in [
            json!({"model": "m", "stream": true, "stream_options": {"include_usage": true}}),
            json!({"model": "m", "stream": false}),
            json!({"model": "m"}),
        ] {
            let raw = Bytes::from(body.to_string());
            let read = read_request(raw.clone()).unwrap();
            assert!(!read.strip_usage);
            assert_eq!(read.body, raw);
        }
        assert_eq!(read_request(Bytes::from_static(b"[1,2]")), None);
        assert_eq!(read_request(Bytes::from_static(b"not json")), None);
    }

    fn metered(events: bool, strip: bool) -> (Meter, Arc<Mutex<Option<Option<Usage>>>>) {
        let seen = Arc::new(Mutex::new(None));
        let meter = Meter::new(events, strip, {
            let seen = seen.clone();
            move |usage| *seen.lock().unwrap() = Some(usage)
        });
        (meter, seen)
    }

    const STREAM: &str = concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
        "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}\n\n",
        "data: [DONE]\n\n",
    );

    fn run(meter: &mut Meter, text: &str, cut: usize) -> String {
        let mut out = Vec::new();
        for piece in text.as_bytes().chunks(cut) {
            out.extend_from_slice(&meter.feed(Bytes::copy_from_slice(piece)));
        }
        out.extend_from_slice(&meter.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_usage_chunk_asked_for_by_the_gate_is_counted_and_taken_out() {
        for cut in [1, 7, 64, STREAM.len()] {
            let (mut meter, seen) = metered(true, true);
            let out = run(&mut meter, STREAM, cut);
            assert!(!out.contains("prompt_tokens"), "cut {cut}: {out}");
            assert!(
                out.contains("\"Hi\"") && out.ends_with("data: [DONE]\n\n"),
                "{out}"
            );
            drop(meter);
            let usage = Usage {
                prompt: 12,
                completion: 3,
            };
            assert_eq!(*seen.lock().unwrap(), Some(Some(usage)), "cut {cut}");
        }
    }

    #[test]
    fn a_stream_the_client_asked_usage_of_passes_unchanged() {
        let (mut meter, seen) = metered(true, false);
        assert_eq!(run(&mut meter, STREAM, 5), STREAM);
        drop(meter);
        assert_eq!(seen.lock().unwrap().unwrap().unwrap().total(), 15);
    }

    #[test]
    fn json_answers_are_read_whole_or_by_their_tail() {
        let answer = json!({"id": "x", "choices": [{"message": {"content": "say \"usage\": {}"}}],
                            "usage": {"prompt_tokens": 7, "completion_tokens": 2}});
        let (mut meter, seen) = metered(false, false);
        let text = answer.to_string();
        assert_eq!(run(&mut meter, &text, 3), text);
        drop(meter);
        assert_eq!(seen.lock().unwrap().unwrap().unwrap().total(), 9);

        // Dropped as soon as its last byte is out, never polled to the end.
        let (mut meter, seen) = metered(false, false);
        for piece in text.as_bytes().chunks(10) {
            meter.feed(Bytes::copy_from_slice(piece));
        }
        drop(meter);
        assert_eq!(seen.lock().unwrap().unwrap().unwrap().total(), 9);

        // Larger than is kept whole: the tail still has it.
        let big = json!({"data": [{"embedding": vec![0.25; 300_000]}],
                         "usage": {"prompt_tokens": 40, "total_tokens": 40}});
        let (mut meter, seen) = metered(false, false);
        run(&mut meter, &big.to_string(), 4096);
        drop(meter);
        let usage = Usage {
            prompt: 40,
            completion: 0,
        };
        assert_eq!(*seen.lock().unwrap(), Some(Some(usage)));

        // Cut short, or no usage at all: nothing is made up.
        let (mut meter, seen) = metered(false, false);
        meter.feed(Bytes::from_static(b"{\"usage\": {\"prompt_tok"));
        drop(meter);
        assert_eq!(*seen.lock().unwrap(), Some(None));
    }

    #[test]
    fn only_inference_posts_are_metered() {
        assert!(is_inference(&Method::POST, "/v1/chat/completions"));
        assert!(is_inference(&Method::POST, "/v1/embeddings"));
        assert!(!is_inference(&Method::GET, "/v1/chat/completions"));
        assert!(!is_inference(&Method::POST, "/v1/models"));
    }
}
