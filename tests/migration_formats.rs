//! Migration folders in the formats of other tools, baselines from their history
//! tables, dependencies across databases, and the library API: against the real
//! PostgreSQL of `scripts/services` (SWITCHYARD_TEST_POSTGRES_URL).

mod common;

use common::{Project, TestDb};

/// `version status` of every history row, sorted as text.
fn recorded(db: &TestDb) -> Vec<String> {
    if !db.exists("switchyard_migrations") {
        return Vec::new();
    }
    let mut rows = db.column("SELECT version || ' ' || status FROM switchyard_migrations");
    rows.sort();
    rows
}

fn index_exists(db: &TestDb, name: &str) -> bool {
    db.column(&format!(
        "SELECT count(*)::text FROM pg_indexes WHERE indexname = '{name}'"
    ))[0]
        == "1"
}

/// The `database version` of each "applying"/"rolling back" line, in the order printed.
fn steps(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|line| {
            let (database, rest) = line.split_once(": ")?;
            let rest = rest
                .strip_prefix("applying ")
                .or_else(|| rest.strip_prefix("rolling back "))?;
            Some(format!("{database} {}", rest.split(' ').next()?))
        })
        .collect()
}

fn write_all(project: &Project, files: &[(&str, &str)]) {
    for (name, text) in files {
        project.migration(name, text);
    }
}

const USERS: &str = "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);";
const EMAIL_INDEX: &str = "CREATE INDEX CONCURRENTLY users_email ON users (email);";
const DROP_EMAIL_INDEX: &str = "DROP INDEX CONCURRENTLY users_email;";

/// sqlx's and golang-migrate's pairs: a `CONCURRENTLY` up and down (which cannot run in a
/// transaction, so golang-migrate's files run without one) and an empty pair.
#[test]
fn up_down_pairs_apply_roll_back_and_apply_again() {
    let project = Project::new();
    write_all(
        &project,
        &[
            ("1_users.up.sql", USERS),
            ("1_users.down.sql", "DROP TABLE users;"),
            ("2_users_email.up.sql", EMAIL_INDEX),
            ("2_users_email.down.sql", DROP_EMAIL_INDEX),
            ("10_nothing.up.sql", ""),
            ("10_nothing.down.sql", ""),
        ],
    );
    let run = project.run(&["migrate"]).ok();
    assert_eq!(
        steps(&run.stdout),
        ["postgresql 1", "postgresql 2", "postgresql 10"],
        "numbers order numerically"
    );
    assert!(index_exists(&project.db, "users_email"));
    assert_eq!(
        recorded(&project.db),
        ["1 COMPLETED", "10 COMPLETED", "2 COMPLETED"]
    );
    let status = project.run(&["status", "--json"]).ok();
    let rows: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(rows[1]["name"], "users_email", "the name has no `.up`");

    project.run(&["rollback", "1"]).ok();
    assert!(!index_exists(&project.db, "users_email"));
    assert!(project.db.exists("users"));
    assert_eq!(
        recorded(&project.db),
        ["1 COMPLETED", "10 ROLLED_BACK", "2 ROLLED_BACK"]
    );
    project.run(&["migrate"]).ok();
    assert!(index_exists(&project.db, "users_email"));
    project.run(&["rollback", "0"]).ok();
    assert!(!project.db.exists("users"));
    project.run(&["migrate"]).ok();
    assert_eq!(
        recorded(&project.db),
        ["1 COMPLETED", "10 COMPLETED", "2 COMPLETED"]
    );
}

