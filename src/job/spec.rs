//! The job file, `jobs/<name>.toml`: what to copy or backfill, and how.
//!
//! Invariants of a [`JobSpec`] returned by [`load`]: every field was known, every value
//! is in range, the databases it names are configured, and the source and target are
//! given in the form their database kind needs. Errors name the file and field.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Config, DatabaseKind};
use crate::error::{at_field, Error, FileProblem, Result};

const DEFAULT_BATCH_SIZE: usize = 10_000;
const DEFAULT_CONCURRENCY: usize = 2;
const DEFAULT_MAX_LAG: Duration = Duration::from_secs(10);
const DEFAULT_CUTOVER_MAX_LAG: Duration = Duration::from_secs(1);
const DEFAULT_CONTRACT_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Copy,
    Backfill,
    Reindex,
}

impl JobKind {
    /// Whether the job ends by switching its target into the source's place (a copy, a
    /// reindex); a backfill changes its source in place and has no cutover.
    pub fn cuts_over(self) -> bool {
        matches!(self, JobKind::Copy | JobKind::Reindex)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Copy => "copy",
            JobKind::Backfill => "backfill",
            JobKind::Reindex => "reindex",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    pub kind: JobKind,
    /// Cron schedule (UTC) on which `serve` starts the job.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Daily window (UTC), `HH:MM-HH:MM`, outside which `serve` pauses the job.
    #[serde(default)]
    pub window: Option<String>,
    pub source: Endpoint,
    #[serde(default)]
    pub target: Option<Endpoint>,
    #[serde(default)]
    pub expand: Expand,
    #[serde(default)]
    pub transform: Transform,
    #[serde(default)]
    pub copy: CopySettings,
    #[serde(default)]
    pub catch_up: CatchUp,
    #[serde(default)]
    pub verify: VerifySettings,
    #[serde(default)]
    pub cutover: CutoverSettings,
    #[serde(default)]
    pub contract: Contract,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub database: String,
    #[serde(default)]
    pub table: Option<String>,
    #[serde(default)]
    pub collection: Option<String>,
    #[serde(default)]
    pub index: Option<String>,
    /// The batch key: one column or several; unique and ordered.
    #[serde(default)]
    pub key: Option<KeyColumns>,
}

impl Endpoint {
    /// The table, collection or index it names, as the file gives it.
    pub fn object(&self) -> &str {
        [&self.table, &self.collection, &self.index]
            .into_iter()
            .find_map(|name| name.as_deref())
            .unwrap_or("-")
    }

