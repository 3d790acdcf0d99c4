//! The order of `_id`s, as MongoDB sorts them, and filters over it: the key order of
//! batches in migrations' data operations and in jobs.
//!
//! MongoDB sorts values by type bracket first (null < numbers < strings < objects <
//! binary < ObjectId < booleans < dates), then within the bracket; a comparison
//! operator (`$gt`, `$lte`) only matches values of its operand's bracket. So "after k"
//! is `$gt k` or any later bracket, and "up to k" is `$lte k` or any earlier bracket.
//!
//! Keys travel as text (checkpoints, ranges): the canonical extended JSON of the `_id`,
//! which keeps its exact type (`{"$numberLong": "7"}`, `{"$oid": "…"}`).

use mongodb::bson::{doc, Bson, Document};

use crate::engine::row::Key;
use crate::error::{Error, Result};

/// The documents whose `_id` sorts after `last` in MongoDB's order, which sorts values
/// by type first: a comparison only matches values of `last`'s type bracket, so the
/// brackets that sort after it are added by type.
pub fn after(last: &Bson) -> Document {
    let mut either = vec![doc! {"_id": {"$gt": last.clone()}}];
    either.extend(
        BRACKETS[bracket(last) + 1..]
            .iter()
            .flat_map(|b| b.iter())
            .map(|alias| of_type(alias)),
    );
    doc! {"$or": either}
}

/// The documents whose `_id` has the type `alias` (null as an equality, which servers
/// of every kind answer alike).
fn of_type(alias: &str) -> Document {
    match alias {
        "null" => doc! {"_id": Bson::Null},
        alias => doc! {"_id": {"$type": alias}},
    }
}

/// The type brackets of MongoDB's sort order, by `$type` alias, for the types an `_id`
/// takes in practice (never an array, a regex or undefined; MinKey, MaxKey, timestamps
/// and symbols are left out, and such `_id`s are not resumed past).
const BRACKETS: [&[&str]; 8] = [
    &["null"],
    &["int", "long", "double", "decimal"],
    &["string"],
    &["object"],
    &["binData"],
    &["objectId"],
    &["bool"],
    &["date"],
];

/// The position in [`BRACKETS`] of `value`'s type.
fn bracket(value: &Bson) -> usize {
    let alias = match value {
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => "int",
        Bson::String(_) => "string",
        Bson::Document(_) => "object",
        Bson::Binary(_) => "binData",
        Bson::ObjectId(_) => "objectId",
        Bson::Boolean(_) => "bool",
        Bson::DateTime(_) => "date",
        _ => "null",
    };
    BRACKETS
        .iter()
        .position(|b| b.contains(&alias))
        .unwrap_or(0)
}

/// The documents of a batch (ids in `_id` order): a range when its ids are of one type
/// bracket (within the batch's filter, the range holds just them), else the list.
pub fn of_batch(ids: Vec<Bson>) -> Document {
    let (first, last) = (&ids[0], &ids[ids.len() - 1]);
    if bracket(first) == bracket(last) {
        doc! {"_id": {"$gte": first.clone(), "$lte": last.clone()}}
    } else {
        doc! {"_id": {"$in": ids}}
    }
}

/// The documents whose `_id` sorts at or before `last`.
pub fn up_to(last: &Bson) -> Document {
    let mut either = vec![doc! {"_id": {"$lte": last.clone()}}];
    either.extend(
        BRACKETS[..bracket(last)]
            .iter()
            .flat_map(|b| b.iter())
            .map(|alias| of_type(alias)),
    );
    doc! {"$or": either}
}

/// The documents of a key range: after `lower` (exclusive), up to `upper` (inclusive).
pub fn between(lower: Option<&Bson>, upper: Option<&Bson>) -> Document {
    match (lower, upper) {
        (None, None) => doc! {},
        (Some(lower), None) => after(lower),
        (None, Some(upper)) => up_to(upper),
        (Some(lower), Some(upper)) => doc! {"$and": [after(lower), up_to(upper)]},
    }
}

/// An `_id` as key text.
pub fn key_of(id: &Bson) -> Key {
    vec![id.clone().into_canonical_extjson().to_string()]
}

/// The `_id` that key text names.
pub fn id_of(key: &Key) -> Result<Bson> {
    let text = key.first().map(String::as_str).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|json| Bson::try_from(json).ok())
        .ok_or_else(|| Error::State(format!("`{text}` is not a MongoDB key in extended JSON")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_type() {
        for id in [
            Bson::Int64(7),
            Bson::Int32(7),
            Bson::String("7".into()),
            Bson::ObjectId(mongodb::bson::oid::ObjectId::new()),
        ] {
            assert_eq!(id_of(&key_of(&id)).unwrap(), id);
        }
    }

    #[test]
    fn ranges_reach_across_brackets() {
        assert_eq!(
            after(&Bson::String("m".into())),
            doc! {"$or": [{"_id": {"$gt": "m"}}, {"_id": {"$type": "object"}}, {"_id": {"$type": "binData"}}, {"_id": {"$type": "objectId"}}, {"_id": {"$type": "bool"}}, {"_id": {"$type": "date"}}]}
        );
        assert_eq!(
            up_to(&Bson::Int32(5)),
            doc! {"$or": [{"_id": {"$lte": 5}}, {"_id": null}]}
        );
    }
}
