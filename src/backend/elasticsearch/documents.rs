//! Rows of another store as documents (interface.md, "Row → document"): how a
//! PostgreSQL row becomes what a copy writes into an index, and which version it is
//! written at.
//!
//! Invariants:
//! - The `_id` is the key, its values (text forms) joined by `:`.
//! - Fields are the columns by name: `json`/`jsonb` as what they hold, one-dimensional
//!   arrays as arrays, integers, `numeric`, `real` and `double precision` as numbers,
//!   `boolean` as `true`/`false`, timestamps as ISO 8601 (`2024-05-01T10:00:00+00:00`),
//!   anything else as its text. The same function makes documents of copied rows, of
//!   changes, and of the rows verify reads, so the three always agree.
//! - A document's external version is the change position it was read at (a WAL
//!   position as a number): the copy's rows at the capture's start, a change at its
//!   batch's end. A row copied again after a crash never replaces a change applied
//!   after it.

use serde_json::{Map, Number, Value};

use crate::engine::row::{Key, Position, Row, Schema, Value as RowValue};
use crate::error::{Error, Result};

/// Makes documents of the rows of one source schema.
#[derive(Debug, Clone)]
pub struct Documents {
    schema: Schema,
}

impl Documents {
    pub fn new(schema: &Schema) -> Documents {
        Documents {
            schema: schema.clone(),
        }
    }

    /// The `_id` of the row with `key`.
    pub fn id_of_key(key: &Key) -> String {
        key.join(":")
    }

    /// The row's key, as the source names rows.
    pub fn key(&self, row: &Row) -> Key {
        self.schema
            .key
            .iter()
            .map(|&i| match &row.0[i] {
                RowValue::Text(text) => text.clone(),
                other => json_of(other, "").to_string(),
            })
            .collect()
    }

    /// The row's `_id` and document; `None` when a value is missing from the row (a
    /// change that did not carry an unchanged large value: read the row again).
    pub fn document(&self, row: &Row) -> Option<(String, Value)> {
        let mut fields = Map::new();
        for (field, value) in self.schema.fields.iter().zip(&row.0) {
            if matches!(value, RowValue::Unchanged | RowValue::Patch(_)) {
                return None;
            }
            fields.insert(field.name.clone(), json_of(value, &field.type_name));
        }
        Some((Self::id_of_key(&self.key(row)), Value::Object(fields)))
    }
}

/// A change position as a document version: PostgreSQL's `X/Y` WAL positions and plain
/// numbers.
pub fn version_of(position: &Position) -> Result<i64> {
    let text = position.0.as_str();
    let parsed = match text.split_once('/') {
        Some((high, low)) => u64::from_str_radix(high, 16)
            .ok()
            .zip(u64::from_str_radix(low, 16).ok())
            .map(|(high, low)| (high << 32) | low),
        None => text.parse::<u64>().ok(),
    };
    parsed.and_then(|v| i64::try_from(v).ok()).ok_or_else(|| {
        Error::State(format!(
            "the change position `{text}` cannot version documents"
        ))
    })
}

fn json_of(value: &RowValue, type_name: &str) -> Value {
    match value {
        RowValue::Null | RowValue::Unchanged | RowValue::Patch(_) => Value::Null,
        RowValue::Bool(b) => Value::Bool(*b),
        RowValue::Int(i) => Value::from(*i),
        RowValue::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        RowValue::Json(json) => json.clone(),
        RowValue::Bytes(bytes) => Value::String(hex::encode(bytes)),
        RowValue::Text(text) => from_text(text, type_name),
    }
}

/// A PostgreSQL value in its text form, as JSON by its type (`format_type`).
fn from_text(text: &str, type_name: &str) -> Value {
    if let Some(element) = type_name.strip_suffix("[]") {
        return match array_items(text) {
            Some(items) => Value::Array(
                items
                    .into_iter()
                    .map(|item| item.map_or(Value::Null, |t| from_text(&t, element)))
                    .collect(),
            ),
            None => Value::String(text.to_string()),
        };
    }
    let base = type_name.split('(').next().unwrap_or_default().trim();
    match base {
        "json" | "jsonb" => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into()))
        }
        "boolean" => Value::Bool(text == "t" || text == "true"),
        "smallint" | "integer" | "bigint" | "numeric" | "real" | "double precision" => {
            number(text).unwrap_or_else(|| Value::String(text.into()))
        }
        "timestamp with time zone" | "timestamp without time zone" => Value::String(iso_8601(text)),
        _ => Value::String(text.to_string()),
    }
}

