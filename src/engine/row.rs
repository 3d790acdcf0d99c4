//! Rows and changes in the one form they travel in between a source and a sink. Each
//! backend converts at its edge: a source turns what its store returns into these, a
//! sink turns these into its store's writes.
//!
//! Keys are held as text, one entry per key column, in the source's key order: they are
//! saved in checkpoints and compared by the store that owns them.

use serde::{Deserialize, Serialize};

/// A key in text form, one entry per key column.
pub type Key = Vec<String>;

/// One value of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Text, or any value in its store's text form (PostgreSQL sends every value so;
    /// [`Field::type_name`] says what it is).
    Text(String),
    Bytes(Vec<u8>),
    Json(serde_json::Value),
    /// Not sent by the source because it did not change (a TOASTed PostgreSQL value), or
    /// sent only in a form the sink cannot apply: the sink keeps what it has, or reads
    /// the row from the source ([`crate::engine::Sink::apply`] may).
    Unchanged,
    /// A partial change of a document value, as the store that changed it says it (a
    /// MongoDB update: `[{"$set": …, "$unset": …}, …]` in canonical extended JSON). A
    /// sink of the same store applies it to the value it holds; any other reads the row
    /// from the source.
    Patch(serde_json::Value),
}

impl Value {
    /// The value in PostgreSQL's text input form; `None` for SQL NULL.
    pub fn to_sql_text(&self) -> Option<String> {
        match self {
            Value::Null | Value::Unchanged | Value::Patch(_) => None,
            Value::Bool(b) => Some(b.to_string()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Text(text) => Some(text.clone()),
            Value::Bytes(bytes) => Some(format!("\\x{}", hex::encode(bytes))),
            Value::Json(json) => Some(json.to_string()),
        }
    }
}

/// A row: one value per field of the [`Schema`] it was read with.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Vec<Value>);

/// A column or field as the source describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// The source store's own type name (PostgreSQL: `format_type`), so that a sink of
    /// the same kind can take the value exactly.
    pub type_name: String,
}

/// The shape of the source's rows: its fields in order, and which of them form the key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schema {
    pub fields: Vec<Field>,
    /// Positions in `fields` of the key columns, in key order.
    pub key: Vec<usize>,
    /// Fields the store computes from the others (PostgreSQL's stored generated
    /// columns): never read into rows nor written, only compared by verify.
    pub computed: Vec<Field>,
}

impl Schema {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn key_names(&self) -> Vec<String> {
        self.key
            .iter()
            .map(|&i| self.fields[i].name.clone())
            .collect()
    }

    /// The key of `row` in text form (a key is never NULL).
    pub fn key_of(&self, row: &Row) -> Key {
        self.key
            .iter()
            .map(|&i| row.0[i].to_sql_text().unwrap_or_default())
            .collect()
    }
}

/// One change captured at the source, as the sink applies it: idempotent by key.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Insert or update to `row` (values in the source's [`Schema`]; some may be
    /// [`Value::Unchanged`]). `old_key` is set when the key itself changed: the row
    /// under the old key goes.
    Upsert {
        old_key: Option<Key>,
        row: Row,
    },
    Delete {
        key: Key,
    },
}

/// A position in the source's change log (PostgreSQL: an LSN; MongoDB: a resume
/// token), opaque to the engine and the sink, which store it with what they applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position(pub String);

/// A target column and what fills it, in the source's language (PostgreSQL: an SQL
/// expression over the source row `s`; the key columns are copied as they are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projected {
    pub name: String,
    pub expression: String,
    /// The target's type name for the column.
    pub type_name: String,
}

/// What a sink asks a source to read: the target's columns from the source's rows.
pub type Projection = Vec<Projected>;

/// What a batch and a digest are compared by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub rows: u64,
    /// Content hash (empty when only counting).
    pub hash: String,
}

impl Digest {
    /// Why `source` and `target` differ, if they do.
    pub fn difference(source: &Digest, target: &Digest) -> Option<String> {
        if source.rows != target.rows {
            Some(format!(
                "source has {} rows, target {}",
                source.rows, target.rows
            ))
        } else if source.hash != target.hash {
            Some(format!(
                "{} rows on both sides, but their contents differ",
                source.rows
            ))
        } else {
            None
        }
    }
}
