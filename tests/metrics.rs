//! Metrics as Prometheus reads them: a live `/metrics` of a running job, linted by
//! promtool (Debian's prometheus package; `scripts/services up` installs it).

mod common;

use std::io::{Read, Write};

use common::writer::create_items;
use common::Project;

/// `GET path` on loopback; the body of the answer.
fn http_get(port: u16, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_running_job_exports_lint_clean_metrics() {
    let project = Project::new();
    let mut db = project.db.client();
    create_items(&mut db, "items", 20_000);
    let file = project.job_file(
        "items",
        "name = \"items\"\nkind = \"copy\"\n[source]\ndatabase = \"postgresql\"\ntable = \"items\"\n\
         [target]\ndatabase = \"postgresql\"\ntable = \"items_v2\"\n\
         [expand]\nsql = [\"CREATE TABLE IF NOT EXISTS items_v2 (id bigint PRIMARY KEY, v text NOT NULL, pad text)\"]\n\
         [copy]\nbatch_size = 500\nrows_per_second = 4000\n",
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = project
        .command(&["job", "run", &file, "--metrics-listen", &listen])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    project.wait_for_job("items", "copying", |s| {
        s["phase"] == "copy" && s["rows_copied"].as_u64() >= Some(1_000)
    });
    // The record is saved a little before the scrape: wait until the scrape shows rows.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let scrape = loop {
        let scrape = http_get(port, "/metrics");
        if scrape.contains("switchyard_job_batch_duration_seconds_count{job=\"items\"}") {
            break scrape;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no job metrics in:\n{scrape}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    for name in [
        "switchyard_job_rows_copied_total{job=\"items\"}",
        "switchyard_job_rows_estimated{job=\"items\"} 20000",
        "switchyard_job_phase{job=\"items\",phase=\"copy\"} 1",
        "switchyard_job_phase{job=\"items\",phase=\"verify\"} 0",
        "switchyard_job_changes_applied_total{job=\"items\"}",
        "switchyard_job_lag_seconds{job=\"items\"}",
        "switchyard_job_lag_bytes{job=\"items\"}",
        "switchyard_job_eta_seconds{job=\"items\"}",
        "switchyard_job_throttle_wait_seconds_total{job=\"items\"}",
        "switchyard_verify_mismatches_total{job=\"items\"}",
        "switchyard_build_info{version=\"",
    ] {
        assert!(scrape.contains(name), "{name} missing from:\n{scrape}");
    }
    let copied: f64 = scrape
        .lines()
        .find(|l| l.starts_with("switchyard_job_rows_copied_total{job=\"items\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(copied >= 500.0, "{copied}");
    assert_eq!(http_get(port, "/healthz"), "ok\n");

    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed by `scripts/services up`");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let lint = promtool.wait_with_output().unwrap();
    assert!(
        lint.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    project
        .run(&["job", "throttle", "items", "--rows-per-second", "0"])
        .ok();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