    /// The key columns the file names, if it names any.
    pub fn key_columns_named(&self) -> Option<Vec<String>> {
        self.key.as_ref().map(KeyColumns::columns)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum KeyColumns {
    One(String),
    Many(Vec<String>),
}

impl KeyColumns {
    pub fn columns(&self) -> Vec<String> {
        match self {
            KeyColumns::One(column) => vec![column.clone()],
            KeyColumns::Many(columns) => columns.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expand {
    /// Statements run before copying; they must be idempotent (`IF NOT EXISTS`).
    #[serde(default)]
    pub sql: Vec<String>,
    /// MongoDB: seed-003 operations run on the target's database before copying (each
    /// once: one that finds its work done, such as an existing index, is skipped).
    #[serde(default)]
    pub operations: Vec<crate::migrate::MongoOperation>,
    /// Elasticsearch: the new index's mapping (`{ properties = { … } }`); the source
    /// index's mapping when not given.
    #[serde(default)]
    pub mapping: Option<serde_json::Value>,
    /// Elasticsearch: the new index's settings (analysis, shards, replicas); the source
    /// index's own when not given.
    #[serde(default)]
    pub settings: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transform {
    /// Target column = SQL expression over the source row's columns.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// MongoDB copy: aggregation stages applied to each document on the source.
    #[serde(default)]
    pub pipeline: Stages,
    /// MongoDB backfill: the update pipeline applied to each document in place.
    #[serde(default)]
    pub update: Stages,
}

/// MongoDB aggregation stages, written as TOML tables or as one string of JSON (for
/// stages whose keys are easier to write so): `[{ "$set" = { total = 1 } }]` or
/// `'[{"$set": {"total": 1}}]'`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stages(pub Vec<serde_json::Value>);

impl<'de> Deserialize<'de> for Stages {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Json(String),
            Tables(Vec<serde_json::Value>),
        }
        let stages = match Written::deserialize(deserializer)? {
            Written::Tables(stages) => stages,
            Written::Json(text) => serde_json::from_str(&text).map_err(|e| {
                serde::de::Error::custom(format!("not a JSON array of stages: {e}"))
            })?,
        };
        for stage in &stages {
            let name = stage
                .as_object()
                .filter(|o| o.len() == 1)
                .and_then(|o| o.keys().next())
                .ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "a stage is one `{{\"$stage\": …}}`, not {stage}"
                    ))
                })?;
            if !Self::ALLOWED.contains(&name.as_str()) {
                return Err(serde::de::Error::custom(format!(
                    "`{name}` cannot be used here: stages reshape each document and keep its `_id` ({})",
                    Self::ALLOWED.join(", ")
                )));
            }
        }
        Ok(Stages(stages))
    }
}

impl Stages {
    /// The stages that reshape one document into one document.
    pub const ALLOWED: [&'static str; 6] = [
        "$set",
        "$unset",
        "$addFields",
        "$project",
        "$replaceWith",
        "$replaceRoot",
    ];

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopySettings {
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// 0: unthrottled.
    #[serde(default)]
    pub rows_per_second: u64,
    #[serde(default = "default_max_lag", with = "humantime_serde")]
    pub max_lag: Duration,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How many chunks (key ranges) the key space is split into, each copied by one
    /// worker at a time. Default: [`SHARED_CHUNKS_PER_TASK`] per task of `concurrency`
    /// where workers of other processes can share the copy, one per task elsewhere.
    #[serde(default)]
    pub chunks: Option<usize>,
    /// Who copies: switchyard reading and writing batches, or (a reindex) the cluster.
    #[serde(default)]
    pub method: CopyMethod,
    /// `method = "server"`: how many slices the cluster's `_reindex` runs in parallel.
    #[serde(default)]
    pub slices: Option<Slices>,
}

/// Chunks per copy task by default where other processes' workers can share the copy.
pub const SHARED_CHUNKS_PER_TASK: usize = 4;

/// Who copies a job's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyMethod {
    /// switchyard reads batches from the source and writes them into the target.
    #[default]
    Bulk,
    /// The target's server copies by itself (Elasticsearch `_reindex`); switchyard
    /// starts it, follows it, and keeps catch-up, verify and cutover.
    Server,
}

/// The slices of a server-side `_reindex`: `"auto"` (one per shard) or a number.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Slices {
    Count(i64),
    Named(String),
}

impl Slices {
    /// The most slices a job may ask for.
    pub const MAX: i64 = 1024;

    /// As `_reindex`'s `slices` parameter; an error names what is wrong.
    pub fn parameter(&self) -> std::result::Result<String, String> {
        match self {
            Slices::Count(n) if (1..=Slices::MAX).contains(n) => Ok(n.to_string()),
            Slices::Count(n) => Err(format!("{n} is outside 1..={}", Slices::MAX)),
            Slices::Named(word) if word == "auto" => Ok("auto".into()),
            Slices::Named(word) => Err(format!(
                "`{word}` is neither \"auto\" nor a number of slices"
            )),
        }
    }
}

impl CopySettings {
    /// How many chunks the copy plans (see [`CopySettings::chunks`]); `shared`: whether
    /// the sink lets other processes share the copy.
    pub fn chunks(&self, shared: bool) -> usize {
        let per_task = if shared { SHARED_CHUNKS_PER_TASK } else { 1 };
        self.chunks.unwrap_or(self.concurrency * per_task)
    }
}

fn default_batch_size() -> usize {
    DEFAULT_BATCH_SIZE
}
fn default_max_lag() -> Duration {
    DEFAULT_MAX_LAG
}
fn default_concurrency() -> usize {
    DEFAULT_CONCURRENCY
}

