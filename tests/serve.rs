//! `switchyard serve` through the real binary: it runs the jobs folder's jobs, obeys the
//! HTTP API (with its token), stops at a batch boundary on SIGTERM and resumes after.

mod common;

use common::proxy::Proxy;
use common::writer::{checksum, create_items, items_copy_job};
use common::{free_port, http, Project, TestDb};

const TOKEN: &str = "s3cret-token";

fn job(name: &str, extra: &str) -> String {
    items_copy_job(
        name,
        &format!("[copy]\nbatch_size = 250\n{extra}\n[contract]\nafter = \"manual\""),
    )
}

struct Serve {
    child: std::process::Child,
    port: u16,
}

impl Serve {
    fn start(project: &Project, port: u16) -> Serve {
        Serve::start_logging(project, port, std::process::Stdio::null())
    }

    /// [`Serve::start`], its log (stderr) going to `log`.
    fn start_logging(project: &Project, port: u16, log: impl Into<std::process::Stdio>) -> Serve {
        let child = project
            .command(&["serve"])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "serve never listened");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Serve { child, port }
    }

    fn job(&self, name: &str) -> serde_json::Value {
        let (status, body) = http(self.port, "GET", &format!("/jobs/{name}"), &[], "");
        if status != 200 {
            return serde_json::Value::Null;
        }
        serde_json::from_str(&body).unwrap()
    }

    fn wait_for(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let job = self.job(name);
            if check(&job) {
                return job;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {name}: {what}; last {job}"
            );
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn project_with_server(port: u16) -> Project {
    Project::with_config(&format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n"
    ))
}

#[test]
fn serve_runs_jobs_and_obeys_the_api() {
    let port = free_port();
    let project = project_with_server(port);
    let mut db = project.db.client();
    create_items(&mut db, "items", 20_000);
    project.job_file("items", &job("items", "rows_per_second = 4000"));
    let serve = Serve::start(&project, port);
    let auth = format!("Authorization: Bearer {TOKEN}");

    assert_eq!(http(port, "GET", "/healthz", &[], "").0, 200);
    assert_eq!(http(port, "GET", "/readyz", &[], "").0, 200);
    serve.wait_for("items", "copying", |j| {
        j["phase"] == "copy" && j["rows_copied"].as_u64() > Some(0)
    });

    // Changing endpoints need the token.
    let (status, body) = http(port, "POST", "/jobs/items/pause", &[], "");
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        http(
            port,
            "PATCH",
            "/jobs/items",
            &["Authorization: Bearer wrong"],
            "{\"rows_per_second\": 1}"
        )
        .0,
        401
    );
    assert_eq!(http(port, "POST", "/jobs/items/pause", &[&auth], "").0, 200);
    let paused = serve.wait_for("items", "paused", |j| j["phase"] == "paused");
    assert_eq!(
        http(port, "POST", "/jobs/nosuch/pause", &[&auth], "").0,
        404
    );
    assert_eq!(
        http(port, "POST", "/jobs/items/explode", &[&auth], "").0,
        404
    );
    assert_eq!(
        http(
            port,
            "PATCH",
            "/jobs/items",
            &[&auth],
            "{\"rows_per_second\": 0}"
        )
        .0,
        200
    );
    assert_eq!(
        http(port, "POST", "/jobs/items/resume", &[&auth], "").0,
        200
    );
    assert!(paused["rows_copied"].as_u64() < Some(20_000));
    serve.wait_for("items", "ready to cut over", |j| {
        j["phase"] == "ready_to_cutover"
    });

    let (status, body) = http(port, "POST", "/jobs/items/cutover", &[&auth], "");
    assert_eq!(status, 200, "{body}");
    serve.wait_for("items", "cut over", |j| j["writes_blocked_ms"].is_u64());
    assert!(project.db.exists("items_old"));
    assert_eq!(checksum(&mut db, "items"), checksum(&mut db, "items_old"));

    // A job submitted over the API is written to the jobs folder and run.
    let submitted = job("again", "")
        .replace(
            "table = \"public.items\"\n",
            "table = \"public.items_old\"\n",
        )
        .replace("items_v2", "items_v3");
    let (status, body) = http(port, "POST", "/jobs", &[], &submitted);
    assert_eq!(status, 401, "{body}");
    let (status, body) = http(
        port,
        "POST",
        "/jobs",
        &[&auth],
        "name = \"bad\"\nkind = \"copy\"\n",
    );
    assert_eq!(status, 422, "{body}");
    let (status, body) = http(port, "POST", "/jobs", &[&auth], &submitted);
    assert_eq!(status, 201, "{body}");
    serve.wait_for("again", "ready to cut over", |j| {
        j["phase"] == "ready_to_cutover"
    });
    let (status, body) = http(port, "POST", "/jobs/again/abort", &[&auth], "");
    assert_eq!(status, 200, "{body}");
    serve.wait_for("again", "aborted", |j| j["phase"] == "aborted");
    assert!(!project.db.exists("items_v3"));

    let (status, body) = http(port, "GET", "/jobs", &[], "");
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(http(port, "GET", "/metrics", &[], "")
        .1
        .contains("switchyard_job_rows_copied_total{job=\"items\"}"));
    assert!(serve.terminate().success());
}

