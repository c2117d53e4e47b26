//! `keyplanectl import cortex`: a Cortex node's static `apiKeys`, read from
//! its `.cortexrc`, registered as legacy keys of an instance, so that the
//! node's clients keep working behind keyplane until their keys are rotated
//! into `kpi_` keys. The keys travel in the request body only: no argument,
//! message or output of keyplanectl ever holds one.

use clap::{Arg, ArgAction, ArgMatches, Command};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::Call;
use crate::client::{self, Failure};
use crate::commands;
use crate::config::Target;

/// The command line of `import`.
pub fn command() -> Command {
    let cortex = Command::new("cortex")
        .about("register a Cortex node's apiKeys (its .cortexrc) as legacy keys of an instance")
        .arg(
            Arg::new("config")
                .long("config")
                .required(true)
                .value_name("PATH")
                .help("the node's .cortexrc (YAML; apiKeys a list or a comma-separated text)"),
        )
        .arg(
            Arg::new("instance")
                .long("instance")
                .required(true)
                .value_name("NAME")
                .help("the instance the keys become legacy keys of: its name or id"),
        )
        .arg(
            Arg::new("name")
                .long("name")
                .value_name("NAME")
                .help("a name for the keys (default legacy; numbered when several)"),
        )
        .arg(
            Arg::new("scopes")
                .long("scopes")
                .value_name("A,B")
                .help("their scopes (default: the instance's whole ceiling)"),
        )
        .arg(
            Arg::new("roles")
                .long("roles")
                .value_name("A,B")
                .help("roles whose scopes they also get"),
        )
        .arg(
            Arg::new("audience")
                .long("audience")
                .value_name("A,B")
                .help("node ids or names that may accept them (default any)"),
        )
        .arg(
            Arg::new("expires-in")
                .long("expires-in")
                .value_name("DURATION")
                .help(
                    "how long they live, e.g. 14d (default and most: KEYPLANE_LEGACY_KEY_LIFETIME)",
                ),
        )
        .arg(
            Arg::new("dry-run")
                .long("dry-run")
                .action(ArgAction::SetTrue)
                .help("answer what would change, and change nothing"),
        );
    Command::new("import")
        .about("import: keys from before keyplane")
        .subcommand_required(true)
        .subcommand(cortex)
}

/// Runs `import cortex` against `target`; answers keyplane's answer.
pub async fn run(matches: &ArgMatches, target: &Target) -> Result<Value, Failure> {
    let Some(("cortex", matches)) = matches.subcommand() else {
        return Err(Failure::usage("import what? (import cortex)".to_owned()));
    };
    let given = |name: &str| matches.get_one::<String>(name).cloned();
    let path = given("config").unwrap_or_default();
    let keys = cortex_keys(&path)?;
    let instance = instance_id(target, &given("instance").unwrap_or_default()).await?;

    let mut body = Map::new();
    body.insert("keys".to_owned(), json!(*keys));
    if let Some(name) = given("name") {
        body.insert("name".to_owned(), json!(name));
    }
    for list in ["scopes", "roles", "audience"] {
        if let Some(text) = given(list) {
            let items: Vec<&str> = text
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            body.insert(list.to_owned(), json!(items));
        }
    }
    if let Some(text) = given("expires-in") {
        let seconds = keyplane_domain::parse_duration(&text)
            .map_err(|_| {
                Failure::usage(format!(
                    "--expires-in: expected seconds or a duration such as 14d, got {text:?}"
                ))
            })?
            .as_secs();
        body.insert("expires_in".to_owned(), json!(seconds));
    }
    let dry_run = matches.get_flag("dry-run");
    let call = Call {
        path: format!("/v1/instances/{instance}/keys/import"),
        query: match dry_run {
            true => vec![("dry_run".to_owned(), "true".to_owned())],
            false => Vec::new(),
        },
        body: Some(Value::Object(body)),
        dry_run,
        operation: operation("import_legacy_keys")?,
    };
    client::send(target, &call).await
}

fn operation(id: &str) -> Result<commands::Operation, Failure> {
    commands::operations()
        .map_err(|err| Failure::usage(format!("{err:#}")))?
        .remove(id)
        .ok_or_else(|| Failure::usage(format!("the API has no operation {id}")))
}

