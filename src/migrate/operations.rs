//! The operations of MongoDB and Elasticsearch migration files (seed 003), parsed and
//! checked here so that `validate` catches a misspelt field before anything runs. Each
//! backend applies them; an operation's inverse (for rollback without a rollback file)
//! is defined next to it.

use serde::Deserialize;
use serde_json::Value;

/// A MongoDB migration operation, tagged by its `type` field.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum MongoOperation {
    CreateCollection {
        collection: String,
        #[serde(default)]
        options: Option<Value>,
    },
    CreateIndex {
        collection: String,
        /// `[["field", 1], ["other", -1]]`
        index: Vec<(String, Value)>,
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
    Reindex {
        source: String,
        dest: String,
    },
}
