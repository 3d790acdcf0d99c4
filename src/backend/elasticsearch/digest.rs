//! Comparing two indexes without holding either in memory: every document's `_id` and
//! `_source` (keys sorted, so that two equal documents hash alike whatever order their
//! fields were written in) hash into one of [`BUCKETS`] buckets by its `_id`; a bucket
//! is its count and the wrapping sum of its documents' hashes, so the order the
//! documents are read in does not matter. Two indexes are equal when every bucket is;
//! the documents that differ are then found in the differing buckets only
//! ([`documents_in`]), so memory grows with the difference, not with the index.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::pit::Pages;
use crate::engine::row::Digest;
use crate::error::Result;

/// Buckets an index is summed into.
pub const BUCKETS: usize = 1024;
/// Documents read per page while summing.
const PAGE: usize = 5000;

/// One bucket: its documents' count and the sum of their hashes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    pub documents: u64,
    pub sum: u128,
}

/// `value` as JSON text with every object's keys in order.
pub fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|key| format!("{}:{}", Value::String(key.clone()), canonical(&map[key])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

/// The hash of one document (`source` `None`: of its `_id` alone).
pub fn document_hash(id: &str, source: Option<&Value>) -> u128 {
    let mut hasher = Sha256::new();
    hasher.update(id.as_bytes());
    if let Some(source) = source {
        hasher.update([0]);
        hasher.update(canonical(source).as_bytes());
    }
    let bytes = hasher.finalize();
    u128::from_be_bytes(bytes[..16].try_into().expect("16 bytes"))
}

pub fn bucket_of(id: &str) -> usize {
    let bytes = Sha256::digest(id.as_bytes());
    usize::from(u16::from_be_bytes([bytes[0], bytes[1]])) % BUCKETS
}

/// Every bucket of the index `pages` reads (with `ids_only`, hashing `_id`s alone).
pub async fn buckets(pages: &Pages, ids_only: bool) -> Result<Vec<Bucket>> {
    let mut buckets = vec![Bucket::default(); BUCKETS];
    scan(pages, |id, source| {
        let bucket = &mut buckets[bucket_of(id)];
        bucket.documents += 1;
        bucket.sum = bucket
            .sum
            .wrapping_add(document_hash(id, source.filter(|_| !ids_only)));
    })
    .await?;
    Ok(buckets)
}

/// The whole index as one digest (what `verify` compares).
pub fn total(buckets: &[Bucket]) -> Digest {
    let documents = buckets.iter().map(|b| b.documents).sum();
    let sum = buckets.iter().fold(0u128, |sum, b| sum.wrapping_add(b.sum));
    Digest {
        rows: documents,
        hash: format!("{sum:032x}"),
    }
}

/// The buckets in which `a` and `b` differ.
pub fn differing(a: &[Bucket], b: &[Bucket]) -> BTreeSet<usize> {
    (0..BUCKETS).filter(|&i| a[i] != b[i]).collect()
}

/// The documents of `buckets` in the index, by `_id`, with their hashes.
pub async fn documents_in(
    pages: &Pages,
    buckets: &BTreeSet<usize>,
    ids_only: bool,
) -> Result<HashMap<String, u128>> {
    let mut documents = HashMap::new();
    scan(pages, |id, source| {
        if buckets.contains(&bucket_of(id)) {
            documents.insert(
                id.to_string(),
                document_hash(id, source.filter(|_| !ids_only)),
            );
        }
    })
    .await?;
    Ok(documents)
}

/// The `_id`s whose documents differ between the two maps (or are on one side only).
pub fn differing_ids(a: &HashMap<String, u128>, b: &HashMap<String, u128>) -> Vec<String> {
    let mut ids: BTreeSet<&String> = a.keys().filter(|id| a.get(*id) != b.get(*id)).collect();
    ids.extend(b.keys().filter(|id| !a.contains_key(*id)));
    ids.into_iter().cloned().collect()
}

/// Calls `each` with every document's `_id` and `_source`, page by page.
async fn scan(pages: &Pages, mut each: impl FnMut(&str, Option<&Value>)) -> Result<()> {
    let mut after = None;
    loop {
        let page = pages.next(after.as_ref(), PAGE).await?;
        if page.restarted {
            // Summing cannot go on from where it stood: the point in time expired.
            return Err(crate::error::Error::State(
                "the point in time of a comparison expired; run verify again".into(),
            ));
        }
        for hit in &page.hits {
            each(hit["_id"].as_str().unwrap_or_default(), hit.get("_source"));
        }
        if page.hits.len() < PAGE {
            pages.close(&page.pit).await;
            return Ok(());
        }
        after = page.after();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equal_documents_hash_alike_whatever_their_field_order() {
        let a = json!({"b": 1, "a": {"y": [1, {"q": 2, "p": 1}], "x": null}});
        let b = json!({"a": {"x": null, "y": [1, {"p": 1, "q": 2}]}, "b": 1});
        assert_eq!(document_hash("1", Some(&a)), document_hash("1", Some(&b)));
        assert_ne!(document_hash("1", Some(&a)), document_hash("2", Some(&a)));
        let reordered = json!({"a": {"x": null, "y": [{"p": 1, "q": 2}, 1]}, "b": 1});
        assert_ne!(
            document_hash("1", Some(&a)),
            document_hash("1", Some(&reordered)),
            "array order counts"
        );
    }

    #[test]
    fn differing_ids_names_changed_missing_and_extra_documents() {
        let a: HashMap<String, u128> = [("1", 1), ("2", 2), ("3", 3)]
            .map(|(k, v)| (k.to_string(), v))
            .into();
        let b: HashMap<String, u128> = [("1", 1), ("2", 9), ("4", 4)]
            .map(|(k, v)| (k.to_string(), v))
            .into();
        assert_eq!(differing_ids(&a, &b), ["2", "3", "4"]);
    }
}
