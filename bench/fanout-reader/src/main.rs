//! The revocation streams' reader for `bench/fanout.py`: opens one stream
//! per node key (one a line in the file named by the first argument) on the
//! keyplane at the second (`127.0.0.1:PORT`), prints `ready` once every
//! stream has said `ready`, and then, for each revoked key every stream has
//! seen, one line: `event KEY-ID NS...`, the wall-clock time (nanoseconds
//! since the Unix epoch) when the bytes completing the event arrived at
//! each stream. It only notes times and looks for key ids, so that what is
//! timed is mostly keyplane, not the reader.

use std::collections::HashMap;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What a stream tells the collector.
enum Seen {
    Ready,
    Revoked { key_id: String, at_ns: u128 },
}

const KEY_ID: &[u8] = b"\"key_id\":\"";
const UUID_LEN: usize = 36;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Reads one node's stream until it ends, telling `seen` what arrives.
async fn follow(
    address: String,
    node_key: String,
    seen: mpsc::UnboundedSender<Seen>,
) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(&address).await?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET /v1/revocations/stream HTTP/1.0\r\nHost: keyplane\r\nAuthorization: Bearer {node_key}\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let (mut buffer, mut scanned) = (Vec::with_capacity(16 * 1024), 0);
    let (mut head_checked, mut ready) = (false, false);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        let at_ns = now_ns();
        buffer.extend_from_slice(&chunk[..read]);
        // The status line, once it has arrived (before anything is dropped).
        if !head_checked && buffer.len() >= 12 {
            if !(buffer.starts_with(b"HTTP/1.1 200") || buffer.starts_with(b"HTTP/1.0 200")) {
                let status = String::from_utf8_lossy(&buffer[..12]).into_owned();
                return Err(std::io::Error::other(format!(
                    "the stream was refused: {status}"
                )));
            }
            head_checked = true;
        }
        if !ready && buffer.windows(12).any(|w| w == b"event: ready") {
            ready = true;
            let _ = seen.send(Seen::Ready);
        }
        // Every key id now complete in the buffer, from where the last look ended.
        while let Some(found) = buffer[scanned..]
            .windows(KEY_ID.len())
            .position(|w| w == KEY_ID)
        {
            let start = scanned + found + KEY_ID.len();
            if buffer.len() < start + UUID_LEN {
                break;
            }
            let key_id = String::from_utf8_lossy(&buffer[start..start + UUID_LEN]).into_owned();
            let _ = seen.send(Seen::Revoked { key_id, at_ns });
            scanned = start + UUID_LEN;
        }
        // What was scanned is dropped, but for a possible partial match
        // (and the status line, until it has been read).
        if !head_checked {
            continue;
        }
        let keep_from = scanned.max(buffer.len().saturating_sub(KEY_ID.len() + UUID_LEN));
        buffer.drain(..keep_from);
        scanned -= keep_from.min(scanned);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(keys), Some(address)) = (args.next(), args.next()) else {
        return Err("usage: keyplane-bench-fanout NODE-KEYS-FILE 127.0.0.1:PORT".into());
    };
    let node_keys: Vec<String> = std::fs::read_to_string(keys)?
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect();
    let streams = node_keys.len();
    let (seen, mut arrivals) = mpsc::unbounded_channel();
    for node_key in node_keys {
        let (address, seen) = (address.clone(), seen.clone());
        tokio::spawn(async move {
            if let Err(err) = follow(address, node_key, seen).await {
                eprintln!("keyplane-bench-fanout: a stream failed: {err}");
                std::process::exit(1);
            }
        });
    }
    drop(seen);
    let (mut ready, mut events) = (0, HashMap::<String, Vec<u128>>::new());
    let mut out = std::io::stdout();
    while let Some(seen) = arrivals.recv().await {
        match seen {
            Seen::Ready => {
                ready += 1;
                if ready == streams {
                    writeln!(out, "ready")?;
                    out.flush()?;
                }
            }
            Seen::Revoked { key_id, at_ns } => {
                let times = events.entry(key_id.clone()).or_default();
                times.push(at_ns);
                if times.len() == streams {
                    let times: Vec<String> = times.iter().map(u128::to_string).collect();
                    writeln!(out, "event {key_id} {}", times.join(" "))?;
                    out.flush()?;
                    events.remove(&key_id);
                }
            }
        }
    }
    Ok(())
}
