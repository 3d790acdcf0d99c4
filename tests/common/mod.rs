//! Shared helpers for integration tests: a private database per test on the real
//! PostgreSQL named by `SWITCHYARD_TEST_POSTGRES_URL` (`scripts/services up` starts one
//! and prints it), a project folder with its own configuration, and the real binary.
#![allow(dead_code)] // each test binary uses a different part of these helpers

pub mod elastic;
pub mod mongo;
pub mod proxy;
pub mod writer;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The server `scripts/services up` starts, when the variable is not set.
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:54329/postgres";
const DEFAULT_OTHER_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:54331/postgres";

pub fn server_url() -> String {
    std::env::var("SWITCHYARD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_string())
}

/// `url` with its database name replaced.
pub fn with_database(url: &str, database: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("SWITCHYARD_TEST_POSTGRES_URL is a URL");
    parsed.set_path(&format!("/{database}"));
    parsed.to_string()
}

/// The second server that cross-server jobs copy to (`SWITCHYARD_TEST_OTHER_POSTGRES_URL`).
pub fn other_server_url() -> String {
    std::env::var("SWITCHYARD_TEST_OTHER_POSTGRES_URL")
        .unwrap_or_else(|_| DEFAULT_OTHER_POSTGRES_URL.to_string())
}

/// The server that the fault tests may crash and restart (`SWITCHYARD_TEST_FAULTS_POSTGRES_URL`),
/// and the command that does it (`SWITCHYARD_TEST_FAULTS_RESTART`).
pub fn faults_server() -> (String, String) {
    let variable = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: run the tests through `scripts/test`, or `eval \"$(scripts/services up)\"` first")
        })
    };
    (
        variable("SWITCHYARD_TEST_FAULTS_POSTGRES_URL"),
        variable("SWITCHYARD_TEST_FAULTS_RESTART"),
    )
}

/// A client of the server at `url`, over TLS when the URL asks for it (read as
/// switchyard reads it: libpq's `sslmode`, `sslrootcert`, …).
pub fn connect(url: &str) -> Result<postgres::Client, String> {
    use switchyard::backend::postgres::ConnectionSettings;
    let settings = ConnectionSettings::parse("test", &switchyard::secret::SecretUrl::new(url))
        .map_err(|e| e.to_string())?;
    let mut config = postgres::Config::from(settings.config);
    config.ssl_mode(settings.tls.wire_mode());
    let connector = settings.tls.connector("test").map_err(|e| e.to_string())?;
    config.connect(connector).map_err(|e| e.to_string())
}

fn admin(server: &str) -> postgres::Client {
    connect(server).unwrap_or_else(|e| {
        panic!("cannot reach the test PostgreSQL at {server} ({e}); start it with `scripts/services up`")
    })
}

/// A database of its own for one test, dropped at the end.
pub struct TestDb {
    pub name: String,
    pub url: String,
    server: String,
}

impl TestDb {
    pub fn new() -> TestDb {
        TestDb::on(&server_url())
    }

    /// A database on the server at `server` (a URL of any of its databases).
    pub fn on(server: &str) -> TestDb {
        let name = format!("sy_test_{}", uuid::Uuid::new_v4().simple());
        admin(server)
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create test database");
        let url = with_database(server, &name);
        TestDb {
            name,
            url,
            server: server.to_string(),
        }
    }

    pub fn client(&self) -> postgres::Client {
        connect(&self.url).expect("connect to the test database")
    }

    /// The first column of every row of `sql`, as text.
    pub fn column(&self, sql: &str) -> Vec<String> {
        self.client()
            .query(sql, &[])
            .expect(sql)
            .iter()
            .map(|row| {
                row.get::<_, Option<String>>(0)
                    .unwrap_or_else(|| "NULL".into())
            })
            .collect()
    }

