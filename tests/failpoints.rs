//! Crashes at every named instant between two steps of every phase (the crash points of
//! `src/failpoint.rs`, armed through `FAILPOINTS` in a build with the `failpoints`
//! feature, which `scripts/test` makes). Each case runs a job under concurrent writes,
//! ends the process at one point, resumes it with a plain `job run` through cutover and
//! contract, and requires the table to hold exactly what the writer committed, with no
//! slot, publication or checkpoint left behind.
//!
//! And the server itself crashing (killed and restarted, on the `faults` server of
//! `scripts/services`) mid-copy and inside a catch-up transaction.
#![cfg(feature = "failpoints")]

mod common;

use common::writer::{
    checksum, contents, create_items, items_backfill_job, items_copy_job, items_copy_job_on, seed,
    JobPath, Writer, WRONGLY_FILLED,
};
use common::{faults_server, Project, Running, TestDb};
use switchyard::failpoint::CRASH_EXIT_CODE;

/// `(point, fail action)`: most crash at the first time they are reached; copy batches
/// at the fifth, so that some ranges are part done.
const COPY_JOB_POINTS: &[(&str, &str)] = &[
    ("expand.start", "return"),
    ("expand.after_ddl", "return"),
    ("expand.after_capture", "return"),
    ("expand.end", "return"),
    ("copy.start", "return"),
    ("copy.after_range_saved", "return"),
    ("copy.after_seize", "2*off->return"),
    ("copy.before_batch", "4*off->return"),
    ("copy.after_batch", "4*off->return"),
    ("copy.end", "return"),
    ("catch_up.start", "return"),
    ("catch_up.after_read", "return"),
    ("catch_up.after_write", "return"),
    ("catch_up.after_checkpoint", "return"),
    ("catch_up.after_commit", "return"),
    ("catch_up.after_advance", "return"),
    ("catch_up.after_pass", "return"),
    ("catch_up.end", "return"),
    ("verify.start", "return"),
    ("verify.end", "return"),
    ("ready_to_cutover.start", "return"),
    ("cutover.start", "return"),
    ("cutover.after_back_capture", "return"),
    ("cutover.after_lock", "return"),
    ("cutover.after_drain", "return"),
    ("cutover.after_swap", "return"),
    ("cutover.after_record", "return"),
    ("cutover.after_switch", "return"),
    ("cutover.after_commit", "return"),
    ("cutover.after_drop_capture", "return"),
    ("cutover.end", "return"),
    ("contract.start", "return"),
    ("contract.after_drop_capture", "return"),
    ("contract.after_ddl", "return"),
    ("contract.end", "return"),
];

/// Crash points only the Elasticsearch reindex passes (tested, with every point of
/// [`COPY_JOB_POINTS`], by `an_elasticsearch_reindex_killed_anywhere_resumes`): between a
/// bulk request's acknowledgement and its checkpoint.
const ELASTIC_POINTS: &[(&str, &str)] = &[("copy.after_write", "2*off->return")];

/// A reindex the cluster copies: its copy is one batch (on a server without the tasks
/// API) or a few looks at the server's task.
const SERVER_COPY_POINTS: &[(&str, &str)] = &[
    ("copy.after_seize", "return"),
    ("copy.before_batch", "return"),
    ("copy.after_batch", "return"),
    ("copy.end", "return"),
];

const BACKFILL_POINTS: &[(&str, &str)] = &[
    ("expand.after_ddl", "return"),
    ("copy.before_batch", "3*off->return"),
    ("copy.after_batch", "3*off->return"),
    ("copy.end", "return"),
    ("verify.end", "return"),
    ("contract.after_drop_capture", "return"),
    ("contract.after_ddl", "return"),
];

/// Rows in the table: a dozen batches in two ranges.
const ROWS: i64 = 6_000;

fn copy_job(path: JobPath) -> String {
    items_copy_job_on(
        path,
        "items",
        "[copy]\nbatch_size = 500\nconcurrency = 2\n\n[cutover]\nmode = \"auto\"\n\n\
         [contract]\nafter = \"0s\"\nsql = [\"DROP TABLE public.items_old\"]",
    )
}

