//! Change capture on MongoDB: a change stream on the source's database, filtered to
//! its collection, and each change event turned into the neutral [`Change`].
//!
//! Invariants:
//! - The stream watches the database, not the collection, so a rename of the source
//!   (its own cutover) does not invalidate it; a `$match` keeps the source's events.
//! - Capture starts by opening the stream and taking its first resume token, before the
//!   first batch is read; positions are resume tokens (canonical extended JSON), saved
//!   with what was applied, and the stream resumes after the saved one.
//! - An event is turned into a change that is idempotent by `_id`: an insert or a
//!   replace is an upsert of the whole document; an update is a [`Value::Patch`] of
//!   the fields it set, removed and truncated (a sink applies it to the document it
//!   has); a delete deletes by `_id`. Where the document travels reshaped by a transform
//!   pipeline, inserts, replaces and updates all ask the sink to read the document
//!   (through the pipeline) from the source: [`Value::Unchanged`].
//! - The source's collection dropped, renamed (by anyone but the job's cutover) or the
//!   stream invalidated fails the job: nothing after it can be trusted.
//! - A token that fell off the oplog fails the job saying what to do; it is never
//!   silently restarted from now (which would lose changes).

use mongodb::bson::{doc, Bson, Document};

use crate::engine::row::{Change, Position, Row, Value};
use crate::error::{Error, Result};

use super::order::key_of;

/// The server's code when a resume token is no longer in the oplog.
pub const CHANGE_STREAM_HISTORY_LOST: i32 = 286;

/// How a source's events are turned into changes.
#[derive(Debug, Clone)]
pub struct EventReader {
    /// The collection whose events are kept.
    pub collection: String,
    /// Documents are reshaped by a transform pipeline on the way: the sink reads them.
    pub transformed: bool,
    /// A rename of the collection to this name is a cutover's own, not a reason to stop:
    /// the way back watches the source's name from before the forward switch, which
    /// sets the old collection aside under this name.
    pub set_aside: Option<String>,
}

impl EventReader {
    /// The `$match` stage of the stream: this collection's events, and those that end
    /// the stream's usefulness for it.
    pub fn filter(&self) -> Document {
        doc! {"$match": {"$or": [
            {"ns.coll": &self.collection},
            {"operationType": {"$in": ["dropDatabase", "invalidate"]}},
        ]}}
    }

    /// The change an event makes, if any (`Ok(None)` for events that change no
    /// document of the collection).
    pub fn change(&self, event: &Document) -> Result<Option<Change>> {
        let operation = event.get_str("operationType").unwrap_or_default();
        let id = || {
            event
                .get_document("documentKey")
                .ok()
                .and_then(|key| key.get("_id"))
                .cloned()
                .ok_or_else(|| Error::State(format!("a {operation} event without documentKey._id")))
        };
        let whole = |document: Option<&Document>| -> Result<Value> {
            if self.transformed {
                return Ok(Value::Unchanged);
            }
            let document = document
                .ok_or_else(|| Error::State(format!("a {operation} event without fullDocument")))?;
            let mut bytes = Vec::new();
            document
                .to_writer(&mut bytes)
                .map_err(|e| Error::State(format!("cannot encode a document: {e}")))?;
            Ok(Value::Bytes(bytes))
        };
        let upsert = |id: Bson, value: Value| Change::Upsert {
            old_key: None,
            row: Row(vec![Value::Text(key_of(&id).remove(0)), value]),
        };
        match operation {
            "insert" | "replace" => {
                let value = whole(event.get_document("fullDocument").ok())?;
                Ok(Some(upsert(id()?, value)))
            }
            "update" => {
                let value = if self.transformed {
                    Value::Unchanged
                } else {
                    patch(event.get_document("updateDescription").ok())
                };
                Ok(Some(upsert(id()?, value)))
            }
            "delete" => Ok(Some(Change::Delete {
                key: key_of(&id()?),
            })),
            "rename"
                if self.set_aside.is_some()
                    && event
                        .get_document("to")
                        .and_then(|to| to.get_str("coll"))
                        .ok()
                        == self.set_aside.as_deref() =>
            {
                Ok(None)
            }
            "drop" | "rename" | "dropDatabase" | "invalidate" => {
                let what = match operation {
                    "drop" => "was dropped".to_string(),
                    "rename" => format!(
                        "was renamed to `{}`",
                        event
                            .get_document("to")
                            .and_then(|to| to.get_str("coll"))
                            .unwrap_or("?")
                    ),
                    "dropDatabase" => "was dropped with its database".to_string(),
                    _ => "stopped being watchable (the change stream was invalidated)".to_string(),
                };
                Err(Error::Refused(format!(
                    "the source collection `{}` {what} while the job was capturing its changes: the changes after it cannot be followed. Abort the job and run it again",
                    self.collection
                )))
            }
            // Index builds and other events that change no document.
            _ => Ok(None),
        }
    }
}

