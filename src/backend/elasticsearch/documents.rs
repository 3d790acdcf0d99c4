//! Rows of another store as documents (interface.md, "Row → document"): how a
//! PostgreSQL row or a MongoDB document becomes what a copy writes into an index, and
//! which version it is written at.
//!
//! Invariants:
//! - A table's row: the `_id` is the key, its values (text forms) joined by `:`. Fields
//!   are the columns by name: `json`/`jsonb` as what they hold, one-dimensional arrays as
//!   arrays, integers, `numeric`, `real` and `double precision` as numbers, `boolean` as
//!   `true`/`false`, timestamps as ISO 8601 (`2024-05-01T10:00:00+00:00`), anything else
//!   as its text.
//! - A collection's document (after the job's pipeline): the `_id` as a string (an
//!   ObjectId's hex, a string as it is, a number's digits), the other fields as JSON:
//!   numbers as numbers (`Decimal128` too, to the nearest double), dates as ISO 8601,
//!   ObjectIds as hex, embedded documents and arrays as they are, the rare types
//!   (binary, regular expressions, timestamps) in relaxed extended JSON.
//! - The same function makes documents of copied rows, of changes, and of the rows
//!   verify reads, so the three always agree.
//! - A document's external version is the change position it was read at, as a number
//!   in the order of positions: the copy's rows at the capture's start, a change at its
//!   batch's end. A row copied again after a crash never replaces a change applied
//!   after it.

use mongodb::bson::{Bson, Document};
use serde_json::{Map, Number, Value};

use crate::engine::row::{Key, Position, Row, Schema, Value as RowValue};
use crate::engine::Source;
use crate::error::{Error, Result};

/// Makes documents of the rows of one source.
#[derive(Debug, Clone)]
pub enum Documents {
    /// A table's rows, one field per column of the schema.
    Columns(Schema),
    /// A collection's documents: rows of the `_id`'s key text and the document's BSON.
    Bson,
}

impl Documents {
    /// The `_id` of the row with `key`.
    pub fn id_of_key(&self, key: &Key) -> Result<String> {
        match self {
            Documents::Columns(_) => Ok(key.join(":")),
            Documents::Bson => Ok(id_text(&crate::backend::mongodb::id_of(key)?)),
        }
    }

    /// The row's key, as the source names rows.
    pub fn key(&self, row: &Row) -> Key {
        let text = |value: &RowValue| match value {
            RowValue::Text(text) => text.clone(),
            other => json_of(other, "").to_string(),
        };
        match self {
            Documents::Columns(schema) => schema.key.iter().map(|&i| text(&row.0[i])).collect(),
            Documents::Bson => vec![text(&row.0[0])],
        }
    }

    /// The row's `_id` and document; `None` when a value is missing from the row (a
    /// change that did not carry an unchanged large value, or carried only a patch:
    /// read the row again).
    pub fn document(&self, row: &Row) -> Result<Option<(String, Value)>> {
        let schema = match self {
            Documents::Columns(schema) => schema,
            Documents::Bson => return of_bson(row),
        };
        let mut fields = Map::new();
        for (field, value) in schema.fields.iter().zip(&row.0) {
            if matches!(value, RowValue::Unchanged | RowValue::Patch(_)) {
                return Ok(None);
            }
            fields.insert(field.name.clone(), json_of(value, &field.type_name));
        }
        Ok(Some((
            self.id_of_key(&self.key(row))?,
            Value::Object(fields),
        )))
    }

    /// The document of the row with `key` as the source has it now; `None` when the row
    /// is gone.
    pub async fn current(
        &self,
        source: &mut dyn Source,
        key: &Key,
    ) -> Result<Option<(String, Value)>> {
        match source.fetch(key).await? {
            Some(row) => self.document(&row),
            None => Ok(None),
        }
    }
}

/// A collection's row as its `_id` and document.
fn of_bson(row: &Row) -> Result<Option<(String, Value)>> {
    let bytes = match row.0.get(1) {
        Some(RowValue::Bytes(bytes)) => bytes,
        Some(RowValue::Unchanged | RowValue::Patch(_)) => return Ok(None),
        _ => return Err(Error::State("a MongoDB row without its document".into())),
    };
    let mut document = Document::from_reader(bytes.as_slice())
        .map_err(|e| Error::State(format!("a document that is not BSON: {e}")))?;
    let id = document
        .remove("_id")
        .ok_or_else(|| Error::State("a document without `_id`".into()))?;
    let fields = document
        .into_iter()
        .map(|(name, value)| (name, json_of_bson(&value)))
        .collect();
    Ok(Some((id_text(&id), Value::Object(fields))))
}

/// A MongoDB `_id` as a document `_id`.
fn id_text(id: &Bson) -> String {
    match id {
        Bson::ObjectId(oid) => oid.to_hex(),
        Bson::String(text) => text.clone(),
        Bson::Int32(i) => i.to_string(),
        Bson::Int64(i) => i.to_string(),
        other => json_of_bson(other).to_string(),
    }
}

