//! Versioned PostgreSQL migrations through the real binary, on a real server: what a
//! user sees (exit codes, output) and what the database holds afterwards.

mod common;

use common::{Project, Run};

fn three_migrations(project: &Project) {
    project
        .sql_migration("001_users", "1.0.0", "CREATE TABLE users (id bigint PRIMARY KEY, email text);", Some("DROP TABLE users;"))
        .sql_migration("002_orders", "1.1.0", "CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint REFERENCES users);", Some("DROP TABLE orders;"))
        .sql_migration(
            "003_orders_by_user",
            "1.2.0",
            "-- switchyard:no-transaction\nCREATE INDEX CONCURRENTLY orders_user_idx ON orders (user_id);\nCREATE INDEX CONCURRENTLY users_email_idx ON users (email);\n",
            Some("-- switchyard:no-transaction\nDROP INDEX CONCURRENTLY orders_user_idx;\nDROP INDEX CONCURRENTLY users_email_idx;\n"),
        );
}

#[test]
fn migrate_applies_in_version_order_and_records_each() {
    let project = Project::new();
    three_migrations(&project);
    let run = project.run(&["migrate"]).ok();
    let applied: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.contains("applying"))
        .collect();
    assert_eq!(applied.len(), 3, "{}", run.stdout);
    assert!(applied[0].starts_with("postgresql: applying 1.0.0 users ... done in "));
    assert!(applied[2].starts_with("postgresql: applying 1.2.0 orders_by_user ... done in "));
    assert!(
        run.stdout.ends_with("postgresql: 3 applied\n"),
        "{}",
        run.stdout
    );
    assert_eq!(
        project.db.history(),
        ["1.0.0 COMPLETED", "1.1.0 COMPLETED", "1.2.0 COMPLETED"]
    );
    assert!(project.db.exists("orders_user_idx") && project.db.exists("users_email_idx"));
    assert_eq!(
        project.db.column(
            "SELECT indisvalid::text FROM pg_index WHERE indexrelid = 'orders_user_idx'::regclass"
        ),
        ["true"]
    );

    let again = project.run(&["migrate"]).ok();
    assert_eq!(again.stdout, "postgresql: up to date (3 migrations)\n");
}

#[test]
fn migrate_up_to_a_version_stops_there() {
    let project = Project::new();
    three_migrations(&project);
    project.run(&["migrate", "--version", "1.1.0"]).ok();
    assert_eq!(project.db.history(), ["1.0.0 COMPLETED", "1.1.0 COMPLETED"]);
    let run = project
        .run(&["migrate", "--version", "1.5.0"])
        .expect_code(2);
    assert_eq!(
        run.stderr,
        "error: no migration has version `1.5.0` in migrations/postgresql\n"
    );
}

#[test]
fn a_failing_migration_leaves_nothing_and_stops_the_run() {
    let project = Project::new();
    project
        .sql_migration(
            "001_users",
            "1.0.0",
            "CREATE TABLE users (id bigint PRIMARY KEY);",
            None,
        )
        .sql_migration(
            "002_broken",
            "1.1.0",
            "CREATE TABLE half (id int);\nINSERT INTO users VALUES (1);\nSELECT 1/0;",
            None,
        )
        .sql_migration("003_later", "1.2.0", "CREATE TABLE later (id int);", None);
    let run = project.run(&["migrate"]).expect_code(1);
    assert!(
        run.stdout
            .contains("postgresql: applying 1.1.0 broken ... FAILED\n"),
        "{}",
        run.stdout
    );
    assert_eq!(
        run.stderr,
        "error: migration 1.1.0 (broken) failed on `postgresql`: ERROR: division by zero (SQLSTATE 22012)\n"
    );
    assert_eq!(project.db.history(), ["1.0.0 COMPLETED", "1.1.0 FAILED"]);
    assert!(
        !project.db.exists("half"),
        "the failed migration's table must not remain"
    );
    assert_eq!(project.db.column("SELECT count(*)::text FROM users"), ["0"]);
    assert!(
        !project.db.exists("later"),
        "the run must stop at the failure"
    );
    assert_eq!(
        project
            .db
            .column("SELECT error FROM switchyard_migrations WHERE version = '1.1.0'"),
        ["ERROR: division by zero (SQLSTATE 22012)"]
    );

    let status = project.run(&["status"]).ok();
    let lines: Vec<&str> = status.stdout.lines().collect();
    assert!(
        lines[2].starts_with("FAILED     postgresql  1.1.0    broken  "),
        "{}",
        status.stdout
    );
    assert_eq!(
        lines[3],
        "           Error: ERROR: division by zero (SQLSTATE 22012)"
    );

    // A failed migration may be fixed and run again.
    project.migration("002_broken.sql", "CREATE TABLE half (id int);");
    project.run(&["migrate"]).ok();
    assert_eq!(
        project.db.history(),
        ["1.0.0 COMPLETED", "1.1.0 COMPLETED", "1.2.0 COMPLETED"]
    );
}

