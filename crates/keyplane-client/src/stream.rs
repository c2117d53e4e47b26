//! Following keyplane's revocation stream (`GET /v1/revocations/stream`,
//! Server-Sent Events): every key that stops working is evicted at once.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use secrecy::ExposeSecret;
use serde::Deserialize;
use tokio::sync::watch;
use uuid::Uuid;

use crate::net::without_url;
use crate::node_key::NodeKey;

/// What following the stream does to a cache of answers, and what it says
/// of the stream's state.
pub(crate) trait Follower: Send + Sync {
    /// Drops every answer about `key_id`.
    fn evict(&self, key_id: Uuid);
    /// Drops every answer: revocations may have been missed.
    fn forget_all(&self);
    /// The stream's state, as last set.
    fn stream_state(&self) -> StreamState;
    /// Sets the stream's state.
    fn set_stream_state(&self, state: StreamState);
    /// Counts a connection made.
    fn connected(&self);
}

/// Where, and with which node key, the stream is read.
pub(crate) struct Source {
    /// The client for keyplane.
    pub(crate) http: reqwest::Client,
    /// keyplane's replicas.
    pub(crate) endpoints: crate::endpoints::Endpoints,
    /// The node's key (a rotation replaces it).
    pub(crate) node_key: NodeKey,
}

/// The revocation stream's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamState {
    /// Not connected yet.
    #[default]
    Connecting = 0,
    /// Connected and caught up: revocations arrive as they happen.
    Up = 1,
    /// Lost; reconnecting with backoff. Positive answers are trusted only briefly.
    Down = 2,
}

impl StreamState {
    pub(crate) fn from_u8(value: u8) -> StreamState {
        match value {
            1 => StreamState::Up,
            2 => StreamState::Down,
            _ => StreamState::Connecting,
        }
    }
}

/// keyplane sends a keep-alive comment every 15 s; three missed means the
/// connection is dead even if TCP has not noticed.
const IDLE_LIMIT: Duration = Duration::from_secs(45);
/// How long a replica may take to start answering: one that took the
/// connection but hangs (stopped, or cut off past a proxy) is given up.
const ANSWER_WAIT: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// No SSE line of ours is anywhere near this; more is garbage.
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Deserialize)]
struct Revocation {
    key_id: Uuid,
}

/// Why a connection ended.
enum Ended {
    /// Try again after the backoff.
    Retry,
    /// keyplane does not know our `Last-Event-ID`: start afresh.
    Restart,
    /// The node key was replaced: reconnect with it at once, resuming.
    KeyChanged,
}

