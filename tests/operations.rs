//! The operations beside migrations, through the real binary: `health` on the real
//! PostgreSQL (SWITCHYARD_TEST_POSTGRES_URL) and the Elasticsearch server of
//! `scripts/services` (SWITCHYARD_TEST_ELASTICSEARCH_URL), and `audit --since`.

mod common;

use common::elastic::Elastic;
use common::{Project, TestDb};
use elasticsearch::http::Method;
use serde_json::{json, Value};

fn findings(project: &Project, args: &[&str]) -> (i32, Vec<Value>) {
    let mut command = vec!["health", "--json"];
    command.extend_from_slice(args);
    let run = project.run(&command);
    let findings: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", run.stdout, run.stderr));
    (run.code, findings.as_array().unwrap().clone())
}

fn finding<'f>(findings: &'f [Value], check: &str) -> &'f Value {
    findings
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no `{check}` in {findings:#?}"))
}

/// A slot dropped when the test ends, however it ends (a database with a slot cannot
/// be dropped).
struct Slot<'a> {
    db: &'a TestDb,
    name: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let _ = self.db.client().execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            &[&self.name],
        );
    }
}

#[test]
fn health_flags_a_slot_left_behind_with_the_wal_it_holds() {
    let project = Project::new();
    let healthy = project.run(&["health"]).ok();
    assert!(
        healthy.stdout.ends_with("healthy: nothing needs action\n"),
        "{}",
        healthy.stdout
    );
    assert!(
        healthy
            .stdout
            .contains("postgresql  server      ok      PostgreSQL "),
        "{}",
        healthy.stdout
    );

    let oid = &project
        .db
        .column("SELECT oid::text FROM pg_database WHERE datname = current_database()")[0];
    let slot = Slot {
        db: &project.db,
        name: format!("switchyard_gone_job_{oid}"),
    };
    project
        .db
        .client()
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot.name],
        )
        .unwrap();
    project
        .db
        .client()
        .batch_execute("CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g")
        .unwrap();

    let run = project.run(&["health"]).expect_code(1);
    assert_eq!(run.stderr, "error: 1 finding needs action\n");
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains(&slot.name))
        .unwrap_or_else(|| panic!("{}", run.stdout));
    assert!(
        line.contains("ACTION") && line.contains("no unfinished job owns it, and it holds "),
        "{line}"
    );
    assert!(
        run.stdout.contains(&format!(
            "Fix: if no job of another configuration uses it: SELECT pg_drop_replication_slot('{}');",
            slot.name
        )),
        "{}",
        run.stdout
    );
    let (code, found) = findings(&project, &[]);
    assert_eq!(code, 1);
    let flagged = finding(&found, &format!("slot {}", slot.name));
    assert_eq!(flagged["status"], "action");
    assert_eq!(flagged["database"], "postgresql");
    let held = project.db.column(&format!(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint::text FROM pg_replication_slots WHERE slot_name = '{}'",
        slot.name
    ));
    assert!(
        held[0].parse::<u64>().unwrap() > 1_000_000,
        "the table's WAL is held: {held:?}"
    );

    drop(slot);
    project.run(&["health"]).ok();
}

#[test]
fn health_flags_a_failed_migration_and_an_applied_file_changed_since() {
    let project = Project::new();
    project.migration("001_users.sql", "CREATE TABLE users (id int);");
    project.migration("002_broken.sql", "ALTER TABLE nowhere ADD COLUMN x int;");
    project.run(&["migrate"]).expect_code(1);
    project.migration("001_users.sql", "CREATE TABLE users (id bigint);");

    let (code, found) = findings(&project, &[]);
    assert_eq!(code, 1);
    let failed = finding(&found, "migration 002");
    assert_eq!(failed["status"], "action");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .starts_with("broken FAILED: ERROR: relation \"nowhere\" does not exist"),
        "{failed}"
    );
    assert_eq!(
        failed["fix"],
        "fix the migration, then: switchyard migrate --databases postgresql"
    );
    let changed = finding(&found, "migration 001");
    assert_eq!(changed["status"], "action");
    assert_eq!(
        changed["message"],
        "users: the files changed after this migration was applied"
    );
    assert_eq!(
        finding(&found, "migrations")["message"],
        "1 applied, 1 failed, 0 pending"
    );
}

