//! Erasure on Elasticsearch: the documents whose field holds the subject (a `term`
//! query; `_id` by the ids query) found after a refresh, then deleted or partly
//! overwritten by `_bulk` against their concrete index, and refreshed so a search no
//! longer finds them. Not transactional; running it again finishes what a failure left.

use elasticsearch::http::Method;
use serde_json::{json, Value};

use super::{path_segment, Es};
use crate::config::DatabaseConfig;
use crate::error::{Error, Result};
use crate::ops::erase::{Action, Entry};

/// The most documents one entry erases for one subject (a search window).
const MOST: u64 = 10_000;

fn query(field: &str, subject: &str) -> Value {
    if field == "_id" {
        json!({"ids": {"values": [subject]}})
    } else {
        json!({"term": {field: subject}})
    }
}

/// The documents each entry erased (or, in a dry run, matches).
pub async fn erase(
    name: &str,
    database: &DatabaseConfig,
    entries: &[&Entry],
    subject: &str,
    dry_run: bool,
) -> Result<Vec<u64>> {
    let es = Es::connect(name, database)?;
    let mut counts = Vec::new();
    for entry in entries {
        let index = path_segment(entry.target());
        let context = format!("cannot erase from index {}", entry.target());
        es.expect(Method::Post, &format!("/{index}/_refresh"), None, &context)
            .await?;
        let found = es
            .expect(
                Method::Post,
                &format!("/{index}/_search"),
                Some(&json!({"query": query(&entry.field, subject), "size": MOST, "_source": false, "track_total_hits": true})),
                &context,
            )
            .await?;
        let total = found["hits"]["total"]["value"].as_u64().unwrap_or(0);
        if total > MOST {
            return Err(Error::Refused(format!(
                "database `{name}`: {total} documents of {} hold the subject, more than one erasure takes ({MOST})",
                entry.target()
            )));
        }
        let hits = found["hits"]["hits"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if dry_run || hits.is_empty() {
            counts.push(hits.len() as u64);
            continue;
        }
        let mut lines = String::new();
        for hit in &hits {
            let at = json!({"_index": hit["_index"], "_id": hit["_id"]});
            match entry.action {
                Action::Delete => lines.push_str(&format!("{}\n", json!({"delete": at}))),
                Action::Anonymise => {
                    let set = serde_json::to_value(&entry.set).expect("TOML values are JSON");
                    lines.push_str(&format!(
                        "{}\n{}\n",
                        json!({"update": at}),
                        json!({"doc": set})
                    ));
                }
            }
        }
        let reply = es.bulk("/_bulk?refresh=true", lines).await?;
        if !reply.is_success() || reply.body["errors"] == true {
            let first = reply.body["items"].as_array().and_then(|items| {
                items
                    .iter()
                    .find_map(|i| i.as_object()?.values().next()?.get("error").cloned())
            });
            return Err(Error::Store {
                database: name.to_string(),
                context,
                message: first.map_or_else(|| reply.reason(), |e| e.to_string()),
                transient: false,
            });
        }
        counts.push(hits.len() as u64);
    }
    Ok(counts)
}
