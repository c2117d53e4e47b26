//! Which command runs which operation of keyplane's API, read from the
//! OpenAPI document keyplane publishes (embedded at build time): a
//! command's arguments are the operation's path parameters, its flags are
//! the operation's query parameters and its request body's fields.

use std::collections::BTreeMap;

use anyhow::{Context, anyhow};
use serde_json::Value;

/// The API keyplanectl speaks, as keyplane publishes it.
pub const OPENAPI: &str = include_str!("../../../openapi/openapi.json");

/// `(group, verb, operation id)`: every management operation's command.
/// Two operations may share a command when they take a different number
/// of arguments (`keys rotate ID` and `keys rotate --selector S`).
pub const COMMANDS: &[(&str, &str, &str)] = &[
    ("instances", "list", "list_instances"),
    ("instances", "get", "get_instance"),
    ("instances", "create", "create_instance"),
    ("instances", "update", "update_instance"),
    ("instances", "delete", "decommission_instance"),
    ("instances", "suspend", "suspend_instances"),
    ("keys", "list", "list_keys"),
    ("keys", "get", "get_key"),
    ("keys", "create", "create_key"),
    ("keys", "update", "update_key"),
    ("keys", "rotate", "rotate_key"),
    ("keys", "rotate", "rotate_keys"),
    ("keys", "revoke", "revoke_key"),
    ("keys", "revoke", "revoke_keys"),
    ("roles", "list", "list_roles"),
    ("roles", "put", "put_role"),
    ("roles", "delete", "delete_role"),
    ("scopes", "list", "list_scopes"),
    ("scopes", "put", "put_scope"),
    ("scopes", "delete", "delete_scope"),
    ("nodes", "list", "list_nodes"),
    ("nodes", "get", "get_node"),
    ("nodes", "create", "create_node"),
    ("nodes", "update", "update_node"),
    ("nodes", "rotate", "rotate_node"),
    ("nodes", "delete", "retire_node"),
    ("admin-keys", "list", "list_admin_keys"),
    ("admin-keys", "create", "create_admin_key"),
    ("admin-keys", "rotate", "rotate_admin_key"),
    ("admin-keys", "revoke", "revoke_admin_key"),
    ("admin-keys", "self", "get_own_admin_key"),
    ("admin-keys", "rotate-self", "rotate_own_admin_key"),
    ("signing-keys", "rotate", "rotate_signing_key"),
    ("enrollment-tokens", "list", "list_enrollment_tokens"),
    ("enrollment-tokens", "create", "create_enrollment_token"),
    ("enrollment-tokens", "revoke", "revoke_enrollment_token"),
    ("webhooks", "list", "list_webhooks"),
    ("webhooks", "create", "create_webhook"),
    ("webhooks", "delete", "delete_webhook"),
    ("webhooks", "rotate-secret", "rotate_webhook_secret"),
    ("webhooks", "deliveries", "list_webhook_deliveries"),
    ("audit", "list", "list_audit_entries"),
    ("audit", "verify", "verify_audit_log"),
    ("audit", "export", "export_audit_log"),
    ("audit", "checkpoints", "list_audit_checkpoints"),
    ("audit", "checkpoint", "create_audit_checkpoint"),
    ("sessions", "list", "list_sessions"),
    ("sessions", "revoke", "revoke_session"),
    ("sessions", "revoke-all", "revoke_all_sessions"),
    ("whoami", "", "who_am_i"),
    ("logout", "", "sign_out"),
    ("leaks", "report", "report_leaks"),
    ("health", "", "get_health"),
    ("usage", "", "get_usage"),
];

/// Operations that are not for operators at a terminal, and why: each is
/// another credential's, or a browser's, or `keyplanectl login`'s own.
#[cfg(test)]
pub const NOT_COMMANDS: &[(&str, &str)] = &[
    ("get_jwks", "public keys for nodes"),
    ("get_metrics", "for Prometheus"),
    ("get_readiness", "for load balancers"),
    ("authorize_device", "keyplanectl login"),
    ("device_token", "keyplanectl login"),
    ("device_verification_page", "a browser's page"),
    ("approve_device", "a browser's form"),
    ("sign_in", "a browser's redirect"),
    ("sign_in_callback", "a browser's redirect"),
    ("check_access", "nodes' forward auth"),
    ("check_access_post", "nodes' forward auth"),
    ("check_access_envoy", "nodes' forward auth"),
    ("introspect", "nodes' key checks"),
    (
        "import_legacy_keys",
        "keyplanectl import cortex: keys read from a file, never from the command line",
    ),
    ("stream_revocations", "nodes' revocation stream"),
    ("node_heartbeat", "a node's own key"),
    ("report_usage", "a node's own key"),
    ("lease_budget", "a node's own key"),
    ("get_node_self", "a node's own key"),
    ("rotate_node_self", "a node's own key"),
    ("enroll", "an instance's enrollment token"),
    ("get_self", "an instance's own key"),
    ("rotate_self", "an instance's own key"),
];

/// One field a command takes as `--flag`.
#[derive(Debug, Clone)]
pub struct Field {
    /// Its name in the API (`grace_seconds`).
    pub name: String,
    /// What the API says of it.
    pub help: String,
    /// Its JSON type (`string`, `integer`, `boolean`, `array`, `object`).
    pub kind: String,
    /// Whether the API requires it.
    pub required: bool,
}

