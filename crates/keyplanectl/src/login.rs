//! `keyplanectl login`: a person signs in in a browser with MFA (the
//! device flow, RFC 8628) and the terminal keeps the session's token; or
//! an admin key is read from standard input. Either is stored in the
//! profile file, mode 0600, and checked against keyplane first.

use std::io::Write;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Command};
use serde_json::Value;

use crate::client::{Failure, answer};
use crate::config;

/// The `login` command.
pub fn command() -> Command {
    Command::new("login")
        .about("sign in (in a browser, with MFA) and keep the token in a profile")
        .arg(
            Arg::new("admin-key")
                .long("admin-key")
                .action(ArgAction::SetTrue)
                .help("read an admin key (kpa_…) from standard input instead"),
        )
}

/// Signs in against `url` (or the profile's) and saves profile `profile`
/// (default `default`).
pub async fn run(
    matches: &ArgMatches,
    url: Option<String>,
    profile: Option<String>,
) -> Result<(), Failure> {
    let name = profile.unwrap_or_else(|| "default".to_owned());
    let url = match url.or_else(|| std::env::var("KEYPLANE_URL").ok().filter(|u| !u.is_empty())) {
        Some(url) => url,
        None => config::read()
            .ok()
            .and_then(|file| file.profiles.get(&name).and_then(|p| p.url.clone()))
            .ok_or_else(|| Failure::usage("sign in where? --url or KEYPLANE_URL".to_owned()))?,
    };
    let base = url
        .split(',')
        .next()
        .unwrap_or_default()
        .trim()
        .trim_end_matches('/')
        .to_owned();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Failure::usage(format!("cannot make an HTTP client: {e}")))?;
    let token = if matches.get_flag("admin-key") {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| Failure::usage(format!("reading standard input: {e}")))?;
        line.trim().to_owned()
    } else {
        device_flow(&client, &base).await?
    };
    let me = client
        .get(format!("{base}/v1/auth/session"))
        .bearer_auth(&token)
        .send()
        .await
        .map_err(|_| Failure::unreachable(format!("keyplane cannot be reached at {base}")))?;
    let me = answer(me).await?;
    let path =
        config::save_login(&name, &url, &token).map_err(|e| Failure::usage(format!("{e:#}")))?;
    let _ = writeln!(
        std::io::stderr(),
        "signed in as {} ({}); profile {name} saved in {}",
        me["actor"].as_str().unwrap_or("?"),
        me["role"].as_str().unwrap_or("?"),
        path.display()
    );
    Ok(())
}

/// The device flow: asks keyplane for codes, tells the person where to go,
/// and polls until they have signed in.
async fn device_flow(client: &reqwest::Client, base: &str) -> Result<String, Failure> {
    let unreachable = |_| Failure::unreachable(format!("keyplane cannot be reached at {base}"));
    let started = client
        .post(format!("{base}/v1/auth/device"))
        .form(&[("client_id", "keyplanectl")])
        .send()
        .await
        .map_err(unreachable)?;
    let codes = answer(started).await?;
    let (Some(device_code), Some(user_code), Some(link)) = (
        codes["device_code"].as_str(),
        codes["user_code"].as_str(),
        codes["verification_uri_complete"].as_str(),
    ) else {
        return Err(Failure::refused(
            "keyplane answered no device code".to_owned(),
        ));
    };
    let mut interval = codes["interval"].as_u64().unwrap_or(5).max(1);
    let _ = writeln!(
        std::io::stderr(),
        "Open {link}\nand check that it shows {user_code}, then sign in. Waiting…"
    );
    let deadline = std::time::Instant::now()
        + Duration::from_secs(codes["expires_in"].as_u64().unwrap_or(600));
    while std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        let response = client
            .post(format!("{base}/v1/auth/token"))
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", device_code),
                ("client_id", "keyplanectl"),
            ])
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return body["access_token"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| Failure::refused("keyplane answered no token".to_owned()));
        }
        match body["error"].as_str() {
            Some("authorization_pending") => {}
            Some("slow_down") => interval += 5,
            Some(error) => {
                return Err(Failure::refused(format!(
                    "sign-in not finished ({error}): {}",
                    body["error_description"].as_str().unwrap_or_default()
                )));
            }
            None => return Err(Failure::refused(format!("keyplane answered {status}"))),
        }
    }
    Err(Failure::refused(
        "the sign-in took too long: run keyplanectl login again".to_owned(),
    ))
}
