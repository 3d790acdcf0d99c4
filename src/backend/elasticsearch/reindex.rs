//! A reindex job's indexes and its two sides joined for the engine.
//!
//! `[source] index` names an alias; the index it points at is the old index, and the job
//! builds `<alias>_vN` (N one past the highest `<alias>_v<number>` there is). The names
//! are saved in the job's checkpoints when expand creates the new index, so a run after
//! the cutover (when the alias points at the new index) still knows which is which.
//!
//! The new index's mapping and settings are `[expand] mapping` and `settings` when
//! given, else the old index's own (its analysis, shards, replicas and refresh
//! interval; not what the server sets by itself, such as its uuid).

use std::sync::Arc;

use elasticsearch::http::Method;
use serde_json::{json, Map, Value};

use super::checkpoints::Checkpoints;
use super::sink::{Direction, ElasticSink, Indexes, Origin};
use super::source::ElasticSource;
use super::{path_segment, Es};
use crate::backend::plan::JobPlan;
use crate::config::Config;
use crate::engine::Pipeline;
use crate::error::{Error, Result};
use crate::job::{CatchUpMethod, ContractAfter, CopyMethod, JobSpec};
use crate::state::StateStore;

/// The old index's settings a new index takes over when the job names none.
const CARRIED_SETTINGS: &[&str] = &[
    "index.number_of_shards",
    "index.number_of_replicas",
    "index.refresh_interval",
    "index.max_result_window",
    "index.analysis.",
    "index.similarity.",
    "index.mapping.",
];

/// A reindex job's source and sink (and its way back, when it catches up).
pub async fn open_job(
    config: &Config,
    spec: &JobSpec,
    store: &Arc<dyn StateStore>,
) -> Result<Pipeline> {
    let es = Es::connect(
        &spec.source.database,
        config.database(&spec.source.database)?,
    )?;
    let opensearch = es.is_opensearch().await?;
    let alias = spec.source.index.as_deref().unwrap_or_default();
    let checkpoints = Checkpoints::new(store, &spec.name);
    let state = checkpoints.state().await?;
    let indexes = indexes(&es, &spec.name, &state, alias, false).await?;
    let old = old_of(&indexes)?;
    let field = watermark_field(spec);
    let source = ElasticSource::open(&es, &indexes.alias, &old, opensearch, field);
    // Once expand ran (its names saved), the new index has its mapping and settings,
    // and the old index may be gone (contract deleted it).
    let expanded = state.contains_key("new");
    let direction = new_index(&es, spec, expanded, Some(&old)).await?;
    let mut sink = ElasticSink::new(
        &es,
        opensearch,
        checkpoints,
        indexes.clone(),
        direction,
        Origin::Index,
        field.is_some(),
    );
    if let Some(slices) = server_slices(spec) {
        sink = sink.copied_by_server(slices);
    }
    if field.is_none() {
        return Ok(Pipeline::new(Box::new(source), Box::new(sink)));
    }
    let (back_source, back_sink) = open_way_back(&es, store, opensearch, spec, &indexes);
    let sink = sink.with_way_back(back_source, back_sink);
    let spec = Arc::new(spec.clone());
    let store = store.clone();
    Ok(
        Pipeline::new(Box::new(source), Box::new(sink)).with_reverse(Box::new(move || {
            let (es, spec, indexes) = (es.clone(), spec.clone(), indexes.clone());
            let store = store.clone();
            Box::pin(async move {
                let (source, sink) = open_way_back(&es, &store, opensearch, &spec, &indexes);
                Ok(Pipeline::new(Box::new(source), Box::new(sink)))
            })
        })),
    )
}

/// The way back after a cutover: the new index is its source (caught up by the same
/// watermark), the old one its sink; its cutover moves the alias back.
fn open_way_back(
    es: &Es,
    store: &Arc<dyn StateStore>,
    opensearch: bool,
    spec: &JobSpec,
    indexes: &Indexes,
) -> (ElasticSource, ElasticSink) {
    let source = ElasticSource::open(
        es,
        &indexes.alias,
        &indexes.new,
        opensearch,
        watermark_field(spec),
    );
    let name = crate::backend::back_name(&spec.name);
    let sink = ElasticSink::new(
        es,
        opensearch,
        Checkpoints::new(store, &name),
        indexes.clone(),
        Direction::Back,
        Origin::Index,
        true,
    );
    (source, sink)
}