/// The instance named `name` (or with this id).
async fn instance_id(target: &Target, name: &str) -> Result<String, Failure> {
    if uuid_like(name) {
        return Ok(name.to_owned());
    }
    let call = Call {
        path: "/v1/instances".to_owned(),
        query: vec![("name".to_owned(), name.to_owned())],
        body: None,
        dry_run: false,
        operation: operation("list_instances")?,
    };
    let answer = client::send(target, &call).await?;
    answer["items"][0]["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| {
            Failure::refused(format!(
                "refused (404 not_found): no instance named {name:?}"
            ))
        })
}

fn uuid_like(text: &str) -> bool {
    text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// The `apiKeys` of the `.cortexrc` at `path`: a YAML list (as Cortex
/// writes it) or one comma-separated text (as `cortex config --api_keys`
/// takes it). Errors name the file and the line, never a value from it.
fn cortex_keys(path: &str) -> Result<Zeroizing<Vec<String>>, Failure> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|err| Failure::usage(format!("reading {path}: {err}")))?,
    );
    // Cortex writes the file with a UTF-8 byte order mark.
    let yaml = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let document: serde_yaml::Value = serde_yaml::from_str(yaml).map_err(|err| {
        let at = err
            .location()
            .map(|at| format!(" (line {}, column {})", at.line(), at.column()))
            .unwrap_or_default();
        Failure::usage(format!("{path} is not YAML{at}"))
    })?;
    let entries: Vec<String> = match document.get("apiKeys") {
        Some(serde_yaml::Value::Sequence(items)) => items
            .iter()
            .map(|item| match item {
                serde_yaml::Value::String(text) => Ok(text.clone()),
                _ => Err(Failure::usage(format!(
                    "{path}: apiKeys must hold texts (keys)"
                ))),
            })
            .collect::<Result<_, _>>()?,
        Some(serde_yaml::Value::String(text)) => text.split(',').map(str::to_owned).collect(),
        Some(serde_yaml::Value::Null) | None => {
            return Err(Failure::usage(format!("{path} has no apiKeys")));
        }
        Some(_) => {
            return Err(Failure::usage(format!(
                "{path}: apiKeys must be a list or a comma-separated text"
            )));
        }
    };
    let keys: Vec<String> = entries
        .iter()
        .map(|key| key.trim())
        .filter(|key| !key.is_empty())
        .map(str::to_owned)
        .collect();
    if keys.is_empty() {
        return Err(Failure::usage(format!("{path}: apiKeys is empty")));
    }
    Ok(Zeroizing::new(keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        file
    }

    fn keys_of(text: &str) -> Result<Vec<String>, Failure> {
        let file = file(text);
        cortex_keys(file.path().to_str().unwrap()).map(|keys| keys.to_vec())
    }

    #[test]
    fn keys_are_read_from_a_list_or_a_comma_separated_text() {
        let listed = "\u{feff}apiServerHost: 127.0.0.1\napiServerPort: 39281\napiKeys:\n  - first-key-123\n  - \" second-key-456 \"\nenableCors: true\n";
        assert_eq!(
            keys_of(listed).unwrap(),
            ["first-key-123", "second-key-456"]
        );
        let joined = "apiKeys: first-key-123, second-key-456,\n";
        assert_eq!(
            keys_of(joined).unwrap(),
            ["first-key-123", "second-key-456"]
        );
    }

    #[test]
    fn a_bad_file_is_named_and_its_values_are_not() {
        let secret = "do-not-print-me-42";
        for text in [
            format!("apiKeys: [\"{secret}\"\nbroken: ["),
            format!("apiKeys:\n  nested: {secret}\n"),
            format!("apiKeys:\n  - {{a: {secret}}}\n"),
            "apiServerHost: 127.0.0.1\n".to_owned(),
            "apiKeys: []\n".to_owned(),
            "apiKeys: \" , \"\n".to_owned(),
        ] {
            let failure = keys_of(&text).unwrap_err();
            assert_eq!(failure.code, 2, "{}", failure.message);
            assert!(!failure.message.contains(secret), "{}", failure.message);
        }
        let missing = cortex_keys("/nonexistent/.cortexrc").unwrap_err();
        assert!(missing.message.contains("/nonexistent/.cortexrc"));
    }

    #[test]
    fn ids_are_told_from_names() {
        assert!(uuid_like("0f8fad5b-d9cb-469f-a165-70867728950e"));
        assert!(!uuid_like("cortex-node-a"));
    }
}
