//! Elasticsearch reindex jobs through the real binary, on the server named by
//! `SWITCHYARD_TEST_ELASTICSEARCH_URL`: the alias moved onto `<alias>_v2` with every
//! write a writer made meanwhile; a kill mid-copy resumed; abort before and after
//! cutover leaving the alias and the old index as they were; documents the new mapping
//! refuses reported.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::elastic::Elastic;
use common::Project;
use elasticsearch::http::Method;
use serde_json::{json, Value};

/// Small enough for the in-memory stand-in, whose first write after each read of a
/// point in time copies the whole index while every other request waits (about 2.5 s
/// at 20,000 documents, once per page of the copy and of verify).
const DOCUMENTS: usize = 6_000;
/// The writer's load: steady, and light enough for the in-memory stand-in (which
/// serves one request at a time, about 100 single-document writes a second on an index
/// of this size) to keep serving the job.
const WRITES_PER_SECOND: u32 = 40;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn document(n: usize, round: u64) -> Value {
    json!({
        "sku": format!("sku-{n:05}"),
        "title": format!("Café chair {n}"),
        "n": round,
        "tags": ["a", format!("t{}", n % 7)],
        "dims": {"w": n % 90, "h": 40},
        "updated_at": now_ms(),
    })
}

/// `<prefix>_catalog` → `<prefix>_catalog_v1` holding `count` documents.
fn catalog(elastic: &Elastic, count: usize) -> (String, BTreeMap<String, Value>) {
    let alias = elastic.index("catalog");
    let v1 = format!("{alias}_v1");
    elastic.ok(
        Method::Put,
        &format!("/{v1}"),
        Some(&json!({"mappings": {"properties": {"sku": {"type": "keyword"}, "updated_at": {"type": "date"}}}})),
    );
    let documents: BTreeMap<String, Value> = (0..count)
        .map(|n| (n.to_string(), document(n, 0)))
        .collect();
    elastic.put_documents(&v1, documents.clone());
    elastic.ok(
        Method::Post,
        "/_aliases",
        Some(&json!({"actions": [{"add": {"index": v1, "alias": alias, "is_write_index": true}}]})),
    );
    (alias, documents)
}

fn job(elastic: &Elastic, extra: &str) -> (String, String) {
    let name = format!("{}_reindex", elastic.prefix);
    let text = format!(
        r#"
name = "{name}"
kind = "reindex"

[source]
database = "elasticsearch"
index = "{alias}"

[expand]
mapping = {{ properties = {{ sku = {{ type = "keyword" }}, title = {{ type = "text", analyzer = "folded" }}, n = {{ type = "long" }}, code = {{ type = "integer" }}, dims = {{ type = "object" }}, updated_at = {{ type = "date" }} }} }}
settings = {{ number_of_shards = 1, analysis = {{ analyzer = {{ folded = {{ type = "custom", tokenizer = "standard", filter = ["lowercase", "asciifolding"] }} }} }} }}

[catch_up]
method = "watermark"
field = "updated_at"

[contract]
after = "manual"
{extra}
"#,
        alias = elastic.index("catalog"),
    );
    (name, text)
}

/// Writes through the alias until stopped, about [`WRITES_PER_SECOND`] a second:
/// updates, inserts, and deletes while `deletes` holds; remembers what each acknowledged
/// write left.
fn writer(
    alias: String,
    stop: Arc<AtomicBool>,
    deletes: Arc<AtomicBool>,
) -> std::thread::JoinHandle<BTreeMap<String, Option<Value>>> {
    std::thread::spawn(move || {
        let elastic = Elastic::new();
        let mut written = BTreeMap::new();
        let mut round = 1;
        let pace = Duration::from_secs(1) / WRITES_PER_SECOND;
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(pace);
            round += 1;
            let n = (round as usize * 7919) % (DOCUMENTS + 500);
            let id = n.to_string();
            if round % 10 == 0 && deletes.load(Ordering::SeqCst) {
                let (status, _) =
                    elastic.call(Method::Delete, &format!("/{alias}/_doc/{id}"), None);
                if status == 200 || status == 404 {
                    written.insert(id, None);
                }
            } else {
                let body = document(n, round);
                let (status, _) =
                    elastic.call(Method::Put, &format!("/{alias}/_doc/{id}"), Some(&body));
                if status == 200 || status == 201 {
                    written.insert(id, Some(body));
                }
            }
        }
        written
    })
}

