//! `job plan` for MongoDB: what each phase will run, the document estimate, and what
//! depends on the source collection (views reading it by name, its validator, indexes
//! the new collection will not have, a collection in the way of cutover). Reads only;
//! changes nothing.

use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::Database;

use super::source::CHECKPOINTS;
use super::{connect, error_code, require_replica_set, store_error, Sides, NAMESPACE_NOT_FOUND};
use crate::backend::plan::{Dependent, JobPlan};
use crate::config::Config;
use crate::error::Result;
use crate::job::{CatchUpMethod, ContractAfter, JobKind, JobSpec};
use crate::migrate::MongoOperation;

pub async fn plan(config: &Config, spec: &JobSpec) -> Result<JobPlan> {
    let sides = Sides::of(config, spec)?;
    let (source_name, name) = (&spec.source.database, &sides.source_collection);
    let source = connect(source_name, sides.source_url).await?;
    let target = connect(&sides.target_name, sides.target_url).await?;
    let captures = spec.catch_up.method == CatchUpMethod::ChangeStream;
    if captures {
        require_replica_set(source_name, sides.source_url, &source).await?;
    }
    let read = |context: &'static str| {
        move |e: mongodb::error::Error| store_error(source_name, sides.source_url, context, e)
    };
    let present = super::has_collection(&source, name)
        .await
        .map_err(read("cannot list the source database's collections"))?;
    if !present {
        return Err(super::missing_source(&spec.name, name, &source));
    }
    let rows_estimate = source
        .collection::<Document>(name)
        .estimated_document_count()
        .await
        .map_err(read("cannot count the source's documents"))?;
    let copy = spec.kind == JobKind::Copy;
    let aside = format!("{name}_old");
    let target_collection = &sides.target_collection;
    let mut phases = Vec::new();

    let mut expand: Vec<String> = spec
        .expand
        .operations
        .iter()
        .map(|o| o.to_string())
        .collect();
    if copy {
        expand.push(format!(
            "create_collection `{target_collection}` in `{}`, unless it exists",
            sides.target_name
        ));
    }
    expand.push(format!(
        "job checkpoints in `{CHECKPOINTS}` of `{}`",
        sides.target_name
    ));
    if captures {
        expand.push(format!(
            "a change stream on `{source_name}` (the database, so the source's rename does not end it), opened before the first read; its resume tokens kept with the checkpoints"
        ));
    }
    phases.push(("expand".to_string(), expand));

    let batches = format!(
        "{} workers, {} documents a batch",
        spec.copy.concurrency, spec.copy.batch_size
    );
    let batch = if copy {
        let reshaped = if spec.transform.pipeline.is_empty() {
            String::new()
        } else {
            format!(", then {}", stages(&spec.transform.pipeline.0))
        };
        format!(
            "aggregate `{name}` [$match {{_id: in the batch's range}}, $sort {{_id: 1}}{reshaped}], written into `{target_collection}` on `{}` by _id (inserted, or replaced where it is), the range's checkpoint after it",
            sides.target_name
        )
    } else {
        format!(
            "update_many `{name}` {{_id: in the batch's range}} with {}, the range's checkpoint after it",
            stages(&spec.transform.update.0)
        )
    };
    phases.push((format!("copy ({batches})"), vec![batch]));
    if captures {
        let apply = if copy {
            "inserts and replaces written whole, updates as the fields they set and remove, deletes by _id; idempotent, so a replay converges"
        } else {
            "every document an insert, update or replace touched filled again with the same pipeline, by _id, until contract"
        };
        phases.push((
            "catch_up".to_string(),
            vec![format!("the change stream on `{source_name}`: {apply}")],
        ));
    }
    phases.push((
        "verify".to_string(),
        vec![if copy {
            "count and hash of the documents' bytes per _id range on both sides (the source through the pipeline); ranges that differ under writes compared document by document again after catching up".to_string()
        } else {
            "every document as the pipeline makes it, per _id range; those that are not filled again and compared once more".to_string()
        }],
    ));
    if copy {
        let mut steps = vec![format!(
            "collMod `{name}` validator {{$expr: false}}  -- the fence: every insert and update refused, its own validator kept aside"
        )];
        if captures {
            steps.push("-- apply the last changes from the change stream".to_string());
            steps.push(format!(
                "-- the way back: a change stream on `{}`, so writes to the new `{name}` are carried to `{aside}` until contract",
                sides.target_name
            ));
        }
        steps.push(format!(
            "renameCollection `{}.{name}` to `{}.{aside}`, then its own validator put back",
            source.name(),
            source.name()
        ));
        if !(sides.target_name == *source_name && target_collection == name) {
            steps.push(format!(
                "renameCollection `{db}.{target_collection}` to `{db}.{name}`  -- documents written under `{name}` meanwhile moved in first",
                db = target.name()
            ));
        }
        phases.push(("cutover".to_string(), steps));
    }
    let contract = if copy {
        format!("drop `{aside}`, the checkpoints")
    } else if captures {
        "fill what was written since verify, then drop the checkpoints".to_string()
    } else {
        "drop the checkpoints".to_string()
    };
    phases.push((
        format!(
            "contract ({})",
            match spec.contract.after {
                ContractAfter::Manual => "on `switchyard job contract`".to_string(),
                ContractAfter::Delay(delay) =>
                    format!("{} after cutover", humantime::format_duration(delay)),
            }
        ),
        vec![contract],
    ));

    let dependents = if copy {
        let mut found = views_on(&source, name)
            .await
            .map_err(read("cannot list the source database's views"))?;
        found.extend(
            kept_aside(&source, name, &aside)
                .await
                .map_err(read("cannot read the source's options"))?,
        );
        let created = created_indexes(&spec.expand.operations, target_collection);
        found.extend(
            indexes_left_behind(&source, name, &target, target_collection, &created)
                .await
                .map_err(read("cannot list indexes"))?,
        );
        found
    } else {
        Vec::new()
    };
    Ok(JobPlan {
        rows_estimate,
        phases,
        dependents,
    })
}