/// Flyway's versioned, undo and repeatable files: versions with `_` and `.`, the
/// repeatable applied last and again when it changes, never rolled back.
#[test]
fn flyway_files_with_undo_and_a_repeatable() {
    let project = Project::new();
    write_all(
        &project,
        &[
            ("V1__users.sql", USERS),
            (
                "U1__users.sql",
                "DROP VIEW IF EXISTS user_count; DROP TABLE users;",
            ),
            ("V1_1__users_email.sql", EMAIL_INDEX),
            ("U1_1__users_email.sql", DROP_EMAIL_INDEX),
            ("V1.2__nothing.sql", ""),
            ("U1.2__nothing.sql", ""),
            (
                "R__user_count.sql",
                "CREATE OR REPLACE VIEW user_count AS SELECT count(*) AS n FROM users;",
            ),
        ],
    );
    let run = project.run(&["migrate"]).ok();
    assert_eq!(
        steps(&run.stdout),
        [
            "postgresql 1",
            "postgresql 1.1",
            "postgresql 1.2",
            "postgresql R__user_count"
        ]
    );
    assert!(index_exists(&project.db, "users_email"));
    assert_eq!(project.db.column("SELECT n::text FROM user_count"), ["0"]);

    let again = project.run(&["migrate"]).ok();
    assert!(steps(&again.stdout).is_empty(), "{}", again.stdout);
    project.migration(
        "R__user_count.sql",
        "CREATE OR REPLACE VIEW user_count AS SELECT count(*) AS n, 'v2'::text AS shape FROM users;",
    );
    let status = project.run(&["status"]).ok();
    assert!(
        status
            .stdout
            .contains("PENDING    postgresql  R__user_count")
            && status
                .stdout
                .contains("Warning: changed since it was last applied: `migrate` applies it again"),
        "{}",
        status.stdout
    );
    let changed = project.run(&["migrate"]).ok();
    assert_eq!(steps(&changed.stdout), ["postgresql R__user_count"]);
    assert_eq!(project.db.column("SELECT shape FROM user_count"), ["v2"]);

    let back = project.run(&["rollback", "1"]).ok();
    assert_eq!(steps(&back.stdout), ["postgresql 1.2", "postgresql 1.1"]);
    assert!(!index_exists(&project.db, "users_email"));
    project.run(&["migrate"]).ok();
    assert_eq!(
        recorded(&project.db),
        [
            "1 COMPLETED",
            "1.1 COMPLETED",
            "1.2 COMPLETED",
            "R__user_count COMPLETED"
        ]
    );
}

/// dbmate's sections, `transaction:false` for the index built concurrently.
#[test]
fn dbmate_sections_apply_roll_back_and_apply_again() {
    let project = Project::new();
    write_all(
        &project,
        &[
            (
                "20240101000000_users.sql",
                &format!("-- migrate:up\n{USERS}\n\n-- migrate:down\nDROP TABLE users;\n"),
            ),
            (
                "20240102000000_users_email.sql",
                &format!("-- migrate:up transaction:false\n{EMAIL_INDEX}\n\n-- migrate:down transaction:false\n{DROP_EMAIL_INDEX}\n"),
            ),
            ("20240103000000_nothing.sql", ""),
        ],
    );
    project.run(&["migrate"]).ok();
    assert!(index_exists(&project.db, "users_email"));
    project.run(&["rollback", "0"]).ok();
    assert!(!project.db.exists("users"));
    assert_eq!(
        recorded(&project.db),
        [
            "20240101000000 ROLLED_BACK",
            "20240102000000 ROLLED_BACK",
            "20240103000000 ROLLED_BACK"
        ]
    );
    project.run(&["migrate"]).ok();
    assert!(index_exists(&project.db, "users_email"));
}

#[test]
fn a_folder_mixing_formats_exits_2_naming_both_files() {
    let project = Project::new();
    write_all(
        &project,
        &[
            ("1_users.up.sql", USERS),
            ("2_more.up.sql", "SELECT 1;"),
            ("V3__flyway.sql", "SELECT 1;"),
        ],
    );
    for command in [&["migrate"][..], &["validate", "--offline"]] {
        let run = project.run(command).expect_code(2);
        assert_eq!(
            run.stderr,
            "error: migrations/postgresql/V3__flyway.sql: this file is in Flyway's format (V<version>__name.sql), but `migrations/postgresql/1_users.up.sql` is in the up/down format of sqlx and golang-migrate (N_name.up.sql): one folder uses one format\n"
        );
    }
    assert!(!project.db.exists("users"));
}

