//! A password given in a URL never reaches anything a person or a machine reads:
//! stdout, stderr, debug logs (text or JSON), /metrics, status JSON, the audit log.

mod common;

use common::writer::{create_items, items_copy_job};
use common::{free_port, http, Project};

const PASSWORD: &str = "Pa55-w0rd-n3ver-sh0wn";

#[test]
fn a_password_in_a_url_is_never_shown() {
    let port = free_port();
    let project = Project::new();
    // The test server trusts local connections, so any password is accepted: the URL
    // carries one exactly as a production URL would.
    let url = project.db.url.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{PASSWORD}@"),
        1,
    );
    assert!(url.contains(PASSWORD));
    std::fs::write(
        project.path("config/switchyard.toml"),
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\n[databases.postgresql]\nkind = \"postgresql\"\nurl = \"{url}\"\n"),
    )
    .unwrap();
    project.sql_migration(
        "001_users",
        "1.0.0",
        "CREATE TABLE users (id int);",
        Some("DROP TABLE users;"),
    );
    let mut db = project.db.client();
    create_items(&mut db, "items", 2_000);
    let file = project.job_file("items", &items_copy_job("items", ""));

    let mut seen = Vec::new();
    let mut run = |args: &[&str]| {
        let mut command = project.command(args);
        command.env("SWITCHYARD_LOG", "debug");
        let output = command.output().unwrap();
        seen.push((
            args.join(" "),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        ));
        seen.push((
            format!("{} (stderr)", args.join(" ")),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
        output.status.code()
    };
    assert_eq!(run(&["migrate"]), Some(0));
    assert_eq!(run(&["status", "--json"]), Some(0));
    assert_eq!(run(&["--log-format", "json", "job", "run", &file]), Some(0));
    assert_eq!(run(&["job", "status", "--json"]), Some(0));
    assert_eq!(run(&["job", "plan", &file]), Some(0));
    assert_eq!(run(&["validate"]), Some(0));
    assert_eq!(run(&["rollback", "0.0.0"]), Some(0));
    assert_eq!(run(&["audit", "--json"]), Some(0));
    // A failure that names the database: connection refused on a closed port.
    let broken = url.replacen(
        &format!(
            "127.0.0.1:{}",
            url::Url::parse(&url).unwrap().port().unwrap()
        ),
        "127.0.0.1:1",
        1,
    );
    let mut failing = project.command(&["status"]);
    failing
        .env("SWITCHYARD__DATABASES__POSTGRESQL__URL", &broken)
        .env("SWITCHYARD_LOG", "debug");
    let output = failing.output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        stderr.contains(":***@127.0.0.1:1/"),
        "the redacted URL is shown: {stderr}"
    );
    seen.push(("status on a closed port (stderr)".into(), stderr));

    // serve's metrics and API.
    let mut serve = project.command(&["serve"]);
    let mut serve = serve
        .env("SWITCHYARD_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while http_ok(port).is_none() {
        assert!(std::time::Instant::now() < deadline, "serve never listened");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Wait for the scheduler's first look at the jobs, which exports the waiting job.
    while !http(port, "GET", "/metrics", &[], "")
        .1
        .contains("switchyard_job_phase{job=\"items\"")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "serve never exported the job"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for path in ["/metrics", "/jobs", "/jobs/items", "/readyz"] {
        seen.push((format!("GET {path}"), http(port, "GET", path, &[], "").1));
    }
    unsafe { libc::kill(serve.id() as i32, libc::SIGTERM) };
    serve.wait().unwrap();
    let mut logs = String::new();
    std::io::Read::read_to_string(serve.stderr.as_mut().unwrap(), &mut logs).unwrap();
    seen.push(("serve (stderr)".into(), logs));

    // The audit log and the state store's own file.
    seen.push((
        "state store file".into(),
        String::from_utf8_lossy(&std::fs::read(project.path("data/switchyard.db")).unwrap())
            .into_owned(),
    ));
    for (what, text) in &seen {
        assert!(
            !text.contains(PASSWORD),
            "the password appears in {what}:\n{text}"
        );
    }
    assert!(seen
        .iter()
        .any(|(what, text)| what.starts_with("GET /metrics")
            && text.contains("phase=\"ready_to_cutover\"} 1")));
}

fn http_ok(port: u16) -> Option<()> {
    std::net::TcpStream::connect(("127.0.0.1", port))
        .ok()
        .map(drop)
}
