//! A writer that keeps changing a table while a job runs, and remembers exactly what it
//! committed, so a test can require the table to end equal to that model: nothing lost,
//! nothing duplicated, whatever happened in between.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The seed of a randomised test: `SWITCHYARD_TEST_SEED`, or the clock. Printed, so that
/// a failure can be replayed.
pub fn seed() -> u64 {
    let seed = std::env::var("SWITCHYARD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("seed {seed} (rerun with SWITCHYARD_TEST_SEED={seed})");
    seed
}

/// A small deterministic generator (the tests print their seed).
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Lcg {
        Lcg(seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407))
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Table `items (id bigint PRIMARY KEY, v text NOT NULL, pad text)` with ids 1..=rows;
/// `pad` is large and incompressible for some rows, so that updates leave it out as an
/// unchanged TOAST value.
pub fn create_items(
    client: &mut postgres::Client,
    table: &str,
    rows: i64,
) -> BTreeMap<i64, String> {
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, v text NOT NULL, pad text);
             INSERT INTO {table} SELECT g, 'v' || g, CASE WHEN g % 50 = 0 THEN
                 (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 100) i) END
             FROM generate_series(1, {rows}) g;
             ANALYZE {table};"
        ))
        .unwrap();
    (1..=rows).map(|id| (id, format!("v{id}"))).collect()
}

/// A copy job from `items` (see [`create_items`]) into `items_v2`, which expand creates;
/// `rest` (copy settings, more sections) is appended.
pub fn items_copy_job(name: &str, rest: &str) -> String {
    format!(
        "name = \"{name}\"\nkind = \"copy\"\n\n[source]\ndatabase = \"postgresql\"\ntable = \"public.items\"\n\n\
         [target]\ndatabase = \"postgresql\"\ntable = \"public.items_v2\"\n\n\
         [expand]\nsql = [\"CREATE TABLE IF NOT EXISTS public.items_v2 (id bigint PRIMARY KEY, v text NOT NULL, pad text)\"]\n\n{rest}\n"
    )
}

/// Where a copy job of `items` puts its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobPath {
    /// `items` into `items_v2` in the same database (in-server batches).
    SameDatabase,
    /// `items` onto the other test server under the same name (COPY streams).
    OtherServer,
}

impl JobPath {
    pub const ALL: [JobPath; 2] = [JobPath::SameDatabase, JobPath::OtherServer];
}

/// [`items_copy_job`] along `path`.
pub fn items_copy_job_on(path: JobPath, name: &str, rest: &str) -> String {
    let job = items_copy_job(name, rest);
    match path {
        JobPath::SameDatabase => job,
        JobPath::OtherServer => job
            .replace(
                "[target]\ndatabase = \"postgresql\"",
                "[target]\ndatabase = \"other\"",
            )
            .replace("items_v2", "items"),
    }
}

/// A backfill job of `items` (see [`create_items`]) filling `v_upper` (which expand adds)
/// with `upper(v) || '#' || id`, in batches of `batch_size`; contract only on request.
pub fn items_backfill_job(name: &str, batch_size: usize) -> String {
    format!(
        r#"name = "{name}"
kind = "backfill"

[source]
database = "postgresql"
table = "items"

[expand]
sql = ["ALTER TABLE items ADD COLUMN IF NOT EXISTS v_upper text"]

[transform]
columns = {{ v_upper = "upper(v) || '#' || id" }}

[copy]
batch_size = {batch_size}

[contract]
after = "manual"
"#
    )
}

/// Rows of `items` whose `v_upper` is not what [`items_backfill_job`] fills, as text.
pub const WRONGLY_FILLED: &str =
    "SELECT count(*)::text FROM items WHERE v_upper IS DISTINCT FROM upper(v) || '#' || id";

pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(BTreeMap<i64, String>, u64)>>,
}

impl Drop for Writer {
    /// A failing test drops its writer: stop it before the database goes.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl Writer {
    /// Starts inserting, updating (sometimes the key), and deleting rows of `table`,
    /// until stopped or until the table is gone under its name (a cutover onto another
    /// server fences the source by renaming it): the model keeps what committed.
    pub fn start(url: &str, table: &str, model: BTreeMap<i64, String>, seed: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let (url, table, flag) = (url.to_string(), table.to_string(), stop.clone());
        let handle = std::thread::spawn(move || {
            let mut client = super::connect(&url).unwrap();
            let mut model = model;
            let mut random = Lcg::new(seed);
            let mut next_id = model.keys().max().copied().unwrap_or(0) + 1_000_000;
            let mut ops = 0;
            // The table is gone under its name: the writer ends, its model complete.
            struct Gone;
            let gone = |e: postgres::Error| {
                if e.code() == Some(&postgres::error::SqlState::UNDEFINED_TABLE) {
                    Gone
                } else {
                    panic!("the writer's statement failed: {e}")
                }
            };
            let _ = (|| -> Result<(), Gone> {
                while !flag.load(Ordering::SeqCst) {
                    let ids: Vec<i64> = if model.is_empty() {
                        Vec::new()
                    } else {
                        vec![*model
                            .keys()
                            .nth(random.below(model.len() as u64) as usize)
                            .unwrap()]
                    };
                    let value = format!("w{}", random.next());
                    match (random.below(10), ids.first()) {
                        (0..=3, _) | (_, None) => {
                            client
                                .execute(
                                    &format!("INSERT INTO {table} (id, v) VALUES ($1, $2)"),
                                    &[&next_id, &value],
                                )
                                .map_err(gone)?;
                            model.insert(next_id, value);
                            next_id += 1;
                        }
                        (4..=6, Some(&id)) => {
                            client
                                .execute(
                                    &format!("UPDATE {table} SET v = $2 WHERE id = $1"),
                                    &[&id, &value],
                                )
                                .map_err(gone)?;
                            model.insert(id, value);
                        }
                        (7, Some(&id)) => {
                            client
                                .execute(
                                    &format!("UPDATE {table} SET id = $2 WHERE id = $1"),
                                    &[&id, &next_id],
                                )
                                .map_err(gone)?;
                            let moved = model.remove(&id).unwrap();
                            model.insert(next_id, moved);
                            next_id += 1;
                        }
                        (_, Some(&id)) => {
                            client
                                .execute(&format!("DELETE FROM {table} WHERE id = $1"), &[&id])
                                .map_err(gone)?;
                            model.remove(&id);
                        }
                    }
                    ops += 1;
                    // About a thousand writes a second: a busy table, not a benchmark.
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Ok(())
            })();
            (model, ops)
        });
        Writer {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops and returns the model of what the table must now hold, and the op count.
    pub fn stop(mut self) -> (BTreeMap<i64, String>, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().expect("running").join().unwrap()
    }
}

/// `id → v` of a table, to compare with a model.
pub fn contents(client: &mut postgres::Client, table: &str) -> BTreeMap<i64, String> {
    client
        .query(&format!("SELECT id, v FROM {table}"), &[])
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// An order-independent digest of every column of every row.
pub fn checksum(client: &mut postgres::Client, table: &str) -> (i64, String) {
    let row = client
        .query_one(&format!("SELECT count(*), md5(COALESCE(string_agg(t::text, ',' ORDER BY t.id), '')) FROM (SELECT id, v, pad FROM {table}) t"), &[])
        .unwrap();
    (row.get(0), row.get(1))
}