/// One case of baseline: the folder, the other tool's table as that tool creates it
/// with the rows it writes after applying the first two migrations.
struct Tool {
    name: &'static str,
    files: [(&'static str, &'static str); 3],
    history: &'static str,
    /// The versions of the three files, as switchyard shows them.
    versions: [&'static str; 3],
}

const TABLES: &str = "CREATE TABLE a (id int); CREATE TABLE b (id int);";

fn tools() -> Vec<Tool> {
    vec![
        Tool {
            name: "flyway",
            files: [
                ("V1__a.sql", "CREATE TABLE a (id int);"),
                ("V1_1__b.sql", "CREATE TABLE b (id int);"),
                ("V2__c.sql", "CREATE TABLE c (id int);"),
            ],
            history: "CREATE TABLE flyway_schema_history (installed_rank INT NOT NULL PRIMARY KEY, version VARCHAR(50), description VARCHAR(200) NOT NULL, type VARCHAR(20) NOT NULL, script VARCHAR(1000) NOT NULL, checksum INTEGER, installed_by VARCHAR(100) NOT NULL, installed_on TIMESTAMP NOT NULL DEFAULT now(), execution_time INTEGER NOT NULL, success BOOLEAN NOT NULL);
                INSERT INTO flyway_schema_history (installed_rank, version, description, type, script, checksum, installed_by, execution_time, success) VALUES
                (1, '1', 'a', 'SQL', 'V1__a.sql', 1820510812, 'app', 5, true),
                (2, '1.1', 'b', 'SQL', 'V1_1__b.sql', -1164092823, 'app', 4, true);",
            versions: ["1", "1.1", "2"],
        },
        Tool {
            name: "sqlx",
            files: [
                ("20240101000001_a.up.sql", "CREATE TABLE a (id int);"),
                ("20240101000002_b.up.sql", "CREATE TABLE b (id int);"),
                ("20240101000003_c.up.sql", "CREATE TABLE c (id int);"),
            ],
            history: "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL, checksum BYTEA NOT NULL, execution_time BIGINT NOT NULL);
                INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES
                (20240101000001, 'a', true, '\\x00', 1000), (20240101000002, 'b', true, '\\x01', 1000);",
            versions: ["20240101000001", "20240101000002", "20240101000003"],
        },
        Tool {
            name: "golang-migrate",
            files: [
                ("1_a.up.sql", "CREATE TABLE a (id int);"),
                ("2_b.up.sql", "CREATE TABLE b (id int);"),
                ("3_c.up.sql", "CREATE TABLE c (id int);"),
            ],
            history: "CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL);
                INSERT INTO schema_migrations VALUES (2, false);",
            versions: ["1", "2", "3"],
        },
        Tool {
            name: "dbmate",
            files: [
                ("20240101000001_a.sql", "-- migrate:up\nCREATE TABLE a (id int);\n-- migrate:down\nDROP TABLE a;\n"),
                ("20240101000002_b.sql", "-- migrate:up\nCREATE TABLE b (id int);\n-- migrate:down\nDROP TABLE b;\n"),
                ("20240101000003_c.sql", "-- migrate:up\nCREATE TABLE c (id int);\n-- migrate:down\nDROP TABLE c;\n"),
            ],
            history: "CREATE TABLE schema_migrations (version character varying(128) NOT NULL PRIMARY KEY);
                INSERT INTO schema_migrations VALUES ('20240101000001'), ('20240101000002');",
            versions: ["20240101000001", "20240101000002", "20240101000003"],
        },
        Tool {
            name: "alembic",
            files: [
                ("001_1975ea83b712_a.sql", "CREATE TABLE a (id int);"),
                ("002_ae1027a6acf4_b.sql", "CREATE TABLE b (id int);"),
                ("003_27c6a30d7c24_c.sql", "CREATE TABLE c (id int);"),
            ],
            history: "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num));
                INSERT INTO alembic_version VALUES ('ae1027a6acf4');",
            versions: ["001", "002", "003"],
        },
    ]
}

fn statuses(project: &Project) -> Vec<String> {
    let status = project.run(&["status", "--json"]).ok();
    let rows: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["version"].as_str().unwrap(),
                r["status"].as_str().unwrap()
            )
        })
        .collect()
}

/// A database another tool migrated: its history is read, those versions recorded as
/// applied without running them, and `migrate` runs only the newer one.
#[test]
fn baseline_from_each_tool_then_migrate_runs_only_the_newer_ones() {
    for tool in tools() {
        let project = Project::new();
        write_all(&project, &tool.files);
        project.db.client().batch_execute(TABLES).unwrap();
        project.db.client().batch_execute(tool.history).unwrap();

        let dry = project
            .run(&["baseline", "--from", tool.name, "--dry-run"])
            .ok();
        assert!(
            dry.stdout.contains("dry run: would record"),
            "{}",
            dry.stdout
        );
        assert!(
            recorded(&project.db).is_empty(),
            "{}: a dry run records nothing",
            tool.name
        );

        let run = project.run(&["baseline", "--from", tool.name]).ok();
        assert!(
            run.stdout.contains("recorded as applied from"),
            "{}: {}",
            tool.name,
            run.stdout
        );
        let [first, second, third] = tool.versions;
        assert_eq!(
            statuses(&project),
            [
                format!("{first} COMPLETED"),
                format!("{second} COMPLETED"),
                format!("{third} PENDING")
            ],
            "{}",
            tool.name
        );
        let migrate = project.run(&["migrate"]).ok();
        assert_eq!(
            steps(&migrate.stdout),
            [format!("postgresql {third}")],
            "{}: only the newer migration runs",
            tool.name
        );
        assert!(project.db.exists("c"));
        project.run(&["validate"]).ok();
    }
}

