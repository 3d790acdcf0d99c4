//! `switchyard export` and `switchyard import`: a table, collection or index to and from
//! JSON Lines, in batches (memory flat in size), resumable after a kill.
//!
//! Each store reads and writes its own line format ([`Exporter`], [`Importer`]): a
//! table's row as PostgreSQL's `to_jsonb` writes it, a document in MongoDB's canonical
//! Extended JSON, an index's `{"_id", "_source"}`, so every type comes back as it went.
//!
//! Invariants:
//! - An export writes `FILE.partial` and renames it to `FILE` only when complete; after
//!   each batch is on disk it records (in `FILE.partial.cursor`) how many bytes are whole
//!   and where the read stands, so a resumed export cuts what a kill left half-written
//!   and goes on from there. A finished `FILE` is never appended to.
//! - An import writes each batch idempotently by key (a row's primary key, a
//!   document's `_id`), then records in `FILE.import-progress` the offset it reached: a
//!   resumed import skips what was written, and redoing a batch a kill interrupted
//!   changes nothing.

use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backend::{elasticsearch, mongodb, postgres};
use crate::config::{Config, DatabaseKind};
use crate::error::{Error, Result};

/// Rows or documents per batch.
pub const BATCH: usize = 1000;

/// One batch of an export.
pub struct Chunk {
    /// One JSON document per line, without the newline.
    pub lines: Vec<String>,
    /// Where the read stands after these lines, to go on from.
    pub cursor: Option<Value>,
    /// The read could not go on from the cursor and started again from the first row:
    /// what was written before must go.
    pub restarted: bool,
}

#[async_trait]
pub trait Exporter: Send {
    /// How many rows the export will write, when the store can tell (an estimate).
    async fn total(&mut self) -> Result<Option<u64>>;

    /// Up to `size` lines after `cursor` (from the first without one); none at the end.
    async fn next(&mut self, cursor: Option<&Value>, size: usize) -> Result<Chunk>;

    /// After the last batch: frees what the read held on the server.
    async fn finish(&mut self) {}
}

#[async_trait]
pub trait Importer: Send {
    /// Writes lines (the first is line `first_line` of the file), idempotently by key.
    async fn write(&mut self, lines: &[String], first_line: u64) -> Result<()>;

    /// After the last batch (a table's sequences moved past the imported keys, an
    /// index refreshed).
    async fn finish(&mut self) -> Result<()>;
}

/// What to export or import: a configured database and one of its tables, collections
/// or indexes.
#[derive(Debug, Clone)]
pub struct Target {
    pub database: String,
    pub name: String,
}

/// The kind of name each store's target has, as the command line spells it.
fn flag(kind: DatabaseKind) -> &'static str {
    match kind {
        DatabaseKind::Postgresql => "--table",
        DatabaseKind::Mongodb => "--collection",
        DatabaseKind::Elasticsearch => "--index",
    }
}

/// Checks that the target was named with its store's flag.
pub fn target(
    config: &Config,
    database: &str,
    table: Option<String>,
    collection: Option<String>,
    index: Option<String>,
) -> Result<Target> {
    let kind = config.database(database)?.kind;
    let given: Vec<(&str, String)> = [
        ("--table", table),
        ("--collection", collection),
        ("--index", index),
    ]
    .into_iter()
    .filter_map(|(flag, name)| name.map(|n| (flag, n)))
    .collect();
    match given.as_slice() {
        [(given_flag, name)] if *given_flag == flag(kind) => Ok(Target {
            database: database.to_string(),
            name: name.clone(),
        }),
        _ => Err(Error::Usage(format!(
            "database `{database}` is {kind}: name what to transfer with {} NAME (and nothing else)",
            flag(kind)
        ))),
    }
}