#[test]
fn sigterm_stops_at_a_batch_boundary_and_a_restart_resumes() {
    let port = free_port();
    let project = project_with_server(port);
    let mut db = project.db.client();
    create_items(&mut db, "items", 20_000);
    project.job_file("items", &job("items", "rows_per_second = 5000"));
    let serve = Serve::start(&project, port);
    serve.wait_for("items", "copying", |j| {
        j["phase"] == "copy" && j["rows_copied"].as_u64() >= Some(2_000)
    });
    assert!(
        serve.terminate().success(),
        "serve must exit cleanly on SIGTERM"
    );
    let stopped = project.job_status("items");
    assert_eq!(stopped["phase"], "copy", "stopped where it was: {stopped}");
    let copied = stopped["rows_copied"].as_u64().unwrap();
    assert!(copied < 20_000);
    assert_eq!(
        project
            .db
            .column("SELECT sum(rows)::text FROM switchyard.copy_progress"),
        [copied.to_string()],
        "the checkpoints hold exactly what the record says was copied"
    );

    let serve = Serve::start(&project, port);
    project
        .run(&["job", "throttle", "items", "--rows-per-second", "0"])
        .ok();
    serve.wait_for("items", "ready to cut over", |j| {
        j["phase"] == "ready_to_cutover"
    });
    assert_eq!(checksum(&mut db, "items"), checksum(&mut db, "items_v2"));
    assert!(serve.terminate().success());
}

/// Two `serve` processes on one PostgreSQL state store: the job runs in one of them
/// only, and ends equal to its source.
#[test]
fn two_serves_on_one_state_store_run_each_job_once() {
    let state = common::TestDb::new();
    let (port_a, port_b) = (free_port(), free_port());
    let project = Project::with_config(&format!("[state]\nurl = \"{}\"\n", state.url));
    let mut db = project.db.client();
    create_items(&mut db, "items", 20_000);
    project.job_file("items", &job("items", "rows_per_second = 8000"));
    let config = common::read(&project.path("config/switchyard.toml"));
    let serve_with_port = |port: u16| {
        std::fs::write(
            project.path("config/switchyard.toml"),
            format!("{config}[server]\nlisten = \"127.0.0.1:{port}\"\n"),
        )
        .unwrap();
        let serve = Serve::start(&project, port);
        // Let it read its configuration before the file changes for the other one.
        serve.wait_for("items", "seen", |j| !j.is_null());
        serve
    };
    let a = serve_with_port(port_a);
    let b = serve_with_port(port_b);
    a.wait_for("items", "copying", |j| {
        j["phase"] == "copy" && j["rows_copied"].as_u64() > Some(0)
    });
    // While it copies, one process holds the job's lease (its advisory lock).
    let lease = "SELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";
    assert_eq!(
        project.db.column(lease),
        ["1"],
        "exactly one process holds the job's lease"
    );
    b.wait_for("items", "ready to cut over", |j| {
        j["phase"] == "ready_to_cutover"
    });
    assert_eq!(checksum(&mut db, "items"), checksum(&mut db, "items_v2"));
    assert!(a.terminate().success() && b.terminate().success());
}