#[test]
fn a_reindex_under_writes_moves_the_alias_onto_an_equal_new_index() {
    reindex_under_writes(
        "[copy]\nbatch_size = 500\nrows_per_second = 2000\n",
        "documents per `_bulk` into",
    );
}

#[test]
fn a_reindex_the_cluster_copies_under_writes_moves_the_alias_onto_an_equal_new_index() {
    reindex_under_writes(
        "[copy]\nmethod = \"server\"\nslices = 2\nrows_per_second = 2000\n",
        "one `_reindex` in 2 slices at 2000 documents a second",
    );
}

/// A reindex with `copy` (its `[copy]` section) while a writer writes through the
/// alias: `job plan` says `plan_says`, and the new index ends equal to every write
/// acknowledged.
fn reindex_under_writes(copy: &str, plan_says: &str) {
    let elastic = Elastic::new();
    let (alias, mut expected) = catalog(&elastic, DOCUMENTS);
    let project = Project::with_config(&elastic.config());
    let (name, text) = job(&elastic, &format!("{copy}\n[cutover]\nmode = \"auto\"\n"));
    let file = project.job_file(&name, &text);

    let plan = project.run(&["job", "plan", &file]).ok();
    assert!(
        plan.stdout
            .contains(&format!("`{alias}` from `{alias}_v1` to `{alias}_v2`"))
            && plan.stdout.contains(plan_says),
        "{}",
        plan.stdout
    );

    let (stop, deletes) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(true)),
    );
    let writes = writer(alias.clone(), stop.clone(), deletes.clone());
    let running = common::Running::spawn(&mut project.command(&["job", "run", &file]));
    // The stand-in's write block (the cutover's fence) stops index requests, not
    // deletes, as real Elasticsearch's does: the writer deletes only until verify there.
    if !common::elastic::blocks_deletes() {
        project.wait_for_job(&name, "verifying", |s| {
            !matches!(
                s["phase"].as_str(),
                Some("pending" | "expand" | "copy" | "catch_up")
            )
        });
        deletes.store(false, Ordering::SeqCst);
    }
    let run = running.wait();
    stop.store(true, Ordering::SeqCst);
    let written = writes.join().unwrap();
    let run = run.ok();
    assert!(
        run.stdout
            .starts_with(&format!("job {name}: waiting for contract")),
        "{}",
        run.stdout
    );
    assert!(
        written.len() > 20,
        "the writer wrote during the job ({} documents)",
        written.len()
    );

    let v2 = format!("{alias}_v2");
    assert_eq!(elastic.alias_targets(&alias), std::slice::from_ref(&v2));
    let (_, aliases) = elastic.call(Method::Get, &format!("/_alias/{alias}"), None);
    assert_eq!(
        aliases[&v2]["aliases"][&alias]["is_write_index"], true,
        "{aliases}"
    );
    assert_eq!(
        elastic.mapping(&v2)["properties"]["title"]["analyzer"],
        "folded"
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

    for (id, last) in written {
        match last {
            Some(document) => expected.insert(id, document),
            None => expected.remove(&id),
        };
    }
    let found = elastic.documents(&v2);
    assert_eq!(found.len(), expected.len(), "counts");
    let differing: Vec<&String> = expected
        .keys()
        .filter(|id| found.get(*id) != expected.get(*id))
        .take(5)
        .collect();
    assert!(
        differing.is_empty(),
        "every acknowledged write is in the new index; differing: {differing:?}"
    );
    assert!(
        elastic.exists(&format!("{alias}_v1")),
        "the old index is kept until contract"
    );

    let status = project.job_status(&name);
    assert_eq!(status["phase"], "cutover", "{status}");
    assert!(
        status["rows_copied"].as_u64().unwrap() >= DOCUMENTS as u64 - 2500,
        "{status}"
    );

    project.run(&["job", "contract", &name]).ok();
    project.run(&["job", "run", &file]).ok();
    assert_eq!(project.job_status(&name)["phase"], "done");
    assert!(
        !elastic.exists(&format!("{alias}_v1")),
        "contract deleted the old index"
    );
    assert!(
        common::elastic::checkpoints(&project, &name).is_empty(),
        "the job's checkpoints are gone"
    );
}