async fn open_exporter(
    config: &Config,
    target: &Target,
    filter: Option<&str>,
) -> Result<Box<dyn Exporter>> {
    let database = config.database(&target.database)?;
    Ok(match database.kind {
        DatabaseKind::Postgresql => Box::new(
            postgres::transfer::TableExport::open(
                &target.database,
                &database.url,
                &target.name,
                filter,
            )
            .await?,
        ),
        DatabaseKind::Mongodb => Box::new(
            mongodb::transfer::CollectionExport::open(
                &target.database,
                &database.url,
                &target.name,
                filter,
            )
            .await?,
        ),
        DatabaseKind::Elasticsearch => Box::new(
            elasticsearch::transfer::IndexExport::open(
                &target.database,
                database,
                &target.name,
                filter,
            )
            .await?,
        ),
    })
}

async fn open_importer(config: &Config, target: &Target) -> Result<Box<dyn Importer>> {
    let database = config.database(&target.database)?;
    Ok(match database.kind {
        DatabaseKind::Postgresql => Box::new(
            postgres::transfer::TableImport::open(&target.database, &database.url, &target.name)
                .await?,
        ),
        DatabaseKind::Mongodb => Box::new(
            mongodb::transfer::CollectionImport::open(
                &target.database,
                &database.url,
                &target.name,
            )
            .await?,
        ),
        DatabaseKind::Elasticsearch => Box::new(elasticsearch::transfer::IndexImport::open(
            &target.database,
            database,
            &target.name,
        )?),
    })
}

/// What a transfer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub lines: u64,
    /// It went on from where a killed run stopped.
    pub resumed: bool,
}

/// Called after each batch with the lines done and the total expected (if known).
pub type OnProgress<'a> = &'a mut (dyn FnMut(u64, Option<u64>) + Send);

