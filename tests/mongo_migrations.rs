//! Versioned MongoDB migrations through the real binary, on the server named by
//! `SWITCHYARD_TEST_MONGODB_URL`: every seed-003 operation applied, rolled back and
//! applied again on a collection of documents; undo of a migration that fails midway;
//! the lease lock; the errors a user sees.

mod common;

use common::mongo::MongoDb;
use common::Project;
use mongodb::bson::{doc, Document};

/// A project with `[databases.mongodb]` on a fresh database.
fn project() -> (Project, MongoDb) {
    let mongo = MongoDb::new();
    let project = Project::with_config(&mongo.config());
    std::fs::create_dir_all(project.path("migrations/mongodb")).unwrap();
    (project, mongo)
}

fn write(project: &Project, name: &str, text: &str) {
    std::fs::write(project.path("migrations/mongodb").join(name), text).unwrap();
}

fn users(count: i64) -> Vec<Document> {
    (0..count)
        .map(|i| doc! {"_id": i, "email": format!("u{i}@example.com"), "plan": if i % 2 == 0 { "free" } else { "pro" }, "visits": i % 7})
        .collect()
}

/// Every operation of seed 003 (and `drop_collection`), each with an inverse but
/// `update_documents` and `remove_field`, which the rollback file covers.
fn every_operation(project: &Project) {
    write(
        project,
        "001_accounts.json",
        r#"{"version": "1.0.0", "name": "accounts", "database_type": "mongodb", "migration_type": "schema",
            "operations": [
              {"type": "create_collection", "collection": "accounts",
               "options": {"validator": {"$jsonSchema": {"bsonType": "object", "required": ["email"]}}}},
              {"type": "create_index", "collection": "accounts", "index": [["email", 1]],
               "options": {"name": "accounts_email", "unique": true, "collation": {"locale": "en", "strength": 2}}},
              {"type": "create_index", "collection": "accounts", "index": [["bio", "text"]]},
              {"type": "create_index", "collection": "accounts", "index": [["where", "2dsphere"]]},
              {"type": "create_index", "collection": "accounts", "index": [["expires_at", 1]],
               "options": {"expireAfterSeconds": 3600, "partialFilterExpression": {"plan": "trial"}}}
            ]}"#,
    );
    write(
        project,
        "002_user_fields.json",
        r#"{"version": "1.1.0", "name": "user_fields", "database_type": "mongodb",
            "operations": [
              {"type": "add_field", "collection": "users", "field": "active", "value": true},
              {"type": "add_field", "collection": "users", "field": "tier", "value": "gold", "filter": {"plan": "pro"}},
              {"type": "rename_field", "collection": "users", "from": "visits", "to": "visit_count"},
              {"type": "create_index", "collection": "users", "index": [["plan", 1], ["visit_count", -1]]}
            ]}"#,
    );
    write(
        project,
        "003_data.json",
        r#"{"version": "1.2.0", "name": "data", "database_type": "mongodb",
            "operations": [
              {"type": "update_documents", "collection": "users", "filter": {"plan": "pro", "_id": {"$lt": 1500}},
               "update": [{"$set": {"score": {"$multiply": ["$visit_count", 10]}}}]},
              {"type": "update_documents", "collection": "users", "filter": {"plan": "free"}, "update": {"$set": {"limited": true}}},
              {"type": "remove_field", "collection": "users", "field": "email"},
              {"type": "drop_index", "collection": "users", "name": "plan_1_visit_count_-1"}
            ]}"#,
    );
    write(
        project,
        "003_data_rollback.json",
        r#"{"operations": [
              {"type": "create_index", "collection": "users", "index": [["plan", 1], ["visit_count", -1]]},
              {"type": "update_documents", "collection": "users", "filter": {}, "update": [{"$set": {"email": {"$concat": ["u", {"$toString": "$_id"}, "@example.com"]}}}]},
              {"type": "update_documents", "collection": "users", "filter": {}, "update": {"$unset": {"score": "", "limited": ""}}}
            ]}"#,
    );
}

