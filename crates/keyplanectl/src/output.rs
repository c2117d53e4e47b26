//! How answers are shown: a table for people, JSON or YAML for scripts (the
//! API's own field names), or one field's value alone.

use serde_json::Value;

/// An output format (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Columns for people.
    Table,
    /// The API's JSON, pretty.
    Json,
    /// The same, as YAML.
    Yaml,
}

/// The columns worth a person's look, in this order, when an item has them.
const COLUMNS: &[&str] = &[
    "bucket_start",
    "id",
    "name",
    "subject",
    "actor",
    "action",
    "target_id",
    "status",
    "kind",
    "role",
    "masked",
    "masked_key",
    "legacy",
    "masked_token",
    "key_id",
    "instance_id",
    "model",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "errors",
    "scopes",
    "effective_scopes",
    "labels",
    "url",
    "events",
    "outcome",
    "at",
    "created_at",
    "expires_at",
    "rotation_due_at",
    "last_used_at",
    "last_seen_at",
];

/// Renders `answer` in `format`; with `field`, only that field's value (of
/// each item, for a list).
pub fn render(answer: &Value, format: Format, field: Option<&str>) -> String {
    if let Some(field) = field {
        let values: Vec<&Value> = match answer["items"].as_array() {
            Some(items) => items.iter().map(|item| &item[field]).collect(),
            None => vec![&answer[field]],
        };
        return values
            .into_iter()
            .map(scalar)
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
    }
    match format {
        Format::Json => serde_json::to_string_pretty(answer).unwrap_or_default() + "\n",
        Format::Yaml => serde_yaml::to_string(answer).unwrap_or_default(),
        Format::Table => match answer["items"].as_array() {
            Some(items) => table(items),
            None if answer.is_object() => pairs(answer),
            None => scalar(answer) + "\n",
        },
    }
}

/// A value as one cell: strings bare, lists comma-separated, null empty.
fn scalar(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        Value::Array(items) => items.iter().map(scalar).collect::<Vec<_>>().join(","),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", scalar(v)))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

fn table(items: &[Value]) -> String {
    let Some(first) = items.first().and_then(Value::as_object) else {
        return "(none)\n".to_owned();
    };
    let mut columns: Vec<&str> = COLUMNS
        .iter()
        .copied()
        .filter(|c| first.contains_key(*c))
        .collect();
    if columns.is_empty() {
        columns = first.keys().map(String::as_str).collect();
    }
    let mut rows: Vec<Vec<String>> = vec![columns.iter().map(|c| c.to_uppercase()).collect()];
    for item in items {
        rows.push(
            columns
                .iter()
                .map(|c| cut(&scalar(&item[*c]), 48))
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn pairs(object: &Value) -> String {
    let Some(map) = object.as_object() else {
        return String::new();
    };
    let width = map.keys().map(|k| k.len()).max().unwrap_or(0);
    map.iter()
        .map(|(k, v)| format!("{k:<width$}  {}\n", scalar(v)))
        .collect()
}

fn cut(text: &str, at: usize) -> String {
    if text.chars().count() <= at {
        return text.to_owned();
    }
    let kept: String = text.chars().take(at - 1).collect();
    format!("{kept}…")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_list_is_a_table_of_the_columns_that_matter_and_a_field_is_bare() {
        let page = json!({"items": [
            {"id": "1", "name": "jan", "status": "active", "labels": {"env": "prod"}, "noise": 7},
            {"id": "2", "name": "jan-2", "status": "suspended", "labels": {}, "noise": 8},
        ], "next_cursor": null});
        let table = render(&page, Format::Table, None);
        assert_eq!(
            table,
            "ID  NAME   STATUS     LABELS\n1   jan    active     env=prod\n2   jan-2  suspended\n"
        );
        assert_eq!(render(&page, Format::Table, Some("name")), "jan\njan-2\n");
        let one = json!({"id": "1", "secret": "kpi_x"});
        assert_eq!(render(&one, Format::Json, Some("secret")), "kpi_x\n");
        assert!(render(&one, Format::Yaml, None).contains("secret: kpi_x"));
    }
}