/// A number as JSON: integers exactly, others as the nearest double (`NaN` and the
/// infinities have none: kept as text).
fn number(text: &str) -> Option<Value> {
    if let Ok(int) = text.parse::<i64>() {
        return Some(Value::from(int));
    }
    let float = text.parse::<f64>().ok()?;
    Number::from_f64(float).map(Value::Number)
}

/// `2024-05-01 10:00:00.5+02` → `2024-05-01T10:00:00.5+02:00`.
fn iso_8601(text: &str) -> String {
    let mut iso = text.replacen(' ', "T", 1);
    let offset_at = iso
        .char_indices()
        .skip(10)
        .find(|(_, c)| *c == '+' || *c == '-')
        .map(|(i, _)| i);
    if let Some(at) = offset_at {
        if iso.len() - at == 3 {
            iso.push_str(":00");
        }
    }
    iso
}

/// The items of a one-dimensional array literal (`{a,"b c",NULL}`); `None` for others.
fn array_items(text: &str) -> Option<Vec<Option<String>>> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    if inner.is_empty() {
        return Some(Vec::new());
    }
    let (mut items, mut current, mut quoted, mut was_quoted) =
        (Vec::new(), String::new(), false, false);
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                was_quoted = true;
            }
            '\\' if quoted => current.push(chars.next()?),
            '{' if !quoted => return None, // more than one dimension
            ',' if !quoted => {
                items.push(item(std::mem::take(&mut current), was_quoted));
                was_quoted = false;
            }
            _ => current.push(c),
        }
    }
    items.push(item(current, was_quoted));
    Some(items)
}

fn item(text: String, quoted: bool) -> Option<String> {
    (quoted || text != "NULL").then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::row::Field;
    use serde_json::json;

    fn schema(fields: &[(&str, &str)], key: Vec<usize>) -> Schema {
        Schema {
            fields: fields
                .iter()
                .map(|(name, type_name)| Field {
                    name: name.to_string(),
                    type_name: type_name.to_string(),
                })
                .collect(),
            key,
            computed: Vec::new(),
        }
    }

    #[test]
    fn a_row_becomes_a_document_with_typed_fields() {
        let documents = Documents::new(&schema(
            &[
                ("id", "bigint"),
                ("region", "text"),
                ("price", "numeric(10,2)"),
                ("active", "boolean"),
                ("tags", "text[]"),
                ("meta", "jsonb"),
                ("at", "timestamp with time zone"),
                ("note", "text"),
            ],
            vec![1, 0],
        ));
        let text = |t: &str| RowValue::Text(t.into());
        let row = Row(vec![
            text("7"),
            text("eu"),
            text("12.50"),
            text("t"),
            text(r#"{a,"b c",NULL,"NULL"}"#),
            text(r#"{"x": [1, 2]}"#),
            text("2024-05-01 10:00:00.5+02"),
            RowValue::Null,
        ]);
        let (id, document) = documents.document(&row).unwrap();
        assert_eq!(id, "eu:7");
        assert_eq!(
            document,
            json!({"id": 7, "region": "eu", "price": 12.5, "active": true,
                   "tags": ["a", "b c", null, "NULL"], "meta": {"x": [1, 2]},
                   "at": "2024-05-01T10:00:00.5+02:00", "note": null})
        );
    }

    #[test]
    fn a_row_missing_a_value_has_no_document() {
        let documents = Documents::new(&schema(&[("id", "integer"), ("body", "text")], vec![0]));
        let row = Row(vec![RowValue::Text("1".into()), RowValue::Unchanged]);
        assert!(documents.document(&row).is_none());
    }

    #[test]
    fn wal_positions_are_versions_in_their_order() {
        let v = |p: &str| version_of(&Position(p.into())).unwrap();
        assert_eq!(v("0/16B3748"), 0x16B3748);
        assert!(v("1/0") > v("0/FFFFFFFF"));
        assert_eq!(v("42"), 42);
        assert!(version_of(&Position("token".into())).is_err());
    }
}
