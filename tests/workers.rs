//! Many `switchyard serve` workers sharing one job through a PostgreSQL state store
//! (interface.md, "Many workers"), through the real binary on the real PostgreSQL: the
//! copy spread over every worker, a worker killed mid-chunk, two workers at the
//! cutover, a worker frozen past its chunk's lease, and the job's runner frozen past
//! the job's lease.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::writer::{checksum, create_items, items_copy_job};
use common::{free_port, Project, TestDb};

/// Short leases, so that a dead or frozen worker's chunks move on within seconds.
const LEASE: &str = "2s";

/// A project whose state store is a PostgreSQL database of its own.
fn shared_project() -> (Project, TestDb) {
    let state = TestDb::new();
    let project = Project::with_config(&format!(
        "[state]\nurl = \"{}\"\nlease = \"{LEASE}\"\n",
        state.url
    ));
    (project, state)
}

/// A job copying `items` into `items_v2` in `chunks` chunks, each worker throttled to
/// `rate` rows a second, cutover manual.
fn job(project: &Project, chunks: usize, batch: usize, rate: u64) {
    project.job_file(
        "items",
        &items_copy_job(
            "items",
            &format!(
                "[copy]\nbatch_size = {batch}\nconcurrency = 2\nchunks = {chunks}\nrows_per_second = {rate}\n\
                 [contract]\nafter = \"manual\""
            ),
        ),
    );
}

/// One `serve --worker-id ID` process, its log in `<id>.log` of the project.
struct Worker {
    id: String,
    child: Child,
    log: std::path::PathBuf,
}