/// Stages as the JSON a user wrote them in.
fn stages(stages: &[serde_json::Value]) -> String {
    serde_json::Value::Array(stages.to_vec()).to_string()
}

/// Views read their collection by name, so after cutover they read the new one.
async fn views_on(database: &Database, name: &str) -> mongodb::error::Result<Vec<Dependent>> {
    let views: Vec<_> = database
        .list_collections()
        .filter(doc! {"options.viewOn": name})
        .await?
        .try_collect()
        .await?;
    Ok(views
        .into_iter()
        .map(|view| Dependent {
            kind: "view".to_string(),
            name: view.name,
            blocks_cutover: false,
            handling: format!(
                "reads `{name}` by name, so after cutover it reads the new collection (its pipeline must fit the new shape)"
            ),
        })
        .collect())
}

/// The source's validator, which stays with it under `<name>_old`, and a collection
/// already called `<name>_old`, which expand refuses.
async fn kept_aside(
    database: &Database,
    name: &str,
    aside: &str,
) -> mongodb::error::Result<Vec<Dependent>> {
    let mut found = Vec::new();
    let collections: Vec<_> = database
        .list_collections()
        .filter(doc! {"name": {"$in": [name, aside]}})
        .await?
        .try_collect()
        .await?;
    for collection in collections {
        if collection.name == aside {
            found.push(Dependent {
                kind: "collection".to_string(),
                name: aside.to_string(),
                blocks_cutover: true,
                handling: "cutover sets the source aside under this name: drop or rename it first (expand refuses to start while it exists)".to_string(),
            });
        } else if let Some(validator) = collection.options.validator {
            found.push(Dependent {
                kind: "validator".to_string(),
                name: name.to_string(),
                blocks_cutover: false,
                handling: format!(
                    "{validator} stays with `{aside}`; the new collection keeps its own (give it one in [expand] with create_collection options)"
                ),
            });
        }
    }
    Ok(found)
}

/// The keys of the indexes `[expand]` creates on `collection`.
fn created_indexes(operations: &[MongoOperation], collection: &str) -> Vec<Document> {
    operations
        .iter()
        .filter_map(|operation| match operation {
            MongoOperation::CreateIndex {
                collection: on,
                index,
                ..
            } if on == collection => super::operations::index_keys(index).ok(),
            _ => None,
        })
        .collect()
}

/// The source's indexes that neither the target nor `[expand]` has: queries that use
/// them lose them at cutover.
async fn indexes_left_behind(
    source: &Database,
    name: &str,
    target: &Database,
    target_collection: &str,
    created: &[Document],
) -> mongodb::error::Result<Vec<Dependent>> {
    let on_target = indexes(target, target_collection).await?;
    Ok(indexes(source, name)
        .await?
        .into_iter()
        .filter(|(_, keys)| {
            !keys.contains_key("_id") && !on_target.iter().any(|(_, k)| k == keys) && !created.contains(keys)
        })
        .map(|(index, keys)| Dependent {
            kind: "index".to_string(),
            name: index,
            blocks_cutover: false,
            handling: format!(
                "{keys} is on the source only: the new collection will not have it unless [expand] creates it"
            ),
        })
        .collect())
}

/// A collection's indexes, by name with their keys; none when it does not exist.
async fn indexes(
    database: &Database,
    collection: &str,
) -> mongodb::error::Result<Vec<(String, Document)>> {
    let listed = match database
        .collection::<Document>(collection)
        .list_indexes()
        .await
    {
        Ok(cursor) => cursor.try_collect::<Vec<_>>().await?,
        Err(e) if error_code(&e) == Some(NAMESPACE_NOT_FOUND) => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok(listed
        .into_iter()
        .map(|index| {
            let name = index
                .options
                .and_then(|options| options.name)
                .unwrap_or_default();
            (name, index.keys)
        })
        .collect())
}