/// An update event's `updateDescription` as updates to apply in order: arrays
/// truncated first (as the server did), then fields set and removed. Dotted paths are
/// paths, as in an update. Where a path is ambiguous (a field name with a dot or a
/// number as a key: the event's `disambiguatedPaths`), or the description is missing,
/// the sink reads the document instead.
pub fn patch(description: Option<&Document>) -> Value {
    let Some(description) = description else {
        return Value::Unchanged;
    };
    if description
        .get_document("disambiguatedPaths")
        .is_ok_and(|paths| !paths.is_empty())
    {
        return Value::Unchanged;
    }
    let mut updates = Vec::new();
    if let Ok(truncated) = description.get_array("truncatedArrays") {
        let mut slices = Document::new();
        for entry in truncated.iter().filter_map(Bson::as_document) {
            if let (Ok(field), Some(size)) = (
                entry.get_str("field"),
                entry
                    .get("newSize")
                    .and_then(|s| s.as_i32().map(i64::from).or_else(|| s.as_i64())),
            ) {
                slices.insert(field, doc! {"$each": [], "$slice": size});
            }
        }
        if !slices.is_empty() {
            updates.push(doc! {"$push": slices});
        }
    }
    let mut change = Document::new();
    if let Ok(set) = description.get_document("updatedFields") {
        if !set.is_empty() {
            change.insert("$set", set.clone());
        }
    }
    if let Ok(removed) = description.get_array("removedFields") {
        let unset: Document = removed
            .iter()
            .filter_map(Bson::as_str)
            .map(|field| (field.to_string(), Bson::String(String::new())))
            .collect();
        if !unset.is_empty() {
            change.insert("$unset", unset);
        }
    }
    if !change.is_empty() {
        updates.push(change);
    }
    Value::Patch(
        Bson::Array(updates.into_iter().map(Bson::Document).collect()).into_canonical_extjson(),
    )
}

/// The updates of a [`Value::Patch`], as BSON again.
pub fn updates_of(patch: &serde_json::Value) -> Result<Vec<Document>> {
    match Bson::try_from(patch.clone()) {
        Ok(Bson::Array(updates)) => updates
            .into_iter()
            .map(|u| match u {
                Bson::Document(update) => Ok(update),
                other => Err(Error::State(format!(
                    "a patch holds {other}, not an update"
                ))),
            })
            .collect(),
        _ => Err(Error::State(format!("`{patch}` is not a MongoDB patch"))),
    }
}

/// A resume token as a position, and back.
pub fn position_of(token: &Document) -> Position {
    Position(
        Bson::Document(token.clone())
            .into_canonical_extjson()
            .to_string(),
    )
}

pub fn token_of(position: &Position) -> Result<Document> {
    serde_json::from_str::<serde_json::Value>(&position.0)
        .ok()
        .and_then(|json| match Bson::try_from(json) {
            Ok(Bson::Document(token)) => Some(token),
            _ => None,
        })
        .ok_or_else(|| Error::State(format!("`{}` is not a MongoDB resume token", position.0)))
}

#[cfg(test)]
mod tests {
    //! Every documented shape of change event (MongoDB manual, "Change Events"), turned
    //! into changes and applied to documents held in memory the way a sink applies
    //! them to a collection.

    use std::collections::BTreeMap;

    use mongodb::bson::{doc, Bson, Document};

    use super::*;