impl Worker {
    fn start(project: &Project, id: &str) -> Worker {
        let log = project.path(&format!("{id}.log"));
        let child = project
            .command(&["serve", "--worker-id", id])
            .env(
                "SWITCHYARD__SERVER__LISTEN",
                format!("127.0.0.1:{}", free_port()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Worker {
            id: id.to_string(),
            child,
            log,
        }
    }

    fn signal(&self, signal: i32) {
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    fn log(&self) -> String {
        common::read(&self.log)
    }

    /// Waits (up to 30 s) until its log says `needle`.
    fn wait_for_log(&self, needle: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log().contains(needle) {
            assert!(Instant::now() < deadline, "{what}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn terminate(mut self) {
        self.signal(libc::SIGTERM);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{}: {status}\n{}", self.id, self.log());
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (up to 60 s) until `sql` on `db` returns a first column for which `check` holds.
fn wait_until(
    db: &TestDb,
    sql: &str,
    what: &str,
    mut check: impl FnMut(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut client = db.client();
    loop {
        // The state store's tables appear once the first worker opened it.
        let rows: Vec<String> = client
            .query(sql, &[])
            .map(|rows| {
                rows.iter()
                    .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default();
        if check(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting: {what}; last {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The workers holding a lease on a chunk of `items` now.
const HOLDERS: &str = "SELECT DISTINCT owner FROM switchyard.chunks WHERE job = 'items' AND status = 'leased' ORDER BY 1";

/// What the copy left in the target's checkpoints: rows counted per range, summed, and
/// the number of ranges.
fn counted_rows(db: &TestDb) -> (String, String) {
    let row = db.column("SELECT sum(rows)::text || ' ' || count(*)::text FROM switchyard.copy_progress WHERE job = 'items'");
    let (rows, ranges) = row[0].split_once(' ').unwrap();
    (rows.to_string(), ranges.to_string())
}

/// Asks for the cutover of `items` and checks it happened once: one cutover recorded
/// in the target, one worker entering it, no error, the old table equal to the new.
fn cut_over_once(project: &Project, state: &TestDb, db: &mut postgres::Client) {
    project.run(&["job", "cutover", "items"]).ok();
    wait_until(
        &project.db,
        "SELECT count(*)::text FROM switchyard.cutovers WHERE job = 'items'",
        "the cutover recorded",
        |count| count == ["1"],
    );
    let status = project.wait_for_job("items", "cut over", |s| s["phase"] == "cutover");
    assert!(status["error"].is_null(), "{status}");
    assert_eq!(
        state.column("SELECT count(*)::text FROM switchyard.audit_log WHERE detail = 'job items: ready_to_cutover → cutover'"),
        ["1"],
        "one worker entered the cutover"
    );
    assert_eq!(checksum(db, "items"), checksum(db, "items_old"));
}

#[test]
fn three_workers_share_a_copy_and_the_chunks_of_one_killed_mid_chunk_are_taken_over() {
    let (project, state) = shared_project();
    let mut db = project.db.client();
    create_items(&mut db, "items", 60_000);
    job(&project, 12, 500, 5_000);
    let mut workers: Vec<Worker> = ["w1", "w2", "w3"]
        .iter()
        .map(|id| Worker::start(&project, id))
        .collect();
    // Every worker copies: each holds a lease at some point while the copy runs.
    let mut seen = BTreeSet::new();
    wait_until(&state, HOLDERS, "every worker holding a chunk", |holders| {
        seen.extend(holders.iter().cloned());
        seen.len() == 3
    });
    // Kill one in the middle of a chunk: it holds a lease, and has copied rows of it.
    let victim = workers.remove(1);
    let held = wait_until(
        &state,
        "SELECT chunk::text FROM switchyard.chunks WHERE job = 'items' AND status = 'leased' AND owner = 'w2' ORDER BY 1",
        "w2 holding a chunk",
        |chunks| !chunks.is_empty(),
    );
    drop(victim); // SIGKILL
    let status = project.wait_for_job("items", "ready to cut over", |s| {
        s["phase"] == "ready_to_cutover"
    });
    assert_eq!(
        status["chunks"],
        serde_json::json!({"done": 12, "leased": 0, "pending": 0})
    );
    let copied_by: Vec<String> = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    assert!(copied_by.len() >= 2, "chunks copied by {copied_by:?}");
    // The killed worker's chunks were finished by the others.
    for chunk in &held {
        let by = state.column(&format!(
            "SELECT copied_by FROM switchyard.chunks WHERE job = 'items' AND chunk = {chunk}"
        ));
        assert_ne!(by, ["w2"], "chunk {chunk}, held by the killed worker");
    }
    // Equal, and every row counted once: no batch of a chunk was written twice.
    assert_eq!(checksum(&mut db, "items"), checksum(&mut db, "items_v2"));
    assert_eq!(
        counted_rows(&project.db),
        ("60000".to_string(), "12".to_string())
    );
    for worker in workers {
        worker.terminate();
    }
}

#[test]
fn of_two_workers_at_the_cutover_exactly_one_cuts_over() {
    let (project, state) = shared_project();
    let mut db = project.db.client();
    create_items(&mut db, "items", 5_000);
    job(&project, 4, 500, 0);
    let a = Worker::start(&project, "a");
    let b = Worker::start(&project, "b");
    project.wait_for_job("items", "ready to cut over", |s| {
        s["phase"] == "ready_to_cutover"
    });
    // Both see the request; only the one holding the job's lease acts on it.
    cut_over_once(&project, &state, &mut db);
    assert!(!project.db.exists("items_v2"));
    a.terminate();
    b.terminate();
}

#[test]
fn a_worker_frozen_past_its_lease_cannot_write_once_thawed() {
    let (project, state) = shared_project();
    let mut db = project.db.client();
    create_items(&mut db, "items", 8_000);
    // Slow batches: a chunk takes many seconds, longer than the lease.
    job(&project, 4, 100, 1_000);
    let first = Worker::start(&project, "first");
    project.wait_for_job("items", "copying", |s| s["phase"] == "copy");
    let frozen = Worker::start(&project, "frozen");
    let chunk = wait_until(
        &state,
        "SELECT chunk::text FROM switchyard.chunks WHERE job = 'items' AND status = 'leased' AND owner = 'frozen' ORDER BY 1 LIMIT 1",
        "the second worker holding a chunk",
        |chunks| !chunks.is_empty(),
    )[0]
    .clone();
    // It has written a batch of it: frozen mid-chunk.
    wait_until(
        &project.db,
        &format!("SELECT rows::text FROM switchyard.copy_progress WHERE job = 'items' AND range_no = {chunk}"),
        "a batch of the chunk written",
        |rows| rows.first().is_some_and(|r| r != "0"),
    );
    frozen.signal(libc::SIGSTOP);
    // Its lease expires; the other worker takes the chunk over.
    wait_until(
        &state,
        &format!("SELECT owner FROM switchyard.chunks WHERE job = 'items' AND chunk = {chunk}"),
        "the chunk taken over",
        |owner| owner == ["first"],
    );
    let range_fence = || {
        project.db.column(&format!(
            "SELECT fence::text FROM switchyard.copy_progress WHERE job = 'items' AND range_no = {chunk}"
        ))
    };
    let fence = range_fence();
    frozen.signal(libc::SIGCONT);
    // Thawed, it finds its lease gone and leaves the chunk without writing to it.
    frozen.wait_for_log("passed to another worker", "the thawed worker said nothing");
    assert!(
        frozen.log().contains(&format!("chunk={chunk}")),
        "{}",
        frozen.log()
    );
    assert_eq!(range_fence(), fence, "the range stays the taker's");
    let status = project.wait_for_job("items", "ready to cut over", |s| {
        s["phase"] == "ready_to_cutover"
    });
    assert_eq!(
        state.column(&format!(
            "SELECT copied_by FROM switchyard.chunks WHERE job = 'items' AND chunk = {chunk}"
        )),
        ["first"]
    );
    assert!(status["error"].is_null(), "{status}");
    assert_eq!(checksum(&mut db, "items"), checksum(&mut db, "items_v2"));
    assert_eq!(
        counted_rows(&project.db),
        ("8000".to_string(), "4".to_string())
    );
    first.terminate();
    frozen.terminate();
}

#[test]
fn the_runner_frozen_past_the_jobs_lease_is_taken_over_and_cannot_act_once_thawed() {
    let (project, state) = shared_project();
    let mut db = project.db.client();
    create_items(&mut db, "items", 8_000);
    job(&project, 4, 100, 1_000);
    let runner = Worker::start(&project, "runner");
    project.wait_for_job("items", "copying", |s| {
        s["phase"] == "copy" && s["held_by"] == "runner" && s["rows_copied"] != 0
    });
    runner.signal(libc::SIGSTOP);
    // Its job lease expires; another worker takes the job over and carries it to the
    // cutover, the runner's sessions ended so that its lock on the job is free.
    let taker = Worker::start(&project, "taker");
    let ready = project.wait_for_job("items", "the job taken over and ready", |s| {
        s["phase"] == "ready_to_cutover" && s["held_by"] == "taker"
    });
    assert!(ready["error"].is_null(), "{ready}");
    let record = || state.column("SELECT record FROM switchyard.jobs WHERE name = 'items'");
    let before = record();
    runner.signal(libc::SIGCONT);
    // Thawed, it finds the job another's and stops without writing its record.
    runner.wait_for_log(
        "another worker runs the job now",
        "the thawed runner said nothing",
    );
    assert!(!runner.log().contains("job failed"), "{}", runner.log());
    let after = record();
    let phase = |text: &[String]| {
        serde_json::from_str::<serde_json::Value>(&text[0]).unwrap()["phase"].clone()
    };
    assert_eq!(phase(&after), phase(&before), "{after:?}");
    assert_eq!(
        state.column("SELECT owner FROM switchyard.job_leases WHERE job = 'items'"),
        ["taker"]
    );
    // One cutover, by the holder, and the data equal.
    cut_over_once(&project, &state, &mut db);
    assert_eq!(
        counted_rows(&project.db),
        ("8000".to_string(), "4".to_string())
    );
    taker.terminate();
    runner.terminate();
}