/// Beyond loopback without a token, `serve` refuses to start (exit 2, naming
/// `server.token`), unless `server.allow_unauthenticated` says so.
#[test]
fn serve_refuses_an_open_api_beyond_loopback_without_a_token() {
    let port = free_port();
    let project = Project::with_config(&format!("[server]\nlisten = \"0.0.0.0:{port}\"\n"));
    let refused = project.run(&["serve"]).expect_code(2);
    assert_eq!(
        refused.stderr,
        format!(
            "error: serve refuses to listen on 0.0.0.0:{port} without `server.token`: anyone who reaches the port could pause, cut over or abort every job. \
             Set server.token (or SWITCHYARD__SERVER__TOKEN), listen on loopback, or write server.allow_unauthenticated = true\n"
        )
    );
    let allowed = Project::with_config(&format!(
        "[server]\nlisten = \"0.0.0.0:{port}\"\nallow_unauthenticated = true\n"
    ));
    let serve = Serve::start(&allowed, port);
    assert_eq!(http(port, "GET", "/healthz", &[], "").0, 200);
    assert!(serve.terminate().success());
}

/// With `server.tls_cert` and `server.tls_key` the API speaks HTTPS only: a client that
/// trusts the CA gets its answers, a plain HTTP request gets none. The certificate is
/// the TLS test server's (`SWITCHYARD_TEST_TLS_POSTGRES_URL`'s CA signed it for localhost).
#[test]
fn the_api_over_tls() {
    let url = std::env::var("SWITCHYARD_TEST_TLS_POSTGRES_URL")
        .expect("SWITCHYARD_TEST_TLS_POSTGRES_URL is set by `scripts/services up`");
    let ca = url.split_once("sslrootcert=").unwrap().1.to_string();
    let certs = std::path::Path::new(&ca).parent().unwrap();
    let port = free_port();
    let project = Project::with_config(&format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        certs.join("server.crt").display(),
        certs.join("server.key").display()
    ));
    let serve = Serve::start(&project, port);
    let (status, body) = https_get(port, &ca, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = https_get(port, &ca, "/jobs");
    assert_eq!((status, body.as_str()), (200, "[]"));
    // Plain HTTP gets no answer.
    let plain = std::panic::catch_unwind(|| http(port, "GET", "/healthz", &[], ""));
    assert!(
        plain.map_or(true, |(status, _)| status != 200),
        "plain HTTP must not be served"
    );
    assert!(serve.terminate().success());
}