#[test]
fn every_operation_applies_rolls_back_and_applies_again() {
    let (project, mongo) = project();
    mongo.insert("users", users(2500)); // more than one batch
    every_operation(&project);
    let original = mongo.documents("users");

    let run = project.run(&["migrate", "--databases", "mongodb"]).ok();
    assert!(
        run.stdout.ends_with("mongodb: 3 applied\n"),
        "{}",
        run.stdout
    );
    assert_eq!(
        mongo.history(),
        ["1.0.0 COMPLETED", "1.1.0 COMPLETED", "1.2.0 COMPLETED"]
    );
    let applied = |mongo: &MongoDb| {
        let collections = mongo
            .block(mongo.database().list_collection_names())
            .unwrap();
        assert!(
            collections.contains(&"accounts".to_string()),
            "{collections:?}"
        );
        assert_eq!(
            mongo.index_keys("accounts"),
            [
                "_id_1",
                "bio_text",
                "email_1",
                "expires_at_1",
                "where_2dsphere"
            ]
        );
        assert_eq!(mongo.index_keys("users"), ["_id_1"]);
        assert_eq!(mongo.count("users", doc! {"active": true}), 2500);
        assert_eq!(mongo.count("users", doc! {"tier": "gold"}), 1250);
        assert_eq!(mongo.count("users", doc! {"visits": {"$exists": true}}), 0);
        assert_eq!(mongo.count("users", doc! {"email": {"$exists": true}}), 0);
        assert_eq!(mongo.count("users", doc! {"score": {"$exists": true}}), 750);
        assert_eq!(mongo.count("users", doc! {"limited": true}), 1250);
        let seven = mongo.documents("users").into_iter().nth(7).unwrap();
        assert_eq!(seven.get_i64("visit_count").unwrap(), 0);
        let nine = mongo.documents("users").into_iter().nth(9).unwrap();
        assert_eq!(
            nine.get("score").unwrap().as_i64().or(nine
                .get("score")
                .unwrap()
                .as_i32()
                .map(i64::from)),
            Some(20)
        );
    };
    applied(&mongo);

    let back = project
        .run(&["rollback", "0.0.0", "--databases", "mongodb"])
        .ok();
    assert!(back.stdout.contains("3 rolled back"), "{}", back.stdout);
    assert_eq!(
        mongo.history(),
        [
            "1.0.0 ROLLED_BACK",
            "1.1.0 ROLLED_BACK",
            "1.2.0 ROLLED_BACK"
        ]
    );
    assert!(!mongo.collections().contains(&"accounts".to_string()));
    assert_eq!(mongo.index_keys("users"), ["_id_1"]);
    assert_eq!(
        mongo.documents("users"),
        original,
        "rollback restores every document"
    );

    project.run(&["migrate", "--databases", "mongodb"]).ok();
    assert_eq!(
        mongo.history(),
        ["1.0.0 COMPLETED", "1.1.0 COMPLETED", "1.2.0 COMPLETED"]
    );
    applied(&mongo);
}

#[test]
fn status_and_dry_run_show_and_change_nothing() {
    let (project, mongo) = project();
    mongo.insert("users", users(10));
    every_operation(&project);
    let dry = project
        .run(&["migrate", "--databases", "mongodb", "--dry-run"])
        .ok();
    assert!(
        dry.stdout.contains("would apply 1.0.0 accounts"),
        "{}",
        dry.stdout
    );
    assert!(mongo.history().is_empty());
    assert!(!mongo.collections().contains(&"accounts".to_string()));

    project
        .run(&["migrate", "--databases", "mongodb", "--version", "1.1.0"])
        .ok();
    let status = project
        .run(&["status", "--databases", "mongodb", "--json"])
        .ok();
    let rows: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let statuses: Vec<(&str, &str)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["version"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("1.0.0", "COMPLETED"),
            ("1.1.0", "COMPLETED"),
            ("1.2.0", "PENDING")
        ]
    );
}

#[test]
fn an_operation_with_no_inverse_refuses_rollback_and_changes_nothing() {
    let (project, mongo) = project();
    mongo.insert("users", users(10));
    write(
        &project,
        "001_scores.json",
        r#"{"version": "1", "name": "scores", "operations": [
              {"type": "add_field", "collection": "users", "field": "score", "value": 0},
              {"type": "update_documents", "collection": "users", "filter": {}, "update": {"$inc": {"score": 5}}}
            ]}"#,
    );
    project.run(&["migrate"]).ok();
    let refused = project.run(&["rollback", "0"]).expect_code(2);
    assert!(
        refused.stderr.contains("migration 1 has no rollback (operation 2 (update_documents on `users`) has no inverse; add 001_scores_rollback.json beside it)"),
        "{}",
        refused.stderr
    );
    assert_eq!(mongo.history(), ["1 COMPLETED"]);
    assert_eq!(mongo.count("users", doc! {"score": 5}), 10);
}