    fn reader(transformed: bool) -> EventReader {
        EventReader {
            collection: "orders".into(),
            transformed,
            set_aside: None,
        }
    }

    /// A collection in memory, changed as a sink changes one.
    #[derive(Default)]
    struct Held(BTreeMap<String, Document>);

    impl Held {
        fn apply(&mut self, change: Change) {
            match change {
                Change::Delete { key } => {
                    self.0.remove(&key[0]);
                }
                Change::Upsert { row, .. } => {
                    let key = match &row.0[0] {
                        Value::Text(key) => key.clone(),
                        other => panic!("{other:?}"),
                    };
                    match &row.0[1] {
                        Value::Bytes(bytes) => {
                            self.0
                                .insert(key, Document::from_reader(&mut bytes.as_slice()).unwrap());
                        }
                        Value::Patch(patch) => {
                            let held = self.0.get_mut(&key).expect("an update of a held document");
                            for update in updates_of(patch).unwrap() {
                                apply_update(held, &update);
                            }
                        }
                        other => panic!("{other:?}"),
                    }
                }
            }
        }
    }

    /// The subset of update operators a patch uses: `$set` and `$unset` with dotted
    /// paths, `$push` with an empty `$each` and a `$slice`.
    fn apply_update(held: &mut Document, update: &Document) {
        let mut root = Bson::Document(std::mem::take(held));
        for (operator, fields) in update {
            for (path, value) in fields.as_document().unwrap() {
                let parts: Vec<&str> = path.split('.').collect();
                apply_at(&mut root, &parts, operator, value);
            }
        }
        let Bson::Document(done) = root else {
            unreachable!()
        };
        *held = done;
    }

    fn apply_at(at: &mut Bson, parts: &[&str], operator: &str, value: &Bson) {
        let (first, rest) = parts.split_first().unwrap();
        if rest.is_empty() {
            match (operator, at) {
                ("$set", Bson::Document(d)) => {
                    d.insert(first.to_string(), value.clone());
                }
                ("$set", Bson::Array(a)) => {
                    // As the server does: an index past the end pads with nulls.
                    let index = first.parse::<usize>().unwrap();
                    if a.len() <= index {
                        a.resize(index + 1, Bson::Null);
                    }
                    a[index] = value.clone();
                }
                ("$unset", Bson::Document(d)) => {
                    d.remove(*first);
                }
                ("$push", Bson::Document(d)) => {
                    let size = value.as_document().unwrap().get_i64("$slice").unwrap();
                    if let Some(Bson::Array(a)) = d.get_mut(*first) {
                        a.truncate(size as usize);
                    }
                }
                (operator, at) => panic!("{operator} at {at}"),
            }
            return;
        }
        let child = match at {
            Bson::Document(d) => d
                .entry(first.to_string())
                .or_insert_with(|| Bson::Document(Document::new())),
            Bson::Array(a) => &mut a[first.parse::<usize>().unwrap()],
            other => panic!("a path through {other}"),
        };
        apply_at(child, rest, operator, value);
    }

    fn event(operation: &str, id: i64, extra: Document) -> Document {
        let mut event = doc! {
            "_id": {"_data": "8263"},
            "operationType": operation,
            "ns": {"db": "shop", "coll": "orders"},
            "documentKey": {"_id": id},
        };
        event.extend(extra);
        event
    }

    fn key(id: i64) -> String {
        key_of(&Bson::Int64(id)).remove(0)
    }

    #[test]
    fn insert_update_replace_and_delete_apply_in_order() {
        let mut held = Held::default();
        let events = [
            event(
                "insert",
                1,
                doc! {"fullDocument": {"_id": 1_i64, "status": "new", "items": [1, 2, 3, 4], "ship": {"city": "Lyon", "zip": "69001"}}},
            ),
            event(
                "insert",
                2,
                doc! {"fullDocument": {"_id": 2_i64, "status": "new"}},
            ),
            event(
                "update",
                1,
                doc! {"updateDescription": {
                    "updatedFields": {"status": "paid", "ship.city": "Paris", "items.1": 20},
                    "removedFields": ["ship.zip"],
                    "truncatedArrays": [{"field": "items", "newSize": 2}],
                }},
            ),
            event(
                "replace",
                2,
                doc! {"fullDocument": {"_id": 2_i64, "status": "void"}},
            ),
            event("delete", 2, doc! {}),
        ];
        for e in &events {
            if let Some(change) = reader(false).change(e).unwrap() {
                held.apply(change);
            }
        }
        assert_eq!(held.0.len(), 1);
        assert_eq!(
            held.0[&key(1)],
            doc! {"_id": 1_i64, "status": "paid", "items": [1, 20], "ship": {"city": "Paris"}}
        );
    }