#[test]
fn a_killed_reindex_resumes_and_abort_leaves_the_alias_and_old_index_as_they_were() {
    let elastic = Elastic::new();
    let (alias, documents) = catalog(&elastic, 6000);
    let project = Project::with_config(&elastic.config());
    let (name, text) = job(
        &elastic,
        "[copy]\nbatch_size = 1000\nrows_per_second = 4000\n",
    );
    let file = project.job_file(&name, &text);

    project.resume_after_a_kill_mid_copy(&name, &file, 4000);
    let v2 = format!("{alias}_v2");
    assert_eq!(elastic.documents(&v2), documents, "nothing lost or doubled");
    assert_eq!(
        elastic.alias_targets(&alias),
        [format!("{alias}_v1")],
        "not moved before cutover"
    );

    project.run(&["job", "abort", &name]).ok();
    assert_eq!(project.job_status(&name)["phase"], "aborted");
    assert!(!elastic.exists(&v2), "the index it created is gone");
    assert_eq!(elastic.alias_targets(&alias), [format!("{alias}_v1")]);
    assert_eq!(elastic.documents(&alias), documents);
    let (status, _) = elastic.call(
        Method::Put,
        &format!("/{alias}/_doc/new"),
        Some(&json!({"sku": "x"})),
    );
    assert_eq!(status, 201, "the old index takes writes");
}

#[test]
fn abort_after_cutover_swaps_back_with_the_writes_made_since() {
    let elastic = Elastic::new();
    let (alias, mut documents) = catalog(&elastic, 3000);
    let project = Project::with_config(&elastic.config());
    let (name, text) = job(
        &elastic,
        "[copy]\nbatch_size = 5000\n\n[cutover]\nmode = \"auto\"\n",
    );
    let file = project.job_file(&name, &text);
    project.run(&["job", "run", &file]).ok();
    assert_eq!(elastic.alias_targets(&alias), [format!("{alias}_v2")]);

    // Written to the new index through the alias, after the cutover.
    let after = document(7, 99);
    elastic.ok(Method::Put, &format!("/{alias}/_doc/7"), Some(&after));
    elastic.ok(Method::Put, &format!("/{alias}/_doc/added"), Some(&after));
    documents.insert("7".into(), after.clone());
    documents.insert("added".into(), after);

    project.run(&["job", "abort", &name]).ok();
    assert_eq!(project.job_status(&name)["phase"], "aborted");
    assert_eq!(
        elastic.alias_targets(&alias),
        [format!("{alias}_v1")],
        "swapped back"
    );
    assert_eq!(
        elastic.documents(&alias),
        documents,
        "with the writes made since the cutover"
    );
    let (status, _) = elastic.call(
        Method::Put,
        &format!("/{alias}/_doc/later"),
        Some(&json!({"sku": "x"})),
    );
    assert_eq!(status, 201, "the old index takes writes again");
}

#[test]
fn documents_the_new_mapping_refuses_are_reported_and_not_counted() {
    let elastic = Elastic::new();
    let (alias, _) = catalog(&elastic, 3000);
    // `code` is text in the old index, an integer in the new mapping.
    elastic.ok(
        Method::Put,
        &format!("/{alias}/_doc/bad-1"),
        Some(&json!({"sku": "b1", "code": "many", "updated_at": now_ms()})),
    );
    elastic.ok(
        Method::Put,
        &format!("/{alias}/_doc/bad-2"),
        Some(&json!({"sku": "b2", "code": "few", "updated_at": now_ms()})),
    );
    let project = Project::with_config(&elastic.config());
    let (name, text) = job(&elastic, "[copy]\nbatch_size = 5000\n");
    let file = project.job_file(&name, &text);

    let failed = project.run(&["job", "run", &file]).expect_code(1);
    assert!(
        failed
            .stderr
            .contains(&format!("`{alias}_v2` refused 2 documents"))
            && failed
                .stderr
                .contains("_id `bad-1`: mapper_parsing_exception"),
        "{}",
        failed.stderr
    );
    let status = project.job_status(&name);
    assert_eq!(status["phase"], "failed", "{status}");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("refused 2 documents"),
        "{status}"
    );
    assert_eq!(elastic.alias_targets(&alias), [format!("{alias}_v1")]);
}