/// `_reindex`'s slices when the cluster copies (`[copy] method = "server"`).
fn server_slices(spec: &JobSpec) -> Option<String> {
    (spec.copy.method == CopyMethod::Server).then(|| {
        spec.copy
            .slices
            .as_ref()
            .and_then(|slices| slices.parameter().ok())
            .unwrap_or_else(|| "auto".to_string())
    })
}

fn watermark_field(spec: &JobSpec) -> Option<&str> {
    (spec.catch_up.method == CatchUpMethod::Watermark)
        .then_some(spec.catch_up.field.as_deref())
        .flatten()
}

/// A reindex's old index (its alias names one, or [`indexes`] refused).
fn old_of(indexes: &Indexes) -> Result<String> {
    indexes
        .old
        .clone()
        .ok_or_else(|| Error::State(format!("the alias `{}` names no index", indexes.alias)))
}

/// How expand is to create the new index: with `[expand] mapping` and `settings`, else
/// `old`'s (none for a copy that creates its alias). Nothing once expand ran (the index
/// has them, and `old` may be gone).
pub(super) async fn new_index(
    es: &Es,
    spec: &JobSpec,
    expanded: bool,
    old: Option<&str>,
) -> Result<Direction> {
    if expanded {
        return Ok(Direction::Forward {
            mapping: Value::Null,
            settings: Map::new(),
        });
    }
    Ok(Direction::Forward {
        mapping: mapping(es, spec, old).await?,
        settings: settings(es, spec, old).await?,
    })
}

/// A job's indexes: as its checkpoints' `state` says once expand ran, else from the
/// alias. With `may_create` (a copy), an alias that does not exist yet is created at
/// cutover.
pub(super) async fn indexes(
    es: &Es,
    job: &str,
    state: &Map<String, Value>,
    alias: &str,
    may_create: bool,
) -> Result<Indexes> {
    let alias = alias.to_string();
    if let Some(new) = state.get("new").and_then(Value::as_str) {
        return Ok(Indexes {
            alias,
            old: state.get("old").and_then(Value::as_str).map(str::to_string),
            new: new.to_string(),
        });
    }
    let reply = es
        .call(
            Method::Get,
            &format!("/_alias/{}", path_segment(&alias)),
            None,
        )
        .await?;
    let pointed: Vec<String> = match reply.status {
        404 => Vec::new(),
        _ if reply.is_success() => reply
            .body
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default(),
        _ => return Err(es.refused("cannot read the alias", &reply)),
    };
    let old = match pointed.as_slice() {
        [one] => Some(one.clone()),
        [] => {
            let is_index = es.call(Method::Head, &format!("/{}", path_segment(&alias)), None).await?.is_success();
            if is_index {
                return Err(Error::Refused(format!("job `{}`: `{alias}` is an index, not an alias: a job moves an alias from one index to the next. Give the index an alias (a migration with `reindex` into `{alias}_v1` and `create_alias`), let applications use the alias, then run the job", job)));
            }
            if !may_create {
                return Err(Error::Refused(format!("job `{}`: no alias or index is named `{alias}` in `{}`", job, es.name())));
            }
            None
        }
        many => {
            return Err(Error::Refused(format!(
                "job `{}`: the alias `{alias}` points at {} indexes ({}); a reindex moves an alias that names one",
                job,
                many.len(),
                many.join(", ")
            )))
        }
    };
    let reply = es
        .call(
            Method::Get,
            &format!("/{}_v*/_settings", path_segment(&alias)),
            None,
        )
        .await?;
    let mut names: Vec<String> = reply
        .body
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    names.extend(old.clone());
    let highest = names
        .iter()
        .filter_map(|name| {
            name.strip_prefix(&format!("{alias}_v"))?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    Ok(Indexes {
        new: format!("{alias}_v{}", highest + 1),
        alias,
        old,
    })
}

async fn mapping(es: &Es, spec: &JobSpec, old: Option<&str>) -> Result<Value> {
    if let Some(mapping) = &spec.expand.mapping {
        return Ok(mapping.clone());
    }
    let Some(old) = old else {
        return Ok(json!({}));
    };
    let reply = es
        .expect(
            Method::Get,
            &format!("/{}/_mapping", path_segment(old)),
            None,
            "cannot read the old index's mapping",
        )
        .await?;
    Ok(reply[old]["mappings"].clone())
}

/// The new index's settings, flat (`index.analysis.analyzer.x.type`).
async fn settings(es: &Es, spec: &JobSpec, old: Option<&str>) -> Result<Map<String, Value>> {
    if let Some(settings) = &spec.expand.settings {
        let mut flat = Map::new();
        flatten("", settings, &mut flat);
        return Ok(flat
            .into_iter()
            .map(|(key, value)| match key.starts_with("index.") {
                true => (key, value),
                false => (format!("index.{key}"), value),
            })
            .collect());
    }
    let Some(old) = old else {
        return Ok(Map::new());
    };
    let path = format!("/{}/_settings?flat_settings=true", path_segment(old));
    let reply = es
        .expect(
            Method::Get,
            &path,
            None,
            "cannot read the old index's settings",
        )
        .await?;
    let Some(Value::Object(all)) = reply[old].get("settings").cloned() else {
        return Ok(Map::new());
    };
    Ok(all
        .into_iter()
        .filter(|(key, _)| {
            CARRIED_SETTINGS
                .iter()
                .any(|kept| key == kept || (kept.ends_with('.') && key.starts_with(kept)))
        })
        .collect())
}

fn flatten(prefix: &str, value: &Value, into: &mut Map<String, Value>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, inner, into);
            }
        }
        other => {
            into.insert(prefix.to_string(), other.clone());
        }
    }
}