#[test]
fn status_shows_every_migration_as_text_and_json() {
    let project = Project::new();
    three_migrations(&project);
    let pending = project.run(&["status"]).ok();
    assert_eq!(
        pending.stdout,
        "STATUS   DATABASE    VERSION  NAME            APPLIED  DURATION\n\
         PENDING  postgresql  1.0.0    users           -        -\n\
         PENDING  postgresql  1.1.0    orders          -        -\n\
         PENDING  postgresql  1.2.0    orders_by_user  -        -\n"
    );
    assert!(
        !project.db.exists("switchyard_migrations"),
        "status must not create anything"
    );

    project.run(&["migrate", "--version", "1.1.0"]).ok();
    let text = project.run(&["status"]).ok().stdout;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "STATUS     DATABASE    VERSION  NAME            APPLIED              DURATION"
    );
    for line in &lines[1..3] {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[0], "COMPLETED", "{text}");
        assert_eq!(cells.len(), 7, "date, time and duration: {line}");
        assert!(cells[6].ends_with("ms"), "{line}");
    }
    assert!(lines[3].starts_with("PENDING    postgresql  1.2.0    orders_by_user  -"));

    let json: serde_json::Value =
        serde_json::from_str(&project.run(&["status", "--json"]).ok().stdout).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["database"], "postgresql");
    assert_eq!(rows[0]["version"], "1.0.0");
    assert_eq!(rows[0]["name"], "users");
    assert_eq!(rows[0]["status"], "COMPLETED");
    assert!(rows[0]["applied_at"].as_str().unwrap().ends_with('Z'));
    assert!(rows[0]["duration_ms"].is_i64());
    assert!(rows[0]["error"].is_null());
    assert_eq!(rows[2]["status"], "PENDING");
    assert!(rows[2]["applied_at"].is_null() && rows[2]["duration_ms"].is_null());
}

#[test]
fn rollback_undoes_everything_after_the_version_newest_first() {
    let project = Project::new();
    three_migrations(&project);
    project.run(&["migrate"]).ok();
    let run = project.run(&["rollback", "1.0.0"]).ok();
    let order: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.contains("rolling back"))
        .collect();
    assert!(
        order[0].starts_with("postgresql: rolling back 1.2.0 orders_by_user ... done"),
        "{}",
        run.stdout
    );
    assert!(
        order[1].starts_with("postgresql: rolling back 1.1.0 orders ... done"),
        "{}",
        run.stdout
    );
    assert!(run
        .stdout
        .ends_with("postgresql: 2 rolled back; now at 1.0.0\n"));
    assert_eq!(
        project.db.history(),
        ["1.0.0 COMPLETED", "1.1.0 ROLLED_BACK", "1.2.0 ROLLED_BACK"]
    );
    assert!(!project.db.exists("orders") && !project.db.exists("users_email_idx"));
    assert!(project.db.exists("users"));

    // Rolled-back migrations are pending again.
    project.run(&["migrate"]).ok();
    assert_eq!(
        project.db.history(),
        ["1.0.0 COMPLETED", "1.1.0 COMPLETED", "1.2.0 COMPLETED"]
    );

    project.run(&["rollback", "0.0.0"]).ok();
    assert!(!project.db.exists("users"));
    let typo = project.run(&["rollback", "1.0"]).expect_code(2);
    assert!(
        typo.stderr
            .starts_with("error: version `1.0` is neither semver"),
        "{}",
        typo.stderr
    );
}

