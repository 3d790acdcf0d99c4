//! A PostgreSQL table, and a MongoDB collection, copied into a new Elasticsearch index
//! behind an alias, through the real binary, on the servers named by
//! `SWITCHYARD_TEST_POSTGRES_URL`, `SWITCHYARD_TEST_MONGODB_URL` and
//! `SWITCHYARD_TEST_ELASTICSEARCH_URL`: every document equal to its row (PostgreSQL's
//! own `to_jsonb` of it is the oracle) or to its document as the job's pipeline makes it,
//! after a copy under updates, key changes and deletes; a kill mid-copy resumed; abort
//! leaving the alias as it was; refusals. The collection's copy under writes catches up
//! from the change stream, so it needs a replica set (skipped, saying so, on a
//! standalone server).

mod common;

use std::collections::BTreeMap;

use common::elastic::Elastic;
use common::mongo::{spawn_writer, MongoDb};
use common::skip;
use common::writer::{create_items, seed, Writer};
use common::Project;
use elasticsearch::http::Method;
use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use serde_json::{json, Value};

const ROWS: i64 = 20_000;

/// `items` (see [`create_items`]) with columns of the common types, filled by defaults.
fn items(project: &Project, rows: i64) -> BTreeMap<i64, String> {
    let mut client = project.db.client();
    let model = create_items(&mut client, "items", rows);
    client
        .batch_execute(
            "ALTER TABLE items ADD COLUMN price numeric(10,2) DEFAULT 12.50,
                 ADD COLUMN tags text[] DEFAULT '{a,\"b c\"}',
                 ADD COLUMN meta jsonb DEFAULT '{\"k\": [1, 2], \"o\": {\"x\": null}}',
                 ADD COLUMN seen timestamptz DEFAULT '2024-05-01 10:00:00.5+02',
                 ADD COLUMN active boolean DEFAULT true",
        )
        .unwrap();
    model
}

/// Every row of `items` as PostgreSQL makes it JSON, by `_id`.
fn rows_as_json(project: &Project) -> BTreeMap<String, Value> {
    project
        .db
        .client()
        .query("SELECT id::text, to_jsonb(i)::text FROM items i", &[])
        .unwrap()
        .iter()
        .map(|row| {
            let text: String = row.get(1);
            (row.get(0), serde_json::from_str(&text).unwrap())
        })
        .collect()
}

fn job(elastic: &Elastic, extra: &str) -> (String, String) {
    let name = format!("{}_items_index", elastic.prefix);
    let text = format!(
        r#"
name = "{name}"
kind = "copy"

[source]
database = "postgresql"
table = "public.items"

[target]
database = "elasticsearch"
index = "{alias}"

[expand]
mapping = {{ properties = {{ v = {{ type = "keyword" }}, pad = {{ type = "text", index = false }}, tags = {{ type = "keyword" }} }} }}

[verify]
method = "checksum"

[contract]
after = "manual"
{extra}"#,
        alias = elastic.index("items"),
    );
    (name, text)
}

/// Documents differing from their rows, named (at most five).
fn differing(found: &BTreeMap<String, Value>, expected: &BTreeMap<String, Value>) -> Vec<String> {
    expected
        .keys()
        .chain(found.keys())
        .filter(|id| found.get(*id) != expected.get(*id))
        .take(5)
        .map(|id| format!("{id}: {:?} != {:?}", found.get(id), expected.get(id)))
        .collect()
}

#[test]
fn a_table_copied_under_writes_moves_the_alias_onto_an_index_equal_to_it() {
    let elastic = Elastic::new();
    let project = Project::with_config(&elastic.config());
    let model = items(&project, ROWS);
    // The alias names an index already: the job builds the next one and moves it.
    let alias = elastic.index("items");
    let v1 = format!("{alias}_v1");
    elastic.ok(Method::Put, &format!("/{v1}"), None);
    elastic.ok(
        Method::Post,
        "/_aliases",
        Some(&json!({"actions": [{"add": {"index": v1, "alias": alias}}]})),
    );
    let (name, text) = job(&elastic, "[cutover]\nmode = \"manual\"\n");
    let file = project.job_file(&name, &text);

    let plan = project.run(&["job", "plan", &file]).ok();
    assert!(
        plan.stdout
            .contains(&format!("`{alias}` from `{v1}` to `{alias}_v2`")),
        "{}",
        plan.stdout
    );

    let writer = Writer::start(&project.db.url, "items", model, seed());
    let run = project.run(&["job", "run", &file]).ok();
    assert!(run.stdout.contains("ready to cut over"), "{}", run.stdout);
    let (_, writes) = writer.stop();
    assert!(
        writes > 100,
        "the writer wrote during the job ({writes} writes)"
    );
    assert_eq!(
        elastic.alias_targets(&alias),
        std::slice::from_ref(&v1),
        "not moved before cutover"
    );

    project.run(&["job", "cutover", &name]).ok();
    let v2 = format!("{alias}_v2");
    assert_eq!(elastic.alias_targets(&alias), std::slice::from_ref(&v2));
    let (found, expected) = (elastic.documents(&v2), rows_as_json(&project));
    assert_eq!(found.len(), expected.len(), "counts");
    assert_eq!(
        differing(&found, &expected),
        Vec::<String>::new(),
        "every document equals its row"
    );
    let (_, settings) = elastic.call(
        Method::Get,
        &format!("/{v2}/_settings?flat_settings=true"),
        None,
    );
    assert_ne!(
        settings[&v2]["settings"]["index.refresh_interval"], "-1",
        "refresh restored: {settings}"
    );
    assert!(project.db.exists("items"), "the table is left as it was");

    project.run(&["job", "contract", &name]).ok();
    project.run(&["job", "run", &file]).ok();
    assert_eq!(project.job_status(&name)["phase"], "done");
    assert!(!elastic.exists(&v1), "contract deleted the old index");
    assert!(elastic.exists(&v2));
    let slots = project.db.column(&format!(
        "SELECT count(*)::text FROM pg_replication_slots WHERE slot_name LIKE '%{}%'",
        elastic.prefix
    ));
    assert_eq!(slots, ["0"], "the job's replication slot is gone");
}