/// Runs `switchyard ARGS` with `point` armed and requires the crash there, with the
/// record showing the phase the point belongs to.
fn crash_at(project: &Project, args: &[&str], point: &str, action: &str) {
    let crashed = project
        .command(args)
        .env("FAILPOINTS", format!("{point}={action}"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&crashed.stderr);
    assert_eq!(
        crashed.status.code(),
        Some(CRASH_EXIT_CODE),
        "{point}: the job must crash there\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("crash point {point}: ending the process")),
        "{stderr}"
    );
    let phase = point.split('.').next().unwrap();
    assert_eq!(
        project.job_status("items")["phase"],
        phase,
        "{point}: the record shows the phase the crash happened in"
    );
}

/// Runs `job run FILE` with `point` armed: true when it crashed there, false when it ran
/// to its end without passing the point (a path without it).
fn run_crashing_at_most(project: &Project, file: &str, point: &str, action: &str) -> bool {
    let run = project
        .command(&["job", "run", file])
        .env("FAILPOINTS", format!("{point}={action}"))
        .output()
        .unwrap();
    match run.status.code() {
        Some(CRASH_EXIT_CODE) => true,
        Some(0) => false,
        other => panic!(
            "{point}: exit {other:?}: {}",
            String::from_utf8_lossy(&run.stderr)
        ),
    }
}

/// Runs `switchyard ARGS` to success: the resumed job.
fn resume(project: &Project, args: &[&str], point: &str) {
    let resumed = project.run(args);
    assert_eq!(
        resumed.code, 0,
        "{point}: resuming failed\n{}",
        resumed.stderr
    );
}

/// No slot, publication or checkpoint is left of the job in `db`.
fn assert_nothing_left(db: &TestDb, point: &str) {
    for leftover in [
        "SELECT count(*)::text FROM pg_replication_slots WHERE database = current_database()",
        "SELECT count(*)::text FROM pg_publication",
        "SELECT count(*)::text FROM switchyard.copy_progress",
        "SELECT count(*)::text FROM switchyard.catch_up_progress",
        "SELECT count(*)::text FROM switchyard.cutovers",
    ] {
        assert_eq!(db.column(leftover), ["0"], "{point}: {leftover}");
    }
}

fn copy_job_survives(points: &[(&str, &str)], path: JobPath) {
    let seed = seed();
    for (number, (point, action)) in points.iter().enumerate() {
        let (project, other) = Project::for_path(path);
        let mut db = project.db.client();
        let model = create_items(&mut db, "items", ROWS);
        let file = project.job_file("items", &copy_job(path));
        // Across servers the writer ends when cutover fences the source.
        let writer = Writer::start(&project.db.url, "items", model, seed + number as u64);
        crash_at(&project, &["job", "run", &file], point, action);
        resume(&project, &["job", "run", &file], point);
        assert_eq!(project.job_status("items")["phase"], "done", "{point}");
        let (model, ops) = writer.stop();
        assert!(ops > 50, "{point}: the writer made only {ops} changes");
        let target = other.as_ref().unwrap_or(&project.db);
        assert_eq!(
            contents(&mut target.client(), "items"),
            model,
            "{point} ({path:?}): the table must hold exactly what was committed"
        );
        assert!(
            !project.db.exists("items_old") && !project.db.exists("items_v2"),
            "{point}: cut over and contracted"
        );
        assert_nothing_left(&project.db, point);
        if let Some(other) = &other {
            assert!(
                !project.db.exists("items"),
                "{point}: the source stays fenced"
            );
            assert_nothing_left(other, point);
        }
        eprintln!("{point} ({path:?}): crashed, resumed, equal");
    }
}

fn points_of(phase: &str) -> Vec<(&'static str, &'static str)> {
    let points: Vec<_> = COPY_JOB_POINTS
        .iter()
        .copied()
        .filter(|(point, _)| point.starts_with(&format!("{phase}.")))
        .collect();
    assert!(!points.is_empty(), "no crash points in {phase}");
    points
}

#[test]
fn crash_in_expand() {
    copy_job_survives(&points_of("expand"), JobPath::SameDatabase);
}

#[test]
fn crash_in_expand_across_servers() {
    copy_job_survives(&points_of("expand"), JobPath::OtherServer);
}

#[test]
fn crash_in_copy() {
    copy_job_survives(&points_of("copy"), JobPath::SameDatabase);
}

#[test]
fn crash_in_copy_across_servers() {
    copy_job_survives(&points_of("copy"), JobPath::OtherServer);
}

#[test]
fn crash_in_catch_up() {
    copy_job_survives(&points_of("catch_up"), JobPath::SameDatabase);
}

#[test]
fn crash_in_catch_up_across_servers() {
    copy_job_survives(&points_of("catch_up"), JobPath::OtherServer);
}

#[test]
fn crash_in_verify_and_before_cutover() {
    let mut points = points_of("verify");
    points.extend(points_of("ready_to_cutover"));
    copy_job_survives(&points, JobPath::SameDatabase);
    copy_job_survives(&points, JobPath::OtherServer);
}

#[test]
fn crash_in_cutover() {
    copy_job_survives(&points_of("cutover"), JobPath::SameDatabase);
}

#[test]
fn crash_in_cutover_across_servers() {
    copy_job_survives(&points_of("cutover"), JobPath::OtherServer);
}

#[test]
fn crash_in_contract() {
    copy_job_survives(&points_of("contract"), JobPath::SameDatabase);
}

#[test]
fn crash_in_contract_across_servers() {
    copy_job_survives(&points_of("contract"), JobPath::OtherServer);
}

/// A backfill: the writer stops before contract (which removes the trigger that fills
/// new writes), then the table must hold what it committed, every row filled.
#[test]
fn crash_in_a_backfill() {
    let seed = seed();
    for (number, (point, action)) in BACKFILL_POINTS.iter().enumerate() {
        let project = Project::new();
        let mut db = project.db.client();
        let model = create_items(&mut db, "items", ROWS);
        let file = project.job_file("items", &items_backfill_job("items", 500));
        let writer = Writer::start(&project.db.url, "items", model, seed + number as u64);
        let run = ["job", "run", file.as_str()];
        let in_contract = point.starts_with("contract.");
        if !in_contract {
            crash_at(&project, &run, point, action);
        }
        resume(&project, &run, point);
        assert_eq!(
            project.job_status("items")["phase"],
            "verify",
            "{point}: waiting for contract"
        );
        let (model, _) = writer.stop();
        assert_eq!(contents(&mut db, "items"), model, "{point}");
        assert_eq!(
            project.db.column(WRONGLY_FILLED),
            ["0"],
            "{point}: every row filled right"
        );
        let contract = ["job", "contract", "items"];
        if in_contract {
            crash_at(&project, &contract, point, action);
        }
        resume(&project, &contract, point);
        assert_eq!(project.job_status("items")["phase"], "done", "{point}");
        assert_eq!(
            project
                .db
                .column("SELECT tgname::text FROM pg_trigger WHERE tgrelid = 'items'::regclass"),
            Vec::<String>::new(),
            "{point}: contract removed the trigger"
        );
        assert_nothing_left(&project.db, point);
        eprintln!("{point}: crashed, resumed, equal");
    }
}

/// Every named point in the code is crashed at above (the `<phase>.start` and `.end`
/// points are named by the engine from the phase).
#[test]
fn every_crash_point_is_tested() {
    let mut named = Vec::new();
    let mut folders = vec![std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for piece in text.split("crash_point!(\"").skip(1) {
                    named.push(piece.split('"').next().unwrap().to_string());
                }
            }
        }
    }
    assert!(named.len() >= 15, "found only {named:?}");
    for point in named {
        assert!(
            COPY_JOB_POINTS
                .iter()
                .chain(ELASTIC_POINTS)
                .any(|(p, _)| *p == point)
                || MIGRATION_POINTS.contains(&point.as_str())
                || OPERATION_POINTS.contains(&point.as_str()),
            "crash point {point} is not tested"
        );
    }
}

