//! The operations of MongoDB and Elasticsearch migration files (seed 003), parsed and
//! checked here so that `validate` catches a misspelt field before anything runs. Each
//! backend applies them; an operation's inverse (for rollback without a rollback file,
//! and for undoing a migration that failed midway) is defined next to it.

use std::fmt;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// One key of an index: `["field", 1]`, `["field", -1]` or `["field", "text"]` (also
/// `2dsphere`, `2d`, `hashed`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct IndexKey {
    pub field: String,
    /// `1`, `-1`, or the index type's name, as the server takes it.
    pub direction: Value,
}

const INDEX_EXPECTED: &str = "`index` is a list of keys, each [\"field\", 1], [\"field\", -1] or [\"field\", \"text\" | \"2dsphere\" | \"2d\" | \"hashed\"]";

/// Reads `index`, saying what it must look like when it does not (serde's own message
/// would not name the field, inside a tagged operation).
fn index_keys<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IndexKey>, D::Error> {
    let invalid =
        |found: &Value| serde::de::Error::custom(format!("{INDEX_EXPECTED}, not {found}"));
    let value = Value::deserialize(deserializer)?;
    let Value::Array(keys) = &value else {
        return Err(invalid(&value));
    };
    if keys.is_empty() {
        return Err(invalid(&value));
    }
    keys.iter()
        .map(|key| match key.as_array().map(Vec::as_slice) {
            Some([Value::String(field), direction])
                if !field.is_empty() && valid_direction(direction) =>
            {
                Ok(IndexKey {
                    field: field.clone(),
                    direction: direction.clone(),
                })
            }
            _ => Err(invalid(key)),
        })
        .collect()
}

fn valid_direction(direction: &Value) -> bool {
    match direction {
        Value::Number(n) => n.as_i64().is_some_and(|d| d == 1 || d == -1),
        Value::String(kind) => matches!(kind.as_str(), "text" | "2dsphere" | "2d" | "hashed"),
        _ => false,
    }
}

impl IndexKey {
    /// The name the server gives an index of these keys when none is given (`a_1_b_-1`).
    pub fn default_name(keys: &[IndexKey]) -> String {
        keys.iter()
            .map(|k| match &k.direction {
                Value::String(kind) => format!("{}_{kind}", k.field),
                other => format!("{}_{other}", k.field),
            })
            .collect::<Vec<_>>()
            .join("_")
    }
}

/// A MongoDB migration operation, tagged by its `type` field.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum MongoOperation {
    CreateCollection {
        collection: String,
        #[serde(default)]
        options: Option<Value>,
    },
    /// Not in seed 003's list: what a rollback file says to undo `create_collection`.
    DropCollection {
        collection: String,
    },
    CreateIndex {
        collection: String,
        /// `[["field", 1], ["other", -1]]`
        #[serde(deserialize_with = "index_keys")]
        index: Vec<IndexKey>,
        #[serde(default)]
        options: Option<Value>,
    },
    DropIndex {
        collection: String,
        name: String,
    },
    AddField {
        collection: String,
        field: String,
        value: Value,
        #[serde(default)]
        filter: Option<Value>,
    },
    RemoveField {
        collection: String,
        field: String,
    },
    RenameField {
        collection: String,
        from: String,
        to: String,
    },
    UpdateDocuments {
        collection: String,
        filter: Value,
        update: Value,
    },
}

impl MongoOperation {
    pub fn collection(&self) -> &str {
        match self {
            MongoOperation::CreateCollection { collection, .. }
            | MongoOperation::DropCollection { collection }
            | MongoOperation::CreateIndex { collection, .. }
            | MongoOperation::DropIndex { collection, .. }
            | MongoOperation::AddField { collection, .. }
            | MongoOperation::RemoveField { collection, .. }
            | MongoOperation::RenameField { collection, .. }
            | MongoOperation::UpdateDocuments { collection, .. } => collection,
        }
    }

    /// Whether it changes documents (in batches) rather than the schema (one command).
    pub fn is_data_operation(&self) -> bool {
        matches!(
            self,
            MongoOperation::AddField { .. }
                | MongoOperation::RemoveField { .. }
                | MongoOperation::RenameField { .. }
                | MongoOperation::UpdateDocuments { .. }
        )
    }

    /// The operation that undoes this one, where the file alone says what it is:
    /// create ↔ drop (collection, index), `add_field` ↔ removing the field where it still
    /// holds the added value, `rename_field` ↔ renaming back. Dropping an index or a
    /// collection, removing a field and `update_documents` lose what they replace:
    /// they have none (a `_rollback.json` says how to undo them).
    pub fn inverse(&self) -> Option<MongoOperation> {
        match self {
            MongoOperation::CreateCollection { collection, .. } => {
                Some(MongoOperation::DropCollection {
                    collection: collection.clone(),
                })
            }
            MongoOperation::CreateIndex {
                collection,
                index,
                options,
            } => Some(MongoOperation::DropIndex {
                collection: collection.clone(),
                name: index_name(index, options.as_ref()),
            }),
            MongoOperation::AddField {
                collection,
                field,
                value,
                filter,
            } => {
                let mut holds_it = serde_json::Map::new();
                holds_it.insert(field.clone(), serde_json::json!({ "$eq": value }));
                let filter = match filter {
                    Some(filter) => serde_json::json!({ "$and": [filter, holds_it] }),
                    None => Value::Object(holds_it),
                };
                Some(MongoOperation::UpdateDocuments {
                    collection: collection.clone(),
                    filter,
                    update: serde_json::json!({ "$unset": { field.as_str(): "" } }),
                })
            }
            MongoOperation::RenameField {
                collection,
                from,
                to,
            } => Some(MongoOperation::RenameField {
                collection: collection.clone(),
                from: to.clone(),
                to: from.clone(),
            }),
            MongoOperation::DropCollection { .. }
            | MongoOperation::DropIndex { .. }
            | MongoOperation::RemoveField { .. }
            | MongoOperation::UpdateDocuments { .. } => None,
        }
    }
}

