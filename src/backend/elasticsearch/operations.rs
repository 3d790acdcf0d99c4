//! Seed 003's Elasticsearch operations, each one request (or two) to the server.
//!
//! Invariants:
//! - Every operation is safe to send again after a run was killed once it may have
//!   taken effect (`may_be_done`): creating an index or alias that is there already,
//!   deleting one that is gone, and putting the same mapping again all count as done.
//!   Outside a resumed run, an index in the way is an error, not a silent success.
//! - A reindex waits for the server to finish and fails on any document it could not
//!   write (the `failures` the server lists), never reporting a partial copy as done.

use elasticsearch::http::Method;
use serde_json::{json, Value};

use super::{path_segment, Es, REINDEX_TIMEOUT};
use crate::migrate::ElasticOperation;

/// Why an operation failed, for the FAILED record.
pub type Failure = String;

/// Applies `operation`; `may_be_done` when an earlier, killed run may have applied it.
pub async fn apply(
    es: &Es,
    operation: &ElasticOperation,
    may_be_done: bool,
) -> Result<(), Failure> {
    let failed = |e: crate::Error| e.to_string();
    match operation {
        ElasticOperation::CreateIndex {
            index,
            mapping,
            settings,
        } => {
            let mut body = json!({});
            if let Some(mapping) = mapping {
                body["mappings"] = mapping.clone();
            }
            if let Some(settings) = settings {
                body["settings"] = settings.clone();
            }
            let reply = es
                .call(
                    Method::Put,
                    &format!("/{}", path_segment(index)),
                    Some(&body),
                )
                .await
                .map_err(failed)?;
            match reply.error_type() {
                _ if reply.is_success() => Ok(()),
                Some("resource_already_exists_exception") if may_be_done => Ok(()),
                Some("resource_already_exists_exception") => Err(format!(
                    "index `{index}` exists already (delete it, or baseline past this migration)"
                )),
                _ => Err(reply.reason()),
            }
        }
        ElasticOperation::DeleteIndex { index } => {
            let reply = es
                .call(Method::Delete, &format!("/{}", path_segment(index)), None)
                .await
                .map_err(failed)?;
            match reply.error_type() {
                _ if reply.is_success() => Ok(()),
                Some("index_not_found_exception") if may_be_done => Ok(()),
                Some("index_not_found_exception") => Err(format!("index `{index}` does not exist")),
                _ => Err(reply.reason()),
            }
        }
        ElasticOperation::UpdateMapping { index, mapping } => {
            let reply = es
                .call(
                    Method::Put,
                    &format!("/{}/_mapping", path_segment(index)),
                    Some(mapping),
                )
                .await
                .map_err(failed)?;
            match reply.is_success() {
                true => Ok(()),
                false => Err(reply.reason()),
            }
        }
        ElasticOperation::CreateAlias { index, alias } => {
            aliases(
                es,
                json!([{ "add": { "index": index, "alias": alias } }]),
                false,
            )
            .await
        }
        ElasticOperation::DeleteAlias { index, alias } => {
            let action = json!([{ "remove": { "index": index, "alias": alias } }]);
            aliases(es, action, may_be_done).await
        }
        ElasticOperation::Reindex { source, dest } => reindex(es, source, dest).await,
    }
}

/// One `_aliases` request; `missing_is_done` accepts removing what is not there.
async fn aliases(es: &Es, actions: Value, missing_is_done: bool) -> Result<(), Failure> {
    let reply = es
        .call(
            Method::Post,
            "/_aliases",
            Some(&json!({ "actions": actions })),
        )
        .await
        .map_err(|e| e.to_string())?;
    match reply.error_type() {
        _ if reply.is_success() => Ok(()),
        Some("aliases_not_found_exception") if missing_is_done => Ok(()),
        _ => Err(reply.reason()),
    }
}

async fn reindex(es: &Es, source: &str, dest: &str) -> Result<(), Failure> {
    let body = json!({ "source": { "index": source }, "dest": { "index": dest } });
    let reply = es
        .call_with_timeout(
            Method::Post,
            "/_reindex?refresh=true&wait_for_completion=true",
            Some(&body),
            Some(REINDEX_TIMEOUT),
        )
        .await
        .map_err(|e| e.to_string())?;
    if !reply.is_success() {
        return Err(reply.reason());
    }
    let failures = reply.body["failures"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if let Some(first) = failures.first() {
        return Err(format!(
            "{} document(s) could not be written into `{dest}`; the first: {}",
            failures.len(),
            first["cause"]["reason"]
                .as_str()
                .map_or_else(|| first.to_string(), str::to_string)
        ));
    }
    if reply.body["timed_out"].as_bool() == Some(true) {
        return Err(format!("the server's reindex into `{dest}` timed out"));
    }
    Ok(())
}