#[test]
fn health_flags_an_alias_moved_by_hand_after_a_reindex() {
    let elastic = Elastic::exclusive();
    let alias = elastic.index("catalog");
    let v1 = format!("{alias}_v1");
    elastic.ok(Method::Put, &format!("/{v1}"), Some(&json!({"mappings": {"properties": {"sku": {"type": "keyword"}, "updated_at": {"type": "date"}}}})));
    elastic.put_documents(
        &v1,
        (0..50).map(|n| {
            (
                n.to_string(),
                json!({"sku": format!("s{n}"), "updated_at": 1_700_000_000_000u64 + n}),
            )
        }),
    );
    elastic.ok(
        Method::Post,
        "/_aliases",
        Some(&json!({"actions": [{"add": {"index": v1, "alias": alias}}]})),
    );
    let project = Project::with_config(&elastic.config());
    let name = format!("{}_reindex", elastic.prefix);
    let file = project.job_file(
        &name,
        &format!(
            "name = \"{name}\"\nkind = \"reindex\"\n[source]\ndatabase = \"elasticsearch\"\nindex = \"{alias}\"\n\
             [expand]\nmapping = {{ properties = {{ sku = {{ type = \"keyword\" }}, updated_at = {{ type = \"date\" }} }} }}\n\
             [catch_up]\nmethod = \"watermark\"\nfield = \"updated_at\"\n[cutover]\nmode = \"auto\"\n[contract]\nafter = \"manual\"\n"
        ),
    );
    project.run(&["job", "run", &file]).ok();
    let check = format!("alias {alias}");
    let v2 = format!("{alias}_v2");

    let (code, found) = findings(&project, &[]);
    assert_eq!(code, 0, "{found:#?}");
    assert_eq!(
        finding(&found, &check)["message"],
        format!("on {v2}, where job {name} put it")
    );

    elastic.ok(
        Method::Post,
        "/_aliases",
        Some(&json!({"actions": [{"remove": {"index": v2, "alias": alias}}, {"add": {"index": v1, "alias": alias}}]})),
    );
    let (code, found) = findings(&project, &["--databases", "elasticsearch"]);
    assert_eq!(code, 1);
    let moved = finding(&found, &check);
    assert_eq!(moved["status"], "action");
    assert_eq!(
        moved["message"],
        format!("points at {v1}, not at {v2} where job {name}'s cutover put it")
    );
    assert!(finding(&found, "migrations")["database"] == "elasticsearch");
    assert!(
        !found.iter().any(|f| f["database"] == "postgresql"),
        "--databases limits the databases checked"
    );

    // Each phase the job went through is in the audit log, newest first.
    let audit = project.run(&["audit", "--json", "--since", "1h"]).ok();
    let entries: Value = serde_json::from_str(&audit.stdout).unwrap();
    let phases: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["detail"].as_str())
        .filter(|d| d.starts_with(&format!("job {name}: ")))
        .collect();
    assert!(
        phases.contains(&format!("job {name}: copy → catch_up").as_str())
            && phases.contains(&format!("job {name}: ready_to_cutover → cutover").as_str()),
        "{phases:#?}"
    );
    let later = project
        .run(&["audit", "--json", "--since", "2099-01-01"])
        .ok();
    assert_eq!(later.stdout.trim(), "[]");
    let bad = project
        .run(&["audit", "--since", "yesterday"])
        .expect_code(2);
    assert!(
        bad.stderr.contains(
            "is neither a time (2026-12-01T09:00:00Z), a date (2026-12-01) nor a span (24h, 7days)"
        ),
        "{}",
        bad.stderr
    );
}