#[test]
fn baseline_refuses_a_failed_or_unknown_migration_and_changes_nothing() {
    let cases = [
        (
            "flyway",
            "INSERT INTO flyway_schema_history (installed_rank, version, description, type, script, installed_by, execution_time, success) VALUES (3, '2', 'c', 'SQL', 'V2__c.sql', 'app', 5, false);",
            "error: flyway_schema_history in `postgresql` records a migration that did not finish: 2 (V2__c.sql) failed; repair it with Flyway first (nothing was changed)\n",
        ),
        (
            "flyway",
            "INSERT INTO flyway_schema_history (installed_rank, version, description, type, script, installed_by, execution_time, success) VALUES (3, '7', 'x', 'SQL', 'V7__x.sql', 'app', 5, true);",
            "error: flyway_schema_history in `postgresql` names a version that no file of the folder has: 7 (nothing was changed)\n",
        ),
        (
            "golang-migrate",
            "UPDATE schema_migrations SET dirty = true;",
            "error: schema_migrations in `postgresql` records a migration that did not finish: 2 is dirty; repair it with golang-migrate first (nothing was changed)\n",
        ),
    ];
    for (name, change, expected) in cases {
        let tool = tools().into_iter().find(|t| t.name == name).unwrap();
        let project = Project::new();
        write_all(&project, &tool.files);
        project.db.client().batch_execute(tool.history).unwrap();
        project.db.client().batch_execute(change).unwrap();
        let run = project.run(&["baseline", "--from", name]).expect_code(2);
        assert_eq!(run.stderr, expected);
        assert!(recorded(&project.db).is_empty());
    }
    let project = Project::new();
    let run = project.run(&["baseline", "--from", "sqlx"]).expect_code(2);
    assert!(
        run.stderr
            .starts_with("error: database `postgresql` has no table _sqlx_migrations"),
        "{}",
        run.stderr
    );
}

#[test]
fn baseline_up_to_a_version_marks_it_and_every_one_before() {
    let project = Project::new();
    write_all(&project, &tools()[2].files);
    project.db.client().batch_execute(TABLES).unwrap();
    project.run(&["baseline", "2"]).ok();
    assert_eq!(
        statuses(&project),
        ["1 COMPLETED", "2 COMPLETED", "3 PENDING"]
    );
    let typo = project.run(&["baseline", "9"]).expect_code(2);
    assert!(
        typo.stderr
            .starts_with("error: no migration has version `9`"),
        "{}",
        typo.stderr
    );
}

/// A project with a second PostgreSQL database, `ledger`, and its migrations folder.
fn with_ledger() -> (Project, TestDb, std::path::PathBuf) {
    let ledger = TestDb::new();
    let project = Project::with_config(&format!(
        "[databases.ledger]\nkind = \"postgresql\"\nurl = \"{}\"\n",
        ledger.url
    ));
    let ledger_dir = project.path("migrations/ledger");
    std::fs::create_dir_all(&ledger_dir).unwrap();
    (project, ledger, ledger_dir)
}

/// Two databases whose migrations depend on each other: applied interleaved, rolled
/// back in reverse, a rollback that would strand a dependent refused, and a cycle.
#[test]
fn dependencies_between_databases_order_migrate_and_rollback() {
    let (project, ledger, ledger_dir) = with_ledger();
    let write_ledger =
        |name: &str, text: &str| std::fs::write(ledger_dir.join(name), text).unwrap();
    write_ledger("1_accounts.up.sql", "CREATE TABLE accounts (id int);");
    write_ledger("1_accounts.down.sql", "DROP TABLE accounts;");
    write_ledger(
        "2_entries.up.sql",
        "-- switchyard:depends_on postgresql=2\nCREATE TABLE entries (id int);",
    );
    write_ledger("2_entries.down.sql", "DROP TABLE entries;");
    write_all(
        &project,
        &[
            ("1_users.up.sql", USERS),
            ("1_users.down.sql", "DROP TABLE users;"),
            (
                "2_orders.up.sql",
                "-- switchyard:depends_on ledger=1\nCREATE TABLE orders (id int);",
            ),
            ("2_orders.down.sql", "DROP TABLE orders;"),
        ],
    );
    let run = project.run(&["migrate"]).ok();
    assert_eq!(
        steps(&run.stdout),
        ["ledger 1", "postgresql 1", "postgresql 2", "ledger 2"]
    );

    let refused = project
        .run(&["rollback", "0", "--databases", "postgresql"])
        .expect_code(2);
    assert!(
        refused.stderr.starts_with("error: rollback refused, nothing was changed:\nundoing postgresql 2 would break ledger 2 (migrations/ledger/2_entries.up.sql), which depends on it and stays applied"),
        "{}",
        refused.stderr
    );
    assert!(project.db.exists("orders"));

    let back = project.run(&["rollback", "0"]).ok();
    assert_eq!(
        steps(&back.stdout),
        ["ledger 2", "postgresql 2", "ledger 1", "postgresql 1"]
    );
    assert!(!ledger.exists("accounts") && !project.db.exists("users"));

    // A dependency that cannot be met in this run refuses before anything changes.
    let alone = project
        .run(&["migrate", "--databases", "postgresql"])
        .expect_code(2);
    assert!(
        alone.stderr.contains(
            "postgresql 2 needs ledger 1, which is not applied and not pending in this run"
        ),
        "{}",
        alone.stderr
    );
    assert!(!project.db.exists("users"), "nothing ran");

    write_ledger(
        "1_accounts.up.sql",
        "-- switchyard:depends_on postgresql=2\nCREATE TABLE accounts (id int);",
    );
    let cycle = project.run(&["validate", "--offline"]).expect_code(2);
    assert!(
        cycle.stderr.contains(
            "depends_on makes a cycle: none of ledger 1, ledger 2, postgresql 2 can run first"
        ),
        "{}",
        cycle.stderr
    );
    project.run(&["migrate"]).expect_code(2);
    assert!(!project.db.exists("users"));
}