    #[test]
    fn replaying_from_an_earlier_position_converges() {
        let events = [
            event(
                "insert",
                7,
                doc! {"fullDocument": {"_id": 7_i64, "n": 1, "tags": ["a", "b", "c"]}},
            ),
            event(
                "update",
                7,
                doc! {"updateDescription": {"updatedFields": {"n": 2}, "removedFields": [], "truncatedArrays": [{"field": "tags", "newSize": 1}]}},
            ),
            event(
                "update",
                7,
                doc! {"updateDescription": {"updatedFields": {"n": 3, "tags.1": "z"}, "removedFields": []}},
            ),
        ];
        let changes: Vec<Change> = events
            .iter()
            .map(|e| reader(false).change(e).unwrap().unwrap())
            .collect();
        let mut once = Held::default();
        changes.iter().cloned().for_each(|c| once.apply(c));
        // A crash after all three were applied but before the position was saved: the
        // three come again, over the state they made.
        let mut again = Held::default();
        changes.iter().cloned().for_each(|c| again.apply(c));
        changes.iter().cloned().for_each(|c| again.apply(c));
        assert_eq!(once.0, again.0);
        assert_eq!(
            once.0[&key(7)],
            doc! {"_id": 7_i64, "n": 3, "tags": ["a", "z"]}
        );
    }

    #[test]
    fn a_transformed_document_is_read_from_the_source() {
        for operation in ["insert", "replace", "update"] {
            let change = reader(true)
                .change(&event(operation, 3, doc! {"fullDocument": {"_id": 3_i64}, "updateDescription": {"updatedFields": {"a": 1}}}))
                .unwrap()
                .unwrap();
            assert_eq!(
                change,
                Change::Upsert {
                    old_key: None,
                    row: Row(vec![Value::Text(key(3)), Value::Unchanged])
                },
                "{operation}"
            );
        }
    }

    #[test]
    fn ambiguous_paths_are_read_from_the_source() {
        let change = reader(false)
            .change(&event(
                "update",
                4,
                doc! {"updateDescription": {
                    "updatedFields": {"a.0": 1},
                    "removedFields": [],
                    "disambiguatedPaths": {"a.0": ["a", "0"]},
                }},
            ))
            .unwrap()
            .unwrap();
        assert!(matches!(change, Change::Upsert { row, .. } if row.0[1] == Value::Unchanged));
    }

    #[test]
    fn drop_rename_and_invalidate_fail_the_job() {
        let cases = [
            (
                "drop",
                doc! {},
                "the source collection `orders` was dropped while",
            ),
            (
                "rename",
                doc! {"to": {"db": "shop", "coll": "orders_x"}},
                "was renamed to `orders_x` while",
            ),
            ("dropDatabase", doc! {}, "was dropped with its database"),
            ("invalidate", doc! {}, "stopped being watchable"),
        ];
        for (operation, extra, expected) in cases {
            let error = reader(false)
                .change(&event(operation, 0, extra))
                .unwrap_err();
            assert!(error.to_string().contains(expected), "{operation}: {error}");
            assert_eq!(error.exit_code(), 2);
        }
    }

    #[test]
    fn other_events_change_nothing() {
        assert_eq!(
            reader(false)
                .change(&event("createIndexes", 0, doc! {}))
                .unwrap(),
            None
        );
    }

    #[test]
    fn positions_round_trip() {
        let token = doc! {"_data": "82635F", "n": Bson::Int64(3)};
        assert_eq!(token_of(&position_of(&token)).unwrap(), token);
    }
}