/// A BSON value as a document's field.
fn json_of_bson(value: &Bson) -> Value {
    match value {
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::Boolean(b) => Value::Bool(*b),
        Bson::Int32(i) => Value::from(*i),
        Bson::Int64(i) => Value::from(*i),
        Bson::Double(f) => Number::from_f64(*f).map_or(Value::String(f.to_string()), Value::Number),
        Bson::Decimal128(d) => number(&d.to_string()).unwrap_or(Value::String(d.to_string())),
        Bson::String(text) => Value::String(text.clone()),
        Bson::ObjectId(oid) => Value::String(oid.to_hex()),
        Bson::DateTime(at) => at
            .try_to_rfc3339_string()
            .map_or_else(|_| Value::from(at.timestamp_millis()), Value::String),
        Bson::Array(items) => Value::Array(items.iter().map(json_of_bson).collect()),
        Bson::Document(fields) => Value::Object(
            fields
                .iter()
                .map(|(name, value)| (name.clone(), json_of_bson(value)))
                .collect(),
        ),
        other => other.clone().into_relaxed_extjson(),
    }
}

/// A change position as a document version, in the order of positions: PostgreSQL's
/// `X/Y` WAL positions; MongoDB's resume tokens, whose `_data` starts with the event's
/// cluster time (`82`, the type of a timestamp, then 8 bytes of seconds and increment);
/// plain numbers.
pub fn version_of(position: &Position) -> Result<i64> {
    let text = position.0.as_str();
    let hex = |digits: &str| u64::from_str_radix(digits, 16).ok();
    let parsed = if let Some((high, low)) = text.split_once('/') {
        hex(high)
            .zip(hex(low))
            .map(|(high, low)| (high << 32) | low)
    } else if text.starts_with('{') {
        serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|token| token["_data"].as_str().map(str::to_string))
            .and_then(|data| {
                let time = data.strip_prefix("82")?;
                hex(time.get(..16)?)
            })
    } else {
        text.parse::<u64>().ok()
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
        let documents = Documents::Columns(schema(
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
        let (id, document) = documents.document(&row).unwrap().unwrap();
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
        let documents = Documents::Columns(schema(&[("id", "integer"), ("body", "text")], vec![0]));
        let row = Row(vec![RowValue::Text("1".into()), RowValue::Unchanged]);
        assert!(documents.document(&row).unwrap().is_none());
        let patched = Row(vec![RowValue::Text("1".into()), RowValue::Patch(json!([]))]);
        assert!(Documents::Bson.document(&patched).unwrap().is_none());
    }

    #[test]
    fn wal_positions_are_versions_in_their_order() {
        let v = |p: &str| version_of(&Position(p.into())).unwrap();
        assert_eq!(v("0/16B3748"), 0x16B3748);
        assert!(v("1/0") > v("0/FFFFFFFF"));
        assert_eq!(v("42"), 42);
        assert!(version_of(&Position("token".into())).is_err());
    }

    #[test]
    fn resume_tokens_are_versions_in_their_order() {
        let v = |data: &str| version_of(&Position(format!(r#"{{"_data": "{data}"}}"#))).unwrap();
        // A server's: the cluster time (seconds, increment) after the type byte 82.
        let first = v("8263E0F3A1000000012B022C0100296E5A1004");
        assert_eq!(first, (0x63E0F3A1 << 32) | 1);
        assert!(v("8263E0F3A1000000022B0229296E04") > first);
        assert!(v("8263E0F3A2000000012B0229296E04") > v("8263E0F3A1FFFFFFFF2B0229296E04"));
        assert!(version_of(&Position(r#"{"_data": "xyz"}"#.into())).is_err());
        assert!(version_of(&Position(r#"{"_data": "8263E0"}"#.into())).is_err());
    }

    #[test]
    fn a_mongodb_document_becomes_a_document_with_its_id_as_text() {
        use mongodb::bson::{doc, oid::ObjectId, DateTime, Decimal128};
        let oid = ObjectId::parse_str("65f1a2b3c4d5e6f708091a2b").unwrap();
        let document = doc! {
            "_id": oid, "n": 7_i32, "big": 1_i64 << 40, "f": 2.5,
            "price": "12.50".parse::<Decimal128>().unwrap(),
            "at": DateTime::from_millis(1_714_557_600_500), "ref": oid,
            "nested": {"tags": ["a", Bson::Null], "ok": true},
        };
        let mut bytes = Vec::new();
        document.to_writer(&mut bytes).unwrap();
        let row = Row(vec![
            RowValue::Text(r#"{"$oid":"65f1a2b3c4d5e6f708091a2b"}"#.into()),
            RowValue::Bytes(bytes),
        ]);
        let (id, fields) = Documents::Bson.document(&row).unwrap().unwrap();
        assert_eq!(id, "65f1a2b3c4d5e6f708091a2b");
        assert_eq!(
            fields,
            json!({"n": 7, "big": 1_i64 << 40, "f": 2.5, "price": 12.5,
                   "at": "2024-05-01T10:00:00.5Z", "ref": "65f1a2b3c4d5e6f708091a2b",
                   "nested": {"tags": ["a", null], "ok": true}})
        );
        assert_eq!(
            Documents::Bson.key(&row),
            vec![r#"{"$oid":"65f1a2b3c4d5e6f708091a2b"}"#.to_string()]
        );
        let id_of = |key: &str| Documents::Bson.id_of_key(&vec![key.to_string()]).unwrap();
        assert_eq!(id_of(r#"{"$numberLong":"7"}"#), "7");
        assert_eq!(id_of(r#"{"$numberInt":"7"}"#), "7");
        assert_eq!(id_of(r#""sku-1""#), "sku-1");
    }
}