#[test]
fn a_killed_copy_resumes_and_abort_leaves_the_alias_as_it_was() {
    let elastic = Elastic::new();
    let project = Project::with_config(&elastic.config());
    items(&project, 6000);
    let alias = elastic.index("items");
    let (name, text) = job(
        &elastic,
        "[copy]\nbatch_size = 500\nrows_per_second = 3000\n\n[cutover]\nmode = \"manual\"\n",
    );
    let file = project.job_file(&name, &text);

    project.resume_after_a_kill_mid_copy(&name, &file, 2000);
    let v1 = format!("{alias}_v1");
    let (found, expected) = (elastic.documents(&v1), rows_as_json(&project));
    assert_eq!(
        differing(&found, &expected),
        Vec::<String>::new(),
        "nothing lost or doubled"
    );
    assert_eq!(elastic.alias_targets(&alias), Vec::<String>::new());

    project.run(&["job", "abort", &name]).ok();
    assert_eq!(project.job_status(&name)["phase"], "aborted");
    assert!(!elastic.exists(&v1), "the index it created is gone");
    assert!(!elastic.exists(&alias), "no alias was made");
}

#[test]
fn a_copy_into_an_index_refuses_what_it_cannot_do() {
    let elastic = Elastic::new();
    let project = Project::with_config(&elastic.config());
    items(&project, 10);
    let (name, text) = job(&elastic, "[transform]\ncolumns = { v = \"upper(s.v)\" }\n");
    let run = project
        .run(&["job", "run", &project.job_file(&name, &text)])
        .expect_code(2);
    assert!(
        run.stderr
            .contains("field `transform`: a copy of a table into an index"),
        "{}",
        run.stderr
    );

    // A plain index under the alias's name: the alias cannot be made.
    let index = elastic.index("items");
    elastic.ok(Method::Put, &format!("/{index}"), None);
    let (name, text) = job(&elastic, "");
    let run = project
        .run(&["job", "run", &project.job_file(&name, &text)])
        .expect_code(2);
    assert!(
        run.stderr
            .contains(&format!("`{index}` is an index, not an alias")),
        "{}",
        run.stderr
    );
}

/// The ObjectId and the date every order of the collection tests refers to, and the
/// forms a document of the index has them in.
const ORDER_REF: &str = "65f1a2b3c4d5e6f708091a2b";
const ORDER_AT_MILLIS: i64 = 1_714_557_600_500;
const ORDER_AT: &str = "2024-05-01T10:00:00.5Z";

/// A project with `orders` (of `count` documents with `_id`s from 0) in a database of
/// its own on the MongoDB server.
fn orders(count: i64) -> (Project, MongoDb, Elastic) {
    let (elastic, mongo) = (Elastic::new(), MongoDb::new());
    let project = Project::with_config(&format!("{}{}", elastic.config(), mongo.config()));
    let reference = ObjectId::parse_str(ORDER_REF).unwrap();
    mongo.insert(
        "orders",
        (0..count)
            .map(|i| doc! {"_id": i, "customer": format!("c{}", i % 100), "cents": i * 3, "items": [i, i + 1],
                           "ref": reference, "at": DateTime::from_millis(ORDER_AT_MILLIS)})
            .collect(),
    );
    (project, mongo, elastic)
}

/// A copy of `orders` into the index `<prefix>_orders`, through a pipeline that adds
/// `euros` and drops `items`.
fn orders_job(elastic: &Elastic, extra: &str) -> (String, String) {
    let name = format!("{}_orders_index", elastic.prefix);
    let text = format!(
        r#"
name = "{name}"
kind = "copy"

[source]
database = "mongodb"
collection = "orders"

[target]
database = "elasticsearch"
index = "{alias}"

[expand]
mapping = {{ properties = {{ customer = {{ type = "keyword" }}, at = {{ type = "date" }} }} }}

[transform]
pipeline = '[{{"$set": {{"euros": {{"$divide": ["$cents", 100]}}}}}}, {{"$unset": "items"}}]'

[verify]
method = "checksum"

[cutover]
mode = "manual"

[contract]
after = "manual"
{extra}"#,
        alias = elastic.index("orders"),
    );
    (name, text)
}