/// One HTTPS/1.1 GET on `localhost:port`, trusting the CA in `ca`: `(status, body)`.
fn https_get(port: u16, ca: &str, path: &str) -> (u16, String) {
    use rustls::pki_types::pem::PemObject;
    use std::io::{Read, Write};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connection =
        rustls::ClientConnection::new(std::sync::Arc::new(config), "localhost".try_into().unwrap())
            .unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    // The server may close without close_notify; what was read is the answer.
    let _ = stream.read_to_string(&mut response);
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A job that fails before its first phase (its table does not exist) gets one failed
/// record with the error, is not started again on every tick, and runs once its file
/// is fixed.
#[test]
fn a_job_that_cannot_start_fails_once_and_runs_after_its_file_is_fixed() {
    let port = free_port();
    let project = project_with_server(port);
    create_items(&mut project.db.client(), "items", 2_000);
    let good = job("items", "");
    let broken = good.replace("table = \"public.items\"", "table = \"public.nosuch\"");
    assert_ne!(good, broken);
    project.job_file("items", &broken);
    let log = project.path("serve.log");
    let serve = Serve::start_logging(&project, port, std::fs::File::create(&log).unwrap());
    let failed = serve.wait_for("items", "failed", |j| j["phase"] == "failed");
    assert_eq!(
        failed["error"],
        "table public.nosuch does not exist in database `postgresql`"
    );
    // Absence takes time to show: two more seconds of ticks start nothing.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let failures = std::fs::read_to_string(&log)
        .unwrap()
        .matches("job failed")
        .count();
    assert_eq!(failures, 1, "{}", std::fs::read_to_string(&log).unwrap());
    let (_, metrics) = http(port, "GET", "/metrics", &[], "");
    assert!(
        metrics.contains("switchyard_job_errors_total{job=\"items\",kind=\"refused\"} 1"),
        "{metrics}"
    );

    project.job_file("items", &good);
    serve.wait_for("items", "ready after the fix", |j| {
        j["phase"] == "ready_to_cutover"
    });
    assert!(serve.terminate().success());
}

/// A job whose server is down when `serve` starts it waits and tries again with
/// back-off (saying so), and runs once the server answers; it is never failed for it.
#[test]
fn a_job_whose_server_is_down_at_start_waits_and_runs_when_it_answers() {
    let db = TestDb::new();
    let mut parsed = url::Url::parse(&db.url).unwrap();
    let server_port = parsed.port().unwrap();
    let down_port = free_port();
    parsed.set_port(Some(down_port)).unwrap();
    create_items(&mut db.client(), "items", 1_000);
    let port = free_port();
    let project = Project::on(
        db,
        &format!("[server]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n"),
    );
    // The configured URL points at a port nothing listens on yet.
    let config = project.path("config/switchyard.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(&project.db.url, parsed.as_str())).unwrap();
    project.job_file("items", &job("items", ""));
    let log = project.path("serve.log");
    let serve = Serve::start_logging(&project, port, std::fs::File::create(&log).unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("the job cannot start yet; trying again")
    {
        assert!(std::time::Instant::now() < deadline, "no retry was logged");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(serve.job("items"), serde_json::Value::Null, "not failed");
    let _server_back = Proxy::start_on(down_port, server_port);
    serve.wait_for("items", "ready once the server answers", |j| {
        j["phase"] == "ready_to_cutover"
    });
    assert!(serve.terminate().success());
}

/// Replication slots of the server held by the test, so that jobs find few free.
struct HeldSlots {
    db: String,
    names: Vec<String>,
}

impl HeldSlots {
    /// Holds all but `free` of the server's slots.
    fn leaving(db: &TestDb, free: i64) -> HeldSlots {
        let mut client = db.client();
        let available: i64 = client
            .query_one(
                "SELECT current_setting('max_replication_slots')::bigint - count(*) FROM pg_replication_slots",
                &[],
            )
            .unwrap()
            .get(0);
        let names: Vec<String> = (0..(available - free).max(0))
            .map(|i| format!("{}_held_{i}", db.name))
            .collect();
        for name in &names {
            client
                .execute("SELECT pg_create_physical_replication_slot($1)", &[name])
                .unwrap();
        }
        HeldSlots {
            db: db.url.clone(),
            names,
        }
    }
}

impl Drop for HeldSlots {
    fn drop(&mut self) {
        if let Ok(mut client) = common::connect(&self.db) {
            for name in &self.names {
                let _ = client.execute("SELECT pg_drop_replication_slot($1)", &[name]);
            }
        }
    }
}

/// Thirty jobs with catch-up on a server with three free replication slots: `serve` runs
/// at most `serve.max_jobs` at once and queues the rest; a job that finds no free slot
/// waits for one instead of failing; every job ends done with its table copied.
#[test]
fn thirty_jobs_on_a_server_with_few_free_slots_all_finish_none_failed() {
    const JOBS: usize = 30;
    let db = TestDb::on(&common::other_server_url());
    let mut client = db.client();
    for n in 0..JOBS {
        client
            .batch_execute(&format!(
                "CREATE TABLE t{n} (id bigint PRIMARY KEY, v text NOT NULL);
                 INSERT INTO t{n} SELECT g, 'v' || g FROM generate_series(1, 200) g;"
            ))
            .unwrap();
    }
    let _held = HeldSlots::leaving(&db, 3);
    let port = free_port();
    let project = Project::on(
        db,
        &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n\n[serve]\nmax_jobs = 4\n"),
    );
    for n in 0..JOBS {
        project.job_file(
            &format!("t{n}"),
            &format!(
                "name = \"t{n}\"\nkind = \"copy\"\n[source]\ndatabase = \"postgresql\"\ntable = \"public.t{n}\"\n\
                 [target]\ndatabase = \"postgresql\"\ntable = \"public.t{n}_v2\"\n\
                 [expand]\nsql = [\"CREATE TABLE IF NOT EXISTS public.t{n}_v2 (id bigint PRIMARY KEY, v text NOT NULL)\"]\n\
                 [copy]\nbatch_size = 100\n[cutover]\nmode = \"auto\"\n\
                 [contract]\nafter = \"0s\"\nsql = [\"DROP TABLE public.t{n}_old\"]\n"
            ),
        );
    }
    let log = project.path("serve.log");
    let serve = Serve::start_logging(&project, port, std::fs::File::create(&log).unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut most_running = 0;
    loop {
        let (_, body) = http(port, "GET", "/jobs", &[], "");
        let jobs: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        let failed: Vec<&serde_json::Value> =
            jobs.iter().filter(|j| j["phase"] == "failed").collect();
        assert!(failed.is_empty(), "{failed:#?}");
        let running = jobs
            .iter()
            .filter(|j| {
                j["phase"] != "done"
                    && !j["waiting"]
                        .as_str()
                        .is_some_and(|w| w.starts_with("in line"))
            })
            .count();
        most_running = most_running.max(running);
        assert!(running <= 4, "{running} jobs run at once: {jobs:#?}");
        if jobs.len() == JOBS && jobs.iter().all(|j| j["phase"] == "done") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not all done:\n{}",
            jobs.iter()
                .map(|j| format!(
                    "{} {} {} {}",
                    j["name"], j["phase"], j["waiting"], j["error"]
                ))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(most_running, 4, "serve ran up to max_jobs at once");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("the server has nothing free for the job; waiting"),
        "some job found no free slot and waited"
    );
    for n in 0..JOBS {
        assert_eq!(
            project
                .db
                .column(&format!("SELECT count(*)::text FROM t{n}")),
            ["200"]
        );
    }
    assert!(serve.terminate().success());
}

/// A paused job whose replication slot comes to hold more WAL than
/// `catch_up.max_slot_wal` loses the slot and fails saying why and what to do, so it
/// never fills the source's disk.
#[test]
fn a_paused_job_whose_slot_passes_max_slot_wal_drops_it_and_fails() {
    let port = free_port();
    let project = project_with_server(port);
    let mut db = project.db.client();
    create_items(&mut db, "items", 20_000);
    project.job_file(
        "items",
        &job(
            "items",
            "rows_per_second = 500\n[catch_up]\nmax_slot_wal = \"1 MiB\"",
        ),
    );
    let serve = Serve::start(&project, port);
    let auth = format!("Authorization: Bearer {TOKEN}");
    serve.wait_for("items", "copying", |j| {
        j["phase"] == "copy" && j["rows_copied"].as_u64() > Some(0)
    });
    assert_eq!(http(port, "POST", "/jobs/items/pause", &[&auth], "").0, 200);
    serve.wait_for("items", "paused", |j| j["phase"] == "paused");
    // About 4 MiB of WAL the paused job's slot must keep.
    db.batch_execute(
        "CREATE TABLE ballast AS SELECT g, md5(g::text) || md5((g * 2)::text) AS pad FROM generate_series(1, 40000) g",
    )
    .unwrap();
    let failed = serve.wait_for("items", "failed", |j| j["phase"] == "failed");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.starts_with("job `items`: its replication slot held ")
            && error.contains("more than catch_up.max_slot_wal (1.0 MiB), and was dropped so that the source's disk does not fill"),
        "{error}"
    );
    assert_eq!(
        project.db.column(
            "SELECT count(*)::text FROM pg_replication_slots WHERE database = current_database()"
        ),
        ["0"]
    );
    assert!(serve.terminate().success());
}

/// A running job takes a throttle change made in its file at its next batch.
#[test]
fn a_throttle_change_in_the_job_file_is_taken_live() {
    let port = free_port();
    let project = project_with_server(port);
    create_items(&mut project.db.client(), "items", 20_000);
    let slow = job("items", "rows_per_second = 200");
    project.job_file("items", &slow);
    let serve = Serve::start(&project, port);
    serve.wait_for("items", "copying", |j| {
        j["phase"] == "copy" && j["rows_copied"].as_u64() > Some(0)
    });
    // At 200 rows a second the copy would take 100 s; unthrottled it ends at once.
    project.job_file(
        "items",
        &slow.replace("rows_per_second = 200", "rows_per_second = 0"),
    );
    let ready = serve.wait_for("items", "copied unthrottled", |j| {
        j["phase"] == "ready_to_cutover"
    });
    assert_eq!(ready["rows_copied"], 20_000);
    assert!(serve.terminate().success());
}