/// The crash points of migrations (tested by `a_mongodb_migration_killed_mid_operation_resumes`
/// and `an_elasticsearch_migration_killed_between_operations_resumes`).
const MIGRATION_POINTS: &[&str] = &["migration.after_batch", "migration.after_operation"];

/// Crashed by `tests/operations.rs` (`a_killed_export_and_a_killed_import_resume_…`).
const OPERATION_POINTS: &[&str] = &["export.after_batch", "import.after_batch"];

/// A MongoDB migration killed between two batches of a data operation resumes where it
/// stopped: each document's `$inc` applied exactly once, every field added or removed.
#[test]
fn a_mongodb_migration_killed_mid_operation_resumes() {
    use common::mongo::MongoDb;
    use mongodb::bson::doc;
    // 2,500 documents: three batches per operation; the 3rd hit is in `add_field`, the
    // 5th in `update_documents`.
    for action in ["2*off->return", "4*off->return"] {
        let mongo = MongoDb::new();
        let project = Project::with_config(&mongo.config());
        std::fs::create_dir_all(project.path("migrations/mongodb")).unwrap();
        mongo.insert(
            "users",
            (0..2500_i64)
                .map(|i| doc! {"_id": i, "legacy": i})
                .collect(),
        );
        std::fs::write(
            project.path("migrations/mongodb/001_counts.json"),
            r#"{"version": "1", "name": "counts", "operations": [
                  {"type": "add_field", "collection": "users", "field": "visits", "value": 0},
                  {"type": "update_documents", "collection": "users", "filter": {}, "update": {"$inc": {"visits": 1}}},
                  {"type": "remove_field", "collection": "users", "field": "legacy"}
                ]}"#,
        )
        .unwrap();
        let crashed = project
            .command(&["migrate"])
            .env("FAILPOINTS", format!("migration.after_batch={action}"))
            .output()
            .unwrap();
        assert_eq!(
            crashed.status.code(),
            Some(CRASH_EXIT_CODE),
            "{action}: {}",
            String::from_utf8_lossy(&crashed.stderr)
        );
        assert!(mongo.history().is_empty(), "{action}: not recorded yet");

        project.run(&["migrate"]).ok();
        assert_eq!(mongo.history(), ["1 COMPLETED"]);
        assert_eq!(
            mongo.count("users", doc! {"visits": 1}),
            2500,
            "{action}: each $inc once"
        );
        assert_eq!(mongo.count("users", doc! {"legacy": {"$exists": true}}), 0);
        assert_eq!(mongo.count("switchyard_migration_progress", doc! {}), 0);
    }
}

