//! Online jobs on a real PostgreSQL: copy under concurrent writes, kills at any point,
//! cutover, abort, backfill, controls, and what a user sees for bad job files.

mod common;

use common::proxy::Proxy;
use common::writer::{
    checksum, contents, create_items, items_backfill_job, items_copy_job, items_copy_job_on, seed,
    JobPath, Lcg, Writer, WRONGLY_FILLED,
};
use common::{Project, Running};

fn copy_job(name: &str, extra: &str) -> String {
    items_copy_job(
        name,
        &format!("[copy]\nbatch_size = 500\nconcurrency = 2\n{extra}"),
    )
}

#[test]
fn copy_under_writes_then_cutover_loses_nothing() {
    let project = Project::new();
    let mut db = project.db.client();
    let model = create_items(&mut db, "items", 20_000);
    let file = project.job_file("items", &copy_job("items", ""));
    let writer = Writer::start(&project.db.url, "items", model, seed());

    let run = project.run(&["job", "run", &file]).ok();
    assert_eq!(
        run.stdout,
        "job items: verified and caught up, ready to cut over: switchyard job cutover items\n"
    );
    assert_eq!(project.job_status("items")["phase"], "ready_to_cutover");

    // Writes go on through the cutover; blocked statements continue on the new table.
    let cutover = project.run(&["job", "cutover", "items"]).ok();
    assert!(
        cutover
            .stdout
            .starts_with("job items: cut over; contract is due at "),
        "{}",
        cutover.stdout
    );
    assert!(
        cutover
            .stdout
            .contains("\njob items: writes to the source were blocked for "),
        "{}",
        cutover.stdout
    );
    let (model, ops) = writer.stop();
    assert!(ops > 100, "the writer made only {ops} changes");
    assert_eq!(
        contents(&mut db, "items"),
        model,
        "the new table must hold exactly what was written"
    );
    assert!(project.db.exists("items_old") && !project.db.exists("items_v2"));
    assert_eq!(
        project.db.column(
            "SELECT slot_name::text FROM pg_replication_slots WHERE database = current_database()"
        ),
        project.db.column(
            "SELECT 'switchyard_items_back_' || oid FROM pg_database WHERE datname = current_database()"
        ),
        "after cutover only the way back's slot holds WAL (until contract)"
    );
    assert_eq!(
        project.db.column("SELECT pubname::text FROM pg_publication"),
        project.db.column(
            "SELECT 'switchyard_items_back_' || oid FROM pg_database WHERE datname = current_database()"
        ),
    );

    let status = project.job_status("items");
    assert!(
        status["writes_blocked_ms"].as_u64().unwrap() < 1_000,
        "{status}"
    );
    project.run(&["job", "contract", "items"]).ok();
    assert_eq!(project.job_status("items")["phase"], "done");
}

