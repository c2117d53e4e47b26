//! `keyplanectl`: keyplane's management API from a terminal.
//!
//! Every management operation is a command (`keyplanectl keys rotate ID`),
//! its arguments and flags read from the OpenAPI document keyplane
//! publishes; answers are tables for people or the API's JSON and YAML for
//! scripts. It speaks only the public API, never the database.
//!
//! Exit codes: 0 done, 1 refused by keyplane (its problem `code` on
//! standard error), 2 a usage error, 3 keyplane cannot be reached.

mod client;
mod commands;
mod config;
mod import;
mod login;
mod output;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{Arg, ArgAction, ArgMatches, Command};
use serde_json::{Map, Value};

use crate::client::Failure;
use crate::commands::{COMMANDS, Field, Operation};
use crate::output::Format;

/// Commands that run an operation with part of its body already given.
const PRESETS: &[(&str, &str, &str, &str)] = &[
    ("keys", "disable", "update_key", r#"{"enabled": false}"#),
    ("keys", "enable", "update_key", r#"{"enabled": true}"#),
    (
        "instances",
        "suspend",
        "update_instance",
        r#"{"status": "suspended"}"#,
    ),
    (
        "instances",
        "resume",
        "update_instance",
        r#"{"status": "active"}"#,
    ),
];

/// One command: the operations it may run (by how many arguments it is
/// given), each with the body it starts from.
#[derive(Default)]
struct Verb {
    operations: Vec<Operation>,
    presets: BTreeMap<String, Map<String, Value>>,
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&Failure::usage(format!("cannot start: {err}"))),
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => fail(&failure),
    }
}

fn fail(failure: &Failure) -> ExitCode {
    if !failure.message.is_empty() {
        let _ = writeln!(std::io::stderr(), "keyplanectl: {}", failure.message);
    }
    ExitCode::from(failure.code)
}

/// The command line, and what each of its commands runs.
/// Every command, by group and verb (`("keys", "rotate")`; a group that is
/// itself a command has an empty verb).
type Verbs = BTreeMap<(String, String), Verb>;

fn cli() -> Result<(Command, Verbs), Failure> {
    let operations = commands::operations().map_err(|err| Failure::usage(format!("{err:#}")))?;
    let mut verbs = Verbs::new();
    for (group, verb, id) in COMMANDS {
        let operation = operations
            .get(*id)
            .ok_or_else(|| Failure::usage(format!("the API has no operation {id}")))?;
        verbs
            .entry(((*group).to_owned(), (*verb).to_owned()))
            .or_default()
            .operations
            .push(operation.clone());
    }
    for (group, verb, id, body) in PRESETS {
        let operation = operations
            .get(*id)
            .ok_or_else(|| Failure::usage(format!("the API has no operation {id}")))?;
        let preset: Map<String, Value> = serde_json::from_str(body).unwrap_or_default();
        let entry = verbs
            .entry(((*group).to_owned(), (*verb).to_owned()))
            .or_default();
        entry.operations.push(operation.clone());
        entry.presets.insert(operation.id.clone(), preset);
    }

    let mut root = Command::new("keyplanectl")
        .about("keyplane's management API from a terminal")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true)
        .arg(
            Arg::new("url")
                .long("url")
                .global(true)
                .help("keyplane's URL (else KEYPLANE_URL, else the profile's)"),
        )
        .arg(
            Arg::new("profile")
                .long("profile")
                .global(true)
                .help("a profile of ~/.config/keyplane/config.toml (else KEYPLANE_PROFILE, else the default)"),
        )
        .arg(
            Arg::new("output")
                .short('o')
                .long("output")
                .global(true)
                .value_parser(clap::builder::EnumValueParser::<Format>::new())
                .default_value("table")
                .help("table, json or yaml"),
        )
        .arg(
            Arg::new("field")
                .long("field")
                .global(true)
                .help("print only this field's value (of each item, for a list)"),
        )
        .arg(
            Arg::new("yes")
                .long("yes")
                .short('y')
                .global(true)
                .action(ArgAction::SetTrue)
                .help("do it without asking (required for destructive commands off a terminal)"),
        )
        .subcommand(login::command())
        .subcommand(import::command())
        .subcommand(
            Command::new("completion")
                .about("print a shell completion script")
                .arg(
                    Arg::new("shell")
                        .required(true)
                        .value_parser(clap::builder::EnumValueParser::<clap_complete::Shell>::new()),
                ),
        );
    let mut groups: BTreeMap<String, Command> = BTreeMap::new();
    for ((group, verb), entry) in &verbs {
        let command = verb_command(if verb.is_empty() { group } else { verb }, entry);
        if verb.is_empty() {
            root = root.subcommand(command);
        } else {
            let parent = groups.remove(group).unwrap_or_else(|| {
                Command::new(group.clone())
                    .about(format!("{group}: {}", group_help(group)))
                    .subcommand_required(true)
            });
            groups.insert(group.clone(), parent.subcommand(command));
        }
    }
    for (_, group) in groups {
        root = root.subcommand(group);
    }
    Ok((root, verbs))
}