#[test]
fn a_failing_migration_undoes_what_it_did() {
    let (project, mongo) = project();
    let mut documents = users(3000);
    documents[2999].insert("email", "u0@example.com"); // a duplicate for the unique index
    mongo.insert("users", documents);
    let before = mongo.documents("users");
    write(
        &project,
        "001_unique.json",
        r#"{"version": "1.0.0", "name": "unique", "operations": [
              {"type": "create_collection", "collection": "audit"},
              {"type": "add_field", "collection": "users", "field": "verified", "value": false},
              {"type": "rename_field", "collection": "users", "from": "plan", "to": "tier"},
              {"type": "create_index", "collection": "users", "index": [["email", 1]], "options": {"unique": true}}
            ]}"#,
    );
    let failed = project.run(&["migrate"]).expect_code(1);
    assert!(
        failed.stderr.contains("migration 1.0.0 (unique) failed on `mongodb`: operation 4 (create_index `email_1` on `users`): "),
        "{}",
        failed.stderr
    );
    assert!(
        failed.stderr.contains("(undone: operation 3, 2, 1)"),
        "{}",
        failed.stderr
    );
    assert_eq!(mongo.history(), ["1.0.0 FAILED"]);
    assert_eq!(mongo.documents("users"), before, "every document as it was");
    assert!(!mongo.collections().contains(&"audit".to_string()));
    assert_eq!(mongo.index_keys("users"), ["_id_1"]);

    // An operation with no inverse stops the undo, and the record says what was left.
    write(
        &project,
        "001_unique.json",
        r#"{"version": "1.0.0", "name": "unique", "operations": [
              {"type": "add_field", "collection": "users", "field": "verified", "value": false},
              {"type": "update_documents", "collection": "users", "filter": {}, "update": {"$set": {"plan": "basic"}}},
              {"type": "add_field", "collection": "users", "field": "checked", "value": true},
              {"type": "create_index", "collection": "users", "index": [["email", 1]], "options": {"unique": true}}
            ]}"#,
    );
    let failed = project.run(&["migrate"]).expect_code(1);
    assert!(
        failed.stderr.contains("(undone: operation 3; left in place, since operation 2 has no inverse: operation 1 (add_field `verified` on `users`), operation 2 (update_documents on `users`))"),
        "{}",
        failed.stderr
    );
    assert_eq!(mongo.count("users", doc! {"checked": {"$exists": true}}), 0);
    assert_eq!(mongo.count("users", doc! {"plan": "basic"}), 3000);
}

#[test]
fn an_expired_lease_is_taken_over_and_a_live_one_waited_for() {
    let (project, mongo) = project();
    write(
        &project,
        "001_a.json",
        r#"{"version": "1", "operations": [{"type": "create_collection", "collection": "a"}]}"#,
    );
    let locks = mongo.collection("switchyard_locks");
    let past = mongodb::bson::DateTime::from_millis(
        mongodb::bson::DateTime::now().timestamp_millis() - 1000,
    );
    let future = mongodb::bson::DateTime::from_millis(
        mongodb::bson::DateTime::now().timestamp_millis() + 600_000,
    );
    mongo
        .block(locks.insert_one(doc! {"_id": "migrations", "owner": "crashed", "holder": "ci@build-7 pid 12", "expires_at": future}))
        .unwrap();
    std::fs::write(
        project.path("config/switchyard.toml"),
        std::fs::read_to_string(project.path("config/switchyard.toml")).unwrap()
            + "[migrations]\nlock_wait = \"1s\"\n",
    )
    .unwrap();
    let waited = project.run(&["migrate"]).expect_code(1);
    assert!(
        waited.stderr.starts_with("error: database `mongodb`: another run holds the migration lock (held by ci@build-7 pid 12, whose lease runs until "),
        "{}",
        waited.stderr
    );
    assert!(
        waited
            .stderr
            .ends_with("unless renewed); gave up after waiting 1s (migrations.lock_wait)\n"),
        "{}",
        waited.stderr
    );
    assert!(mongo.history().is_empty());

    // The holder crashed: once its lease has expired, the next run takes it.
    mongo
        .block(locks.update_one(
            doc! {"_id": "migrations"},
            doc! {"$set": {"expires_at": past}},
        ))
        .unwrap();
    project.run(&["migrate"]).ok();
    assert_eq!(mongo.history(), ["1 COMPLETED"]);
    assert_eq!(mongo.count("switchyard_locks", doc! {}), 0, "released");
}