/// Every order as the index is to hold it, by `_id`: the pipeline's output (written
/// out here, not by the job's code), the `_id` as text, the ObjectId as hex, the date as
/// ISO 8601.
fn orders_as_documents(mongo: &MongoDb) -> BTreeMap<String, Value> {
    mongo
        .documents("orders")
        .into_iter()
        .map(|mut order: Document| {
            let id = match order.remove("_id") {
                Some(Bson::Int64(id)) => id.to_string(),
                other => panic!("an order's _id: {other:?}"),
            };
            order.remove("items");
            let cents = match order.get("cents") {
                Some(Bson::Int64(cents)) => *cents as f64,
                Some(Bson::Int32(cents)) => f64::from(*cents),
                other => panic!("an order's cents: {other:?}"),
            };
            order.insert("euros", cents / 100.0);
            let mut document = Bson::Document(order).into_relaxed_extjson();
            for (field, text) in [("ref", ORDER_REF), ("at", ORDER_AT)] {
                if document.get(field).is_some() {
                    document[field] = json!(text);
                }
            }
            (id, document)
        })
        .collect()
}

#[test]
fn a_collection_copied_under_writes_moves_the_alias_onto_an_index_equal_to_it() {
    let test = "a_collection_copied_under_writes_moves_the_alias_onto_an_index_equal_to_it";
    let (project, mongo, elastic) = orders(4000);
    if let Err(why) = mongo.replica_set() {
        return skip(test, &why);
    }
    let (name, text) = orders_job(
        &elastic,
        "[copy]\nbatch_size = 500\nrows_per_second = 4000\n",
    );
    let file = project.job_file(&name, &text);
    let alias = elastic.index("orders");
    let plan = project.run(&["job", "plan", &file]).ok();
    assert!(
        plan.stdout
            .contains("apply the changes to orders from the change stream")
            && plan
                .stdout
                .contains(&format!("create the alias `{alias}` on `{alias}_v1`")),
        "{}",
        plan.stdout
    );

    let writer = spawn_writer(&mongo.url, "orders", 1, 300);
    let run = project.run(&["job", "run", &file]).ok();
    assert!(run.stdout.contains("ready to cut over"), "{}", run.stdout);
    writer.join().unwrap();
    project.run(&["job", "cutover", &name]).ok();
    let status = project.job_status(&name);
    assert!(
        status["changes_applied"].as_u64().unwrap_or(0) > 0,
        "the writer's changes came through the change stream: {status}"
    );

    let v1 = format!("{alias}_v1");
    assert_eq!(elastic.alias_targets(&alias), std::slice::from_ref(&v1));
    let (found, expected) = (elastic.documents(&v1), orders_as_documents(&mongo));
    assert!(
        expected.keys().any(|id| id.starts_with("1000")),
        "the writer inserted orders"
    );
    assert_eq!(found.len(), expected.len(), "counts");
    assert_eq!(
        differing(&found, &expected),
        Vec::<String>::new(),
        "every document is its order through the pipeline"
    );
    assert_eq!(
        mongo.collections(),
        ["orders"],
        "the collection is left as it was"
    );

    project.run(&["job", "contract", &name]).ok();
    project.run(&["job", "run", &file]).ok();
    assert_eq!(project.job_status(&name)["phase"], "done");
}

#[test]
fn a_killed_collection_copy_resumes_and_abort_leaves_no_index() {
    let (project, mongo, elastic) = orders(3000);
    let (name, text) = orders_job(
        &elastic,
        "[copy]\nbatch_size = 250\nrows_per_second = 2000\n\n[catch_up]\nmethod = \"none\"\n",
    );
    let file = project.job_file(&name, &text);

    project.resume_after_a_kill_mid_copy(&name, &file, 1000);
    let v1 = format!("{}_v1", elastic.index("orders"));
    let (found, expected) = (elastic.documents(&v1), orders_as_documents(&mongo));
    assert_eq!(found.len(), 3000);
    assert_eq!(
        differing(&found, &expected),
        Vec::<String>::new(),
        "nothing lost or doubled"
    );

    project.run(&["job", "abort", &name]).ok();
    assert_eq!(project.job_status(&name)["phase"], "aborted");
    assert!(!elastic.exists(&v1), "the index it created is gone");
    assert!(
        !elastic.exists(&elastic.index("orders")),
        "no alias was made"
    );

    let (bad, text) = orders_job(&elastic, "[catch_up]\nmethod = \"watermark\"\n");
    let run = project
        .run(&[
            "job",
            "run",
            &project.job_file(&format!("{bad}_bad"), &text),
        ])
        .expect_code(2);
    assert!(
        run.stderr.contains("field `catch_up.method`: `watermark` is for a reindex; a table catches up by `logical_replication`, a collection by `change_stream`"),
        "{}",
        run.stderr
    );
}
