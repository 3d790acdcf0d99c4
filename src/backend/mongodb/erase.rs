//! Erasure on MongoDB: each entry one `deleteMany` or `updateMany`. Not transactional:
//! a failure part-way leaves the entries before it done, and running the erasure again
//! finishes the rest (each is idempotent).

use mongodb::bson::{doc, oid::ObjectId, Bson, Document};

use super::{connect, store_error};
use crate::error::{Error, Result};
use crate::ops::erase::{Action, Entry};
use crate::secret::SecretUrl;

/// What a stored id equal to `subject` may look like: the text, a number, an ObjectId.
fn candidates(subject: &str) -> Vec<Bson> {
    let mut found = vec![Bson::String(subject.to_string())];
    if let Ok(number) = subject.parse::<i64>() {
        found.push(Bson::Int64(number));
    }
    if let Ok(id) = ObjectId::parse_str(subject) {
        found.push(Bson::ObjectId(id));
    }
    found
}

/// The documents each entry erased (or, in a dry run, matches).
pub async fn erase(
    database: &str,
    url: &SecretUrl,
    entries: &[&Entry],
    subject: &str,
    dry_run: bool,
) -> Result<Vec<u64>> {
    let db = connect(database, url).await?;
    let mut counts = Vec::new();
    for entry in entries {
        let collection = db.collection::<Document>(entry.target());
        let filter = doc! { &entry.field: { "$in": candidates(subject) } };
        let context = format!("cannot erase from collection {}", entry.target());
        let fail = |e| store_error(database, url, &context, e);
        let count = if dry_run {
            collection.count_documents(filter).await.map_err(fail)?
        } else {
            match entry.action {
                Action::Delete => {
                    collection
                        .delete_many(filter)
                        .await
                        .map_err(fail)?
                        .deleted_count
                }
                Action::Anonymise => {
                    let json = serde_json::to_value(&entry.set).expect("TOML values are JSON");
                    let set = mongodb::bson::to_document(&json).map_err(|e| {
                        Error::Usage(format!("erase set for {}: {e}", entry.target()))
                    })?;
                    collection
                        .update_many(filter, doc! { "$set": set })
                        .await
                        .map_err(fail)?
                        .matched_count
                }
            }
        };
        counts.push(count);
    }
    Ok(counts)
}