#[derive(Debug, Serialize, Deserialize)]
struct ExportCursor {
    bytes: u64,
    lines: u64,
    cursor: Option<Value>,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// Writes `value` to `path` whole or not at all (a temporary file renamed over it).
fn write_atomically(path: &Path, value: &impl Serialize) -> Result<()> {
    let temporary = with_suffix(path, ".tmp");
    std::fs::write(
        &temporary,
        serde_json::to_vec(value).expect("progress serialises"),
    )
    .map_err(|e| Error::io(&temporary, e))?;
    std::fs::rename(&temporary, path).map_err(|e| Error::io(path, e))
}

/// Exports into `out` (resuming its `.partial` when there is one), or to stdout.
pub async fn export(
    config: &Config,
    target: &Target,
    filter: Option<&str>,
    out: Option<&Path>,
    on_progress: OnProgress<'_>,
) -> Result<Moved> {
    let mut exporter = open_exporter(config, target, filter).await?;
    let total = exporter.total().await?;
    let Some(out) = out else {
        let mut stdout = std::io::stdout().lock();
        let mut cursor = None;
        let mut lines = 0;
        loop {
            let chunk = exporter.next(cursor.as_ref(), BATCH).await?;
            if chunk.restarted {
                return Err(Error::Refused("the read could not go on where it stood and would start again: export into a file (--out FILE) to resume".into()));
            }
            if chunk.lines.is_empty() {
                break;
            }
            for line in &chunk.lines {
                writeln!(stdout, "{line}").map_err(|e| Error::io("stdout", e))?;
            }
            lines += chunk.lines.len() as u64;
            cursor = chunk.cursor;
            on_progress(lines, total);
        }
        exporter.finish().await;
        return Ok(Moved {
            lines,
            resumed: false,
        });
    };
    if out.exists() {
        return Err(Error::Refused(format!(
            "{}: exists, a finished export; remove it (or name another --out) to export again",
            out.display()
        )));
    }
    let partial = with_suffix(out, ".partial");
    let cursor_path = with_suffix(out, ".partial.cursor");
    let saved: Option<ExportCursor> = std::fs::read(&cursor_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let resumed = saved.is_some();
    let mut state = saved.unwrap_or(ExportCursor {
        bytes: 0,
        lines: 0,
        cursor: None,
    });
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&partial)
        .map_err(|e| Error::io(&partial, e))?;
    // What a kill left after the last recorded batch goes.
    file.set_len(state.bytes)
        .map_err(|e| Error::io(&partial, e))?;
    file.seek(SeekFrom::End(0))
        .map_err(|e| Error::io(&partial, e))?;
    on_progress(state.lines, total);
    loop {
        let chunk = exporter.next(state.cursor.as_ref(), BATCH).await?;
        if chunk.restarted {
            tracing::warn!(file = %partial.display(), "the read started again from the first row; so does the file");
            file.set_len(0).map_err(|e| Error::io(&partial, e))?;
            file.seek(SeekFrom::Start(0))
                .map_err(|e| Error::io(&partial, e))?;
            state = ExportCursor {
                bytes: 0,
                lines: 0,
                cursor: None,
            };
        }
        if chunk.lines.is_empty() {
            break;
        }
        let mut text = String::new();
        for line in &chunk.lines {
            text.push_str(line);
            text.push('\n');
        }
        file.write_all(text.as_bytes())
            .map_err(|e| Error::io(&partial, e))?;
        file.sync_data().map_err(|e| Error::io(&partial, e))?;
        state.bytes += text.len() as u64;
        state.lines += chunk.lines.len() as u64;
        state.cursor = chunk.cursor;
        write_atomically(&cursor_path, &state)?;
        crate::crash_point!("export.after_batch");
        on_progress(state.lines, total);
    }
    exporter.finish().await;
    std::fs::rename(&partial, out).map_err(|e| Error::io(out, e))?;
    let _ = std::fs::remove_file(&cursor_path);
    Ok(Moved {
        lines: state.lines,
        resumed,
    })
}

#[derive(Debug, Serialize, Deserialize)]
struct ImportProgress {
    database: String,
    target: String,
    /// The offset in the file up to which every line is written.
    bytes: u64,
    lines: u64,
}

/// Imports `file` into the target, resuming where a killed import of the same file into
/// the same target stopped.
pub async fn import(
    config: &Config,
    target: &Target,
    file: &Path,
    on_progress: OnProgress<'_>,
) -> Result<Moved> {
    let mut importer = open_importer(config, target).await?;
    let progress_path = with_suffix(file, ".import-progress");
    let saved: Option<ImportProgress> = std::fs::read(&progress_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .filter(|p: &ImportProgress| p.database == target.database && p.target == target.name);
    let resumed = saved.is_some();
    let (mut offset, mut lines_done) = saved.map_or((0, 0), |p| (p.bytes, p.lines));
    let mut input = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
    let size = input.metadata().map_err(|e| Error::io(file, e))?.len();
    input
        .seek(SeekFrom::Start(offset))
        .map_err(|e| Error::io(file, e))?;
    let mut reader = BufReader::new(input);
    on_progress(offset, Some(size));
    loop {
        let mut lines = Vec::new();
        let mut consumed = 0u64;
        let first_line = lines_done + 1;
        while lines.len() < BATCH {
            let mut line = String::new();
            let read = reader
                .read_line(&mut line)
                .map_err(|e| Error::io(file, e))?;
            if read == 0 {
                break;
            }
            consumed += read as u64;
            lines_done += 1;
            let line = line.trim_end_matches(['\n', '\r']).to_string();
            if !line.trim().is_empty() {
                lines.push(line);
            }
        }
        if consumed == 0 {
            break;
        }
        if !lines.is_empty() {
            importer.write(&lines, first_line).await?;
        }
        offset += consumed;
        write_atomically(
            &progress_path,
            &ImportProgress {
                database: target.database.clone(),
                target: target.name.clone(),
                bytes: offset,
                lines: lines_done,
            },
        )?;
        crate::crash_point!("import.after_batch");
        on_progress(offset, Some(size));
    }
    importer.finish().await?;
    let _ = std::fs::remove_file(&progress_path);
    Ok(Moved {
        lines: lines_done,
        resumed,
    })
}
