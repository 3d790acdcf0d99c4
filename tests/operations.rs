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
        (0..10).map(|i: i32| {
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

/// A table with every common column type, a NULL in each, and text that JSON must
/// escape.
const EVERY_TYPE: &str = "
CREATE TABLE things (
    id bigserial PRIMARY KEY,
    small smallint, whole integer, big bigint,
    exact numeric(30, 10), approx double precision, real_ real,
    label text, code varchar(12), flag boolean,
    day date, at timestamptz, local_at timestamp, span interval, moment time,
    uid uuid, doc jsonb, raw bytea, tags text[], address inet,
    total numeric GENERATED ALWAYS AS (exact * 2) STORED
)";

const FILL: &str = "
INSERT INTO things (small, whole, big, exact, approx, real_, label, code, flag, day, at, local_at, span, moment, uid, doc, raw, tags, address)
SELECT g % 300, g * 7, g::bigint * 1000000007, (g * 1.0000000001)::numeric(30, 10),
       CASE WHEN g % 97 = 0 THEN 'NaN'::float8 ELSE g / 3.0 END, g / 7.0,
       CASE WHEN g % 50 = 0 THEN NULL ELSE 'naïve \"quoted\" ' || g || E'\\n\\ttabbed ✓' END,
       'c' || g, g % 2 = 0, DATE '2024-01-01' + g, TIMESTAMPTZ '2024-03-01 12:00:00.123456+02' + g * INTERVAL '1 minute',
       TIMESTAMP '2024-03-01 00:00:00' + g * INTERVAL '1 second', g * INTERVAL '1 hour 3 minutes', TIME '10:00' + g * INTERVAL '1 second',
       md5(g::text)::uuid, jsonb_build_object('n', g, 'nested', jsonb_build_array(1, 'two', NULL)),
       decode(md5(g::text), 'hex'), ARRAY['a', g::text], ('10.0.' || (g % 250) || '.1')::inet
FROM generate_series(1, 3500) g";

fn checksum(db: &TestDb, table: &str) -> String {
    db.column(&format!(
        "SELECT count(*) || ':' || md5(string_agg(to_jsonb(t)::text, '' ORDER BY id)) FROM {table} t"
    ))[0]
        .clone()
}

/// The project's database with the table filled, and another database (`copy`) with
/// the same table empty.
fn two_tables() -> (Project, TestDb) {
    let copy = TestDb::new();
    let project = Project::with_config(&format!(
        "[databases.copy]\nkind = \"postgresql\"\nurl = \"{}\"\n",
        copy.url
    ));
    project.db.client().batch_execute(EVERY_TYPE).unwrap();
    project.db.client().batch_execute(FILL).unwrap();
    copy.client().batch_execute(EVERY_TYPE).unwrap();
    (project, copy)
}

#[test]
fn a_table_of_every_common_type_round_trips_equal_by_checksum() {
    let (project, copy) = two_tables();
    let source = checksum(&project.db, "things");
    let export = [
        "export",
        "--database",
        "postgresql",
        "--table",
        "public.things",
        "--out",
        "things.jsonl",
    ];
    let run = project.run(&export).ok();
    assert_eq!(
        run.stdout,
        "exported 3500 rows of public.things to things.jsonl\n"
    );
    let text = std::fs::read_to_string(project.path("things.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 3500);
    assert!(
        text.lines()
            .next()
            .unwrap()
            .contains("\"at\": \"2024-03-01T12:01:00.123456+02:00\"")
            || text.contains("\"at\": \"2024-03-01T10:01:00.123456+00:00\""),
        "{}",
        text.lines().next().unwrap()
    );

    let again = project.run(&export).expect_code(2);
    assert!(
        again
            .stderr
            .contains("things.jsonl: exists, a finished export"),
        "{}",
        again.stderr
    );

    for _ in 0..2 {
        let run = project
            .run(&[
                "import",
                "--database",
                "copy",
                "--table",
                "public.things",
                "things.jsonl",
            ])
            .ok();
        assert_eq!(
            run.stdout,
            "imported 3500 lines of things.jsonl into public.things\n"
        );
        assert_eq!(
            checksum(&copy, "things"),
            source,
            "equal, and the same after a second import"
        );
    }
    copy.client()
        .batch_execute("INSERT INTO things (label) VALUES ('after the import')")
        .unwrap();
    assert_eq!(
        copy.column("SELECT max(id)::text FROM things"),
        ["3501"],
        "the sequence moved past the imported ids"
    );

    let filtered = project
        .run(&[
            "export",
            "--database",
            "postgresql",
            "--table",
            "things",
            "--where",
            "flag AND id <= 100",
        ])
        .ok();
    assert_eq!(
        filtered.stdout.lines().count(),
        50,
        "to standard output, only what --where matches"
    );

    let wrong = project
        .run(&[
            "export",
            "--database",
            "postgresql",
            "--collection",
            "things",
        ])
        .expect_code(2);
    assert_eq!(wrong.stderr, "error: database `postgresql` is postgresql: name what to transfer with --table NAME (and nothing else)\n");
}

#[cfg(feature = "failpoints")]
#[test]
fn a_killed_export_and_a_killed_import_resume_with_nothing_lost_or_doubled() {
    let (project, copy) = two_tables();
    let source = checksum(&project.db, "things");
    let export = [
        "export",
        "--database",
        "postgresql",
        "--table",
        "things",
        "--out",
        "things.jsonl",
    ];
    let killed = project
        .command(&export)
        .env("FAILPOINTS", "export.after_batch=2*off->return")
        .output()
        .unwrap();
    assert_eq!(
        killed.status.code(),
        Some(switchyard::failpoint::CRASH_EXIT_CODE)
    );
    assert!(
        !project.path("things.jsonl").exists(),
        "an unfinished export is never the file"
    );
    let partial = std::fs::read_to_string(project.path("things.jsonl.partial")).unwrap();
    assert_eq!(partial.lines().count(), 3000);
    // What a kill leaves half-written after the last recorded batch is cut on resume.
    std::fs::write(
        project.path("things.jsonl.partial"),
        format!("{partial}{{\"id\": 99999, \"lab"),
    )
    .unwrap();
    let resumed = project.run(&export).ok();
    assert_eq!(
        resumed.stdout,
        "exported 3500 rows of things to things.jsonl (resumed where the last run stopped)\n"
    );

    let import = [
        "import",
        "--database",
        "copy",
        "--table",
        "things",
        "things.jsonl",
    ];
    let killed = project
        .command(&import)
        .env("FAILPOINTS", "import.after_batch=1*off->return")
        .output()
        .unwrap();
    assert_eq!(
        killed.status.code(),
        Some(switchyard::failpoint::CRASH_EXIT_CODE)
    );
    assert_eq!(copy.column("SELECT count(*)::text FROM things"), ["2000"]);
    let resumed = project.run(&import).ok();
    assert!(
        resumed
            .stdout
            .ends_with("(resumed where the last run stopped)\n"),
        "{}",
        resumed.stdout
    );
    assert_eq!(checksum(&copy, "things"), source);
    assert!(!project.path("things.jsonl.import-progress").exists());
}

#[test]
fn a_collection_and_an_index_round_trip_with_their_types() {
    use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Decimal128};
    let mongo = common::mongo::MongoDb::new();
    let elastic = Elastic::new();
    let project = Project::with_config(&format!("{}{}", mongo.config(), elastic.config()));
    let documents: Vec<mongodb::bson::Document> = (0..1500)
        .map(|i: i32| {
            doc! {
                "_id": ObjectId::new(),
                "n": i as i64,
                "small": i,
                "ratio": i as f64 / 3.0,
                "price": Bson::Decimal128("12.50".parse::<Decimal128>().unwrap()),
                "at": DateTime::from_millis(1_700_000_000_000 + i as i64),
                "tags": ["a", format!("t{}", i % 3)],
                "nested": {"deep": {"x": i, "none": Bson::Null}},
            }
        })
        .collect();
    mongo.insert("events", documents);
    project
        .run(&[
            "export",
            "--database",
            "mongodb",
            "--collection",
            "events",
            "--out",
            "events.jsonl",
        ])
        .ok();
    let first = std::fs::read_to_string(project.path("events.jsonl")).unwrap();
    assert!(
        first.lines().next().unwrap().contains("\"$oid\""),
        "canonical Extended JSON"
    );
    project
        .run(&[
            "import",
            "--database",
            "mongodb",
            "--collection",
            "events_copy",
            "events.jsonl",
        ])
        .ok();
    let sorted = |name: &str| {
        let mut all = mongo.documents(name);
        all.sort_by_key(|d| d.get_object_id("_id").unwrap());
        all
    };
    assert_eq!(
        sorted("events_copy"),
        sorted("events"),
        "every document and type equal"
    );

    let index = elastic.index("catalog");
    elastic.put_documents(
        &index,
        (0..1200).map(|i| (format!("doc-{i}"), json!({"sku": format!("s{i}"), "price": i as f64 * 1.5, "tags": ["x"], "dims": {"w": i}}))),
    );
    project
        .run(&[
            "export",
            "--database",
            "elasticsearch",
            "--index",
            &index,
            "--out",
            "catalog.jsonl",
        ])
        .ok();
    let copy = elastic.index("catalog_copy");
    let run = project
        .run(&[
            "import",
            "--database",
            "elasticsearch",
            "--index",
            &copy,
            "catalog.jsonl",
        ])
        .ok();
    assert!(
        run.stdout.starts_with("imported 1200 lines"),
        "{}",
        run.stdout
    );
    assert_eq!(elastic.documents(&copy), elastic.documents(&index));
}