/// Follows the stream for as long as the introspector lives, reconnecting
/// with backoff and `Last-Event-ID` so nothing is missed.
pub(crate) async fn follow(source: Source, cache: Arc<dyn Follower>) {
    let mut last_id: Option<String> = None;
    let mut backoff = BACKOFF_FIRST;
    let mut key_changes = source.node_key.changes();
    loop {
        // Any replica will do: they share one log, so Last-Event-ID resumes
        // on another exactly where this one left off.
        let base = source.endpoints.current().to_owned();
        let url = format!("{base}/v1/revocations/stream");
        match connect(
            &source,
            cache.as_ref(),
            &url,
            &mut last_id,
            &mut key_changes,
        )
        .await
        {
            Ended::Retry => source.endpoints.failed(&base),
            Ended::Restart => {
                // Events may have been missed: no cached answer can be trusted.
                last_id = None;
                cache.forget_all();
            }
            // The stream was up to date: the next connection resumes from
            // its last event, so the state stays as it is.
            Ended::KeyChanged => {
                tracing::info!("node key replaced; reconnecting the revocation stream with it");
                continue;
            }
        }
        let was_up = cache.stream_state() == StreamState::Up;
        cache.set_stream_state(StreamState::Down);
        if was_up {
            backoff = BACKOFF_FIRST;
            tracing::warn!(
                "revocation stream lost; reconnecting (cached answers are trusted only briefly meanwhile)"
            );
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn connect(
    source: &Source,
    cache: &dyn Follower,
    url: &str,
    last_id: &mut Option<String>,
    key_changes: &mut watch::Receiver<u64>,
) -> Ended {
    key_changes.borrow_and_update();
    let mut request = source
        .http
        .get(url)
        .bearer_auth(source.node_key.get().expose_secret())
        .header(reqwest::header::ACCEPT, "text/event-stream");
    if let Some(id) = last_id.as_deref() {
        request = request.header("last-event-id", id);
    }
    let response = match tokio::time::timeout(ANSWER_WAIT, request.send()).await {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => {
            tracing::debug!(error = %without_url(err), "revocation stream: cannot connect");
            return Ended::Retry;
        }
        Err(_) => {
            tracing::debug!("revocation stream: keyplane took the connection but does not answer");
            return Ended::Retry;
        }
    };
    match response.status() {
        status if status.is_success() => {}
        reqwest::StatusCode::BAD_REQUEST if last_id.is_some() => return Ended::Restart,
        reqwest::StatusCode::UNAUTHORIZED => {
            tracing::error!("keyplane refused this node's key on the revocation stream");
            return Ended::Retry;
        }
        status => {
            tracing::warn!(%status, "revocation stream refused");
            return Ended::Retry;
        }
    }
    if last_id.is_none() {
        // Starting from "now": whatever was cached before may predate a
        // revocation this stream will never replay.
        cache.forget_all();
    }
    source
        .endpoints
        .answered(url.trim_end_matches("/v1/revocations/stream"));
    let resumed = last_id.is_some();
    // Up (cached answers trusted for their whole TTL) only once keyplane
    // says the replay of what was missed is over: its `ready` event, or
    // (from a keyplane that sends none) its first keep-alive.
    let mut live = false;

    let mut body = response.bytes_stream();
    let mut parser = Parser::default();
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(IDLE_LIMIT, body.next()) => next,
            changed = key_changes.changed() => match changed {
                Ok(()) => return Ended::KeyChanged,
                Err(_) => return Ended::Retry,
            },
        };
        let chunk = match next {
            Ok(Some(Ok(chunk))) => chunk,
            Ok(Some(Err(_)) | None) | Err(_) => return Ended::Retry,
        };
        let Some(events) = parser.feed(&chunk) else {
            tracing::warn!("revocation stream sent an overlong line; reconnecting");
            return Ended::Retry;
        };
        let mut caught_up = std::mem::take(&mut parser.heard_comment);
        for event in events {
            match event.name.as_str() {
                "revocation" => match serde_json::from_str::<Revocation>(&event.data) {
                    Ok(revocation) => cache.evict(revocation.key_id),
                    // An event we cannot read may have been a revocation.
                    Err(_) => cache.forget_all(),
                },
                "ready" => caught_up = true,
                _ => {}
            }
            if let Some(id) = event.id {
                *last_id = Some(id);
            }
        }
        if caught_up && !live {
            live = true;
            cache.set_stream_state(StreamState::Up);
            cache.connected();
            tracing::info!(resumed, "revocation stream connected");
        }
    }
}

/// One Server-Sent Event.
#[derive(Debug, Default, PartialEq, Eq)]
struct SseEvent {
    id: Option<String>,
    name: String,
    data: String,
}

/// An incremental SSE parser (the parts of the format keyplane uses).
#[derive(Debug, Default)]
struct Parser {
    line: Vec<u8>,
    event: SseEvent,
    has_data: bool,
    /// Whether a comment (a keep-alive) arrived since this was last cleared.
    heard_comment: bool,
}

impl Parser {
    /// Feeds bytes; answers the events they complete, or None for a line
    /// longer than [`MAX_LINE`].
    fn feed(&mut self, bytes: &[u8]) -> Option<Vec<SseEvent>> {
        let mut events = Vec::new();
        for &byte in bytes {
            if byte != b'\n' {
                if self.line.len() >= MAX_LINE {
                    return None;
                }
                self.line.push(byte);
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let line =
                String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(&line)).into_owned();
            if line.is_empty() {
                if self.has_data || self.event.id.is_some() {
                    events.push(std::mem::take(&mut self.event));
                }
                self.event = SseEvent::default();
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                self.heard_comment = true; // a keep-alive
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => self.event.id = Some(value.to_owned()),
                "event" => self.event.name = value.to_owned(),
                "data" => {
                    if self.has_data {
                        self.event.data.push('\n');
                    }
                    self.event.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        Some(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_anywhere_and_skips_comments() {
        let text = ": keep-alive\n\nevent: revocation\r\nid: 7\ndata: {\"key_id\": \"x\"}\n\nid: 8\nevent: revocation\ndata: a\ndata: b\n\n";
        for split in 0..text.len() {
            let mut parser = Parser::default();
            let mut events = parser.feed(&text.as_bytes()[..split]).unwrap();
            events.extend(parser.feed(&text.as_bytes()[split..]).unwrap());
            assert_eq!(
                events,
                vec![
                    SseEvent {
                        id: Some("7".into()),
                        name: "revocation".into(),
                        data: "{\"key_id\": \"x\"}".into()
                    },
                    SseEvent {
                        id: Some("8".into()),
                        name: "revocation".into(),
                        data: "a\nb".into()
                    },
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn an_overlong_line_is_refused() {
        let mut parser = Parser::default();
        assert!(parser.feed(&vec![b'x'; MAX_LINE + 1]).is_none());
    }
}
