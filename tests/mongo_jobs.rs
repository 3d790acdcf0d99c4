//! MongoDB online jobs through the real binary, on the server named by
//! `SWITCHYARD_TEST_MONGODB_URL`: a copy with a transform pipeline through cutover and
//! contract, equal by count and content; a backfill; abort; the refusals a user sees.
//! Catching up from a change stream needs a replica set (the stand-in of
//! `scripts/services` answers as one, with change streams of its own): those tests say
//! they are skipped, and why, on a standalone server, and the standalone refusal is
//! skipped on a replica set.

mod common;

use common::mongo::MongoDb;
use common::skip;
use common::Project;
use mongodb::bson::{doc, Bson, Document};

fn project() -> (Project, MongoDb) {
    let mongo = MongoDb::new();
    let project = Project::with_config(&mongo.config());
    (project, mongo)
}

/// A project on a replica set, or `None` with `test` reported skipped: change streams
/// need one.
fn project_on_a_replica_set(test: &str) -> Option<(Project, MongoDb)> {
    let (project, mongo) = project();
    match mongo.replica_set() {
        Ok(()) => Some((project, mongo)),
        Err(why) => {
            skip(test, &why);
            None
        }
    }
}

fn orders(count: i64) -> Vec<Document> {
    (0..count)
        .map(|i| doc! {"_id": i, "customer": format!("c{}", i % 100), "cents": i * 3, "items": [i, i + 1]})
        .collect()
}

/// What the copy's pipeline makes of an order.
fn transformed(order: &Document) -> Document {
    let mut out = order.clone();
    out.remove("items");
    let cents = order.get_i64("cents").unwrap();
    out.insert("euros", Bson::Double(cents as f64 / 100.0));
    out
}

const COPY_JOB: &str = r#"
name = "orders_v2"
kind = "copy"

[source]
database = "mongodb"
collection = "orders"

[target]
database = "mongodb"
collection = "orders_v2"

[expand]
operations = [
  { type = "create_index", collection = "orders_v2", index = [["customer", 1]] },
]

[transform]
pipeline = '[{"$set": {"euros": {"$divide": ["$cents", 100]}}}, {"$unset": "items"}]'

[copy]
batch_size = 5000

[catch_up]
method = "none"

[cutover]
mode = "auto"

[contract]
after = "manual"
"#;

#[test]
fn a_copy_with_a_pipeline_cuts_over_equal_and_contracts() {
    let (project, mongo) = project();
    let count = 50_000;
    mongo.insert("orders", orders(count));
    let job = project.job_file("orders_v2", COPY_JOB);

    let run = project.run(&["job", "run", &job]).ok();
    assert!(
        run.stdout
            .starts_with("job orders_v2: waiting for contract"),
        "the run stops before the manual contract:\n{}",
        run.stdout
    );
    let status = project.job_status("orders_v2");
    assert_eq!(status["phase"], "cutover", "{status}");
    assert_eq!(status["rows_copied"], count);

    // The target took the name; the source is kept aside until contract.
    assert_eq!(mongo.collections(), ["orders", "orders_old"]);
    let source = mongo.documents("orders_old");
    let target = mongo.documents("orders");
    assert_eq!(target.len(), count as usize);
    assert_eq!(
        target,
        source.iter().map(transformed).collect::<Vec<_>>(),
        "every document, transformed"
    );
    assert_eq!(mongo.index_keys("orders"), ["_id_1", "customer_1"]);

    project.run(&["job", "contract", "orders_v2"]).ok();
    project.run(&["job", "run", &job]).ok();
    assert_eq!(project.job_status("orders_v2")["phase"], "done");
    assert_eq!(mongo.collections(), ["orders"]);
    assert_eq!(mongo.count("switchyard_checkpoints", doc! {}), 0);
}

#[test]
fn a_copy_resumes_after_a_kill_and_abort_leaves_the_source_as_it_was() {
    let (project, mongo) = project();
    mongo.insert("orders", orders(12_000));
    let before = mongo.documents("orders");
    let job = project.job_file(
        "orders_v2",
        &COPY_JOB
            .replace(
                "batch_size = 5000",
                "batch_size = 1000\nrows_per_second = 4000",
            )
            .replace("mode = \"auto\"", "mode = \"manual\""),
    );
    project.kill_mid_copy("orders_v2", &job, 2000);

    project.run(&["job", "run", &job]).ok();
    let status = project.job_status("orders_v2");
    assert_eq!(status["phase"], "ready_to_cutover", "{status}");
    assert_eq!(
        mongo.count("orders_v2", doc! {}),
        12_000,
        "nothing lost or doubled"
    );

    project.run(&["job", "abort", "orders_v2"]).ok();
    assert_eq!(
        mongo.collections(),
        ["orders"],
        "the target it created is gone"
    );
    assert_eq!(mongo.documents("orders"), before);
    assert_eq!(mongo.count("switchyard_checkpoints", doc! {}), 0);
}