/// Kills the `faults` server at once and starts it again (`SWITCHYARD_TEST_FAULTS_RESTART`).
fn crash_the_server(restart: &str) {
    let status = std::process::Command::new("sh")
        .args(["-c", restart])
        .status()
        .unwrap();
    assert!(status.success(), "`{restart}` failed");
}

#[test]
fn the_server_crashes_mid_copy_and_mid_catch_up() {
    let (server, restart) = faults_server();
    let project = Project::on(TestDb::on(&server), "");
    let mut db = project.db.client();
    create_items(&mut db, "items", 20_000);
    let file = project.job_file(
        "items",
        &items_copy_job(
            "items",
            "[copy]\nbatch_size = 500\nconcurrency = 2\nrows_per_second = 5000\n",
        ),
    );
    // The first catch-up pass waits 5 s after reading its changes: the moment to crash
    // the server under it.
    let mut job = Running::spawn(
        project
            .command(&["job", "run", &file])
            .env("FAILPOINTS", "catch_up.after_read=1*sleep(5000)"),
    );
    project.wait_for_job("items", "copying", |s| {
        s["phase"] == "copy" && s["rows_copied"].as_u64() >= Some(4_000)
    });
    // Changes for the catch-up, in many transactions.
    for i in 0..400_i64 {
        db.execute(
            "UPDATE items SET v = v || '+' WHERE id = $1",
            &[&(i * 37 % 20_000 + 1)],
        )
        .unwrap();
    }
    let copied_before = project.job_status("items")["rows_copied"].as_u64().unwrap();
    assert!(copied_before < 20_000, "the copy is still running");
    crash_the_server(&restart);

    job.wait_for_stderr("crash point catch_up.after_read reached");
    crash_the_server(&restart);

    let output = job.wait();
    let stderr = output.stderr;
    assert_eq!(output.code, 0, "{stderr}");
    let retries = stderr.matches("transient error; reconnecting").count();
    assert!(retries >= 2, "one retry per crash at least:\n{stderr}");
    let status = project.job_status("items");
    assert_eq!(status["phase"], "ready_to_cutover", "{status}");
    assert!(status["changes_applied"].as_u64() >= Some(400), "{status}");
    let mut db = project.db.client();
    assert_eq!(checksum(&mut db, "items"), checksum(&mut db, "items_v2"));
    eprintln!("{retries} retries; {copied_before} rows were copied at the first crash");
}