fn group_help(group: &str) -> &'static str {
    match group {
        "instances" => "the registry of client instances",
        "keys" => "instance API keys",
        "roles" => "named scope sets",
        "scopes" => "the scope catalog (built in and operators' own)",
        "nodes" => "nodes that introspect keys",
        "admin-keys" => "operators' keys",
        "signing-keys" => "the keys that sign introspection answers",
        "enrollment-tokens" => "tokens instances enroll with",
        "webhooks" => "event deliveries",
        "audit" => "the hash-chained audit log",
        "sessions" => "people's sessions",
        "leaks" => "reports of leaked keys",
        "usage" => "what keys used, by model and hour or day",
        _ => "",
    }
}

/// keyplanectl's own flags, which no field's flag may take.
const GLOBAL_FLAGS: &[&str] = &["url", "profile", "output", "field", "yes", "json", "help"];

/// A flag's name for an API field (`grace_seconds` is `--grace-seconds`);
/// a webhook's `url` is `--endpoint` (`--url` is keyplane's own).
fn flag(name: &str) -> String {
    match name {
        "url" => "endpoint".to_owned(),
        name if GLOBAL_FLAGS.contains(&name) => format!("{}-value", name.replace('_', "-")),
        name => name.replace('_', "-"),
    }
}

fn verb_command(name: &str, entry: &Verb) -> Command {
    let first = &entry.operations[0];
    let mut command = Command::new(name.to_owned()).about(first.summary.clone());
    let most = entry
        .operations
        .iter()
        .map(|o| o.arguments.len())
        .max()
        .unwrap_or(0);
    let fewest = entry
        .operations
        .iter()
        .map(|o| o.arguments.len())
        .min()
        .unwrap_or(0);
    let names = entry
        .operations
        .iter()
        .find(|o| o.arguments.len() == most)
        .map(|o| o.arguments.clone())
        .unwrap_or_default();
    for (i, argument) in names.iter().enumerate() {
        command = command.arg(
            Arg::new(format!("arg:{argument}"))
                .value_name(argument.to_uppercase())
                .required(i < fewest)
                .help(format!("the {argument}")),
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    let fields = entry
        .operations
        .iter()
        .flat_map(|o| o.query.iter().chain(o.body.iter()))
        .filter(|f| {
            !entry
                .presets
                .values()
                .any(|preset| preset.contains_key(&f.name))
        });
    for field in fields {
        if !seen.insert(field.name.clone()) || field.name == "cursor" {
            continue;
        }
        command = command.arg(field_arg(field));
    }
    command.arg(
        Arg::new("json")
            .long("json")
            .value_name("BODY")
            .help("the request body as JSON, @FILE, or - for standard input"),
    )
}

fn field_arg(field: &Field) -> Arg {
    let mut arg = Arg::new(format!("field:{}", field.name))
        .long(flag(&field.name))
        .help(field.help.clone());
    if field.name == "dry_run" {
        return arg
            .action(ArgAction::SetTrue)
            .help("answer what would change, and change nothing");
    }
    if let Some(short) = field.name.strip_suffix("_seconds") {
        arg = arg.visible_alias(flag(short)).value_name("DURATION");
    }
    match field.kind.as_str() {
        "array" => arg.value_name("A,B"),
        "object" => arg.value_name("K=V,K=V"),
        "counts" => arg.value_name("K=N,K=N"),
        "boolean" => arg.value_name("true|false"),
        _ if field.name.ends_with("_seconds") => arg,
        _ => arg.value_name(field.name.to_uppercase()),
    }
}

async fn run() -> Result<(), Failure> {
    let (mut root, verbs) = cli()?;
    let matches = match root.clone().try_get_matches() {
        Ok(matches) => matches,
        Err(err) if !err.use_stderr() => {
            // --help and --version: the whole text, on standard output.
            let _ = err.print();
            return Err(Failure::silent(0));
        }
        Err(err) => {
            // A usage error is one line, as every other failure is.
            let text = err.render().to_string();
            let first = text.lines().next().unwrap_or_default();
            let first = first
                .strip_prefix("error: ")
                .unwrap_or(first)
                .trim_end_matches(':');
            let more: Vec<&str> = text
                .lines()
                .skip(1)
                .map(str::trim)
                .take_while(|l| !l.is_empty())
                .collect();
            let message = match more.is_empty() {
                true => format!("{first} (see --help)"),
                false => format!("{first}: {} (see --help)", more.join(", ")),
            };
            return Err(Failure::usage(message));
        }
    };
    let format = matches
        .get_one::<Format>("output")
        .copied()
        .unwrap_or(Format::Table);
    let field = matches.get_one::<String>("field").cloned();
    let url = matches.get_one::<String>("url").cloned();
    let profile = matches.get_one::<String>("profile").cloned();
    let yes = matches.get_flag("yes");
    let (name, sub) = matches
        .subcommand()
        .ok_or_else(|| Failure::usage("a command is required".to_owned()))?;
    match name {
        "completion" => {
            let shell = sub
                .get_one::<clap_complete::Shell>("shell")
                .copied()
                .ok_or_else(|| Failure::usage("which shell?".to_owned()))?;
            clap_complete::generate(shell, &mut root, "keyplanectl", &mut std::io::stdout());
            return Ok(());
        }
        "login" => return login::run(sub, url, profile).await,
        _ => {}
    }
    if name == "import" {
        let target = config::target(url, profile.as_deref())
            .map_err(|e| Failure::usage(format!("{e:#}")))?;
        let answer = import::run(sub, &target).await?;
        return print(&answer, format, field.as_deref());
    }
    let (verb_name, verb_matches) = match sub.subcommand() {
        Some((verb, verb_matches)) => (verb.to_owned(), verb_matches),
        None => (String::new(), sub),
    };
    let entry = verbs
        .get(&(name.to_owned(), verb_name.clone()))
        .ok_or_else(|| Failure::usage(format!("no command {name} {verb_name}")))?;
    let target =
        config::target(url, profile.as_deref()).map_err(|e| Failure::usage(format!("{e:#}")))?;
    let call = prepare(entry, verb_matches)?;
    if call.operation.destructive() && !call.dry_run && !yes {
        confirm(&call)?;
    }
    let answer = client::send(&target, &call).await?;
    print(&answer, format, field.as_deref())
}

/// Prints `answer` on standard output. A list's warnings, which its table
/// has no room for, go to standard error, where a person sees them and a
/// redirect does not take them.
fn print(answer: &Value, format: Format, field: Option<&str>) -> Result<(), Failure> {
    let text = output::render(answer, format, field);
    let mut out = std::io::stdout();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    if format == Format::Table && field.is_none() && answer["items"].is_array() {
        for warning in answer["warnings"].as_array().into_iter().flatten() {
            let _ = writeln!(
                std::io::stderr(),
                "keyplanectl: warning: {}",
                warning.as_str().unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// One request, ready to send.
pub struct Call {
    /// The operation.
    pub operation: Operation,
    /// Its path, arguments filled in.
    pub path: String,
    /// Its query.
    pub query: Vec<(String, String)>,
    /// Its body, if it takes one.
    pub body: Option<Value>,
    /// Whether it only plans.
    pub dry_run: bool,
}

fn prepare(entry: &Verb, matches: &ArgMatches) -> Result<Call, Failure> {
    let arity = entry
        .operations
        .iter()
        .flat_map(|o| o.arguments.iter())
        .filter(|a| matches.get_one::<String>(&format!("arg:{a}")).is_some())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let operation = entry
        .operations
        .iter()
        .find(|o| o.arguments.len() == arity)
        .ok_or_else(|| Failure::usage("wrong number of arguments".to_owned()))?
        .clone();
    let mut path = operation.path.clone();
    for argument in &operation.arguments {
        let value = matches
            .get_one::<String>(&format!("arg:{argument}"))
            .ok_or_else(|| Failure::usage(format!("{argument} is required")))?;
        let encoded: String = value
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        path = path.replace(&format!("{{{argument}}}"), &encoded);
    }
    let mut query = Vec::new();
    let mut dry_run = false;
    for field in &operation.query {
        let id = format!("field:{}", field.name);
        if field.name == "dry_run" {
            if matches.try_get_one::<bool>(&id).ok().flatten() == Some(&true) {
                dry_run = true;
                query.push(("dry_run".to_owned(), "true".to_owned()));
            }
            continue;
        }
        if let Ok(Some(value)) = matches.try_get_one::<String>(&id) {
            query.push((field.name.clone(), value.clone()));
        }
    }
    let mut body = entry
        .presets
        .get(&operation.id)
        .cloned()
        .unwrap_or_default();
    if let Ok(Some(json)) = matches.try_get_one::<String>("json") {
        let text = read_json_argument(json)?;
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(given)) => body.extend(given),
            _ => return Err(Failure::usage("--json expects a JSON object".to_owned())),
        }
    }
    for field in &operation.body {
        if let Ok(Some(value)) = matches.try_get_one::<String>(&format!("field:{}", field.name)) {
            body.insert(field.name.clone(), field_value(field, value)?);
        }
    }
    let takes_body = !operation.body.is_empty() || operation.method != reqwest::Method::GET;
    let body = (takes_body
        && operation.method != reqwest::Method::GET
        && operation.method != reqwest::Method::DELETE)
        .then_some(Value::Object(body));
    Ok(Call {
        operation,
        path,
        query,
        body,
        dry_run,
    })
}

fn read_json_argument(argument: &str) -> Result<String, Failure> {
    if argument == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| Failure::usage(format!("reading standard input: {e}")))?;
        return Ok(text);
    }
    match argument.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Failure::usage(format!("reading {path}: {e}"))),
        None => Ok(argument.to_owned()),
    }
}