/// Runs of a copy job under concurrent writes, each SIGKILLed at random instants
/// (`SWITCHYARD_KILL_RUNS` runs, 6 by default), resumed through cutover and contract.
/// Every run must end with the table equal to what the writer committed.
#[test]
fn killed_at_random_instants_over_many_runs_nothing_is_lost_or_duplicated() {
    let runs: u64 = std::env::var("SWITCHYARD_KILL_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(6);
    let seed = seed();
    let mut phases = std::collections::BTreeMap::new();
    let (mut kills, mut rows) = (0, 0);
    for run in 0..runs {
        // Runs alternate between the in-server path and the path onto another server.
        let path = JobPath::ALL[run as usize % JobPath::ALL.len()];
        let outcome = kill_until_done(seed.wrapping_add(run), path);
        eprintln!(
            "run {run} {path:?} (SWITCHYARD_TEST_SEED={}): {} kills {:?}, {} rows compared, 0 mismatches",
            seed.wrapping_add(run),
            outcome.kills,
            outcome.phases,
            outcome.rows
        );
        kills += outcome.kills;
        rows += outcome.rows;
        for (phase, count) in outcome.phases {
            *phases.entry(phase).or_insert(0) += count;
        }
    }
    eprintln!("{runs} runs, {kills} kills survived {phases:?}, {rows} rows compared, 0 mismatches");
    assert!(
        phases.get("copy").copied().unwrap_or(0) >= 2 * runs as usize,
        "kills must hit the copy: {phases:?}"
    );
}

struct KillOutcome {
    kills: usize,
    phases: std::collections::BTreeMap<String, usize>,
    rows: usize,
}

/// One run: kills the job at random instants (0-600 ms of running) twelve times, then
/// lets it finish, and compares the table with the writer's model.
fn kill_until_done(seed: u64, path: JobPath) -> KillOutcome {
    let (project, other) = Project::for_path(path);
    let mut db = project.db.client();
    let model = create_items(&mut db, "items", 30_000);
    let file = project.job_file(
        "items",
        &items_copy_job_on(
            path,
            "items",
            "[copy]\nbatch_size = 500\nconcurrency = 2\nrows_per_second = 20000\n\n\
             [cutover]\nmode = \"auto\"\n\n\
             [contract]\nafter = \"0s\"\nsql = [\"DROP TABLE public.items_old\"]",
        ),
    );
    let mut random = Lcg::new(seed);
    let writer = Writer::start(&project.db.url, "items", model, seed);
    let mut kills = 0;
    let mut phases = std::collections::BTreeMap::new();
    let mut history = Vec::new();
    loop {
        let mut child = project
            .command(&["job", "run", &file])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let budget = if kills < 12 {
            random.below(600)
        } else {
            120_000
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(budget);
        let finished = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if std::time::Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        match finished {
            Some(status) => {
                assert!(
                    status.success(),
                    "job run failed after {kills} kills (seed {seed})"
                );
                break;
            }
            None => {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
                let status = project.run(&["job", "status", "items", "--json"]);
                let phase = match status.code {
                    0 => serde_json::from_str::<serde_json::Value>(&status.stdout).unwrap()[0]
                        ["phase"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                    _ => "pending".to_string(), // killed before its first record
                };
                history.push(format!("{phase} after {budget} ms"));
                *phases.entry(phase).or_insert(0) += 1;
            }
        }
    }
    assert_eq!(project.job_status("items")["phase"], "done", "seed {seed}");
    let (model, _) = writer.stop();
    let table = contents(&mut other.as_ref().unwrap_or(&project.db).client(), "items");
    let differ: Vec<String> = model
        .keys()
        .chain(table.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| model.get(k) != table.get(k))
        .take(20)
        .map(|k| {
            format!(
                "{k}: table {:?}, committed {:?}",
                table.get(k),
                model.get(k)
            )
        })
        .collect();
    assert!(
        differ.is_empty(),
        "the table must hold exactly what was committed (seed {seed}); kills: {history:?}; differing rows: {differ:#?}"
    );
    assert!(
        !project.db.exists("items_old") && !project.db.exists("items_v2"),
        "seed {seed}"
    );
    if other.is_some() {
        assert!(
            !project.db.exists("items"),
            "seed {seed}: the source is fenced"
        );
    }
    KillOutcome {
        kills,
        phases,
        rows: model.len(),
    }
}

/// `job run --follow` keeps applying changes once ready, until `job cutover` from
/// another shell; that cutover then has almost nothing left to drain. After it, the
/// process carries the new table's writes back to the old one, until `job contract`.
/// A catch-up pass of many changes (updates, deletes, key changes, inserts, in one
/// large transaction made during the copy) is applied in parallel by key where the
/// target allows it, and in one session where a trigger of the target's could see the
/// order; the target ends equal to the source either way.
#[test]
fn a_large_catch_up_pass_is_applied_in_parallel_by_key_where_order_allows() {
    for (triggered, said) in [
        (false, "catch-up applied in parallel by key"),
        (true, "catch-up applied in one session"),
    ] {
        let project = Project::new();
        let mut db = project.db.client();
        create_items(&mut db, "items", 6_000);
        if triggered {
            db.batch_execute(
                "CREATE TABLE items_v2 (id bigint PRIMARY KEY, v text NOT NULL, pad text);
                 CREATE FUNCTION keep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
                 CREATE TRIGGER keep BEFORE INSERT OR UPDATE ON items_v2 FOR EACH ROW EXECUTE FUNCTION keep();",
            )
            .unwrap();
        }
        let file = project.job_file("items", &copy_job("items", "rows_per_second = 2000"));
        let mut run = Running::spawn(
            project
                .command(&["job", "run", &file])
                .env("SWITCHYARD_LOG", "switchyard=info"),
        );
        project.wait_for_job("items", "copying", |s| {
            s["phase"] == "copy" && s["rows_copied"] != 0
        });
        db.batch_execute(
            "UPDATE items SET v = v || 'x' WHERE id % 7 = 0;
             DELETE FROM items WHERE id % 11 = 0;
             UPDATE items SET id = id + 100000 WHERE id % 13 = 0;
             INSERT INTO items (id, v) SELECT g, 'n' || g FROM generate_series(200001, 200600) g;
             UPDATE items SET v = v || 'y' WHERE id % 5 = 0;",
        )
        .unwrap();
        run.wait_for_stderr(said);
        let ended = run.wait();
        assert_eq!(
            ended.stdout,
            "job items: verified and caught up, ready to cut over: switchyard job cutover items\n",
            "{}",
            ended.stderr
        );
        assert_eq!(checksum(&mut db, "items"), checksum(&mut db, "items_v2"));
    }
}

#[test]
fn follow_keeps_the_target_caught_up_until_cutover_and_the_old_table_until_contract() {
    let project = Project::new();
    let mut db = project.db.client();
    let model = create_items(&mut db, "items", 5_000);
    let file = project.job_file("items", &copy_job("items", ""));
    let writer = Writer::start(&project.db.url, "items", model, seed());
    let runner = Running::spawn(&mut project.command(&["job", "run", "--follow", &file]));
    let ready = project.wait_for_job("items", "ready", |s| s["phase"] == "ready_to_cutover");
    let applied = ready["changes_applied"].as_u64().unwrap();
    project.wait_for_job("items", "following the writes", |s| {
        s["phase"] == "ready_to_cutover" && s["changes_applied"].as_u64() > Some(applied + 200)
    });
    // The following process holds the job, and cuts over within a control interval.
    let cutover = project.run(&["job", "cutover", "items"]).ok();
    assert!(
        cutover
            .stdout
            .starts_with("job items: runs in another process, which acts on the job's control\n"),
        "{}",
        cutover.stdout
    );
    let cut = project.wait_for_job("items", "cut over", |s| !s["writes_blocked_ms"].is_null());
    assert!(cut["writes_blocked_ms"].as_u64().unwrap() < 1_000, "{cut}");
    // The writer now writes to the new table; the following process carries its
    // inserts back to the old one as they come.
    let newest = project.db.column("SELECT max(id)::text FROM items")[0].clone();
    project.db.wait_for(
        &format!("SELECT (count(*) >= 50)::text FROM items_old WHERE id > {newest}"),
        "true",
    );
    let (model, _) = writer.stop();
    project.db.wait_for(
        "SELECT (NOT EXISTS ((TABLE items EXCEPT TABLE items_old) UNION ALL (TABLE items_old EXCEPT TABLE items)))::text",
        "true",
    );
    project.run(&["job", "contract", "items"]).ok();
    let output = runner.wait();
    assert_eq!(output.code, 0, "{}", output.stderr);
    assert!(
        output.stdout.starts_with("job items: done"),
        "{}",
        output.stdout
    );
    assert_eq!(contents(&mut db, "items"), model);
    assert_eq!(
        project.db.column(
            "SELECT count(*)::text FROM pg_replication_slots WHERE database = current_database()"
        ),
        ["0"],
        "contract drops the way back's slot"
    );
}

#[test]
fn verify_compares_every_column_including_toasted_ones() {
    let project = Project::new();
    let mut db = project.db.client();
    create_items(&mut db, "items", 5_000);
    let file = project.job_file("items", &copy_job("items", ""));
    project.run(&["job", "run", &file]).ok();
    // Updates that leave the TOASTed `pad` out, during catch-up.
    db.batch_execute("UPDATE items SET v = v || '!' WHERE id % 50 = 0")
        .unwrap();
    project.run(&["job", "cutover", "items"]).ok();
    assert_eq!(checksum(&mut db, "items"), checksum(&mut db, "items_old"));
}

/// A stored generated column is computed by the target; verify compares it with the
/// source's column of the same name, so a target computing it differently is caught.
#[test]
fn a_generated_column_computed_differently_fails_verify_on_both_paths() {
    for path in JobPath::ALL {
        let (project, _other) = Project::for_path(path);
        project
            .db
            .client()
            .batch_execute(
                "CREATE TABLE things (id bigint PRIMARY KEY, n int NOT NULL, doubled int GENERATED ALWAYS AS (n * 2) STORED);
                 INSERT INTO things (id, n) SELECT g, g FROM generate_series(1, 500) g;",
            )
            .unwrap();
        let (target_name, target_database) = match path {
            JobPath::SameDatabase => ("things_v2", "postgresql"),
            JobPath::OtherServer => ("things", "other"),
        };
        let job = format!(
            "name = \"things\"\nkind = \"copy\"\n[source]\ndatabase = \"postgresql\"\ntable = \"public.things\"\n\
             [target]\ndatabase = \"{target_database}\"\ntable = \"public.{target_name}\"\n\
             [copy]\nchunks = 2\n\
             [expand]\nsql = [\"CREATE TABLE public.{target_name} (id bigint PRIMARY KEY, n int NOT NULL, doubled int GENERATED ALWAYS AS (n * 3) STORED)\"]\n"
        );
        let file = project.job_file("things", &job);
        let failed = project.run(&["job", "run", &file]).expect_code(1);
        assert_eq!(
            failed.stderr,
            "error: job `things`: verification failed, cutover refused:\n\
             range 0 (keys up to (250)): 250 rows on both sides, but their contents differ\n\
             range 1 (keys after (250)): 250 rows on both sides, but their contents differ\n",
            "{path:?}"
        );
    }
    // Nor can a backfill write one.
    let project = Project::new();
    project
        .db
        .client()
        .batch_execute("CREATE TABLE things (id bigint PRIMARY KEY, n int, doubled int GENERATED ALWAYS AS (n * 2) STORED)")
        .unwrap();
    let file = project.job_file(
        "fill",
        "name = \"fill\"\nkind = \"backfill\"\n[source]\ndatabase = \"postgresql\"\ntable = \"public.things\"\n\
         [transform]\ncolumns = { doubled = \"n * 3\" }\n",
    );
    let refused = project.run(&["job", "run", &file]).expect_code(2);
    assert_eq!(
        refused.stderr,
        "error: jobs/fill.toml: field `transform.columns.doubled`: column `doubled` of public.things is generated: the database computes it\n"
    );
    // Nor an identity whose values the database hands out.
    project
        .db
        .client()
        .batch_execute(
            "ALTER TABLE things ADD COLUMN serial_no bigint GENERATED ALWAYS AS IDENTITY",
        )
        .unwrap();
    let file = project.job_file(
        "fill",
        "name = \"fill\"\nkind = \"backfill\"\n[source]\ndatabase = \"postgresql\"\ntable = \"public.things\"\n\
         [transform]\ncolumns = { serial_no = \"id\" }\n",
    );
    let refused = project.run(&["job", "run", &file]).expect_code(2);
    assert_eq!(
        refused.stderr,
        "error: jobs/fill.toml: field `transform.columns.serial_no`: column `serial_no` of public.things is GENERATED ALWAYS AS IDENTITY: the database hands out its values\n"
    );
}

#[test]
fn a_real_difference_fails_verify_naming_the_chunks() {
    // A transform that never gives the same value twice: every chunk differs, even when
    // compared again consistently.
    let project = Project::new();
    let mut db = project.db.client();
    create_items(&mut db, "items", 2_000);
    // Two chunks, so that the message names two.
    let job = copy_job(
        "items",
        "chunks = 2\n[transform]\ncolumns = { v = \"s.v || random()::text\" }\n",
    );
    let file = project.job_file("items", &job);
    let failed = project.run(&["job", "run", &file]).expect_code(1);
    assert_eq!(
        failed.stderr,
        "error: job `items`: verification failed, cutover refused:\n\
         range 0 (keys up to (1000)): 1000 rows on both sides, but their contents differ\n\
         range 1 (keys after (1000)): 1000 rows on both sides, but their contents differ\n"
    );
    let status = project.job_status("items");
    assert_eq!(status["phase"], "failed");
    assert!(status["error"]
        .as_str()
        .unwrap()
        .contains("verification failed"));
    project.run(&["job", "cutover", "items"]).expect_code(1);
    assert!(
        !project.db.exists("items_old"),
        "a failed verification must block cutover"
    );
}

#[test]
fn abort_before_cutover_leaves_nothing_behind() {
    let project = Project::new();
    let mut db = project.db.client();
    create_items(&mut db, "items", 3_000);
    let before = checksum(&mut db, "items");
    let file = project.job_file(
        "items",
        &copy_job("items", "[verify]\nmethod = \"count\"\n"),
    );
    project.run(&["job", "run", &file]).ok();
    assert!(project.db.exists("items_v2"));
    let run = project.run(&["job", "abort", "items"]).ok();
    assert_eq!(run.stdout, "job items: aborted\n");
    assert!(
        !project.db.exists("items_v2"),
        "the target expand created must be gone"
    );
    assert_eq!(
        project.db.column(
            "SELECT count(*)::text FROM pg_replication_slots WHERE database = current_database()"
        ),
        ["0"]
    );
    assert_eq!(
        project
            .db
            .column("SELECT count(*)::text FROM pg_publication"),
        ["0"]
    );
    assert_eq!(
        project
            .db
            .column("SELECT count(*)::text FROM switchyard.copy_progress"),
        ["0"]
    );
    assert_eq!(
        checksum(&mut db, "items"),
        before,
        "the source is as it was"
    );
    assert_eq!(project.job_status("items")["phase"], "aborted");
    let again = project.run(&["job", "pause", "items"]).expect_code(2);
    assert_eq!(
        again.stderr,
        "error: job `items` is aborted; nothing to pause\n"
    );
}

#[test]
fn abort_after_cutover_swaps_back_with_every_write_made_since() {
    let project = Project::new();
    let mut db = project.db.client();
    create_items(&mut db, "items", 1_000);

    let file = project.job_file(
        "items",
        &copy_job(
            "items",
            "[cutover]\nmode = \"auto\"\n[contract]\nafter = \"manual\"\n",
        ),
    );
    let run = project.run(&["job", "run", &file]).ok();
    assert!(
        run.stdout.starts_with("job items: waiting for contract"),
        "{}",
        run.stdout
    );
    assert!(project.db.exists("items_old"));
    // Writes go on against the new table, through the abort: blocked statements
    // continue on the old table once it has its name back.
    let model = contents(&mut db, "items");
    let writer = Writer::start(&project.db.url, "items", model, seed());
    project.db.wait_for(
        "SELECT (count(*) >= 100)::text FROM items WHERE id > 1000000",
        "true",
    );
    project.run(&["job", "abort", "items"]).ok();
    let (model, ops) = writer.stop();
    assert!(ops >= 200, "the writer made only {ops} changes");
    assert!(!project.db.exists("items_old") && project.db.exists("items_v2"));
    assert_eq!(
        contents(&mut db, "items"),
        model,
        "the old table took its name back with every write made to the new one"
    );
    assert_eq!(
        project
            .db
            .column("SELECT relkind::text FROM pg_class WHERE relname = 'items'"),
        ["r"]
    );
    assert_eq!(
        project.db.column(
            "SELECT count(*)::text FROM pg_replication_slots WHERE database = current_database()"
        ),
        ["0"],
        "the way back's slot is gone"
    );
    assert_eq!(
        project
            .db
            .column("SELECT count(*)::text FROM pg_publication"),
        ["0"]
    );
    assert_eq!(project.job_status("items")["phase"], "aborted");
}

#[test]
fn backfill_under_concurrent_writes_leaves_no_wrong_value() {
    let project = Project::new();
    let mut db = project.db.client();
    let model = create_items(&mut db, "items", 20_000);
    let file = project.job_file("fill", &items_backfill_job("fill", 1000));
    let writer = Writer::start(&project.db.url, "items", model, seed());
    let run = project.run(&["job", "run", &file]).ok();
    assert_eq!(
        run.stdout,
        "job fill: waiting for contract: switchyard job contract fill\n"
    );
    let (model, _) = writer.stop();
    assert_eq!(contents(&mut db, "items"), model);
    assert_eq!(project.db.column(WRONGLY_FILLED), ["0"]);
    assert_eq!(
        project
            .db
            .column("SELECT count(*)::text FROM pg_trigger WHERE tgname = 'switchyard_fill_fill'"),
        ["1"]
    );
    project.run(&["job", "contract", "fill"]).ok();
    assert_eq!(
        project
            .db
            .column("SELECT count(*)::text FROM pg_trigger WHERE tgname = 'switchyard_fill_fill'"),
        ["0"]
    );
    assert_eq!(project.job_status("fill")["phase"], "done");
}

#[test]
fn pause_throttle_and_resume_act_on_a_running_job() {
    let project = Project::new();
    let mut db = project.db.client();
    create_items(&mut db, "items", 20_000);
    let file = project.job_file("items", &copy_job("items", "rows_per_second = 4000\n"));
    let child = project
        .command(&["job", "run", &file])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    project.wait_for_job("items", "copying", |s| {
        s["phase"] == "copy" && s["rows_copied"].as_u64() > Some(0)
    });
    project.run(&["job", "pause", "items"]).ok();
    let paused = project.wait_for_job("items", "paused", |s| s["phase"] == "paused");
    let copied = paused["rows_copied"].as_u64().unwrap();
    assert!(copied < 20_000, "paused after {copied} rows");
    assert_eq!(
        project.job_status("items")["rows_copied"].as_u64().unwrap(),
        copied,
        "a paused job copies nothing"
    );
    project
        .run(&["job", "throttle", "items", "--rows-per-second", "0"])
        .ok();
    project.run(&["job", "resume", "items"]).ok();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(project.job_status("items")["phase"], "ready_to_cutover");
    assert_eq!(checksum(&mut db, "items"), checksum(&mut db, "items_v2"));
}

#[test]
fn slow_batches_make_the_copy_back_off() {
    let project = Project::new();
    let mut db = project.db.client();
    create_items(&mut db, "items", 3_000);
    // Every batch takes longer than 1 ms, so each is followed by a pause as long.
    let file = project.job_file("items", &copy_job("items", "max_lag = \"1ms\"\n"));
    project.run(&["job", "run", &file]).ok();
    let status = project.job_status("items");
    assert!(
        status["throttle_wait_seconds"].as_f64().unwrap() > 0.0,
        "{status}"
    );
    assert_eq!(checksum(&mut db, "items"), checksum(&mut db, "items_v2"));
}

#[test]
fn plan_changes_nothing() {
    let project = Project::new();
    let mut db = project.db.client();
    create_items(&mut db, "items", 100);
    db.batch_execute("CREATE VIEW items_view AS SELECT id FROM items")
        .unwrap();
    let file = project.job_file("items", &copy_job("items", ""));
    let plan = project.run(&["job", "plan", &file]).ok();
    assert!(
        plan.stdout
            .starts_with("job items (copy), source public.items: about 100 rows\n"),
        "{}",
        plan.stdout
    );
    assert!(plan
        .stdout
        .contains("CREATE TABLE IF NOT EXISTS public.items_v2"));
    assert!(
        plan.stdout.contains(
            "    ok             view items_view: re-created on the new table at cutover\n"
        ),
        "{}",
        plan.stdout
    );
    assert!(plan.stdout.ends_with("nothing was changed\n"));
    assert!(!project.db.exists("items_v2") && !project.db.exists("switchyard.copy_progress"));
    assert_eq!(
        project.db.column(
            "SELECT count(*)::text FROM pg_replication_slots WHERE database = current_database()"
        ),
        ["0"]
    );
}

/// Each bad job file exits 2, naming the file and the field, and changes nothing.
#[test]
fn bad_job_files_exit_2_naming_file_and_field() {
    let project = Project::new();
    let base = copy_job("items", "");
    let cases: Vec<(String, &str)> = vec![
        (base.replace("batch_size = 500", "batch_size = 0"), "field `copy.batch_size`: must be at least 1"),
        (base.replace("batch_size = 500", "batch_sise = 500"), "field `copy`: unknown field `batch_sise`, expected one of `batch_size`, `rows_per_second`, `max_lag`, `concurrency`"),
        (base.replace("kind = \"copy\"", "kind = \"move\""), "field `kind`: unknown variant `move`, expected one of `copy`, `backfill`, `reindex`"),
        (base.replace("database = \"postgresql\"\ntable = \"public.items\"", "database = \"nosuch\"\ntable = \"public.items\""), "field `source.database`: no database named `nosuch` in the configuration"),
        (base.replace("name = \"items\"", "name = \"items; drop\""), "field `name`: `items; drop` must be letters, digits and `_` only (it names replication slots and metrics)"),
        (base.replace("name = \"items\"", &format!("name = \"{}\"", "n".repeat(37))), "field `name`: at most 36 characters (it names replication slots)"),
        (base.replace("concurrency = 2", "concurrency = \"two\""), "field `copy.concurrency`: invalid type: string \"two\", expected usize"),
        (format!("{base}\n[cutover]\nmax_lag = \"soon\"\n"), "field `cutover.max_lag`: "),
        (base.replace("concurrency = 2", "concurrency = 2\nmethod = \"server\""), "field `copy.method`: \"server\" is an Elasticsearch reindex's (the cluster's `_reindex` copies the old index into the new); other jobs copy with \"bulk\""),
        (base.replace("concurrency = 2", "concurrency = 2\nslices = 4"), "field `copy.slices`: slices are for the cluster's own copy; add `method = \"server\"`"),
        (base.replace("[target]", "[nothing]"), "unknown field `nothing`, expected one of `name`, `kind`"),
        ("name = \"x\"\nkind = \"copy\"\n[source]\n".to_string(), "field `source`: missing field `database`"),
        ("name = [".to_string(), "invalid TOML: "),
    ];
    for (text, expected) in cases {
        let file = project.job_file("bad", &text);
        let run = project.run(&["job", "run", &file]).expect_code(2);
        assert!(
            run.stderr
                .starts_with(&format!("error: {file}: {expected}")),
            "for {expected:?}:\n{}",
            run.stderr
        );
        project.run(&["job", "plan", &file]).expect_code(2);
    }
    assert!(
        !project.db.exists("switchyard.copy_progress"),
        "nothing may have run"
    );
}

/// Text, uuid and composite keys, into a partitioned target, under writes.
#[test]
fn other_key_types_and_a_partitioned_target() {
    let project = Project::new();
    let mut db = project.db.client();
    db.batch_execute(
        "CREATE TABLE events (tenant text, seq int, id uuid NOT NULL DEFAULT gen_random_uuid(), body text, PRIMARY KEY (tenant, seq));
         CREATE UNIQUE INDEX events_id ON events (id);
         INSERT INTO events (tenant, seq, body) SELECT 'tenant-' || (g % 7), g, 'body ' || g FROM generate_series(1, 6000) g;
         ANALYZE events;",
    )
    .unwrap();
    let job = |name: &str, key: &str, target: &str, ddl: &str| {
        format!(
            "name = \"{name}\"\nkind = \"copy\"\n[source]\ndatabase = \"postgresql\"\ntable = \"events\"\nkey = {key}\n\
             [target]\ndatabase = \"postgresql\"\ntable = \"{target}\"\n[expand]\nsql = [{ddl}]\n\
             [copy]\nbatch_size = 250\nconcurrency = 3\n[contract]\nafter = \"manual\"\n"
        )
    };
    // Composite (text, int) key into a list-partitioned table, with writes during the copy.
    let partitioned = job(
        "by_tenant",
        "[\"tenant\", \"seq\"]",
        "events_v2",
        "\"CREATE TABLE IF NOT EXISTS events_v2 (tenant text, seq int, id uuid NOT NULL, body text, PRIMARY KEY (tenant, seq)) PARTITION BY LIST (tenant)\", \
         \"CREATE TABLE IF NOT EXISTS events_v2_even PARTITION OF events_v2 FOR VALUES IN ('tenant-0', 'tenant-2', 'tenant-4', 'tenant-6')\", \
         \"CREATE TABLE IF NOT EXISTS events_v2_odd PARTITION OF events_v2 FOR VALUES IN ('tenant-1', 'tenant-3', 'tenant-5')\"",
    );
    let file = project.job_file("by_tenant", &partitioned);
    let writes = std::thread::spawn({
        let url = project.db.url.clone();
        move || {
            let mut client = common::connect(&url).unwrap();
            for i in 0..300 {
                client
                    .execute(
                        "UPDATE events SET body = body || '+' WHERE seq = $1",
                        &[&(i * 17 % 6000 + 1)],
                    )
                    .unwrap();
                client
                    .execute(
                        "INSERT INTO events (tenant, seq, body) VALUES ('tenant-3', $1, 'late')",
                        &[&(10_000 + i)],
                    )
                    .unwrap();
                client
                    .execute("DELETE FROM events WHERE seq = $1", &[&(i * 13 % 6000 + 1)])
                    .unwrap();
            }
        }
    });
    let run = project.run(&["job", "run", &file]).ok();
    assert!(
        run.stdout
            .starts_with("job by_tenant: verified and caught up"),
        "{}",
        run.stdout
    );
    writes.join().unwrap();
    project.run(&["job", "cutover", "by_tenant"]).ok();
    // The drain at cutover caught every write; compare with the old table.
    let rows = |table: &str| {
        project.db.column(&format!("SELECT md5(string_agg(e::text, ',' ORDER BY tenant, seq)) FROM (SELECT tenant, seq, id, body FROM {table}) e"))
    };
    assert_eq!(
        project
            .db
            .column("SELECT relkind::text FROM pg_class WHERE relname = 'events'"),
        ["p"]
    );
    assert_eq!(rows("events"), rows("events_old"));

    // A uuid key.
    db.batch_execute(
        "CREATE TABLE docs (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), body text);
         INSERT INTO docs (body) SELECT 'doc ' || g FROM generate_series(1, 3000) g; ANALYZE docs;",
    )
    .unwrap();
    let uuid_job = "name = \"docs\"\nkind = \"copy\"\n[source]\ndatabase = \"postgresql\"\ntable = \"docs\"\n\
        [target]\ndatabase = \"postgresql\"\ntable = \"docs_v2\"\n\
        [expand]\nsql = [\"CREATE TABLE IF NOT EXISTS docs_v2 (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), body text, words int)\"]\n\
        [transform]\ncolumns = { words = \"array_length(string_to_array(body, ' '), 1)\" }\n\
        [copy]\nbatch_size = 100\nconcurrency = 4\n";
    let file = project.job_file("docs", uuid_job);
    project.run(&["job", "run", &file]).ok();
    db.batch_execute("UPDATE docs SET body = body || ' more words' WHERE body LIKE 'doc 1%'")
        .unwrap();
    project.run(&["job", "cutover", "docs"]).ok();
    assert_eq!(
        project.db.column("SELECT count(*)::text FROM docs d JOIN docs_old o USING (id) WHERE d.body = o.body AND d.words = array_length(string_to_array(o.body, ' '), 1)"),
        ["3000"]
    );
}

/// A process that dies right after the cutover committed, before it could record it,
/// leaves a job whose record says "cutover" without a time: running it again must see
/// the cutover done, not try it again.
#[test]
fn a_cutover_that_committed_is_not_repeated() {
    let project = Project::new();
    let mut db = project.db.client();
    create_items(&mut db, "items", 1_000);
    let file = project.job_file(
        "items",
        &copy_job(
            "items",
            "[cutover]\nmode = \"auto\"\n[contract]\nafter = \"manual\"\n",
        ),
    );
    let first = project.run(&["job", "run", &file]).ok();
    assert!(
        first.stdout.starts_with("job items: waiting for contract"),
        "{}",
        first.stdout
    );
    // Forget, in the state store, that the cutover happened.
    let state = rusqlite::Connection::open(project.path("data/switchyard.db")).unwrap();
    let record: String = state
        .query_row("SELECT record FROM jobs WHERE name = 'items'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let mut record: serde_json::Value = serde_json::from_str(&record).unwrap();
    record["phase"] = "cutover".into();
    record["cutover_at"] = serde_json::Value::Null;
    state
        .execute(
            "UPDATE jobs SET record = ?1 WHERE name = 'items'",
            [record.to_string()],
        )
        .unwrap();

    let again = project.run(&["job", "run", &file]).ok();
    assert!(
        again.stdout.starts_with("job items: waiting for contract"),
        "{}",
        again.stdout
    );
    assert!(
        project.db.exists("items_old") && !project.db.exists("items_v2"),
        "no second swap"
    );
    assert_eq!(checksum(&mut db, "items"), checksum(&mut db, "items_old"));
}

#[test]
fn a_cut_connection_is_retried_and_the_job_ends_equal() {
    let project = Project::new();
    let mut db = project.db.client();
    create_items(&mut db, "items", 20_000);
    let server_port = url::Url::parse(&project.db.url).unwrap().port().unwrap();
    let proxy = Proxy::start(server_port);
    let through_proxy =
        project
            .db
            .url
            .replacen(&format!(":{server_port}/"), &format!(":{}/", proxy.port), 1);
    let file = project.job_file("items", &copy_job("items", "rows_per_second = 6000\n"));
    let child = project
        .command(&["job", "run", &file])
        .env("SWITCHYARD__DATABASES__POSTGRESQL__URL", &through_proxy)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    project.wait_for_job("items", "copying", |s| {
        s["phase"] == "copy" && s["rows_copied"].as_u64() >= Some(3_000)
    });
    let cut = proxy.cut();
    assert!(
        cut >= 3,
        "the job's connections go through the proxy ({cut} cut)"
    );
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("transient error; reconnecting"), "{stderr}");
    assert_eq!(project.job_status("items")["phase"], "ready_to_cutover");
    assert_eq!(checksum(&mut db, "items"), checksum(&mut db, "items_v2"));
}

/// `GENERATED ALWAYS` and `BY DEFAULT` identity columns and a serial column keep their
/// values through copy and catch-up, a stored generated column is computed by the
/// target, and rows inserted after cutover get values never handed out, on both paths.
#[test]
fn identity_and_generated_columns_survive_and_new_rows_get_fresh_identities() {
    let columns = "id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, n int NOT NULL, \
                   doubled int GENERATED ALWAYS AS (n * 2) STORED, serial_no int GENERATED BY DEFAULT AS IDENTITY, legacy bigserial";
    for path in JobPath::ALL {
        let (project, other) = Project::for_path(path);
        let target_db = other.as_ref().unwrap_or(&project.db);
        project
            .db
            .client()
            .batch_execute(&format!(
                "CREATE TABLE things ({columns});
                 INSERT INTO things (n) SELECT g FROM generate_series(1, 3000) g;
                 DELETE FROM things WHERE id % 7 = 0;"
            ))
            .unwrap();
        let (target_name, target_database) = match path {
            JobPath::SameDatabase => ("things_v2", "postgresql"),
            JobPath::OtherServer => ("things", "other"),
        };
        let job = format!(
            "name = \"things\"\nkind = \"copy\"\n[source]\ndatabase = \"postgresql\"\ntable = \"public.things\"\n\
             [target]\ndatabase = \"{target_database}\"\ntable = \"public.{target_name}\"\n\
             [expand]\nsql = [\"CREATE TABLE public.{target_name} ({columns})\"]\n\
             [copy]\nbatch_size = 700\nconcurrency = 2\n[contract]\nafter = \"manual\"\n"
        );
        let file = project.job_file("things", &job);
        project.run(&["job", "run", &file]).ok();
        // Catch-up applies inserts (identity values from the source), updates that
        // change the generated column's input, and deletes.
        project
            .db
            .client()
            .batch_execute(
                "INSERT INTO things (n) SELECT g FROM generate_series(5001, 5100) g;
                 INSERT INTO things (n, serial_no) VALUES (7, 777777);
                 UPDATE things SET n = n + 1 WHERE id % 10 = 1;
                 DELETE FROM things WHERE id % 11 = 0;",
            )
            .unwrap();
        // The source's sequence handed out a value whose row is gone: never again.
        let handed_out = project
            .db
            .column("INSERT INTO things (n) VALUES (0) RETURNING id || ' ' || legacy")[0]
            .clone();
        let (handed_out, legacy_handed_out) = handed_out.split_once(' ').unwrap();
        let (handed_out, legacy_handed_out): (i64, i64) = (
            handed_out.parse().unwrap(),
            legacy_handed_out.parse().unwrap(),
        );
        project
            .db
            .client()
            .batch_execute("DELETE FROM things WHERE n = 0")
            .unwrap();
        let rows = "SELECT count(*) || ' ' || md5(string_agg(t::text, '|' ORDER BY t.id)) FROM (SELECT id, n, doubled, serial_no, legacy FROM things) t";
        let source = project.db.column(rows);
        let cutover = project.run(&["job", "cutover", "things"]);
        assert_eq!(cutover.code, 0, "{path:?}: {}", cutover.stderr);
        assert_eq!(
            target_db.column(rows),
            source,
            "{path:?}: every value arrives"
        );
        let last_id = handed_out.to_string();
        let last_serial = target_db
            .column("SELECT max(serial_no)::text FROM things WHERE serial_no < 777777")[0]
            .clone();
        let fresh = target_db.column("INSERT INTO things (n) VALUES (1) RETURNING (id > 0)::text || ' ' || id || ' ' || serial_no || ' ' || doubled || ' ' || legacy");
        let parts: Vec<&str> = fresh[0].split(' ').collect();
        assert!(
            parts[1].parse::<i64>().unwrap() > last_id.parse::<i64>().unwrap(),
            "{path:?}: a new row gets an identity past every one the source handed out ({fresh:?}, last {last_id})"
        );
        assert!(
            parts[2].parse::<i64>().unwrap() > last_serial.parse::<i64>().unwrap(),
            "{path:?}: and so does the BY DEFAULT identity ({fresh:?}, last {last_serial})"
        );
        assert_eq!(parts[3], "2", "{path:?}: the generated column is computed");
        assert!(
            parts[4].parse::<i64>().unwrap() > legacy_handed_out,
            "{path:?}: and so does the serial column ({fresh:?}, last {legacy_handed_out})"
        );
    }
}

/// A job file changed after the job started, in a field that shapes the data, is refused
/// naming the change; a change to how fast it runs is taken.
#[test]
fn a_job_file_reshaped_mid_job_is_refused_and_a_throttle_change_is_taken() {
    let project = Project::new();
    let mut db = project.db.client();
    create_items(&mut db, "items", 1_000);
    let file = project.job_file("items", &copy_job("items", ""));
    project.run(&["job", "run", &file]).ok();
    let reshaped = copy_job("items", "[transform]\ncolumns = { v = \"upper(s.v)\" }\n");
    std::fs::write(project.path(&file), &reshaped).unwrap();
    let refused = project.run(&["job", "run", &file]).expect_code(2);
    assert_eq!(
        refused.stderr,
        "error: job `items` started with another shape of its data; its file changed: transform.columns.v was (none), is now `upper(s.v)`. \
         Revert the change, or abort the job (switchyard job abort items) and give the changed file another job name\n"
    );
    let throttled = copy_job("items", "").replace(
        "batch_size = 500",
        "batch_size = 500\nrows_per_second = 100",
    );
    std::fs::write(project.path(&file), &throttled).unwrap();
    let run = project.run(&["job", "run", &file]).ok();
    assert!(run.stdout.contains("ready to cut over"), "{}", run.stdout);
}