/// An abort after cutover is the way back's cutover: crashed at each of its points, a
/// second `job abort` finishes it, and the old table has its name back with every write
/// made to the new one, on both paths.
#[test]
fn a_crash_while_swapping_back_is_finished_by_the_next_abort() {
    let seed = seed();
    // The sink's points of a cutover (the engine's `cutover.start` is a phase's).
    let points = [
        "cutover.after_back_capture",
        "cutover.after_lock",
        "cutover.after_drain",
        "cutover.after_swap",
        "cutover.after_record",
    ];
    for path in JobPath::ALL {
        for (number, point) in points.iter().enumerate() {
            let (project, other) = Project::for_path(path);
            let model = create_items(&mut project.db.client(), "items", 2_000);
            let job = items_copy_job_on(
                path,
                "items",
                "[copy]\nbatch_size = 500\nconcurrency = 2\n\n[cutover]\nmode = \"auto\"\n\n\
                 [contract]\nafter = \"manual\"",
            );
            let file = project.job_file("items", &job);
            project.run(&["job", "run", &file]).ok();
            // Writes to the new table, which the way back carries to the old one.
            let new_table = other.as_ref().unwrap_or(&project.db);
            let writer = Writer::start(&new_table.url, "items", model, seed + number as u64);
            new_table.wait_for(
                "SELECT (count(*) >= 50)::text FROM items WHERE id > 2000",
                "true",
            );
            let (model, _) = writer.stop();
            crash_at(&project, &["job", "abort", "items"], point, "return");
            let abort = project.run(&["job", "abort", "items"]);
            assert_eq!(abort.code, 0, "{point} ({path:?}): {}", abort.stderr);
            assert_eq!(
                contents(&mut project.db.client(), "items"),
                model,
                "{point} ({path:?}): the old table holds every write made to the new one"
            );
            assert!(!project.db.exists("items_old"), "{point} ({path:?})");
            assert_eq!(project.job_status("items")["phase"], "aborted");
            assert_nothing_left(&project.db, point);
            if let Some(other) = &other {
                assert_nothing_left(other, point);
            }
            eprintln!("{point} ({path:?}): swap back crashed, aborted again, equal");
        }
    }
}

/// A crash right after the cutover committed, before the steps after it (validating the
/// foreign keys re-pointed at the new table, rebuilding a materialized view): the next
/// run finds them saved with the cutover and takes them.
#[test]
fn a_crash_between_the_switch_and_the_steps_after_it_is_finished_by_the_next_run() {
    let project = Project::new();
    let mut db = project.db.client();
    create_items(&mut db, "items", 2_000);
    db.batch_execute(
        "CREATE TABLE tags (id bigint PRIMARY KEY, item bigint NOT NULL REFERENCES items (id));
         INSERT INTO tags SELECT g, g FROM generate_series(1, 2000, 5) g;
         CREATE MATERIALIZED VIEW item_count AS SELECT count(*) AS n FROM items;",
    )
    .unwrap();
    let file = project.job_file(
        "items",
        &items_copy_job(
            "items",
            "[copy]\nbatch_size = 500\n\n[cutover]\nmode = \"auto\"\n\n[contract]\nafter = \"manual\"",
        ),
    );
    crash_at(
        &project,
        &["job", "run", &file],
        "cutover.after_switch",
        "return",
    );
    let pending = || {
        project.db.column(
            "SELECT (SELECT count(*) FROM switchyard.after_cutover) || ' steps; ' ||
                    (SELECT string_agg(conname || CASE WHEN convalidated THEN ' valid' ELSE ' not valid' END, ', ')
                       FROM pg_constraint WHERE contype = 'f' AND confrelid = 'items'::regclass)",
        )
    };
    assert_eq!(pending(), ["3 steps; tags_item_fkey not valid"]);
    project.run(&["job", "run", &file]).ok();
    assert_eq!(pending(), ["0 steps; tags_item_fkey valid"]);
    // The materialized view was rebuilt on the new table.
    assert_eq!(
        project.db.column(
            "SELECT count(*)::text FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
              WHERE r.ev_class = 'item_count'::regclass AND d.refobjid = 'items'::regclass"
        ),
        ["1"]
    );
}