impl Default for CopySettings {
    fn default() -> Self {
        CopySettings {
            batch_size: DEFAULT_BATCH_SIZE,
            rows_per_second: 0,
            max_lag: DEFAULT_MAX_LAG,
            concurrency: DEFAULT_CONCURRENCY,
            chunks: None,
            method: CopyMethod::Bulk,
            slices: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUpMethod {
    #[default]
    LogicalReplication,
    ChangeStream,
    /// Elasticsearch: documents whose `catch_up.field` (set by every write) is newer than
    /// where the catch-up stands are copied again.
    Watermark,
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatchUp {
    /// As written; [`load_text`] resolves an absent one into `method`.
    #[serde(default, rename = "method")]
    requested: Option<CatchUpMethod>,
    /// The method: as written, else the source's own (PostgreSQL: logical replication,
    /// MongoDB: change streams).
    #[serde(skip)]
    pub method: CatchUpMethod,
    /// The most WAL the job's slot may hold while the job catches up or stands still
    /// (paused, failed, waiting): past it the slot is dropped and the job fails, so a
    /// forgotten job never fills the source's disk. `0`: no limit. (During the copy the
    /// slot holds the WAL written since it began, by design.)
    #[serde(default = "default_max_slot_wal")]
    pub max_slot_wal: bytesize::ByteSize,
    /// `watermark`: the date field every write to the source sets (`updated_at`).
    #[serde(default)]
    pub field: Option<String>,
}

fn default_max_slot_wal() -> bytesize::ByteSize {
    bytesize::ByteSize::gib(10)
}

impl Default for CatchUp {
    fn default() -> Self {
        CatchUp {
            requested: None,
            method: CatchUpMethod::default(),
            max_slot_wal: default_max_slot_wal(),
            field: None,
        }
    }
}

impl CatchUp {
    /// The error of a job whose slot held `held` bytes, more than `max_slot_wal`,
    /// once the slot is dropped.
    pub fn slot_overflow(&self, job: &str, held: u64) -> crate::error::Error {
        crate::error::Error::Refused(format!(
            "job `{job}`: its replication slot held {} of WAL, more than catch_up.max_slot_wal ({}), and was dropped so that the source's disk does not fill. \
             The job cannot catch up any more: abort it (switchyard job abort {job}) and run it again under another name, with a larger max_slot_wal if it is slow",
            bytesize::ByteSize::b(held).display().iec(),
            self.max_slot_wal.display().iec()
        ))
    }

    /// Whether a slot holding `held` bytes is past the limit.
    pub fn overflows(&self, held: u64) -> bool {
        self.max_slot_wal.as_u64() > 0 && held > self.max_slot_wal.as_u64()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyMethod {
    Count,
    #[default]
    Checksum,
    None,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySettings {
    #[serde(default)]
    pub method: VerifyMethod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CutoverMode {
    #[default]
    Manual,
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CutoverMethod {
    #[default]
    Rename,
    AliasSwap,
}

/// What cutover does with what depends on the source (views, foreign keys, triggers,
/// grants, policies, comments, publications).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dependents {
    /// Re-created on (or re-pointed at) the table taking the name, in the cutover
    /// transaction; what cannot be carried refuses cutover.
    #[default]
    Carry,
    /// Nothing is carried: cutover refuses while views or foreign keys use the source,
    /// and leaves the rest with it (for users who move dependents themselves).
    Refuse,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutoverSettings {
    #[serde(default)]
    pub mode: CutoverMode,
    #[serde(default = "default_cutover_max_lag", with = "humantime_serde")]
    pub max_lag: Duration,
    #[serde(default)]
    pub method: CutoverMethod,
    /// Run after a cutover onto another database (to re-point a pooler, say), with
    /// `SWITCHYARD_JOB` and `SWITCHYARD_TARGET_URL` in its environment.
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub dependents: Dependents,
}

fn default_cutover_max_lag() -> Duration {
    DEFAULT_CUTOVER_MAX_LAG
}

impl Default for CutoverSettings {
    fn default() -> Self {
        CutoverSettings {
            mode: CutoverMode::Manual,
            max_lag: DEFAULT_CUTOVER_MAX_LAG,
            method: CutoverMethod::Rename,
            command: None,
            dependents: Dependents::Carry,
        }
    }
}

/// When contract runs: after a delay from cutover (or from the end of a backfill), or
/// only on `job contract`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContractAfter {
    Delay(Duration),
    Manual,
}

impl<'de> Deserialize<'de> for ContractAfter {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text == "manual" {
            return Ok(ContractAfter::Manual);
        }
        humantime::parse_duration(&text)
            .map(ContractAfter::Delay)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{text}` is neither a duration (24h, 30m) nor \"manual\": {e}"
                ))
            })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    #[serde(default)]
    pub sql: Vec<String>,
    #[serde(default = "default_contract_after")]
    pub after: ContractAfter,
}

fn default_contract_after() -> ContractAfter {
    ContractAfter::Delay(DEFAULT_CONTRACT_AFTER)
}

impl Default for Contract {
    fn default() -> Self {
        Contract {
            sql: Vec::new(),
            after: default_contract_after(),
        }
    }
}

/// Reads and checks a job file against the configuration.
pub fn load(path: &Path, config: &Config) -> Result<JobSpec> {
    let problem = |reason: String| {
        Error::InvalidFiles(vec![FileProblem {
            file: path.to_path_buf(),
            reason,
        }])
    };
    let text = std::fs::read_to_string(path).map_err(|e| problem(format!("cannot read: {e}")))?;
    load_text(path, &text, config)
}

/// [`load`] of a job file's text already read from `path`.
pub fn load_text(path: &Path, text: &str, config: &Config) -> Result<JobSpec> {
    let problem = |reason: String| {
        Error::InvalidFiles(vec![FileProblem {
            file: path.to_path_buf(),
            reason,
        }])
    };
    let mut spec = parse(text).map_err(problem)?;
    spec.validate(config).map_err(problem)?;
    spec.catch_up.method = spec.catch_up.requested.unwrap_or(
        match (config.databases[&spec.source.database].kind, spec.kind) {
            (DatabaseKind::Mongodb, _) => CatchUpMethod::ChangeStream,
            (DatabaseKind::Elasticsearch, _) => CatchUpMethod::Watermark,
            // A PostgreSQL backfill's dual-write trigger fills the rows written meanwhile.
            (_, JobKind::Backfill) => CatchUpMethod::None,
            _ => CatchUpMethod::LogicalReplication,
        },
    );
    Ok(spec)
}

/// Parses a job file's text; the error names the field.
pub fn parse(text: &str) -> std::result::Result<JobSpec, String> {
    let deserializer =
        toml::Deserializer::parse(text).map_err(|e| format!("invalid TOML: {}", e.message()))?;
    let mut spec: JobSpec = serde_path_to_error::deserialize(deserializer)
        .map_err(|e| at_field("", e.path(), e.inner().message()))?;
    spec.catch_up.method = spec.catch_up.requested.unwrap_or(match spec.kind {
        JobKind::Backfill => CatchUpMethod::None,
        _ => CatchUpMethod::default(),
    });
    Ok(spec)
}

impl JobSpec {
    /// Checks what the types cannot; returns `field `path`: reason`.
    pub fn validate(&self, config: &Config) -> std::result::Result<(), String> {
        let field = |path: &str, reason: String| format!("field `{path}`: {reason}");
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(field("name", format!("`{}` must be letters, digits and `_` only (it names replication slots and metrics)", self.name)));
        }
        // Slot names hold 63 bytes: `switchyard_<name>_back_<database oid>`.
        if self.name.len() > 36 {
            return Err(field(
                "name",
                "at most 36 characters (it names replication slots)".into(),
            ));
        }
        if self.copy.batch_size == 0 {
            return Err(field("copy.batch_size", "must be at least 1".into()));
        }
        if self.copy.concurrency == 0 || self.copy.concurrency > 64 {
            return Err(field(
                "copy.concurrency",
                format!("{} is outside 1..=64", self.copy.concurrency),
            ));
        }
        if self.copy.chunks.is_some_and(|n| n == 0 || n > 10_000) {
            return Err(field(
                "copy.chunks",
                format!(
                    "{} is outside 1..=10000",
                    self.copy.chunks.unwrap_or_default()
                ),
            ));
        }
        if let Some(slices) = &self.copy.slices {
            if self.copy.method != CopyMethod::Server {
                return Err(field(
                    "copy.slices",
                    "slices are for the cluster's own copy; add `method = \"server\"`".into(),
                ));
            }
            slices
                .parameter()
                .map_err(|reason| field("copy.slices", reason))?;
        }
        if self.copy.method == CopyMethod::Server && self.kind != JobKind::Reindex {
            return Err(field(
                "copy.method",
                "\"server\" is an Elasticsearch reindex's (the cluster's `_reindex` copies the old index into the new); other jobs copy with \"bulk\"".into(),
            ));
        }
        if let Some(schedule) = &self.schedule {
            schedule.parse::<croner::Cron>().map_err(|e| {
                field(
                    "schedule",
                    format!(
                        "`{schedule}` is not a cron schedule (minute hour day month weekday): {e}"
                    ),
                )
            })?;
        }
        if let Some(window) = &self.window {
            parse_window(window).map_err(|reason| field("window", reason))?;
        }
        let source_kind = self.endpoint_kind("source", &self.source, config)?;
        // The path first (a PostgreSQL table into MongoDB has none), then the target's form.
        let target_kind = match &self.target {
            Some(target) => Some(database_kind("target", target, config)?),
            None => None,
        };
        match source_kind {
            DatabaseKind::Postgresql => self.validate_postgres(target_kind)?,
            DatabaseKind::Mongodb => self.validate_mongo(target_kind)?,
            DatabaseKind::Elasticsearch => self.validate_elastic()?,
        }
        if let Some(target) = &self.target {
            self.endpoint_kind("target", target, config)?;
        }
        Ok(())
    }

    /// The checks every kind of job shares, for `store`'s names of things.
    fn validate_kind(&self, store: &str, thing: &str) -> std::result::Result<(), String> {
        match self.kind {
            JobKind::Copy => {
                let target = self.target.as_ref().ok_or_else(|| {
                    format!("missing section `[target]`: a copy needs a target {thing}")
                })?;
                if target.database == self.source.database
                    && (&target.table, &target.collection)
                        == (&self.source.table, &self.source.collection)
                {
                    return Err(format!(
                        "field `target.{thing}`: the target must be another {thing} than the source"
                    ));
                }
                if self.cutover.method != CutoverMethod::Rename {
                    return Err(format!(
                        "field `cutover.method`: {store} cuts over by `rename`"
                    ));
                }
                Ok(())
            }
            JobKind::Backfill if self.target.is_some() => Err(
                "section `[target]`: a backfill changes its source in place; remove [target]"
                    .into(),
            ),
            JobKind::Backfill => Ok(()),
            JobKind::Reindex => Err(format!(
                "field `kind`: `reindex` rebuilds an Elasticsearch index behind its alias; a {store} {thing} is copied with `kind = \"copy\"`"
            )),
        }
    }

    fn validate_postgres(
        &self,
        target_kind: Option<DatabaseKind>,
    ) -> std::result::Result<(), String> {
        self.validate_kind("PostgreSQL", "table")?;
        if let Some(kind) = target_kind.filter(|k| *k == DatabaseKind::Mongodb) {
            return Err(format!(
                "field `target.database`: `{}` is {kind}: there is no path from postgresql to {kind} in this version (PostgreSQL copies into PostgreSQL, on the same or another server, or into an Elasticsearch index)",
                self.target.as_ref().map_or("", |t| t.database.as_str())
            ));
        }
        if self.kind == JobKind::Backfill && self.transform.columns.is_empty() {
            return Err("field `transform.columns`: a backfill needs at least one column = expression to fill".into());
        }
        if !self.transform.pipeline.is_empty() || !self.transform.update.is_empty() {
            return Err("field `transform`: `pipeline` and `update` are for MongoDB; PostgreSQL uses `columns`".into());
        }
        if !self.expand.operations.is_empty() {
            return Err("field `expand.operations`: for MongoDB; PostgreSQL uses `sql`".into());
        }
        if self.catch_up.requested == Some(CatchUpMethod::ChangeStream) {
            return Err("field `catch_up.method`: `change_stream` is for MongoDB; PostgreSQL uses `logical_replication` or `none`".into());
        }
        if self.kind == JobKind::Backfill
            && self.catch_up.requested == Some(CatchUpMethod::LogicalReplication)
        {
            return Err("field `catch_up.method`: a PostgreSQL backfill keeps the rows written meanwhile filled with its dual-write trigger, not from the replication log: leave `catch_up` out (or say `none`)".into());
        }
        if target_kind == Some(DatabaseKind::Elasticsearch) {
            if !self.transform.columns.is_empty() {
                return Err("field `transform`: a copy of a table into an index writes every column as a field of its document in this version; shape the documents with `[expand] mapping`".into());
            }
            return self.validate_into_index();
        }
        Ok(())
    }

    /// `[expand] mapping` and `settings` of a new index: tables.
    fn validate_new_index(&self) -> std::result::Result<(), String> {
        for (name, value) in [
            ("mapping", &self.expand.mapping),
            ("settings", &self.expand.settings),
        ] {
            if value.as_ref().is_some_and(|v| !v.is_object()) {
                return Err(format!("field `expand.{name}`: a table (JSON object)"));
            }
        }
        Ok(())
    }

    /// A table or collection copied into an index (see `backend::elasticsearch::copy`),
    /// once the source's own checks passed.
    fn validate_into_index(&self) -> std::result::Result<(), String> {
        if !self.expand.sql.is_empty()
            || !self.expand.operations.is_empty()
            || !self.contract.sql.is_empty()
        {
            return Err("field `expand`: a copy into an index takes `[expand] mapping` and `settings` for the new index; the source is not changed".into());
        }
        self.validate_new_index()?;
        if self.catch_up.requested == Some(CatchUpMethod::Watermark) {
            return Err("field `catch_up.method`: `watermark` is for a reindex; a table catches up by `logical_replication`, a collection by `change_stream` (or `none`)".into());
        }
        Ok(())
    }

    fn validate_mongo(&self, target_kind: Option<DatabaseKind>) -> std::result::Result<(), String> {
        self.validate_kind("MongoDB", "collection")?;
        if let Some(kind) = target_kind.filter(|k| *k == DatabaseKind::Postgresql) {
            return Err(format!(
                "field `target.database`: `{}` is {kind}: there is no path from mongodb to {kind} in this version (MongoDB copies into MongoDB, in the same or another cluster, or into an Elasticsearch index)",
                self.target.as_ref().map_or("", |t| t.database.as_str())
            ));
        }
        if self
            .source
            .key_columns_named()
            .is_some_and(|key| key != ["_id"])
        {
            return Err("field `source.key`: MongoDB jobs go by `_id`".into());
        }
        if self.kind == JobKind::Backfill && self.transform.update.is_empty() {
            return Err("field `transform.update`: a backfill needs the update pipeline that fills each document ([{ \"$set\" = { … } }])".into());
        }
        if self.kind == JobKind::Copy && !self.transform.update.is_empty() {
            return Err("field `transform.update`: for a backfill; a copy reshapes documents with `pipeline`".into());
        }
        if self.kind == JobKind::Backfill && !self.transform.pipeline.is_empty() {
            return Err(
                "field `transform.pipeline`: for a copy; a backfill fills documents with `update`"
                    .into(),
            );
        }
        if !self.transform.columns.is_empty() {
            return Err("field `transform.columns`: for PostgreSQL; MongoDB uses `pipeline` (copy) or `update` (backfill)".into());
        }
        if !self.expand.sql.is_empty() || !self.contract.sql.is_empty() {
            return Err("field `expand.sql`/`contract.sql`: for PostgreSQL; MongoDB's expand takes `operations`".into());
        }
        if self.catch_up.requested == Some(CatchUpMethod::LogicalReplication) {
            return Err("field `catch_up.method`: `logical_replication` is for PostgreSQL; MongoDB uses `change_stream` or `none`".into());
        }
        if target_kind == Some(DatabaseKind::Elasticsearch) {
            return self.validate_into_index();
        }
        Ok(())
    }

    fn validate_elastic(&self) -> std::result::Result<(), String> {
        match self.kind {
            JobKind::Reindex => {}
            JobKind::Copy => return Err("field `kind`: an Elasticsearch index is rebuilt behind its alias with `kind = \"reindex\"`".into()),
            JobKind::Backfill => return Err("field `kind`: Elasticsearch has no backfill in this version; rebuild the index with `kind = \"reindex\"` and a new mapping".into()),
        }
        if let Some(target) = &self.target {
            return Err(format!(
                "section `[target]`: a reindex builds `<alias>_vN` beside the index its alias names and moves the alias at cutover; remove [target] (`{}` named the target)",
                target.database
            ));
        }
        if self.source.key.is_some() {
            return Err("field `source.key`: an Elasticsearch index is read in point-in-time order, by `_id`".into());
        }
        if !self.transform.columns.is_empty()
            || !self.transform.pipeline.is_empty()
            || !self.transform.update.is_empty()
        {
            return Err("field `transform`: a reindex copies documents as they are; reshape them with the new mapping (`[expand] mapping`)".into());
        }
        if !self.expand.sql.is_empty()
            || !self.contract.sql.is_empty()
            || !self.expand.operations.is_empty()
        {
            return Err("field `expand`: an Elasticsearch reindex takes `[expand] mapping` and `settings`; `sql` and `operations` are for PostgreSQL and MongoDB".into());
        }
        self.validate_new_index()?;
        match (self.catch_up.requested, &self.catch_up.field) {
            (None | Some(CatchUpMethod::Watermark), Some(field)) if !field.is_empty() => Ok(()),
            (None | Some(CatchUpMethod::Watermark), _) => Err("field `catch_up.field`: a reindex catches up the documents written during the copy by a date field that every write sets (`field = \"updated_at\"`); name it, or say `method = \"none\"` when nothing writes to the index meanwhile".into()),
            (Some(CatchUpMethod::None), _) => Ok(()),
            (Some(other), _) => Err(format!(
                "field `catch_up.method`: `{}` is not Elasticsearch's; a reindex uses `watermark` (with `field`) or `none`",
                format!("{other:?}").to_lowercase()
            )),
        }
    }

    fn endpoint_kind(
        &self,
        section: &str,
        endpoint: &Endpoint,
        config: &Config,
    ) -> std::result::Result<DatabaseKind, String> {
        let kind = database_kind(section, endpoint, config)?;
        if kind == DatabaseKind::Postgresql {
            let table = endpoint.table.as_deref().unwrap_or_default();
            if table.is_empty() {
                return Err(format!(
                    "field `{section}.table`: required for a PostgreSQL database"
                ));
            }
            if table.split('.').count() > 2 || table.split('.').any(str::is_empty) {
                return Err(format!(
                    "field `{section}.table`: `{table}` is not `table` or `schema.table`"
                ));
            }
            if endpoint.collection.is_some() || endpoint.index.is_some() {
                return Err(format!("field `{section}`: `collection` and `index` are for MongoDB and Elasticsearch; use `table`"));
            }
        }
        if kind == DatabaseKind::Elasticsearch {
            let index = endpoint.index.as_deref().unwrap_or_default();
            if index.is_empty()
                || index != index.to_lowercase()
                || index.starts_with(['_', '-', '+'])
                || index.contains(['*', ',', ' ', '/', '"', '\\', '?', '#', '<', '>', '|'])
            {
                return Err(format!(
                    "field `{section}.index`: an alias name is required for an Elasticsearch database (lower case, not starting with `_`, `-` or `+`, no `*`, `,`, spaces or `/`)"
                ));
            }
            if endpoint.table.is_some() || endpoint.collection.is_some() {
                return Err(format!("field `{section}`: an Elasticsearch database takes `index`, not `table` or `collection`"));
            }
        }
        if kind == DatabaseKind::Mongodb {
            let collection = endpoint.collection.as_deref().unwrap_or_default();
            if collection.is_empty()
                || collection.contains('$')
                || collection.starts_with("system.")
            {
                return Err(format!(
                    "field `{section}.collection`: a collection name is required for a MongoDB database (not empty, no `$`, not `system.`)"
                ));
            }
            if endpoint.table.is_some() || endpoint.index.is_some() {
                return Err(format!("field `{section}`: a MongoDB database takes `collection`, not `table` or `index`"));
            }
        }
        Ok(kind)
    }

    /// The key columns: as given, or the table's primary key when not given.
    /// A backfill that fills again, from the source's changes, the rows written while
    /// it runs, until its contract.
    pub fn fills_from_changes(&self) -> bool {
        self.kind == JobKind::Backfill && self.catch_up.method != CatchUpMethod::None
    }

    pub fn key_columns(&self) -> Option<Vec<String>> {
        self.source.key.as_ref().map(KeyColumns::columns)
    }

    /// The fields that shape the data a job writes, by name: a job must finish (or be
    /// aborted) with the ones it started with. The others (throttle, window, schedule,
    /// cutover and contract settings) may change between runs.
    pub fn shape(&self) -> BTreeMap<String, String> {
        let mut shape = BTreeMap::new();
        let mut put = |field: &str, value: String| {
            shape.insert(field.to_string(), value);
        };
        put("kind", self.kind.as_str().to_string());
        for (side, endpoint) in [
            ("source", Some(&self.source)),
            ("target", self.target.as_ref()),
        ] {
            let Some(endpoint) = endpoint else { continue };
            put(&format!("{side}.database"), endpoint.database.clone());
            for (field, value) in [
                ("table", &endpoint.table),
                ("collection", &endpoint.collection),
                ("index", &endpoint.index),
            ] {
                if let Some(value) = value {
                    put(&format!("{side}.{field}"), value.clone());
                }
            }
        }
        if let Some(key) = self.key_columns() {
            put("source.key", key.join(", "));
        }
        for (column, expression) in &self.transform.columns {
            put(&format!("transform.columns.{column}"), expression.clone());
        }
        put("expand.sql", self.expand.sql.join("; "));
        for (field, stages) in [
            ("transform.pipeline", &self.transform.pipeline),
            ("transform.update", &self.transform.update),
        ] {
            if !stages.is_empty() {
                put(
                    field,
                    serde_json::Value::Array(stages.0.clone()).to_string(),
                );
            }
        }
        put(
            "catch_up.method",
            format!("{:?}", self.catch_up.method).to_lowercase(),
        );
        if let Some(field) = &self.catch_up.field {
            put("catch_up.field", field.clone());
        }
        for (field, value) in [
            ("expand.mapping", &self.expand.mapping),
            ("expand.settings", &self.expand.settings),
        ] {
            if let Some(value) = value {
                put(field, value.to_string());
            }
        }
        shape
    }
}

/// `01:00-05:00` → minutes after midnight (start, end); the window may wrap midnight.
/// The kind of the configured database `endpoint` names.
fn database_kind(
    section: &str,
    endpoint: &Endpoint,
    config: &Config,
) -> std::result::Result<DatabaseKind, String> {
    config
        .databases
        .get(&endpoint.database)
        .map(|database| database.kind)
        .ok_or_else(|| {
            format!(
                "field `{section}.database`: no database named `{}` in the configuration",
                endpoint.database
            )
        })
}

pub fn parse_window(text: &str) -> std::result::Result<(u32, u32), String> {
    let minutes = |part: &str| -> Option<u32> {
        let (h, m) = part.trim().split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    };
    let (start, end) = text
        .split_once('-')
        .ok_or_else(|| format!("`{text}` is not HH:MM-HH:MM"))?;
    match (minutes(start), minutes(end)) {
        (Some(start), Some(end)) if start != end => Ok((start, end)),
        (Some(_), Some(_)) => Err(format!("`{text}` is empty: start and end are the same")),
        _ => Err(format!("`{text}` is not HH:MM-HH:MM (UTC)")),
    }
}