#[test]
fn rollback_refuses_an_irreversible_migration_and_changes_nothing() {
    let project = Project::new();
    project
        .sql_migration(
            "001_users",
            "1.0.0",
            "CREATE TABLE users (id int);",
            Some("DROP TABLE users;"),
        )
        .sql_migration(
            "002_backfill",
            "1.1.0",
            "INSERT INTO users VALUES (1);",
            None,
        )
        .sql_migration(
            "003_more",
            "1.2.0",
            "CREATE TABLE more (id int);",
            Some("DROP TABLE more;"),
        );
    project.run(&["migrate"]).ok();
    let run = project.run(&["rollback", "1.0.0"]).expect_code(2);
    assert!(
        run.stderr
            .starts_with("error: rollback refused, nothing was changed:\n"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("002_backfill.json: migration 1.1.0 has no rollback (add 002_backfill_rollback.sql beside it), so it is irreversible"), "{}", run.stderr);
    assert_eq!(
        project.db.history(),
        ["1.0.0 COMPLETED", "1.1.0 COMPLETED", "1.2.0 COMPLETED"]
    );
    assert!(project.db.exists("more"));
}

#[test]
fn an_edited_applied_file_is_refused() {
    let project = Project::new();
    project.sql_migration("001_users", "1.0.0", "CREATE TABLE users (id int);", None);
    project.run(&["migrate"]).ok();
    project
        .migration("001_users.sql", "CREATE TABLE users (id int, email text);")
        .sql_migration("002_next", "1.1.0", "CREATE TABLE next (id int);", None);
    let run = project.run(&["migrate"]).expect_code(2);
    assert!(run.stderr.starts_with("error: migrations/postgresql/001_users.json: migration 1.0.0 was applied to `postgresql` with checksum "), "{}", run.stderr);
    assert!(
        run.stderr.contains("applied migrations must not change"),
        "{}",
        run.stderr
    );
    assert!(
        !project.db.exists("next"),
        "nothing may run after the refusal"
    );
    let validate = project.run(&["validate"]).expect_code(2);
    assert!(
        validate
            .stderr
            .contains("001_users.json: migration 1.0.0 was applied"),
        "{}",
        validate.stderr
    );
    project.run(&["validate", "--offline"]).ok();
    let status = project.run(&["status"]).ok();
    assert!(
        status
            .stdout
            .contains("Warning: the files changed after this migration was applied"),
        "{}",
        status.stdout
    );
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let project = Project::new();
    three_migrations(&project);
    let run = project.run(&["migrate", "--dry-run"]).ok();
    assert!(run.stdout.starts_with(
        "postgresql: would apply 1.0.0 users\n    -- migrations/postgresql/001_users.sql (in one transaction)\n    CREATE TABLE users"
    ), "{}", run.stdout);
    assert!(run
        .stdout
        .contains("(statement by statement, no transaction)"));
    assert!(run
        .stdout
        .ends_with("postgresql: dry run: 3 would be applied; nothing was changed\n"));
    assert!(!project.db.exists("switchyard_migrations") && !project.db.exists("users"));
    assert!(
        !project.path("data/switchyard.db").exists(),
        "a dry run writes no audit entry"
    );

    project.run(&["migrate"]).ok();
    let rollback = project.run(&["rollback", "1.0.0", "--dry-run"]).ok();
    assert!(rollback
        .stdout
        .contains("postgresql: would roll back 1.2.0 orders_by_user\n"));
    assert_eq!(
        project.db.history(),
        ["1.0.0 COMPLETED", "1.1.0 COMPLETED", "1.2.0 COMPLETED"]
    );
}

#[test]
fn concurrent_runs_apply_each_migration_exactly_once() {
    let project = Project::new();
    project
        .sql_migration("001_log", "1.0.0", "CREATE TABLE applied (version text);\nINSERT INTO applied VALUES ('1.0.0');\nSELECT pg_sleep(0.5);", None)
        .sql_migration("002_a", "1.1.0", "INSERT INTO applied VALUES ('1.1.0');", None)
        .sql_migration("003_b", "1.2.0", "INSERT INTO applied VALUES ('1.2.0');", None);
    let children: Vec<_> = (0..3)
        .map(|_| {
            project
                .command(&["migrate"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let runs: Vec<Run> = children
        .into_iter()
        .map(|c| Run::from(c.wait_with_output().unwrap()))
        .collect();
    for run in runs {
        run.ok();
    }
    assert_eq!(
        project
            .db
            .column("SELECT version FROM applied ORDER BY version"),
        ["1.0.0", "1.1.0", "1.2.0"]
    );
    assert_eq!(
        project.db.history(),
        ["1.0.0 COMPLETED", "1.1.0 COMPLETED", "1.2.0 COMPLETED"]
    );
}

#[test]
fn a_held_lock_makes_migrate_wait_then_fail_clearly() {
    let project = Project::with_config("[migrations]\nlock_wait = \"300ms\"\n");
    project
        .sql_migration("001_slow", "1.0.0", "SELECT pg_sleep(30);", None)
        .sql_migration("002_users", "1.1.0", "CREATE TABLE users (id int);", None);
    let mut first = project
        .command(&["migrate"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the first run is inside its migration, holding the lock.
    project.db.wait_for(
        "SELECT count(*)::text FROM pg_stat_activity WHERE application_name = 'switchyard' AND query = 'SELECT pg_sleep(30);'",
        "1",
    );
    let run = project.run(&["migrate"]).expect_code(1);
    assert!(run.stderr.starts_with("error: database `postgresql`: another run holds the migration lock (held by backend pid "), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("(switchyard from 127.0.0.1, connected "),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .ends_with("gave up after waiting 300ms (migrations.lock_wait)\n"),
        "{}",
        run.stderr
    );
    assert!(!project.db.exists("users"));
    // The lock lives in the run's session: once the session ends (here terminated at
    // once, as the server does when it notices the client gone), no stale lock remains.
    first.kill().unwrap();
    first.wait().unwrap();
    project.db.client().batch_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'switchyard' AND datname = current_database()").unwrap();
    project.migration("001_slow.sql", "SELECT 1;");
    project.run(&["migrate"]).ok();
    assert_eq!(project.db.history(), ["1.0.0 COMPLETED", "1.1.0 COMPLETED"]);
}

#[test]
fn ddl_on_a_busy_table_fails_fast_under_lock_timeout() {
    let project = Project::with_config("[migrations]\nlock_timeout = \"200ms\"\n");
    project
        .sql_migration("001_users", "1.0.0", "CREATE TABLE users (id int);", None)
        .sql_migration(
            "002_alter",
            "1.1.0",
            "ALTER TABLE users ADD COLUMN email text;",
            None,
        );
    project.run(&["migrate", "--version", "1.0.0"]).ok();
    let mut reader = project.db.client();
    let mut open = reader.transaction().unwrap();
    open.query("SELECT * FROM users", &[]).unwrap();
    let started = std::time::Instant::now();
    let run = project.run(&["migrate"]).expect_code(1);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(
        run.stderr
            .contains("canceling statement due to lock timeout (SQLSTATE 55P03)"),
        "{}",
        run.stderr
    );
    open.rollback().unwrap();
    assert_eq!(project.db.history(), ["1.0.0 COMPLETED", "1.1.0 FAILED"]);
    project.run(&["migrate"]).ok();
    assert_eq!(project.db.history(), ["1.0.0 COMPLETED", "1.1.0 COMPLETED"]);
}

/// Each malformed folder exits 2, names the file and the reason, and applies nothing.
#[test]
fn malformed_files_exit_2_naming_file_and_reason() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("001_a.json", "{\"version\": \"1.0.0\",}"), ("001_a.sql", "SELECT 1;")], "migrations/postgresql/001_a.json: invalid JSON: trailing comma at line 1 column 21"),
        (&[("001_a.json", "{\"version\": \"1.0.0\"}")], "migrations/postgresql/001_a.json: no SQL file: expected `001_a.sql` beside it"),
        (&[("001_a.sql", "SELECT 1;"), ("01_b.sql", "SELECT 1;")], "migrations/postgresql/01_b.sql: duplicate version `01`: `migrations/postgresql/001_a.sql` has it too"),
        (&[("001_a.json", "{\"version\": \"1.0.0\"}"), ("001_a.sql", ""), ("002_b.sql", "")], "migrations/postgresql/001_a.json: version `1.0.0` is semver (like 1.2.0), but `migrations/postgresql/000_good.sql` uses a plain number (like 3): one folder uses one version style"),
        (&[("001_a.json", "{\"version\": \"1.0\"}"), ("001_a.sql", "")], "migrations/postgresql/001_a.json: field `version`: version `1.0` is neither semver (1.2.0) nor a plain number: unexpected end of input while parsing minor version number"),
        (&[("001_a.json", "{\"version\": \"1.0.0\", \"nmae\": \"x\"}"), ("001_a.sql", "")], "migrations/postgresql/001_a.json: unknown field `nmae`, expected one of `version`, `name`, `description`, `database_type`, `migration_type`, `depends_on`, `operations` at line 1 column 27"),
        (&[("create_users.sql", "SELECT 1;")], "migrations/postgresql/create_users.sql: the file name must start with a number and `_` (for example 001_create_users.sql, or another tool's name: 1_name.up.sql, V1__name.sql)"),
        (&[("001_a_rollback.sql", "SELECT 1;")], "migrations/postgresql/001_a_rollback.sql: no SQL file: expected `001_a.sql` beside it"),
    ];
    for (files, expected) in cases {
        let project = Project::new();
        project.sql_migration("000_good", "0", "CREATE TABLE good (id int);", None);
        std::fs::remove_file(project.path("migrations/postgresql/000_good.json")).unwrap();
        for (name, text) in *files {
            project.migration(name, text);
        }
        for command in [&["migrate"][..], &["validate", "--offline"], &["status"]] {
            let run = project.run(command).expect_code(2);
            assert_eq!(
                run.stderr,
                format!("error: {expected}\n"),
                "{command:?} with {files:?}"
            );
        }
        assert!(
            !project.db.exists("switchyard_migrations") && !project.db.exists("good"),
            "nothing may be applied: {files:?}"
        );
    }
}

#[test]
fn create_writes_the_next_migration_from_a_template() {
    let project = Project::new();
    project.sql_migration("001_users", "1.0.0", "CREATE TABLE users (id int);", None);
    let run = project
        .run(&["create", "Add user preferences", "--database", "postgresql"])
        .ok();
    assert_eq!(
        run.stdout,
        "created migrations/postgresql/002_add_user_preferences.json\n\
         created migrations/postgresql/002_add_user_preferences.sql\n\
         created migrations/postgresql/002_add_user_preferences_rollback.sql\n\
         version 1.1.0: edit the files, then run `switchyard migrate --databases postgresql`\n"
    );
    let metadata: serde_json::Value = serde_json::from_str(&common::read(
        &project.path("migrations/postgresql/002_add_user_preferences.json"),
    ))
    .unwrap();
    assert_eq!(metadata["version"], "1.1.0");
    assert_eq!(metadata["description"], "Add user preferences");
    project.run(&["validate", "--offline"]).ok();
    project.run(&["migrate"]).ok();
    assert_eq!(project.db.history(), ["1.0.0 COMPLETED", "1.1.0 COMPLETED"]);

    let unknown = project
        .run(&["create", "x", "--database", "nosuch"])
        .expect_code(2);
    assert_eq!(
        unknown.stderr,
        "error: no database named `nosuch` in the configuration (configured: postgresql)\n"
    );
}

#[test]
fn every_change_is_in_the_audit_log() {
    let project = Project::new();
    three_migrations(&project);
    project.run(&["migrate", "--version", "1.1.0"]).ok();
    project.run(&["rollback", "1.0.0"]).ok();
    let json: serde_json::Value =
        serde_json::from_str(&project.run(&["audit", "--json"]).ok().stdout).unwrap();
    let entries = json.as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["command"], "rollback 1.0.0");
    assert_eq!(entries[0]["detail"], "rolled back 1.1.0");
    assert_eq!(entries[1]["command"], "migrate --version 1.1.0");
    assert_eq!(entries[1]["detail"], "applied 1.0.0, 1.1.0");
    assert_eq!(entries[1]["outcome"], "ok");
    assert_eq!(entries[1]["database"], "postgresql");
    assert!(entries[1]["actor"].as_str().unwrap().contains('@'));
}

#[test]
fn the_audit_log_can_live_in_postgresql() {
    let state = common::TestDb::new();
    let project = Project::with_config(&format!("[state]\nurl = \"{}\"\n", state.url));
    project.sql_migration("001_users", "1.0.0", "CREATE TABLE users (id int);", None);
    project.run(&["migrate"]).ok();
    assert_eq!(
        state.column("SELECT command || ': ' || detail FROM switchyard.audit_log"),
        ["migrate: applied 1.0.0"]
    );
    assert!(!project.path("data").exists());
}

#[test]
fn passwords_never_appear_in_errors() {
    let project = Project::with_config("");
    std::fs::write(
        project.path("config/switchyard.toml"),
        "[databases.postgresql]\nkind = \"postgresql\"\nurl = \"postgres://app:hunter2@127.0.0.1:1/app\"\n",
    )
    .unwrap();
    project.sql_migration("001_users", "1.0.0", "CREATE TABLE users (id int);", None);
    let run = project.run(&["migrate"]).expect_code(1);
    assert!(
        run.stderr.starts_with(
            "error: database `postgresql`: cannot connect to postgres://app:***@127.0.0.1:1/app: "
        ),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("hunter2") && !run.stdout.contains("hunter2"));
}

#[test]
fn configuration_errors_name_the_field_and_exit_2() {
    let project = Project::new();
    std::fs::write(
        project.path("config/switchyard.toml"),
        "[databases.postgresql]\nkind = \"postgres\"\nurl = \"postgres://h/db\"\n",
    )
    .unwrap();
    let run = project.run(&["status"]).expect_code(2);
    assert_eq!(
        run.stderr,
        "error: config/switchyard.toml: field `databases.postgresql.kind`: unknown variant `postgres`, expected one of `postgresql`, `mongodb`, `elasticsearch`\n"
    );
    let env_override = project
        .command(&["status"])
        .env("SWITCHYARD__DATABASES__POSTGRESQL__KIND", "postgresql")
        .env("SWITCHYARD__DATABASES__POSTGRESQL__URL", &project.db.url)
        .output()
        .unwrap();
    assert_eq!(
        env_override.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&env_override.stderr)
    );
}