/// A flag's text as the field's JSON value.
fn field_value(field: &Field, text: &str) -> Result<Value, Failure> {
    let bad = |what: &str| Failure::usage(format!("--{}: {what}, got {text:?}", flag(&field.name)));
    Ok(match field.kind.as_str() {
        "integer" if field.name.ends_with("_seconds") || field.name == "expires_in" => {
            let seconds = keyplane_domain::parse_duration(text)
                .map_err(|_| bad("expected seconds or a duration such as 1h or 90d"))?
                .as_secs();
            Value::from(seconds)
        }
        "integer" => Value::from(
            text.parse::<i64>()
                .map_err(|_| bad("expected a whole number"))?,
        ),
        "boolean" => Value::from(
            text.parse::<bool>()
                .map_err(|_| bad("expected true or false"))?,
        ),
        "array" => Value::from(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        ),
        "counts" => {
            let mut map = Map::new();
            for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (key, value) = pair
                    .split_once('=')
                    .ok_or_else(|| bad("expected name=number pairs, e.g. rpm=60,tpm=100000"))?;
                let value = match value.trim() {
                    "" | "none" | "null" => Value::Null,
                    number => Value::from(
                        number
                            .parse::<i64>()
                            .map_err(|_| bad("expected whole numbers, e.g. rpm=60"))?,
                    ),
                };
                map.insert(key.trim().to_owned(), value);
            }
            Value::Object(map)
        }
        "object" => {
            let mut map = Map::new();
            for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (key, value) = pair
                    .split_once('=')
                    .ok_or_else(|| bad("expected key=value pairs"))?;
                map.insert(key.trim().to_owned(), Value::from(value.trim()));
            }
            Value::Object(map)
        }
        _ => Value::from(text),
    })
}

