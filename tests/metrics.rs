//! Metrics as Prometheus reads them: a live `/metrics` of a running job, linted by
//! promtool (Debian's prometheus package; `scripts/services up` installs it).

mod common;

use std::io::Write;

use common::writer::{create_items, items_copy_job};
use common::{free_port, Project};

/// `GET path` on loopback; the body of the answer.
fn http_get(port: u16, path: &str) -> String {
    common::http(port, "GET", path, &[], "").1
}

#[test]
fn a_running_job_exports_lint_clean_metrics() {
    let project = Project::new();
    let mut db = project.db.client();
    create_items(&mut db, "items", 20_000);
    let file = project.job_file(
        "items",
        &items_copy_job(
            "items",
            "[copy]\nbatch_size = 500\nrows_per_second = 4000\n",
        ),
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
        "switchyard_worker_rows_copied_total{job=\"items\",worker=\"",
        "switchyard_job_chunks{job=\"items\",state=\"pending\"}",
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

/// Prometheus's HTTP API answer to an instant query.
fn prometheus_query(port: u16, query: &str) -> serde_json::Value {
    let encoded: String = url::form_urlencoded::byte_serialize(query.as_bytes()).collect();
    let body = http_get(port, &format!("/api/v1/query?query={encoded}"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn series(answer: &serde_json::Value) -> usize {
    answer["data"]["result"].as_array().map_or(0, Vec::len)
}

/// Every PromQL expression of `dashboards/`: the dashboard's panel targets and the alert
/// rules' expressions.
fn dashboard_expressions() -> (Vec<String>, Vec<String>) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: serde_json::Value =
        serde_json::from_str(&common::read(&root.join("dashboards/switchyard-jobs.json"))).unwrap();
    let panels: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["expr"].as_str().unwrap().replace("$job", ".*"))
        })
        .collect();
    let rules = common::read(&root.join("dashboards/alerts.yml"));
    let mut alerts = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(expr) = line.trim().strip_prefix("expr:") {
            let mut expr = expr.trim().to_string();
            if expr == ">" {
                expr.clear();
                while let Some(next) = lines
                    .peek()
                    .filter(|l| !l.trim().contains(':') || l.contains('('))
                {
                    expr.push_str(next.trim());
                    expr.push(' ');
                    lines.next();
                }
            }
            alerts.push(expr.trim().to_string());
        }
    }
    (panels, alerts)
}

#[test]
fn rules_are_valid_for_promtool() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let check = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(root.join("dashboards/alerts.yml"))
        .output()
        .expect("promtool is installed by `scripts/services up`");
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(text.contains("SUCCESS: 4 rules found"), "{text}");
}

#[test]
fn prometheus_evaluates_every_dashboard_and_alert_expression() {
    let serve_port = free_port();
    let project = Project::with_config(&format!("[server]\nlisten = \"127.0.0.1:{serve_port}\"\n"));
    project.sql_migration("001_users", "1.0.0", "CREATE TABLE users (id int);", None);
    project.run(&["migrate"]).ok();
    let mut db = project.db.client();
    create_items(&mut db, "items", 20_000);
    project.job_file(
        "items",
        &items_copy_job(
            "items",
            "[copy]\nbatch_size = 250\nrows_per_second = 1500\n",
        ),
    );
    let mut serve = project
        .command(&["serve"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let prometheus_dir = tempfile::tempdir().unwrap();
    let config = prometheus_dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: switchyard\n    static_configs:\n      - targets: ['127.0.0.1:{serve_port}']\n",
            root.join("dashboards/alerts.yml").display()
        ),
    )
    .unwrap();
    let prometheus_port = free_port();
    let mut prometheus = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
        .arg(format!(
            "--storage.tsdb.path={}",
            prometheus_dir.path().join("data").display()
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus is installed by `scripts/services up`");

    // Wait for enough samples for rate() over the dashboard's windows.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let ready = std::net::TcpStream::connect(("127.0.0.1", prometheus_port)).is_ok()
            && common::http(prometheus_port, "GET", "/-/ready", &[], "").0 == 200
            && series(&prometheus_query(
                prometheus_port,
                "count_over_time(switchyard_job_rows_copied_total[1m]) >= 5",
            )) > 0;
        if ready {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Prometheus never scraped the job"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    let (panels, alerts) = dashboard_expressions();
    assert_eq!(panels.len(), 15, "{panels:#?}");
    assert_eq!(alerts.len(), 4, "{alerts:#?}");
    for expr in &panels {
        let answer = prometheus_query(prometheus_port, expr);
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        assert!(
            series(&answer) > 0,
            "the dashboard query returns nothing: {expr}"
        );
    }
    for expr in &alerts {
        let answer = prometheus_query(prometheus_port, expr);
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        // A healthy job fires no alert, but every metric an alert reads must exist.
        for metric in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("switchyard_"))
        {
            assert!(
                series(&prometheus_query(prometheus_port, metric)) > 0,
                "{metric} (in {expr}) has no series"
            );
        }
    }
    let applied = prometheus_query(
        prometheus_port,
        "switchyard_migrations_applied_total{database=\"postgresql\"}",
    );
    assert_eq!(applied["data"]["result"][0]["value"][1], "1", "{applied}");
    let rules: serde_json::Value =
        serde_json::from_str(&http_get(prometheus_port, "/api/v1/rules")).unwrap();
    let loaded: Vec<&serde_json::Value> = rules["data"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(loaded.len(), 4);
    assert!(loaded.iter().all(|r| r["health"] != "err"), "{rules}");

    prometheus.kill().unwrap();
    prometheus.wait().unwrap();
    unsafe { libc::kill(serve.id() as i32, libc::SIGTERM) };
    assert!(serve.wait().unwrap().success());
}