/// A MongoDB copy catching up from a change stream, killed at each point of its path
/// while a writer changes the source, then resumed through cutover: the new collection
/// equals the old one (every write the writer made, nothing doubled), and an abort
/// after it carries back a write made to the new one. Skipped on a server without
/// change streams.
#[test]
fn a_mongodb_copy_killed_at_every_point_loses_nothing() {
    use common::mongo::{spawn_writer, MongoDb};
    use common::skip;
    use mongodb::bson::doc;
    const POINTS: &[(&str, &str)] = &[
        ("expand.after_capture", "return"),
        ("copy.after_batch", "3*off->return"),
        ("catch_up.after_write", "return"),
        ("catch_up.after_pass", "return"),
        ("verify.start", "return"),
        ("cutover.after_lock", "return"),
        ("cutover.after_drain", "return"),
        ("cutover.after_back_capture", "return"),
        ("cutover.after_swap", "return"),
        ("cutover.after_record", "return"),
        ("cutover.after_drop_capture", "return"),
    ];
    for (point, action) in POINTS {
        let mongo = MongoDb::new();
        if let Err(why) = mongo.replica_set() {
            return skip("a_mongodb_copy_killed_at_every_point_loses_nothing", &why);
        }
        let project = Project::with_config(&mongo.config());
        mongo.insert(
            "orders",
            (0..3000_i64)
                .map(|i| doc! {"_id": i, "customer": format!("c{}", i % 10), "cents": i, "items": [i]})
                .collect(),
        );
        let job = project.job_file(
            "items",
            r#"
name = "items"
kind = "copy"

[source]
database = "mongodb"
collection = "orders"

[target]
database = "mongodb"
collection = "orders_v2"

[copy]
batch_size = 250
rows_per_second = 3000

[cutover]
mode = "auto"

[contract]
after = "manual"
"#,
        );
        let writer = spawn_writer(&mongo.url, "orders", 1, 150);
        crash_at(&project, &["job", "run", &job], point, action);
        writer.join().expect("the writer wrote before cutover");
        resume(&project, &["job", "run", &job], point);
        assert_eq!(
            project.job_status("items")["phase"],
            "cutover",
            "{point}: cut over"
        );
        assert_eq!(
            mongo.documents("orders"),
            mongo.documents("orders_old"),
            "{point}: the new collection equals the old"
        );
        mongo
            .block(mongo.collection("orders").insert_one(doc! {"_id": -1}))
            .unwrap();
        project.run(&["job", "abort", "items"]).ok();
        assert_eq!(mongo.count("orders", doc! {"_id": -1}), 1, "{point}");
        assert_eq!(mongo.count("switchyard_checkpoints", doc! {}), 0, "{point}");
    }
}

/// A key change the copy saw on both sides: the old key copied before it, the new key
/// after it (the writer of the crash tests does this by chance, here on purpose). The
/// change leaves the TOASTed `pad` out, so catch-up moves the old row to the new key;
/// the target holds the row under both keys until then.
#[test]
fn a_key_change_the_copy_saw_on_both_sides_is_replayed() {
    let (project, other) = Project::for_path(JobPath::OtherServer);
    let other = other.unwrap();
    let mut db = project.db.client();
    let mut model = create_items(&mut db, "items", ROWS);
    let file = project.job_file(
        "items",
        &items_copy_job_on(
            JobPath::OtherServer,
            "items",
            "[copy]\nbatch_size = 500\nconcurrency = 1\n\n[cutover]\nmode = \"auto\"\n",
        ),
    );
    crash_at(
        &project,
        &["job", "run", &file],
        "copy.after_batch",
        "1*off->return",
    );
    // Rows 50 and 100 (TOASTed `pad`) were copied; their new keys are past the copy.
    db.batch_execute("UPDATE items SET id = id + 100000 WHERE id IN (50, 100)")
        .unwrap();
    for id in [50, 100] {
        let v = model.remove(&id).unwrap();
        model.insert(id + 100000, v);
    }
    resume(&project, &["job", "run", &file], "after the key change");
    assert_eq!(
        project.job_status("items")["phase"],
        "cutover",
        "cut over, waiting for contract"
    );
    assert_eq!(contents(&mut other.client(), "items"), model);
    assert_eq!(
        checksum(&mut other.client(), "items"),
        checksum(&mut project.db.client(), "items_old"),
        "every column, the TOASTed ones too"
    );
}