/// A backfill of `orders`: `euros` from `cents`, `size` from `items`.
const FILL_JOB: &str = r#"
name = "fill_euros"
kind = "backfill"

[source]
database = "mongodb"
collection = "orders"

[transform]
update = [ { "$set" = { euros = { "$divide" = ["$cents", 100] }, size = { "$size" = "$items" } } } ]
"#;

#[test]
fn a_backfill_fills_every_document_in_place() {
    let (project, mongo) = project();
    mongo.insert("orders", orders(8_000));
    let job = project.job_file(
        "fill_euros",
        &format!(
            r#"{FILL_JOB}
[copy]
batch_size = 1500

[catch_up]
method = "none"

[contract]
after = "0s"
"#
        ),
    );
    project.run(&["job", "run", &job]).ok();
    assert_eq!(project.job_status("fill_euros")["phase"], "done");
    assert_eq!(mongo.count("orders", doc! {"size": 2}), 8_000);
    let seventh = &mongo.documents("orders")[7];
    assert_eq!(seventh.get_f64("euros").unwrap(), 0.21);
}

/// Whether an order holds what the backfill's pipeline makes of it.
fn filled(order: &Document) -> bool {
    let cents = match order.get("cents") {
        Some(Bson::Int64(cents)) => *cents as f64,
        Some(Bson::Int32(cents)) => *cents as f64,
        _ => return false,
    };
    let items = order.get_array("items").map_or(0, Vec::len) as i32;
    order.get_f64("euros") == Ok(cents / 100.0) && order.get_i32("size") == Ok(items)
}

#[test]
fn a_backfill_fills_the_documents_written_while_it_runs_from_the_change_stream() {
    let Some((project, mongo)) = project_on_a_replica_set(
        "a_backfill_fills_the_documents_written_while_it_runs_from_the_change_stream",
    ) else {
        return;
    };
    mongo.insert("orders", orders(8_000));
    let job = project.job_file(
        "fill_euros",
        &format!(
            r#"{FILL_JOB}
[copy]
batch_size = 1000
rows_per_second = 2000

[contract]
after = "manual"
"#
        ),
    );
    let running = common::Running::spawn(&mut project.command(&["job", "run", &job]));
    project.wait_for_job("fill_euros", "filling", |s| {
        s["rows_copied"].as_u64() > Some(0)
    });
    // Inserts without the fields, updates that make them stale, replaces, deletes.
    common::mongo::spawn_writer(&mongo.url, "orders", 1, 400)
        .join()
        .unwrap();
    let run = running.wait();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let status = project.job_status("fill_euros");
    assert_eq!(status["phase"], "verify", "waiting for contract: {status}");
    // Written after verify: filled when the contract runs.
    let orders = mongo.collection("orders");
    mongo
        .block(
            orders
                .insert_one(doc! {"_id": 900_000, "customer": "last", "cents": 5_i64, "items": []}),
        )
        .unwrap();
    project.run(&["job", "contract", "fill_euros"]).ok();
    project.run(&["job", "run", &job]).ok();
    assert_eq!(project.job_status("fill_euros")["phase"], "done");
    let documents = mongo.documents("orders");
    let unfilled: Vec<&Document> = documents.iter().filter(|d| !filled(d)).collect();
    assert!(
        unfilled.is_empty(),
        "{} unfilled, first {:?}",
        unfilled.len(),
        unfilled.first()
    );
    assert_eq!(mongo.count("orders", doc! {"customer": "late"}), 400);
    assert_eq!(mongo.count("orders", doc! {"customer": "last"}), 1);
    assert_eq!(mongo.count("switchyard_checkpoints", doc! {}), 0);
}