/// One operation of the API.
#[derive(Debug, Clone)]
pub struct Operation {
    /// Its id (`rotate_key`).
    pub id: String,
    /// GET, POST, ...
    pub method: reqwest::Method,
    /// Its path template (`/v1/keys/{id}/rotate`).
    pub path: String,
    /// What it does.
    pub summary: String,
    /// Its path parameters, in order.
    pub arguments: Vec<String>,
    /// Its query parameters.
    pub query: Vec<Field>,
    /// Its request body's fields.
    pub body: Vec<Field>,
    /// Whether its body is a form (else JSON).
    pub form: bool,
}

impl Operation {
    /// Whether it changes something that cannot simply be undone.
    pub fn destructive(&self) -> bool {
        self.method == reqwest::Method::DELETE
            || ["revoke", "rotate", "suspend", "decommission", "retire"]
                .iter()
                .any(|verb| self.id.starts_with(verb))
            || self.id == "revoke_all_sessions"
    }
}

/// Every operation of the document, by id.
pub fn operations() -> anyhow::Result<BTreeMap<String, Operation>> {
    let spec: Value = serde_json::from_str(OPENAPI).context("the embedded OpenAPI document")?;
    let mut found = BTreeMap::new();
    let paths = spec["paths"]
        .as_object()
        .ok_or_else(|| anyhow!("the OpenAPI document has no paths"))?;
    for (path, item) in paths {
        let Some(item) = item.as_object() else {
            continue;
        };
        for (method, operation) in item {
            let Some(id) = operation["operationId"].as_str() else {
                continue;
            };
            let method = method
                .to_uppercase()
                .parse()
                .unwrap_or(reqwest::Method::GET);
            let mut arguments = Vec::new();
            let mut query = Vec::new();
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let name = parameter["name"].as_str().unwrap_or_default().to_owned();
                match parameter["in"].as_str() {
                    Some("path") => arguments.push(name),
                    Some("query") => query.push(Field {
                        help: first_line(parameter["description"].as_str().unwrap_or_default()),
                        kind: kind_of(&spec, &parameter["schema"]),
                        required: parameter["required"].as_bool().unwrap_or(false),
                        name,
                    }),
                    _ => {}
                }
            }
            let content = &operation["requestBody"]["content"];
            let form = content.get("application/x-www-form-urlencoded").is_some();
            let schema = content
                .as_object()
                .and_then(|c| c.values().next())
                .map(|media| resolve(&spec, &media["schema"]).clone())
                .unwrap_or(Value::Null);
            let required: Vec<&str> = schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let body = schema["properties"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, property)| Field {
                    name: name.clone(),
                    help: first_line(property["description"].as_str().unwrap_or_default()),
                    kind: kind_of(&spec, property),
                    required: required.contains(&name.as_str()),
                })
                .collect();
            let summary = operation["summary"]
                .as_str()
                .or_else(|| operation["description"].as_str())
                .map(first_line)
                .unwrap_or_default();
            found.insert(
                id.to_owned(),
                Operation {
                    id: id.to_owned(),
                    method,
                    path: path.clone(),
                    summary,
                    arguments,
                    query,
                    body,
                    form,
                },
            );
        }
    }
    Ok(found)
}

/// Whether every property of an object schema is a whole number.
fn counts(spec: &Value, schema: &Value) -> bool {
    schema["properties"].as_object().is_some_and(|properties| {
        !properties.is_empty()
            && properties
                .values()
                .all(|property| kind_of(spec, property) == "integer")
    })
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim().to_owned()
}

/// What `$ref` points at, or the schema itself.
fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.rsplit('/').next().unwrap_or_default();
            &spec["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// A schema's JSON type, through `$ref`, `oneOf` and nullable type lists;
/// `counts` for an object of whole numbers (limits), whose flag reads
/// `rpm=60,tpm=1000`.
fn kind_of(spec: &Value, schema: &Value) -> String {
    let schema = resolve(spec, schema);
    match &schema["type"] {
        Value::String(kind) if kind == "object" && counts(spec, schema) => "counts".to_owned(),
        Value::String(kind) => kind.clone(),
        Value::Array(kinds) => kinds
            .iter()
            .filter_map(Value::as_str)
            .find(|k| *k != "null")
            .unwrap_or("string")
            .to_owned(),
        _ => schema["oneOf"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| kind_of(spec, s))
            .find(|k| k != "null")
            .unwrap_or_else(|| {
                if schema.get("enum").is_some() {
                    "string".to_owned()
                } else {
                    "object".to_owned()
                }
            }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_operation_of_the_api_has_a_command_or_a_reason_not_to() {
        let operations = operations().unwrap();
        let commanded: BTreeSet<&str> = COMMANDS.iter().map(|(_, _, id)| *id).collect();
        let excused: BTreeSet<&str> = NOT_COMMANDS.iter().map(|(id, _)| *id).collect();
        for id in operations.keys() {
            assert!(
                commanded.contains(id.as_str()) || excused.contains(id.as_str()),
                "operation {id} has no keyplanectl command"
            );
        }
        for id in commanded.union(&excused) {
            assert!(operations.contains_key(*id), "{id} is not in the API");
        }
        assert!(commanded.is_disjoint(&excused));
    }

    #[test]
    fn a_shared_command_tells_its_operations_apart_by_their_arguments() {
        let operations = operations().unwrap();
        let mut by_command: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
        for (group, verb, id) in COMMANDS {
            by_command
                .entry((group, verb))
                .or_default()
                .push(operations[*id].arguments.len());
        }
        for ((group, verb), arities) in by_command {
            let distinct: BTreeSet<_> = arities.iter().collect();
            assert_eq!(distinct.len(), arities.len(), "{group} {verb}");
        }
    }
}