/// An Elasticsearch migration killed after an operation took effect and before its
/// progress was saved: the next run sends that operation again (the index it created is
/// there already) and goes on, each index and alias made once.
#[test]
fn an_elasticsearch_migration_killed_between_operations_resumes() {
    use common::elastic::Elastic;
    for action in ["return", "1*off->return", "2*off->return"] {
        let elastic = Elastic::exclusive();
        let project = Project::with_config(&elastic.config());
        std::fs::create_dir_all(project.path("migrations/elasticsearch")).unwrap();
        std::fs::write(
            project.path("migrations/elasticsearch/001_catalog.json"),
            r#"{"version": "1", "name": "catalog", "operations": [
                  {"type": "create_index", "index": "PREFIX_catalog_v1", "mapping": {"properties": {"sku": {"type": "keyword"}}}},
                  {"type": "create_alias", "index": "PREFIX_catalog_v1", "alias": "PREFIX_catalog"},
                  {"type": "create_index", "index": "PREFIX_audit_v1"}
                ]}"#
            .replace("PREFIX", &elastic.prefix),
        )
        .unwrap();
        let crashed = project
            .command(&["migrate"])
            .env("FAILPOINTS", format!("migration.after_operation={action}"))
            .output()
            .unwrap();
        assert_eq!(
            crashed.status.code(),
            Some(CRASH_EXIT_CODE),
            "{action}: {}",
            String::from_utf8_lossy(&crashed.stderr)
        );
        assert!(elastic.history().is_empty(), "{action}: not recorded yet");

        project.run(&["migrate"]).ok();
        assert_eq!(elastic.history(), ["1 COMPLETED"], "{action}");
        assert_eq!(
            elastic.alias_targets(&elastic.index("catalog")),
            [elastic.index("catalog_v1")],
            "{action}"
        );
        assert!(elastic.exists(&elastic.index("audit_v1")), "{action}");
        let (status, _) = elastic.call(
            elasticsearch::http::Method::Get,
            "/switchyard-migration-progress/_doc/1",
            None,
        );
        assert_eq!(status, 404, "{action}: progress cleared");
    }
}

/// A reindex killed at every crash point of a copy job resumes to the same end: the
/// alias on the new index, every document there once, the old index and the job's
/// checkpoints gone after contract.
#[test]
fn an_elasticsearch_reindex_killed_anywhere_resumes() {
    let points: Vec<_> = COPY_JOB_POINTS.iter().chain(ELASTIC_POINTS).collect();
    let crashed_at = reindex_killed_at_each(&points, "batch_size = 300");
    assert!(
        crashed_at.len() >= 25 && crashed_at.contains(&"copy.after_write"),
        "crashed only at {crashed_at:?}"
    );
}

#[test]
fn an_elasticsearch_reindex_the_cluster_copies_killed_anywhere_resumes() {
    let points: Vec<_> = SERVER_COPY_POINTS.iter().collect();
    let crashed_at = reindex_killed_at_each(&points, "method = \"server\"\nslices = 2");
    assert_eq!(
        crashed_at,
        SERVER_COPY_POINTS.iter().map(|p| p.0).collect::<Vec<_>>(),
        "crashed at every point"
    );
}