/// A migration failing in one database stops the run there: the other database's later
/// migrations are not applied.
#[test]
fn a_failure_stops_the_run_across_databases() {
    let (project, ledger, ledger_dir) = with_ledger();
    std::fs::write(
        ledger_dir.join("1_accounts.up.sql"),
        "-- switchyard:depends_on postgresql=1\nCREATE TABLE accounts (id int);",
    )
    .unwrap();
    project.migration(
        "1_broken.up.sql",
        "CREATE TABLE broken (id int REFERENCES nowhere);",
    );
    let run = project.run(&["migrate"]).expect_code(1);
    assert!(
        run.stdout
            .contains("postgresql: applying 1 broken ... FAILED"),
        "{}",
        run.stdout
    );
    assert!(!ledger.exists("accounts"));
    assert_eq!(recorded(&project.db), ["1 FAILED"]);
}

/// The library API, as an application calls it at start-up (examples/migrate_on_startup.rs).
#[test]
fn the_start_up_example_migrates_through_the_library() {
    let example = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("examples/migrate_on_startup");
    assert!(
        example.exists(),
        "{} is built by `cargo test`",
        example.display()
    );
    let project = Project::new();
    write_all(
        &project,
        &[
            ("V1__users.sql", USERS),
            ("V2__users_email.sql", EMAIL_INDEX),
        ],
    );
    let run_example = || {
        std::process::Command::new(&example)
            .arg(project.path("migrations/postgresql"))
            .env("DATABASE_URL", &project.db.url)
            .output()
            .unwrap()
    };
    let first = run_example();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        stdout.contains("applied 1 users in ") && stdout.contains("applied 2 users_email in "),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("2 migrations, 2 applied now; the application can start\n"),
        "{stdout}"
    );
    assert!(index_exists(&project.db, "users_email"));
    let second = run_example();
    assert!(String::from_utf8_lossy(&second.stdout)
        .ends_with("2 migrations, 0 applied now; the application can start\n"));
    assert_eq!(
        statuses(&project),
        ["1 COMPLETED", "2 COMPLETED"],
        "the CLI sees what the library applied"
    );
}

/// `create` in another tool's folder writes that tool's file names.
#[test]
fn create_follows_the_folder_s_format() {
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[("V1_1__users.sql", USERS)],
            "created migrations/postgresql/V1.2__add_email.sql\ncreated migrations/postgresql/U1.2__add_email.sql\n",
        ),
        (
            &[("7_users.up.sql", USERS)],
            "created migrations/postgresql/8_add_email.up.sql\ncreated migrations/postgresql/8_add_email.down.sql\n",
        ),
        (
            &[("3_users.sql", "-- migrate:up\nSELECT 1;\n")],
            "created migrations/postgresql/4_add_email.sql\n",
        ),
    ];
    for (files, expected) in cases {
        let project = Project::new();
        write_all(&project, files);
        let run = project
            .run(&["create", "Add email", "--database", "postgresql"])
            .ok();
        assert!(run.stdout.starts_with(expected), "{}", run.stdout);
        project.run(&["validate", "--offline"]).ok();
    }
}
