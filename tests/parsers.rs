//! The parsers of what users write, fed arbitrary input: they answer with an error
//! naming the problem, never a panic. (No server needed.)

use proptest::prelude::*;
use switchyard::backend::postgres::split_statements;
use switchyard::config::{Config, DatabaseKind};
use switchyard::job;

const VALID_JOB: &str = r#"name = "accounts"
kind = "copy"
schedule = "0 3 * * *"
window = "01:00-05:00"
[source]
database = "postgresql"
table = "public.accounts"
key = ["id", "tenant"]
[target]
database = "postgresql"
table = "public.accounts_v2"
[expand]
sql = ["CREATE TABLE IF NOT EXISTS public.accounts_v2 (id bigint)"]
[transform]
columns = { cents = "balance * 100" }
[copy]
batch_size = 1000
rows_per_second = 500
max_lag = "10s"
concurrency = 2
[catch_up]
method = "logical_replication"
[verify]
method = "checksum"
[cutover]
mode = "manual"
max_lag = "1s"
method = "rename"
[contract]
sql = ["DROP TABLE IF EXISTS public.accounts_old"]
after = "24h"
"#;

fn config() -> Config {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switchyard.toml");
    std::fs::write(
        &file,
        "[databases.postgresql]\nkind = \"postgresql\"\nurl = \"postgres://u@h/db\"\n",
    )
    .unwrap();
    Config::load_with_env(Some(&file), Vec::new()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn job_files_of_any_text_never_panic(text in "\\PC{0,400}") {
        if let Ok(spec) = job::parse(&text) {
            let _ = spec.validate(&config());
        }
    }

    /// A valid job with one line replaced by arbitrary text: parsed and checked, or
    /// refused with a reason, never a panic.
    #[test]
    fn damaged_job_files_never_panic(line in 0usize..40, replacement in "[ -~]{0,60}") {
        let mut lines: Vec<&str> = VALID_JOB.lines().collect();
        let at = line % lines.len();
        lines[at] = &replacement;
        let text = lines.join("\n");
        match job::parse(&text) {
            Ok(spec) => { let _ = spec.validate(&config()); }
            Err(reason) => prop_assert!(!reason.is_empty()),
        }
    }

    #[test]
    fn sql_splitting_never_panics(sql in "(\\PC|[;'\"$\\-/*\\\\eE\\n])*") {
        for statement in split_statements(&sql) {
            prop_assert!(!statement.trim().is_empty());
        }
    }

    /// Migration folders with arbitrary file names and contents.
    #[test]
    fn migration_folders_never_panic(
        files in proptest::collection::vec(("[0-9]{0,3}_?[a-z_]{0,8}(_rollback)?\\.(sql|json|txt)", "\\PC{0,200}"), 0..6),
        kind in 0usize..3,
    ) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in &files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let kind = [DatabaseKind::Postgresql, DatabaseKind::Mongodb, DatabaseKind::Elasticsearch][kind];
        if let Err(problems) = switchyard::migrate::load_folder(dir.path(), kind) {
            prop_assert!(problems.iter().all(|p| !p.reason.is_empty()));
        }
    }
}

#[test]
fn the_valid_job_is_valid() {
    job::parse(VALID_JOB).unwrap().validate(&config()).unwrap();
}