/// What `job plan` prints for a reindex; reads only.
pub async fn plan_job(
    config: &Config,
    spec: &JobSpec,
    store: &Arc<dyn StateStore>,
) -> Result<JobPlan> {
    let es = Es::connect(
        &spec.source.database,
        config.database(&spec.source.database)?,
    )?;
    let alias = spec.source.index.as_deref().unwrap_or_default();
    let state = Checkpoints::new(store, &spec.name).state().await?;
    let indexes = indexes(&es, &spec.name, &state, alias, false).await?;
    let old = &old_of(&indexes)?;
    let Indexes { new, .. } = &indexes;
    let count = es.count(old).await?;
    let watermark = watermark_field(spec);
    let whose = |given: bool| match given {
        true => "the job's".to_string(),
        false => format!("`{old}`'s"),
    };
    let mut phases = vec![
        (
            "expand".to_string(),
            vec![format!(
                "create `{new}` with {} mapping and {} settings, refresh off and no replicas during the copy",
                whose(spec.expand.mapping.is_some()),
                whose(spec.expand.settings.is_some()),
            )],
        ),
        (
            "copy".to_string(),
            vec![match server_slices(spec) {
                Some(slices) => format!(
                    "the cluster copies `{old}` into `{new}`: one `_reindex` in {slices} slices at {}, external versions, followed through the tasks API",
                    match spec.copy.rows_per_second {
                        0 => "full speed".to_string(),
                        rate => format!("{rate} documents a second"),
                    }
                ),
                None => format!("read `{old}` in point-in-time order, {} documents per `_bulk` into `{new}` (external versions)", spec.copy.batch_size),
            }],
        ),
    ];
    if let Some(field) = watermark {
        phases.push((
            "catch_up".to_string(),
            vec![format!(
                "copy again the documents of `{old}` whose `{field}` is newer than the last pass"
            )],
        ));
    }
    phases.push((
        "verify".to_string(),
        vec![format!(
            "count and hash the documents of `{old}` and `{new}` in {} buckets by _id",
            super::digest::BUCKETS
        )],
    ));
    phases.push((
        "cutover".to_string(),
        vec![
            format!("restore `{new}`'s refresh interval and replicas, refresh it"),
            format!("write-block `{old}`, copy its last changes and deletes"),
            format!("one `_aliases` request: `{alias}` from `{old}` to `{new}` (with is_write_index when `{old}` had it)"),
        ],
    ));
    phases.push((
        "contract".to_string(),
        vec![match spec.contract.after {
            ContractAfter::Manual => {
                format!("delete `{old}` on `switchyard job contract {}`", spec.name)
            }
            ContractAfter::Delay(delay) => format!(
                "delete `{old}` {} after cutover",
                humantime::format_duration(delay)
            ),
        }],
    ));
    Ok(JobPlan {
        rows_estimate: count,
        phases,
        dependents: Vec::new(),
    })
}
