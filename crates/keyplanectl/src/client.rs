//! Requests to keyplane: each URL of the target in turn until one
//! answers, lists followed through their cursors, refusals turned into
//! the exit code and the one line a person reads.

use std::time::Duration;

use serde_json::Value;

use crate::Call;
use crate::config::Target;

/// Why keyplanectl stops: the exit code and what it says.
#[derive(Debug)]
pub struct Failure {
    /// 1 refused, 2 usage, 3 unreachable (0 after help or a version).
    pub code: u8,
    /// One line, never a secret.
    pub message: String,
}

impl Failure {
    /// A usage error (2).
    pub fn usage(message: String) -> Failure {
        Failure { code: 2, message }
    }

    /// Refused by keyplane (1).
    pub fn refused(message: String) -> Failure {
        Failure { code: 1, message }
    }

    /// keyplane cannot be reached (3).
    pub fn unreachable(message: String) -> Failure {
        Failure { code: 3, message }
    }

    /// Nothing more to say (clap has said it).
    pub fn silent(code: u8) -> Failure {
        Failure {
            code,
            message: String::new(),
        }
    }
}

/// The most items a list gathers through its cursors.
const MOST_ITEMS: usize = 100_000;

fn http() -> Result<reqwest::Client, Failure> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(120))
        .user_agent(concat!("keyplanectl/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Failure::usage(format!("cannot make an HTTP client: {e}")))
}

/// Sends `call` to `target`; a list is followed through every page.
pub async fn send(target: &Target, call: &Call) -> Result<Value, Failure> {
    let client = http()?;
    let mut query = call.query.clone();
    let mut answer = request(&client, target, call, &query).await?;
    let paged = call.operation.query.iter().any(|f| f.name == "cursor");
    while paged && answer["next_cursor"].is_string() {
        let Some(cursor) = answer["next_cursor"].as_str().map(str::to_owned) else {
            break;
        };
        query.retain(|(name, _)| name != "cursor");
        query.push(("cursor".to_owned(), cursor));
        let next = request(&client, target, call, &query).await?;
        let (Some(items), Some(more)) = (answer["items"].as_array_mut(), next["items"].as_array())
        else {
            break;
        };
        items.extend(more.iter().cloned());
        let gathered = items.len();
        answer["next_cursor"] = next["next_cursor"].clone();
        if gathered >= MOST_ITEMS {
            break;
        }
    }
    Ok(answer)
}

async fn request(
    client: &reqwest::Client,
    target: &Target,
    call: &Call,
    query: &[(String, String)],
) -> Result<Value, Failure> {
    let mut last = String::new();
    for url in &target.urls {
        let mut request = client
            .request(call.operation.method.clone(), format!("{url}{}", call.path))
            .query(query);
        if let Some(token) = &target.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        match request.send().await {
            Ok(response) => return answer(response).await,
            Err(err) if err.is_connect() || err.is_timeout() => {
                last = format!("keyplane cannot be reached at {url}");
            }
            Err(_) => last = format!("the request to {url} failed"),
        }
    }
    Err(Failure::unreachable(last))
}

/// An answer's body, or the refusal it carries.
pub async fn answer(response: reqwest::Response) -> Result<Value, Failure> {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| {
        // The audit export is JSON lines; anything else is text.
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        if lines.is_empty() {
            Value::String(text.clone())
        } else {
            serde_json::json!({ "items": lines })
        }
    });
    if status.is_success() {
        return Ok(if status == reqwest::StatusCode::NO_CONTENT {
            serde_json::json!({ "done": true })
        } else {
            body
        });
    }
    let code = body["code"].as_str().unwrap_or("error");
    let detail = body["detail"].as_str().unwrap_or_default();
    let field = body["field"]
        .as_str()
        .map(|f| format!(" (field {f})"))
        .unwrap_or_default();
    let hint = match code {
        "step_up_required" => " — sign in again: keyplanectl login",
        "session_ended" => " — keyplanectl login",
        _ => "",
    };
    let message = format!(
        "refused ({} {code}): {detail}{field}{hint}",
        status.as_u16()
    );
    Err(Failure::refused(
        keyplane_domain::scrub_keys(&message).into_owned(),
    ))
}