/// A subject's data in PostgreSQL (a row deleted, rows anonymised in one transaction),
/// MongoDB (documents deleted by a dotted path) and Elasticsearch (documents
/// anonymised): a dry run counts and changes nothing; the erasure reports what it did
/// and is audited under the subject's digest only.
#[test]
fn erase_across_postgresql_mongodb_and_elasticsearch() {
    let mongo = common::mongo::MongoDb::new();
    let elastic = Elastic::new();
    let project = Project::with_config(&format!("{}{}", mongo.config(), elastic.config()));
    project
        .db
        .client()
        .batch_execute(
            "CREATE TABLE customers (id bigint PRIMARY KEY, email text, name text);
             INSERT INTO customers SELECT g, 'c' || g || '@example.com', 'Name ' || g FROM generate_series(4700, 4720) g;
             CREATE TABLE orders (id serial PRIMARY KEY, customer_id bigint, note text, email text);
             INSERT INTO orders (customer_id, note, email) SELECT 4700 + g % 21, 'note', 'x@example.com' FROM generate_series(1, 210) g;",
        )
        .unwrap();
    mongo.insert(
        "events",
        (0..60)
            .map(|i| mongodb::bson::doc! {"_id": i, "user": {"id": 4700 + i % 20}, "what": "login"})
            .collect(),
    );
    let profiles = elastic.index("profiles");
    elastic.ok(Method::Put, &format!("/{profiles}"), Some(&json!({"mappings": {"properties": {"uid": {"type": "keyword"}, "email": {"type": "keyword"}}}})));
    elastic.put_documents(
        &profiles,
        (0..10).map(|i| {
            (
                i.to_string(),
                json!({"uid": (4710 + i % 5).to_string(), "email": format!("p{i}@example.com")}),
            )
        }),
    );
    std::fs::write(
        project.path("config/erasure.toml"),
        format!(
            r#"
[[erase]]
database = "postgresql"
table = "public.orders"
field = "customer_id"
action = "anonymise"
set = {{ note = "'erased'", email = "NULL" }}

[[erase]]
database = "postgresql"
table = "public.customers"
field = "id"
action = "delete"

[[erase]]
database = "mongodb"
collection = "events"
field = "user.id"
action = "delete"

[[erase]]
database = "elasticsearch"
index = "{profiles}"
field = "uid"
action = "anonymise"
set = {{ email = "erased@invalid" }}
"#
        ),
    )
    .unwrap();
    let counts = |run: &common::Run| -> Vec<(String, String, u64)> {
        let report: Value = serde_json::from_str(&run.stdout).unwrap();
        report
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["target"].as_str().unwrap().to_string(),
                    e["action"].as_str().unwrap().to_string(),
                    e["count"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let expected = [
        ("public.orders".to_string(), "anonymise".to_string(), 10),
        ("public.customers".to_string(), "delete".to_string(), 1),
        ("events".to_string(), "delete".to_string(), 3),
        (profiles.clone(), "anonymise".to_string(), 2),
    ];

    let dry = project
        .run(&["erase", "--subject", "4711", "--dry-run", "--json"])
        .ok();
    assert_eq!(counts(&dry), expected);
    assert_eq!(
        project.db.column("SELECT count(*)::text FROM customers"),
        ["21"]
    );
    assert_eq!(mongo.count("events", mongodb::bson::doc! {}), 60);
    let text = project
        .run(&["erase", "--subject", "4711", "--dry-run"])
        .ok();
    assert!(
        text.stdout.contains("dry run for subject sha256:"),
        "{}",
        text.stdout
    );

    let run = project.run(&["erase", "--subject", "4711", "--json"]).ok();
    assert_eq!(counts(&run), expected);
    assert_eq!(
        project
            .db
            .column("SELECT count(*)::text FROM customers WHERE id = 4711"),
        ["0"]
    );
    assert_eq!(
        project.db.column("SELECT count(*)::text FROM customers"),
        ["20"]
    );
    assert_eq!(
        project.db.column("SELECT count(*)::text FROM orders WHERE customer_id = 4711 AND note = 'erased' AND email IS NULL"),
        ["10"]
    );
    assert_eq!(
        project
            .db
            .column("SELECT count(*)::text FROM orders WHERE note = 'note' AND email IS NOT NULL"),
        ["200"]
    );
    assert_eq!(
        mongo.count("events", mongodb::bson::doc! {"user.id": 4711}),
        0
    );
    assert_eq!(mongo.count("events", mongodb::bson::doc! {}), 57);
    let documents = elastic.documents(&profiles);
    let erased: Vec<&Value> = documents.values().filter(|d| d["uid"] == "4711").collect();
    assert_eq!(erased.len(), 2);
    assert!(
        erased.iter().all(|d| d["email"] == "erased@invalid"),
        "{erased:?}"
    );
    assert_eq!(
        documents
            .values()
            .filter(|d| d["email"] == "erased@invalid")
            .count(),
        2
    );

    let again = project.run(&["erase", "--subject", "4711", "--json"]).ok();
    assert_eq!(
        counts(&again)[1].2,
        0,
        "nothing of the subject is left to delete"
    );

    let audit = project.run(&["audit", "--json"]).ok();
    assert!(
        !audit.stdout.contains("4711"),
        "the subject is never kept in clear: {}",
        audit.stdout
    );
    let entries: Value = serde_json::from_str(&audit.stdout).unwrap();
    let erasures: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["detail"].as_str())
        .filter(|d| d.starts_with("erasure of subject sha256:"))
        .collect();
    assert_eq!(
        erasures.len(),
        6,
        "one entry per database per erasure, none for the dry runs: {erasures:#?}"
    );
    assert!(
        erasures.iter().any(|d| d.ends_with(": anonymised 10 in public.orders, deleted 1 in public.customers")),
        "{erasures:#?}"
    );
}

#[test]
fn a_bad_erasure_mapping_exits_2_and_erases_nothing() {
    let project = Project::new();
    project
        .db
        .client()
        .batch_execute("CREATE TABLE customers (id bigint); INSERT INTO customers VALUES (1);")
        .unwrap();
    let missing = project.run(&["erase", "--subject", "1"]).expect_code(2);
    assert!(
        missing
            .stderr
            .starts_with("error: config/erasure.toml: no erasure mapping"),
        "{}",
        missing.stderr
    );
    std::fs::write(
        project.path("config/erasure.toml"),
        "[[erase]]\ndatabase = \"postgresql\"\ntable = \"customers\"\nfield = \"id\"\naction = \"anonymise\"\n",
    )
    .unwrap();
    let run = project.run(&["erase", "--subject", "1"]).expect_code(2);
    assert_eq!(
        run.stderr,
        "error: config/erasure.toml: erase[1] (postgresql customers): `anonymise` needs `set` (what to write instead)\n"
    );
    std::fs::write(
        project.path("config/erasure.toml"),
        "[[erase]]\ndatabase = \"postgresql\"\ntable = \"customers\"\nfield = \"customer\"\naction = \"delete\"\n",
    )
    .unwrap();
    let run = project.run(&["erase", "--subject", "1"]).expect_code(2);
    assert!(
        run.stderr.contains("customers has no column `customer`"),
        "{}",
        run.stderr
    );
    assert_eq!(
        project.db.column("SELECT count(*)::text FROM customers"),
        ["1"]
    );
}
