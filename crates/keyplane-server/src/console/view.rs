//! What each console page shows, as template contexts, and the few ways
//! values are written for people (times, lists).

use askama::Template;
use chrono::{DateTime, Utc};

use crate::audit_trail::AuditEntry;
use crate::console::Frame;
use crate::console::limits::{LimitsView, UsageChart};
use crate::ops::audit::AuditVerification;
use crate::ops::health::Warning;
use crate::ops::instances::InstanceResponse;
use crate::ops::keys::{CreatedKeyResponse, KeyResponse};
use crate::ops::nodes::NodeResponse;
use crate::ops::people::SessionResponse;

/// `text` for a URL's query.
pub fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A moment for people: the date and time in UTC.
pub fn at(moment: &DateTime<Utc>) -> String {
    moment.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// How far `moment` is from `now`, in the largest whole unit: `in 3 days`,
/// `5 minutes ago`.
pub fn relative(moment: &DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (*moment - now).num_seconds();
    let (amount, unit) = match seconds.unsigned_abs() {
        s if s < 60 => return "just now".to_owned(),
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86_400 => (s / 3600, "hour"),
        s => (s / 86_400, "day"),
    };
    let plural = if amount == 1 { "" } else { "s" };
    match seconds > 0 {
        true => format!("in {amount} {unit}{plural}"),
        false => format!("{amount} {unit}{plural} ago"),
    }
}

/// A list as one cell, or a dash.
pub fn list(items: &[String]) -> String {
    match items.is_empty() {
        true => "—".to_owned(),
        false => items.join(", "),
    }
}

/// Labels as people write them: `env=prod, team=ml`.
pub fn labels(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Loads the page being looked at once more (see `console::to_sign_in`).
#[derive(Template)]
#[template(path = "console/reload.html")]
pub struct Reload {
    pub to: String,
}

/// Something went wrong, or was refused.
#[derive(Template)]
#[template(path = "console/error.html")]
pub struct ErrorPage {
    pub status: u16,
    pub message: String,
}

/// Signing in.
#[derive(Template)]
#[template(path = "console/sign_in.html")]
pub struct SignIn {
    /// Where the identity provider's sign-in starts, when there is one.
    pub provider: Option<String>,
    /// Whether an admin key may be typed in (dev).
    pub keys: bool,
    /// Where to go afterwards.
    pub return_to: String,
    /// Why the last attempt failed.
    pub problem: Option<String>,
}

/// A node as the overview lists it.
pub struct NodeRow {
    pub name: String,
    pub mode: String,
    pub version: String,
    pub seen: String,
    pub weaker: bool,
}

impl NodeRow {
    pub fn new(node: &NodeResponse, now: DateTime<Utc>) -> NodeRow {
        NodeRow {
            name: node.name.clone(),
            mode: node
                .reported
                .as_ref()
                .map_or("—".to_owned(), |r| r.mode.to_string()),
            version: node
                .reported
                .as_ref()
                .map_or("—".to_owned(), |r| r.version.clone()),
            seen: node
                .last_seen_at
                .as_ref()
                .map_or("never".to_owned(), |at| relative(at, now)),
            weaker: node.mode_weaker,
        }
    }
}

/// An audit entry as a table row.
pub struct AuditRow {
    pub seq: String,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub details: String,
}

impl From<&AuditEntry> for AuditRow {
    fn from(entry: &AuditEntry) -> AuditRow {
        AuditRow {
            seq: entry.seq.map_or(String::new(), |s| s.to_string()),
            at: at(&entry.at),
            actor: entry.actor.clone(),
            action: entry.action.clone(),
            target: format!(
                "{} {}",
                entry.target_type,
                entry.target_id.as_deref().unwrap_or_default()
            ),
            outcome: entry.outcome.clone(),
            details: entry.details.to_string(),
        }
    }
}

/// The overview: keyplane's warnings, the audit chain, the nodes, recent changes.
#[derive(Template)]
#[template(path = "console/overview.html")]
pub struct Overview {
    pub frame: Frame,
    pub warnings: Vec<Warning>,
    pub verification: Option<AuditVerification>,
    pub nodes: Option<Vec<NodeRow>>,
    /// The newest entries, and the newest denials (probes, refused sign-ins).
    pub recent: Option<(Vec<AuditRow>, Vec<AuditRow>)>,
}

/// An instance as a row of the list.
pub struct InstanceRow {
    pub id: String,
    pub name: String,
    pub status: String,
    pub labels: String,
    pub created: String,
}

impl From<&InstanceResponse> for InstanceRow {
    fn from(instance: &InstanceResponse) -> InstanceRow {
        InstanceRow {
            id: instance.id.to_string(),
            name: instance.name.clone(),
            status: instance.status.as_str().to_owned(),
            labels: labels(&instance.labels),
            created: at(&instance.created_at),
        }
    }
}

/// The instances, filtered.
#[derive(Template)]
#[template(path = "console/instances.html")]
pub struct Instances {
    pub frame: Frame,
    pub name: String,
    pub selector: String,
    pub status: String,
    pub rows: Vec<InstanceRow>,
    pub more: bool,
    /// The scope catalog, when the operator may register instances.
    pub register: Option<Vec<String>>,
}

/// A key as a row of its instance's page.
pub struct KeyRow {
    pub id: String,
    pub name: String,
    pub masked: String,
    pub status: String,
    pub live: bool,
    pub enabled: bool,
    pub legacy: bool,
    pub scopes: String,
    pub audience: String,
    pub last_used: String,
    pub expires: String,
    pub rotation_due: String,
    pub rotation_overdue: bool,
}

impl KeyRow {
    pub fn new(key: &KeyResponse, now: DateTime<Utc>) -> KeyRow {
        let status = key.status.as_str().to_owned();
        let live = matches!(status.as_str(), "active" | "disabled" | "rotating");
        KeyRow {
            id: key.id.to_string(),
            name: key.name.clone(),
            masked: key.masked_key.clone(),
            live,
            enabled: key.enabled,
            legacy: key.legacy,
            scopes: list(&key.effective_scopes),
            audience: match key.audience.is_empty() {
                true => "any node".to_owned(),
                false => key.audience.join(", "),
            },
            last_used: key
                .last_used_at
                .as_ref()
                .map_or("never".to_owned(), |at| relative(at, now)),
            expires: format!(
                "{} ({})",
                at(&key.expires_at),
                relative(&key.expires_at, now)
            ),
            rotation_due: match live {
                true => relative(&key.rotation_due_at, now),
                false => "—".to_owned(),
            },
            rotation_overdue: live && key.rotation_due_at <= now,
            status,
        }
    }
}

/// One instance: its details, its keys, and what may be done to them.
#[derive(Template)]
#[template(path = "console/instance.html")]
pub struct Instance {
    pub frame: Frame,
    pub id: String,
    pub name: String,
    pub description: String,
    pub status: String,
    pub labels: String,
    pub ceiling: Vec<String>,
    pub cidrs: String,
    pub keys: Vec<KeyRow>,
    pub may_write_keys: bool,
    pub may_write_instance: bool,
    pub limits: LimitsView,
    pub limits_note: String,
    pub limits_action: String,
    pub may_limit: bool,
    pub usage: Option<UsageChart>,
}

/// A credential just made: its secret, this once.
#[derive(Template)]
#[template(path = "console/secret.html")]
pub struct Secret {
    pub frame: Frame,
    pub title: String,
    pub name: String,
    pub secret: String,
    /// What else to know, as label and value.
    pub facts: Vec<(String, String)>,
    pub warnings: Vec<String>,
    /// Where the page sends people afterwards (and what a reload shows).
    pub done: String,
}

impl Secret {
    /// An instance key just issued or rotated.
    pub fn key(frame: Frame, title: &str, created: CreatedKeyResponse) -> Secret {
        let key = created.key;
        Secret {
            frame,
            title: title.to_owned(),
            name: key.name,
            facts: vec![
                ("Shown from now on as".to_owned(), key.masked_key),
                ("Scopes".to_owned(), list(&key.effective_scopes)),
                ("Expires".to_owned(), at(&key.expires_at)),
            ],
            warnings: created.warnings,
            done: format!("/console/instances/{}", key.instance_id),
            secret: created.secret,
        }
    }
}

/// One cell of a table: text, maybe a link, maybe a style.
pub struct Cell {
    pub text: String,
    pub href: Option<String>,
    pub class: &'static str,
}

impl Cell {
    /// Plain text.
    pub fn text(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            href: None,
            class: "",
        }
    }

    /// A link.
    pub fn link(text: impl Into<String>, href: String) -> Cell {
        Cell {
            href: Some(href),
            ..Cell::text(text)
        }
    }

    /// A status word, styled as such.
    pub fn status(text: &str) -> Cell {
        let class = match text {
            "active" | "enabled" | "delivered" | "live" => "status active",
            "revoked" | "expired" | "retired" | "failed" | "spent" | "disabled" => "status revoked",
            _ => "status rotating",
        };
        Cell {
            class,
            ..Cell::text(text)
        }
    }
}

/// A link from a row to one of its actions (a confirmation page, for
/// what cannot be undone).
pub struct RowAction {
    pub label: &'static str,
    pub href: String,
    pub danger: bool,
}

/// A row of a table, named for the labels of its actions.
pub struct Row {
    pub name: String,
    pub cells: Vec<Cell>,
    pub actions: Vec<RowAction>,
}

/// One field of a form.
pub struct Field {
    pub name: &'static str,
    pub label: &'static str,
    /// `text`, `url`, `number`, `select` or `checks`.
    pub kind: &'static str,
    /// For `select` and `checks`: value and label.
    pub options: Vec<(String, String)>,
    pub required: bool,
    pub placeholder: &'static str,
}

impl Field {
    /// A text input.
    pub fn input(name: &'static str, label: &'static str, kind: &'static str) -> Field {
        Field {
            name,
            label,
            kind,
            options: Vec::new(),
            required: false,
            placeholder: "",
        }
    }

    /// A required input.
    pub fn required(self) -> Field {
        Field {
            required: true,
            ..self
        }
    }

    /// With a placeholder.
    pub fn hint(self, placeholder: &'static str) -> Field {
        Field {
            placeholder,
            ..self
        }
    }

    /// A choice of one.
    pub fn select(name: &'static str, label: &'static str, options: &[(&str, &str)]) -> Field {
        Field {
            kind: "select",
            options: options
                .iter()
                .map(|(v, l)| ((*v).to_owned(), (*l).to_owned()))
                .collect(),
            ..Field::input(name, label, "select")
        }
    }

    /// Checkboxes, one per option.
    pub fn checks<S: AsRef<str>>(name: &'static str, label: &'static str, options: &[S]) -> Field {
        Field {
            kind: "checks",
            options: options
                .iter()
                .map(|o| (o.as_ref().to_owned(), o.as_ref().to_owned()))
                .collect(),
            ..Field::input(name, label, "checks")
        }
    }
}

/// A form that makes something.
pub struct FormSpec {
    pub title: &'static str,
    pub action: String,
    pub button: &'static str,
    pub fields: Vec<Field>,
}

/// A section of the console: a table of what there is, and a form to add
/// to it when the operator may.
#[derive(Template)]
#[template(path = "console/table.html")]
pub struct Table {
    pub frame: Frame,
    pub title: String,
    pub intro: String,
    pub empty: &'static str,
    pub columns: Vec<&'static str>,
    pub rows: Vec<Row>,
    pub form: Option<FormSpec>,
}

impl Table {
    /// Whether any row has an action (the table then has their column).
    pub fn actions(&self) -> bool {
        self.rows.iter().any(|row| !row.actions.is_empty())
    }
}

/// A role: its scopes to edit, and what a change would do.
#[derive(Template)]
#[template(path = "console/role.html")]
pub struct Role {
    pub frame: Frame,
    pub name: String,
    pub description: String,
    /// Every scope of the catalog, and whether the role (or the form) has it.
    pub scopes: Vec<(String, bool)>,
    /// After a preview: the keys that would gain or lose scopes.
    pub plan: Option<Vec<(String, String, String)>>,
    pub nodes: usize,
    pub may_write: bool,
}

/// Asks before a change that cannot be undone.
#[derive(Template)]
#[template(path = "console/confirm.html")]
pub struct Confirm {
    pub frame: Frame,
    pub title: String,
    pub message: String,
    pub action: String,
    pub button: String,
    pub back: String,
    /// `reason` (revoke) or `grace` (rotate): the field the form adds.
    pub field: &'static str,
    /// Fields the form carries as they are (the keys of a selection).
    pub hidden: Vec<(String, String)>,
}

/// One key: everything about it, and its name to change.
#[derive(Template)]
#[template(path = "console/key.html")]
pub struct Key {
    pub frame: Frame,
    pub key: KeyRow,
    pub instance_id: String,
    pub facts: Vec<(String, String)>,
    pub may_write: bool,
    pub limits: LimitsView,
    pub limits_note: String,
    pub limits_action: String,
    pub may_limit: bool,
    pub usage: Option<UsageChart>,
}

/// The audit log.
#[derive(Template)]
#[template(path = "console/audit.html")]
pub struct Audit {
    pub frame: Frame,
    pub actor: String,
    pub action: String,
    pub outcome: String,
    pub verification: AuditVerification,
    pub recent: Vec<AuditRow>,
}

/// A session as a row.
pub struct SessionRow {
    pub who: String,
    pub kind: String,
    pub role: String,
    pub signed_in: String,
    pub seen: String,
    pub current: bool,
}

impl SessionRow {
    pub fn new(session: &SessionResponse, now: DateTime<Utc>) -> SessionRow {
        SessionRow {
            who: session.email.clone().unwrap_or(session.subject.clone()),
            kind: session.kind.clone(),
            role: session.role.clone(),
            signed_in: at(&session.created_at),
            seen: relative(&session.last_seen_at, now),
            current: session.current,
        }
    }
}

/// People's sessions.
#[derive(Template)]
#[template(path = "console/sessions.html")]
pub struct Sessions {
    pub frame: Frame,
    pub rows: Vec<SessionRow>,
    pub person: bool,
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    #[test]
    fn times_read_as_people_say_them() {
        let now = Utc::now();
        assert_eq!(relative(&(now + Duration::days(3)), now), "in 3 days");
        assert_eq!(
            relative(&(now - Duration::minutes(5)), now),
            "5 minutes ago"
        );
        assert_eq!(relative(&(now - Duration::hours(1)), now), "1 hour ago");
        assert_eq!(relative(&now, now), "just now");
    }

    #[test]
    fn queries_are_escaped() {
        assert_eq!(
            query_escape("/console/instances?name=a b&x"),
            "/console/instances%3Fname%3Da%20b%26x"
        );
    }
}