#[test]
fn plan_names_what_depends_on_the_collection_and_changes_nothing() {
    let (project, mongo) = project();
    let database = mongo.database();
    mongo
        .block(
            database
                .create_collection("orders")
                .validator(doc! {"cents": {"$exists": true}}),
        )
        .unwrap();
    mongo.insert("orders", orders(100));
    for keys in [doc! {"customer": 1}, doc! {"cents": -1}] {
        let index = mongodb::IndexModel::builder().keys(keys).build();
        mongo
            .block(mongo.collection("orders").create_index(index))
            .unwrap();
    }
    mongo
        .block(database.run_command(
            doc! {"create": "big_orders", "viewOn": "orders", "pipeline": [{"$match": {"cents": {"$gt": 50}}}]},
        ))
        .unwrap();
    let before = mongo.collections();
    let file = project.job_file("orders_v2", COPY_JOB);

    let plan = project.run(&["job", "plan", &file]).ok();
    let out = &plan.stdout;
    assert!(
        out.starts_with("job orders_v2 (copy), source orders: about 100 documents\n"),
        "{out}"
    );
    for line in [
        "    create_index `customer_1` on `orders_v2`\n",
        "copy (2 workers, 5000 documents a batch):\n",
        "    ok             view big_orders: reads `orders` by name, so after cutover it reads the new collection (its pipeline must fit the new shape)\n",
        "    ok             index cents_-1: { \"cents\": -1 } is on the source only: the new collection will not have it unless [expand] creates it\n",
    ] {
        assert!(out.contains(line), "no {line:?} in\n{out}");
    }
    assert!(
        out.contains("    ok             validator orders: "),
        "{out}"
    );
    assert!(
        !out.contains("index customer_1:"),
        "created by expand: {out}"
    );
    assert!(!out.contains("catch_up:"), "catch_up is none: {out}");
    assert!(out.ends_with("nothing was changed\n"), "{out}");

    // A collection where cutover puts the source blocks it.
    mongo.insert("orders_old", vec![doc! {"_id": 1}]);
    let plan = project.run(&["job", "plan", &file]).ok();
    assert!(plan.stdout.contains("    BLOCKS CUTOVER collection orders_old: cutover sets the source aside under this name"), "{}", plan.stdout);
    mongo.block(mongo.collection("orders_old").drop()).unwrap();
    assert_eq!(mongo.collections(), before, "nothing was created");

    // A source that is not there is refused by plan and run alike.
    let missing = project.job_file(
        "missing",
        &COPY_JOB.replace("collection = \"orders\"", "collection = \"ordres\""),
    );
    for command in ["plan", "run"] {
        let run = project.run(&["job", command, &missing]).expect_code(2);
        assert!(
            run.stderr
                .contains("job `orders_v2`: the source collection `ordres` does not exist in `"),
            "{command}: {}",
            run.stderr
        );
    }
    assert_eq!(mongo.collections(), before, "nothing was created");
}

