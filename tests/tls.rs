//! TLS on every connection, against a server that takes TLS connections only
//! (`SWITCHYARD_TEST_TLS_POSTGRES_URL`, `sslmode=verify-full` with its CA; `scripts/services
//! up` starts one, with a throwaway CA and a second CA in `SWITCHYARD_TEST_TLS_OTHER_CA`).
//! The server refuses a connection without TLS, replication included, so whatever works
//! here went over TLS.

mod common;

use common::writer::{contents, create_items, items_copy_job, seed, Writer};
use common::{Project, TestDb};

/// The TLS server's URL and the other CA's certificate file.
fn tls_server() -> (String, String) {
    let variable = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: run the tests through `scripts/test`, or `eval \"$(scripts/services up)\"` first")
        })
    };
    (
        variable("SWITCHYARD_TEST_TLS_POSTGRES_URL"),
        variable("SWITCHYARD_TEST_TLS_OTHER_CA"),
    )
}

/// A project on a new database of the TLS server, configured with `url` changed by `edit`.
fn project_with_url(edit: impl Fn(&str) -> String) -> Project {
    let (server, _) = tls_server();
    let mut db = TestDb::on(&server);
    db.url = edit(&db.url);
    Project::on(db, "")
}

#[test]
fn migrate_and_a_job_with_catch_up_and_cutover_run_over_verify_full() {
    let project = project_with_url(str::to_string);
    assert!(project.db.url.contains("sslmode=verify-full"));
    project.sql_migration(
        "0001_notes",
        "1",
        "CREATE TABLE notes (id bigint PRIMARY KEY, body text)",
        Some("DROP TABLE notes"),
    );
    project.run(&["migrate"]).ok();
    assert_eq!(project.db.history(), ["1 COMPLETED"]);

    let mut db = project.db.client();
    let model = create_items(&mut db, "items", 5_000);
    let writer = Writer::start(&project.db.url, "items", model, seed());
    let file = project.job_file(
        "items",
        &items_copy_job(
            "items",
            "[copy]\nbatch_size = 500\nrows_per_second = 10000\n\n[cutover]\nmode = \"auto\"\n\n\
             [contract]\nafter = \"manual\"",
        ),
    );
    let run = project.run(&["job", "run", &file]).ok();
    assert!(
        run.stdout.starts_with("job items: waiting for contract"),
        "{}",
        run.stdout
    );
    let (model, ops) = writer.stop();
    let status = project.job_status("items");
    assert!(
        status["changes_applied"].as_u64() > Some(0),
        "the catch-up read the replication stream: {status}"
    );
    assert!(ops > 0);
    assert_eq!(contents(&mut db, "items"), model);
}

#[test]
fn a_certificate_from_another_ca_is_refused_and_says_so() {
    let (_, other_ca) = tls_server();
    let project = project_with_url(|url| {
        let (base, _) = url.split_once("&sslrootcert=").unwrap();
        format!("{base}&sslrootcert={other_ca}")
    });
    let run = project.run(&["status"]).expect_code(1);
    assert_eq!(
        run.stderr,
        "error: database `postgresql`: the server's certificate was refused: no root certificate in sslrootcert signed it (UnknownIssuer) (sslmode=verify-full)\n"
    );
}

#[test]
fn a_connection_without_tls_is_refused_by_the_server_with_its_message() {
    let project = project_with_url(|url| url.replace("sslmode=verify-full", "sslmode=disable"));
    let run = project.run(&["status"]).expect_code(1);
    assert!(
        run.stderr.contains(&format!(
            "FATAL: pg_hba.conf rejects connection for host \"127.0.0.1\", user \"postgres\", database \"{}\", no encryption (SQLSTATE 28000)",
            project.db.name
        )),
        "{}",
        run.stderr
    );
}

#[test]
fn require_encrypts_without_checking_and_a_missing_root_file_is_named() {
    let project = project_with_url(|url| {
        let (base, _) = url.split_once("?").unwrap();
        format!("{base}?sslmode=require")
    });
    project.run(&["status"]).ok();

    let project = project_with_url(|url| {
        let (base, _) = url.split_once("&sslrootcert=").unwrap();
        format!("{base}&sslrootcert=missing.crt")
    });
    let run = project.run(&["status"]).expect_code(1);
    assert!(
        run.stderr
            .starts_with("error: database `postgresql`: cannot read sslrootcert missing.crt: "),
        "{}",
        run.stderr
    );
}