/// Asks before a destructive command, on a terminal; elsewhere `--yes` is required.
fn confirm(call: &Call) -> Result<(), Failure> {
    let what = format!("{} {}", call.operation.method, call.path);
    if !std::io::stdin().is_terminal() {
        return Err(Failure::usage(format!(
            "{what} changes what cannot simply be undone: add --yes (or --dry-run first)"
        )));
    }
    let mut err = std::io::stderr();
    let _ = write!(err, "{what}: {}. Go ahead? [y/N] ", call.operation.summary);
    let _ = err.flush();
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Failure::usage("not done".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_whole_command_line_is_well_formed() {
        let (command, verbs) = cli().unwrap();
        command.debug_assert();
        assert!(verbs.contains_key(&("keys".to_owned(), "rotate".to_owned())));
    }

    #[test]
    fn flags_read_durations_lists_and_labels() {
        let field = |name: &str, kind: &str| Field {
            name: name.to_owned(),
            help: String::new(),
            kind: kind.to_owned(),
            required: false,
        };
        let grace = field_value(&field("grace_seconds", "integer"), "1h").unwrap();
        assert_eq!(grace, serde_json::json!(3600));
        let scopes = field_value(&field("scopes", "array"), "a, b").unwrap();
        assert_eq!(scopes, serde_json::json!(["a", "b"]));
        let limits = field_value(&field("limits", "counts"), "rpm=60, tpm=none").unwrap();
        assert_eq!(limits, serde_json::json!({"rpm": 60, "tpm": null}));
        assert!(field_value(&field("limits", "counts"), "rpm=lots").is_err());
        let labels = field_value(&field("labels", "object"), "env=prod,team=ml").unwrap();
        assert_eq!(labels, serde_json::json!({"env": "prod", "team": "ml"}));
        assert!(field_value(&field("labels", "object"), "env").is_err());
        assert!(field_value(&field("limit", "integer"), "many").is_err());
        assert_eq!(flag("url"), "endpoint");
        assert_eq!(flag("grace_seconds"), "grace-seconds");
    }
}