#[test]
fn bad_job_files_and_a_standalone_server_are_refused() {
    let (project, mongo) = project();
    mongo.insert("orders", orders(10));
    let cases = [
        (
            COPY_JOB.replace(
                "collection = \"orders\"\n\n[target]",
                "table = \"orders\"\n\n[target]",
            ),
            "field `source.collection`: a collection name is required for a MongoDB database",
        ),
        (
            COPY_JOB.replace(r#"{"$unset": "items"}"#, r#"{"$match": {"a": 1}}"#),
            "`$match` cannot be used here: stages reshape each document and keep its `_id`",
        ),
        (
            COPY_JOB.replace("method = \"none\"", "method = \"logical_replication\""),
            "`logical_replication` is for PostgreSQL; MongoDB uses `change_stream` or `none`",
        ),
    ];
    for (text, expected) in cases {
        let job = project.job_file("orders_v2", &text);
        let run = project.run(&["job", "run", &job]).expect_code(2);
        assert!(
            run.stderr.contains(expected),
            "expected `{expected}` in:\n{}",
            run.stderr
        );
    }
    if mongo.replica_set().is_ok() {
        return skip(
            "bad_job_files_and_a_standalone_server_are_refused (standalone part)",
            "the server is a replica set, so change streams open",
        );
    }
    let job = project.job_file(
        "orders_v2",
        &COPY_JOB.replace("[catch_up]\nmethod = \"none\"\n", ""),
    );
    let run = project.run(&["job", "run", &job]).expect_code(2);
    assert!(
        run.stderr.contains(
            "database `mongodb`: change streams need a replica set, and this server is standalone"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(mongo.collections(), ["orders"], "nothing was created");
}

#[test]
fn a_copy_catches_up_from_the_change_stream_through_cutover() {
    let Some((project, mongo)) =
        project_on_a_replica_set("a_copy_catches_up_from_the_change_stream_through_cutover")
    else {
        return;
    };
    mongo.insert("orders", orders(20_000));
    let job = project.job_file(
        "orders_v2",
        &COPY_JOB
            .replace("[catch_up]\nmethod = \"none\"\n", "")
            .replace(
                "batch_size = 5000",
                "batch_size = 2000\nrows_per_second = 20000",
            ),
    );
    let running = common::Running::spawn(&mut project.command(&["job", "run", &job]));
    // Writes of every kind while the job copies and catches up.
    let orders = mongo.collection("orders");
    for i in 0..500_i64 {
        mongo
            .block(orders.update_one(
                doc! {"_id": i * 7},
                doc! {"$set": {"cents": -i}, "$push": {"items": 99}},
            ))
            .unwrap();
        mongo
            .block(orders.delete_one(doc! {"_id": i * 11 + 3}))
            .unwrap();
        mongo
            .block(
                orders.insert_one(
                    doc! {"_id": 100_000 + i, "customer": "late", "cents": i, "items": []},
                ),
            )
            .unwrap();
        mongo
            .block(orders.replace_one(
                doc! {"_id": i * 13 + 5},
                doc! {"customer": "replaced", "cents": 1_i64, "items": [1]},
            ))
            .unwrap();
    }
    let run = running.wait();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let source = mongo.documents("orders_old");
    let target = mongo.documents("orders");
    assert_eq!(target, source.iter().map(transformed).collect::<Vec<_>>());
}

/// A copy catching up from the change stream, without a transform (updates travel as
/// patches of the fields they changed), cut over and contracted on request.
fn plain_copy_job() -> String {
    COPY_JOB
        .replace(
            "[transform]\npipeline = '[{\"$set\": {\"euros\": {\"$divide\": [\"$cents\", 100]}}}, {\"$unset\": \"items\"}]'\n",
            "",
        )
        .replace("[catch_up]\nmethod = \"none\"\n", "")
        .replace(
            "batch_size = 5000",
            "batch_size = 1000\nrows_per_second = 4000",
        )
        .replace("mode = \"auto\"", "mode = \"manual\"")
}

#[test]
fn abort_after_cutover_carries_the_new_collections_writes_back() {
    let Some((project, mongo)) =
        project_on_a_replica_set("abort_after_cutover_carries_the_new_collections_writes_back")
    else {
        return;
    };
    mongo.insert("orders", orders(6_000));
    let job = project.job_file("orders_v2", &plain_copy_job());
    let running = common::Running::spawn(&mut project.command(&["job", "run", &job]));
    common::mongo::spawn_writer(&mongo.url, "orders", 1, 300)
        .join()
        .unwrap();
    let run = running.wait();
    assert_eq!(run.code, 0, "{}", run.stderr);
    project.run(&["job", "cutover", "orders_v2"]).ok();
    project.run(&["job", "run", &job]).ok();
    assert_eq!(project.job_status("orders_v2")["phase"], "cutover");
    assert_eq!(
        mongo.documents("orders"),
        mongo.documents("orders_old"),
        "the copy equals the source as the writer left it"
    );

    // The application now writes to the new collection, under the source's name.
    common::mongo::spawn_writer(&mongo.url, "orders", 2, 200)
        .join()
        .unwrap();
    let orders = mongo.collection("orders");
    mongo
        .block(orders.update_many(doc! {"customer": "late"}, doc! {"$set": {"after": true}}))
        .unwrap();
    let written = mongo.documents("orders");
    assert_ne!(written, mongo.documents("orders_old"));

    project.run(&["job", "abort", "orders_v2"]).ok();
    assert_eq!(project.job_status("orders_v2")["phase"], "aborted");
    assert_eq!(mongo.collections(), ["orders", "orders_v2"]);
    assert_eq!(
        mongo.documents("orders"),
        written,
        "the old collection, back under its name, holds every write made to the new one"
    );
    assert_eq!(
        mongo.documents("orders_v2"),
        written,
        "the new one is set aside"
    );
    assert_eq!(mongo.count("switchyard_checkpoints", doc! {}), 0);
    // Neither is left fenced.
    for name in ["orders", "orders_v2"] {
        mongo
            .block(mongo.collection(name).insert_one(doc! {"_id": -1}))
            .unwrap_or_else(|e| panic!("{name} refuses writes after the abort: {e}"));
    }
}
