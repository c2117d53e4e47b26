//! The gate reports its mode, version and public routes to keyplane, which
//! shows them in `GET /v1/nodes` and flags a gate weaker than itself.

use std::time::Duration;

use keyplane_client::Introspector;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Deserialize)]
struct Answer {
    mode: String,
    mode_weaker: bool,
}

/// Reports every `period`, for as long as the gate runs.
pub async fn run(introspector: Introspector, public_routes: Vec<String>, period: Duration) {
    let url = format!("{}/v1/heartbeat", introspector.base_url());
    let body = json!({
        "mode": introspector.mode(),
        "version": env!("CARGO_PKG_VERSION"),
        "public_routes": public_routes,
    });
    let mut ticks = tokio::time::interval(period);
    let mut warned = false;
    loop {
        ticks.tick().await;
        let sent = introspector
            .http()
            .post(&url)
            .bearer_auth(introspector.node_key().expose_secret())
            .timeout(Duration::from_secs(5))
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                match response.json::<Answer>().await {
                    Ok(answer) if answer.mode_weaker && !warned => {
                        warned = true;
                        tracing::warn!(keyplane_mode = %answer.mode, gate_mode = %introspector.mode(),
                            "this gate runs in a weaker mode than keyplane; operators see it flagged");
                    }
                    _ => {}
                }
            }
            Ok(response) => {
                tracing::warn!(status = %response.status(), "keyplane refused the heartbeat");
            }
            Err(err) => tracing::debug!(error = %err.without_url(), "heartbeat not delivered"),
        }
    }
}