/// Runs a reindex of 2,000 documents (its `[copy]` section: `copy`) crashing at each of
/// `points` in turn, then to its end: every document once in the new index behind the
/// alias, the old index and the checkpoints gone. Returns the points it crashed at.
fn reindex_killed_at_each(points: &[&(&'static str, &str)], copy: &str) -> Vec<&'static str> {
    use common::elastic::Elastic;
    use elasticsearch::http::Method;
    let mut crashed_at = Vec::new();
    for (point, action) in points.iter().copied() {
        let elastic = Elastic::new();
        let alias = elastic.index("items");
        let v1 = format!("{alias}_v1");
        let documents: std::collections::BTreeMap<String, serde_json::Value> = (0..2000)
            .map(|n| {
                (
                    n.to_string(),
                    serde_json::json!({"n": n, "updated_at": 1_700_000_000_000u64 + n}),
                )
            })
            .collect();
        elastic.put_documents(&v1, documents.clone());
        elastic.ok(
            Method::Post,
            "/_aliases",
            Some(&serde_json::json!({"actions": [{"add": {"index": v1, "alias": alias}}]})),
        );
        let project = Project::with_config(&elastic.config());
        let name = format!("{}_job", elastic.prefix);
        let file = project.job_file(
            &name,
            &format!(
                "name = \"{name}\"\nkind = \"reindex\"\n[source]\ndatabase = \"elasticsearch\"\nindex = \"{alias}\"\n[copy]\n{copy}\n[catch_up]\nfield = \"updated_at\"\n[cutover]\nmode = \"auto\"\n[contract]\nafter = \"0s\"\n"
            ),
        );
        if run_crashing_at_most(&project, &file, point, action) {
            crashed_at.push(*point);
        }
        project.run(&["job", "run", &file]).ok();
        assert_eq!(project.job_status(&name)["phase"], "done", "{point}");
        assert_eq!(
            elastic.alias_targets(&alias),
            [format!("{alias}_v2")],
            "{point}"
        );
        assert_eq!(
            elastic.documents(&alias),
            documents,
            "{point}: every document once"
        );
        assert!(
            !elastic.exists(&v1),
            "{point}: contract deleted the old index"
        );
        assert!(
            common::elastic::checkpoints(&project, &name).is_empty(),
            "{point}: checkpoints gone"
        );
    }
    crashed_at
}

/// A PostgreSQL table copied into an index, killed at every crash point of the copy path
/// (and each Elasticsearch one), then resumed: the alias on the new index, every
/// document equal to its row, once; rows written after the first run arrive too.
#[test]
fn a_table_copied_into_an_index_killed_anywhere_resumes() {
    use common::elastic::Elastic;
    let mut crashed_at = Vec::new();
    for (point, action) in COPY_JOB_POINTS.iter().chain(ELASTIC_POINTS) {
        let elastic = Elastic::new();
        let alias = elastic.index("items");
        let project = Project::with_config(&elastic.config());
        project
            .db
            .client()
            .batch_execute(
                "CREATE TABLE items (id bigint PRIMARY KEY, n integer NOT NULL, label text);
                 INSERT INTO items SELECT g, g * 3, 'item ' || g FROM generate_series(1, 2000) g;",
            )
            .unwrap();
        let name = format!("{}_job", elastic.prefix);
        let file = project.job_file(
            &name,
            &format!(
                "name = \"{name}\"\nkind = \"copy\"\n[source]\ndatabase = \"postgresql\"\ntable = \"public.items\"\n\
                 [target]\ndatabase = \"elasticsearch\"\nindex = \"{alias}\"\n[copy]\nbatch_size = 300\n\
                 [verify]\nmethod = \"checksum\"\n[cutover]\nmode = \"auto\"\n[contract]\nafter = \"0s\"\n"
            ),
        );
        if run_crashing_at_most(&project, &file, point, action) {
            crashed_at.push(*point);
        }
        // Writes before the cutover reach the index (after it, a copy into an index
        // applies no more: the table stays the source of truth).
        let phase = project.job_status(&name)["phase"].clone();
        if [
            "pending",
            "expand",
            "copy",
            "catch_up",
            "verify",
            "ready_to_cutover",
        ]
        .iter()
        .any(|p| phase == *p)
        {
            project
                .db
                .client()
                .batch_execute("INSERT INTO items VALUES (5000, 1, 'after the kill'); UPDATE items SET label = 'changed' WHERE id = 7;")
                .unwrap();
        }
        project.run(&["job", "run", &file]).ok();
        assert_eq!(project.job_status(&name)["phase"], "done", "{point}");
        let rows: std::collections::BTreeMap<String, serde_json::Value> = project
            .db
            .client()
            .query("SELECT id, n, label FROM items", &[])
            .unwrap()
            .iter()
            .map(|row| {
                let id: i64 = row.get(0);
                let n: i32 = row.get(1);
                let label: String = row.get(2);
                (
                    id.to_string(),
                    serde_json::json!({"id": id, "n": n, "label": label}),
                )
            })
            .collect();
        assert_eq!(
            elastic.documents(&alias),
            rows,
            "{point}: every document equal to its row, once"
        );
        assert!(
            common::elastic::checkpoints(&project, &name).is_empty(),
            "{point}: checkpoints gone"
        );
    }
    assert!(
        crashed_at.len() >= 15 && crashed_at.contains(&"copy.after_write"),
        "crashed only at {crashed_at:?}"
    );
}