#[test]
fn a_reindex_of_an_index_without_an_alias_is_refused_with_what_to_do() {
    let elastic = Elastic::new();
    let plain = elastic.index("plain");
    elastic.ok(Method::Put, &format!("/{plain}"), None);
    let project = Project::with_config(&elastic.config());
    let file = project.job_file(
        "plain",
        &format!("name = \"plain\"\nkind = \"reindex\"\n[source]\ndatabase = \"elasticsearch\"\nindex = \"{plain}\"\n[catch_up]\nmethod = \"none\"\n"),
    );
    let refused = project.run(&["job", "run", &file]).expect_code(2);
    assert!(
        refused
            .stderr
            .contains(&format!("`{plain}` is an index, not an alias")),
        "{}",
        refused.stderr
    );

    let file = project.job_file(
        "nofield",
        &format!("name = \"nofield\"\nkind = \"reindex\"\n[source]\ndatabase = \"elasticsearch\"\nindex = \"{plain}\"\n"),
    );
    let refused = project.run(&["job", "run", &file]).expect_code(2);
    assert!(
        refused.stderr.contains("field `catch_up.field`"),
        "{}",
        refused.stderr
    );

    for (slices, reason) in [
        (
            "\"many\"",
            "`many` is neither \"auto\" nor a number of slices",
        ),
        ("0", "0 is outside 1..=1024"),
    ] {
        let file = project.job_file(
            "slices",
            &format!("name = \"slices\"\nkind = \"reindex\"\n[source]\ndatabase = \"elasticsearch\"\nindex = \"{plain}\"\n[catch_up]\nmethod = \"none\"\n[copy]\nmethod = \"server\"\nslices = {slices}\n"),
        );
        let refused = project.run(&["job", "plan", &file]).expect_code(2);
        assert!(
            refused
                .stderr
                .ends_with(&format!("field `copy.slices`: {reason}\n")),
            "{}",
            refused.stderr
        );
    }
}

/// Whether the server has the tasks API (real Elasticsearch and OpenSearch do; the
/// stand-in of `scripts/services` does not).
fn has_tasks_api(elastic: &Elastic) -> bool {
    elastic.call(Method::Get, "/_tasks", None).0 == 200
}

/// Reindex tasks running on the server (the parents of sliced ones).
fn reindex_tasks(elastic: &Elastic) -> usize {
    let tasks = elastic.ok(Method::Get, "/_tasks?actions=*reindex", None);
    tasks["nodes"]
        .as_object()
        .map(|nodes| {
            nodes
                .values()
                .flat_map(|node| node["tasks"].as_object().cloned().unwrap_or_default())
                .filter(|(_, task)| task["parent_task_id"].is_null())
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_reindex_the_cluster_copies_is_followed_through_its_task_paused_and_resumed() {
    let elastic = Elastic::new();
    if !has_tasks_api(&elastic) {
        common::skip(
            "a_reindex_the_cluster_copies_is_followed_through_its_task_paused_and_resumed",
            "the server has no tasks API (`GET /_tasks`): its `_reindex` runs synchronously, so there is no task to follow, rethrottle or cancel",
        );
        return;
    }
    let (alias, documents) = catalog(&elastic, 3000);
    let project = Project::with_config(&elastic.config());
    let (name, text) = job(
        &elastic,
        "[copy]\nmethod = \"server\"\nslices = 2\nbatch_size = 100\nrows_per_second = 300\n",
    );
    let file = project.job_file(&name, &text);
    let child = project
        .command(&["job", "run", &file])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let copying = project.wait_for_job(&name, "the cluster copying", |s| {
        s["phase"] == "copy" && s["rows_copied"].as_u64() > Some(0)
    });
    assert!(
        copying["rows_copied"].as_u64() < Some(3000),
        "followed while the task runs: {copying}"
    );
    assert_eq!(reindex_tasks(&elastic), 1, "one reindex task");

    project.run(&["job", "pause", &name]).ok();
    project.wait_for_job(&name, "paused", |s| s["phase"] == "paused");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while reindex_tasks(&elastic) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "pause cancels the cluster's reindex"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    project
        .run(&["job", "throttle", &name, "--rows-per-second", "0"])
        .ok();
    project.run(&["job", "resume", &name]).ok();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(project.job_status(&name)["phase"], "ready_to_cutover");
    assert_eq!(
        elastic.documents(&format!("{alias}_v2")),
        documents,
        "nothing lost or doubled"
    );
}