/// The name an index is created under: `options.name`, else the server's default.
pub fn index_name(keys: &[IndexKey], options: Option<&Value>) -> String {
    options
        .and_then(|o| o.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| IndexKey::default_name(keys))
}

impl fmt::Display for MongoOperation {
    /// `add_field `status` on `users``: for progress lines and errors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let collection = self.collection();
        match self {
            MongoOperation::CreateCollection { .. } => {
                write!(f, "create_collection `{collection}`")
            }
            MongoOperation::DropCollection { .. } => write!(f, "drop_collection `{collection}`"),
            MongoOperation::CreateIndex { index, options, .. } => write!(
                f,
                "create_index `{}` on `{collection}`",
                index_name(index, options.as_ref())
            ),
            MongoOperation::DropIndex { name, .. } => {
                write!(f, "drop_index `{name}` on `{collection}`")
            }
            MongoOperation::AddField { field, .. } => {
                write!(f, "add_field `{field}` on `{collection}`")
            }
            MongoOperation::RemoveField { field, .. } => {
                write!(f, "remove_field `{field}` on `{collection}`")
            }
            MongoOperation::RenameField { from, to, .. } => {
                write!(f, "rename_field `{from}` → `{to}` on `{collection}`")
            }
            MongoOperation::UpdateDocuments { .. } => {
                write!(f, "update_documents on `{collection}`")
            }
        }
    }
}

/// An Elasticsearch migration operation, tagged by its `type` field.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ElasticOperation {
    CreateIndex {
        index: String,
        #[serde(default)]
        mapping: Option<Value>,
        #[serde(default)]
        settings: Option<Value>,
    },
    DeleteIndex {
        index: String,
    },
    UpdateMapping {
        index: String,
        mapping: Value,
    },
    CreateAlias {
        index: String,
        alias: String,
    },
    /// Not in seed 003's list: what a rollback file says to undo `create_alias`.
    DeleteAlias {
        index: String,
        alias: String,
    },
    Reindex {
        source: String,
        dest: String,
    },
}

impl ElasticOperation {
    /// The operation that undoes this one: `create_index` ↔ `delete_index` of the index
    /// it created, `create_alias` ↔ `delete_alias`. Deleting an index loses its
    /// documents, a mapping cannot be taken back, and a reindex writes into documents
    /// that were there: they have none (a `_rollback.json` says how to undo them).
    pub fn inverse(&self) -> Option<ElasticOperation> {
        match self {
            ElasticOperation::CreateIndex { index, .. } => Some(ElasticOperation::DeleteIndex {
                index: index.clone(),
            }),
            ElasticOperation::CreateAlias { index, alias } => Some(ElasticOperation::DeleteAlias {
                index: index.clone(),
                alias: alias.clone(),
            }),
            ElasticOperation::DeleteAlias { index, alias } => Some(ElasticOperation::CreateAlias {
                index: index.clone(),
                alias: alias.clone(),
            }),
            ElasticOperation::DeleteIndex { .. }
            | ElasticOperation::UpdateMapping { .. }
            | ElasticOperation::Reindex { .. } => None,
        }
    }
}

impl fmt::Display for ElasticOperation {
    /// `create_index `products_v1``: for progress lines and errors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElasticOperation::CreateIndex { index, .. } => write!(f, "create_index `{index}`"),
            ElasticOperation::DeleteIndex { index } => write!(f, "delete_index `{index}`"),
            ElasticOperation::UpdateMapping { index, .. } => {
                write!(f, "update_mapping `{index}`")
            }
            ElasticOperation::CreateAlias { index, alias } => {
                write!(f, "create_alias `{alias}` → `{index}`")
            }
            ElasticOperation::DeleteAlias { index, alias } => {
                write!(f, "delete_alias `{alias}` → `{index}`")
            }
            ElasticOperation::Reindex { source, dest } => {
                write!(f, "reindex `{source}` → `{dest}`")
            }
        }
    }
}

/// What the runner of a JSON migration (MongoDB, Elasticsearch) needs of an operation.
pub trait Operation: fmt::Display + Clone + Send + Sync {
    fn inverse(&self) -> Option<Self>;
    /// Whether a failure may leave part of it done (a data operation in batches, a
    /// reindex); a failed command changed nothing.
    fn may_be_partial(&self) -> bool;
}

impl Operation for MongoOperation {
    fn inverse(&self) -> Option<Self> {
        MongoOperation::inverse(self)
    }

    fn may_be_partial(&self) -> bool {
        self.is_data_operation()
    }
}

impl Operation for ElasticOperation {
    fn inverse(&self) -> Option<Self> {
        ElasticOperation::inverse(self)
    }

    fn may_be_partial(&self) -> bool {
        matches!(self, ElasticOperation::Reindex { .. })
    }
}