#[test]
fn bad_operation_files_exit_2_naming_the_file_and_operation() {
    let (project, mongo) = project();
    let cases = [
        (
            r#"{"version": "1", "operations": [{"type": "create_view", "collection": "a"}]}"#,
            "001_bad.json: field `operations[0].type`: unknown variant `create_view`",
        ),
        (
            r#"{"version": "1", "operations": [{"type": "create_index", "index": [["a", 1]]}]}"#,
            "001_bad.json: field `operations[0]`: missing field `collection`",
        ),
        (
            r#"{"version": "1", "operations": [{"type": "create_index", "collection": "a", "index": {"a": 1}}]}"#,
            "001_bad.json: field `operations[0]`: `index` is a list of keys, each [\"field\", 1], [\"field\", -1] or [\"field\", \"text\" | \"2dsphere\" | \"2d\" | \"hashed\"], not {\"a\":1}",
        ),
        (
            r#"{"version": "1", "operations": [{"type": "create_index", "collection": "a", "index": [["a", "up"]]}]}"#,
            "001_bad.json: field `operations[0]`: `index` is a list of keys, each [\"field\", 1], [\"field\", -1] or [\"field\", \"text\" | \"2dsphere\" | \"2d\" | \"hashed\"], not [\"a\",\"up\"]",
        ),
    ];
    for (text, expected) in cases {
        write(&project, "001_bad.json", text);
        let run = project.run(&["migrate"]).expect_code(2);
        assert!(
            run.stderr.contains(expected),
            "expected `{expected}` in:\n{}",
            run.stderr
        );
    }
    assert!(mongo.collections().is_empty(), "nothing ran");
}

/// A PostgreSQL and a MongoDB migration depending on each other: one run applies them
/// interleaved (MongoDB's name sorts first, so only the edges put PostgreSQL's 1 first),
/// and a rollback undoes them in reverse.
#[test]
fn depends_on_orders_postgresql_and_mongodb_in_one_run() {
    let (project, mongo) = project();
    write(
        &project,
        "001_accounts.json",
        r#"{"version": "1.0.0", "name": "accounts", "depends_on": {"postgresql": "1"},
            "operations": [{"type": "create_collection", "collection": "accounts"}]}"#,
    );
    project.migration("1_users.up.sql", "CREATE TABLE users (id int);");
    project.migration("1_users.down.sql", "DROP TABLE users;");
    project.migration(
        "2_orders.up.sql",
        "-- switchyard:depends_on mongodb=1.0.0\nCREATE TABLE orders (id int);",
    );
    project.migration("2_orders.down.sql", "DROP TABLE orders;");
    let order = |stdout: &str| -> Vec<String> {
        stdout
            .lines()
            .filter(|l| l.contains(": applying ") || l.contains(": rolling back "))
            .map(|l| l.split(" ... ").next().unwrap().to_string())
            .collect()
    };
    let run = project.run(&["migrate"]).ok();
    assert_eq!(
        order(&run.stdout),
        [
            "postgresql: applying 1 users",
            "mongodb: applying 1.0.0 accounts",
            "postgresql: applying 2 orders"
        ]
    );
    let collections = mongo
        .block(mongo.database().list_collection_names())
        .unwrap();
    assert!(
        collections.contains(&"accounts".to_string()),
        "{collections:?}"
    );
    let back = project.run(&["rollback", "0"]).ok();
    assert_eq!(
        order(&back.stdout),
        [
            "postgresql: rolling back 2 orders",
            "mongodb: rolling back 1.0.0 accounts",
            "postgresql: rolling back 1 users"
        ]
    );
    assert!(!project.db.exists("users"));
}