    /// Waits (up to 20 s) until the first column of `sql` reads `expected`.
    pub fn wait_for(&self, sql: &str, expected: &str) {
        let mut client = self.client();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let value: Option<String> = client.query_one(sql, &[]).expect(sql).get(0);
            if value.as_deref() == Some(expected) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for `{sql}` to be {expected}, last {value:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn exists(&self, relation: &str) -> bool {
        self.column(&format!("SELECT to_regclass('{relation}')::text"))[0] != "NULL"
    }

    /// `version status` of every history row, in version order (empty without the table).
    pub fn history(&self) -> Vec<String> {
        if !self.exists("switchyard_migrations") {
            return Vec::new();
        }
        self.column("SELECT version || ' ' || status FROM switchyard_migrations ORDER BY string_to_array(version, '.')::int[]")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = admin(&self.server).batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// A project folder: `config/switchyard.toml` naming one PostgreSQL database
/// `postgresql`, and `migrations/postgresql/`.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub db: TestDb,
}

impl Project {
    pub fn new() -> Project {
        Project::with_config("")
    }

    /// A project whose configuration has `extra` TOML appended.
    pub fn with_config(extra: &str) -> Project {
        Project::on(TestDb::new(), extra)
    }

    /// A project whose database is `db`, with `extra` TOML appended to its configuration.
    pub fn on(db: TestDb, extra: &str) -> Project {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        std::fs::create_dir_all(dir.path().join("migrations/postgresql")).unwrap();
        let config = format!(
            "[databases.postgresql]\nkind = \"postgresql\"\nurl = \"{}\"\n{extra}",
            db.url
        );
        std::fs::write(dir.path().join("config/switchyard.toml"), config).unwrap();
        Project { dir, db }
    }

    /// A project for a job along `path`, and the database its target lives in when
    /// that is not the project's (the other server's, configured as `other`).
    pub fn for_path(path: writer::JobPath) -> (Project, Option<TestDb>) {
        match path {
            writer::JobPath::SameDatabase => (Project::new(), None),
            writer::JobPath::OtherServer => {
                let other = TestDb::on(&other_server_url());
                let config = format!(
                    "[databases.other]\nkind = \"postgresql\"\nurl = \"{}\"\n",
                    other.url
                );
                (Project::with_config(&config), Some(other))
            }
        }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Writes `migrations/postgresql/<name>`.
    pub fn migration(&self, name: &str, text: &str) -> &Project {
        std::fs::write(self.path("migrations/postgresql").join(name), text).unwrap();
        self
    }

    /// A migration with JSON metadata, SQL and (when given) a rollback.
    pub fn sql_migration(
        &self,
        base: &str,
        version: &str,
        up: &str,
        down: Option<&str>,
    ) -> &Project {
        let name = base.split_once('_').map_or(base, |(_, n)| n);
        self.migration(&format!("{base}.json"), &format!(r#"{{"version": "{version}", "name": "{name}", "database_type": "postgresql", "migration_type": "schema"}}"#));
        self.migration(&format!("{base}.sql"), up);
        if let Some(down) = down {
            self.migration(&format!("{base}_rollback.sql"), down);
        }
        self
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        command
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("SWITCHYARD_LOG");
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SWITCHYARD__")) {
            command.env_remove(key);
        }
        command
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("run switchyard"))
    }
}

/// A process of the binary that runs until it ends by itself; killed if the test
/// fails first (a following job would otherwise run on). Its stderr is read as it
/// comes, so a test can wait for a line.
pub struct Running {
    child: Option<std::process::Child>,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: String,
}

impl Running {
    pub fn spawn(command: &mut Command) -> Running {
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stderr = child.stderr.take().expect("piped");
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child: Some(child),
            lines,
            stderr: String::new(),
        }
    }

    /// Waits (up to 60 s) for a line of stderr that contains `needle`.
    pub fn wait_for_stderr(&mut self, needle: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stderr.push_str(&line);
                    self.stderr.push('\n');
                    if found {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no line with `{needle}` on stderr; it read:\n{}",
                    self.stderr
                ),
            }
        }
    }

    /// Waits for the process to end by itself.
    pub fn wait(mut self) -> Run {
        let output = self
            .child
            .take()
            .expect("running")
            .wait_with_output()
            .unwrap();
        self.stderr
            .extend(self.lines.iter().map(|line| line + "\n"));
        Run {
            stderr: std::mem::take(&mut self.stderr),
            ..Run::from(output)
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A finished run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts the exit code, showing the output when it differs.
    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn ok(self) -> Run {
        self.expect_code(0)
    }
}

impl Project {
    /// Writes `jobs/<name>.toml` and returns its path relative to the project.
    pub fn job_file(&self, name: &str, toml: &str) -> String {
        std::fs::create_dir_all(self.path("jobs")).unwrap();
        std::fs::write(self.path(&format!("jobs/{name}.toml")), toml).unwrap();
        format!("jobs/{name}.toml")
    }

    /// `job status NAME --json`'s one object.
    pub fn job_status(&self, name: &str) -> serde_json::Value {
        let run = self.run(&["job", "status", name, "--json"]).ok();
        let rows: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        rows[0].clone()
    }

    /// Runs the job of `file` and kills the process once it has copied `rows` rows.
    pub fn kill_mid_copy(&self, name: &str, file: &str, rows: u64) {
        let running = Running::spawn(&mut self.command(&["job", "run", file]));
        self.wait_for_job(name, "copying", |s| {
            s["phase"] == "copy" && s["rows_copied"].as_u64().unwrap_or(0) >= rows
        });
        drop(running); // killed
    }

    /// [`Project::kill_mid_copy`], then `job run` again until the job is ready to cut
    /// over.
    pub fn resume_after_a_kill_mid_copy(&self, name: &str, file: &str, rows: u64) {
        self.kill_mid_copy(name, file, rows);
        let run = self.run(&["job", "run", file]).ok();
        assert!(run.stdout.contains("ready to cut over"), "{}", run.stdout);
    }

    /// Waits (up to 60 s) until the job's status satisfies `check`.
    pub fn wait_for_job(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let run = self.run(&["job", "status", name, "--json"]);
            let mut last = run.stdout.clone() + &run.stderr;
            if run.code == 0 {
                let rows: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
                if check(&rows[0]) {
                    return rows[0].clone();
                }
                last = rows[0].to_string();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for job {name}: {what}; its status: {last}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// One HTTP/1.0 request on loopback: `(status, body)`.
pub fn http(port: u16, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// Says a test is skipped, and why: written to the process's stderr directly, past the
/// test harness's capture, so that the run's output shows it even though the harness
/// counts the test as passed (it has no skipped state a test can choose at run time).
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}
