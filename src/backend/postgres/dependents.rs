//! What depends on a source table, what cutover does with each, and what it cannot
//! carry. `job plan` shows the list; cutover refuses when anything on it blocks.
//!
//! Within one database, with `[cutover] dependents = "carry"` (the default), dependents
//! are carried to the table taking the name (see [`super::carry`]); what blocks is only
//! what cannot be re-created there (a view reading a column the new table lacks, a
//! foreign key without a unique index to reference, a materialized view read by others
//! or reading through a view). Onto another server, and with `dependents = "refuse"`,
//! nothing is carried: views and foreign keys block, since they would keep using the
//! old table.

use super::session::Side;
use super::table::TableInfo;
use crate::backend::plan::Dependent;
use crate::error::{Error, Result};
use crate::job::JobKind;

/// Where cutover carries dependents: onto the table with oid `to` in the same database
/// (`None` while it does not exist yet).
#[derive(Debug, Clone, Copy)]
pub struct Carrying {
    pub to: Option<u32>,
}

/// What depends on `table`, and what a cutover does with each (`carrying` when it
/// carries them).
pub async fn dependents(
    side: &Side,
    table: &TableInfo,
    kind: JobKind,
    carrying: Option<Carrying>,
) -> Result<Vec<Dependent>> {
    let to = carrying.and_then(|c| c.to).unwrap_or(0);
    let rows = side
        .client
        .query(
            "WITH RECURSIVE reading (oid, depth, through) AS (
               SELECT r.ev_class, 1, 0::oid FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
                WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = $1 AND r.ev_class <> $1
               UNION ALL
               SELECT r.ev_class, reading.depth + 1, reading.oid FROM reading
                 JOIN pg_depend d ON d.refobjid = reading.oid AND d.classid = 'pg_rewrite'::regclass
                 JOIN pg_rewrite r ON r.oid = d.objid AND r.ev_class <> reading.oid
             )
             SELECT DISTINCT CASE c.relkind WHEN 'm' THEN 'materialized view' ELSE 'view' END,
                    c.oid::regclass::text,
                    CASE WHEN c.relkind = 'm' AND reading.depth > 1
                           THEN 'reads the table through ' || reading.through::regclass::text
                         WHEN t.relkind = 'm'
                           THEN 'reads materialized view ' || reading.through::regclass::text || ', which is rebuilt'
                         ELSE (SELECT 'reads column ' || string_agg(a.attname, ', ') || ', which the new table lacks'
                                 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid AND r.ev_class = c.oid
                                 JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                                WHERE $2 <> 0::oid AND d.refobjid = $1 AND d.refobjsubid > 0
                                  AND NOT EXISTS (SELECT FROM pg_attribute n WHERE n.attrelid = $2
                                                  AND n.attname = a.attname AND NOT n.attisdropped))
                    END
               FROM reading JOIN pg_class c ON c.oid = reading.oid
               LEFT JOIN pg_class t ON t.oid = reading.through
             UNION ALL
             SELECT 'foreign key', c.conname || ' on ' || c.conrelid::regclass::text,
                    CASE WHEN $2 <> 0::oid AND NOT EXISTS (
                           SELECT FROM pg_index i WHERE i.indrelid = $2 AND i.indisunique AND i.indpred IS NULL
                              AND i.indexprs IS NULL AND i.indnkeyatts = cardinality(c.confkey)
                              AND (SELECT array_agg(n.attname ORDER BY n.attname) FROM pg_attribute n
                                    WHERE n.attrelid = $2 AND n.attnum = ANY (i.indkey::int2[]))
                                = (SELECT array_agg(a.attname ORDER BY a.attname) FROM pg_attribute a
                                    WHERE a.attrelid = $1 AND a.attnum = ANY (c.confkey)))
                         THEN 'the new table has no unique index on the referenced columns' END
               FROM pg_constraint c
              WHERE c.confrelid = $1 AND c.contype = 'f' AND c.conparentid = 0 AND c.conrelid <> $1
             UNION ALL
             SELECT 'trigger', tgname,
                    CASE WHEN EXISTS (SELECT FROM pg_trigger n WHERE n.tgrelid = $2 AND n.tgname = t.tgname)
                         THEN 'exists' END
               FROM pg_trigger t WHERE tgrelid = $1 AND NOT tgisinternal AND tgname NOT LIKE 'switchyard%'
             UNION ALL
             SELECT 'sequence', s.oid::regclass::text, NULL FROM pg_depend d
               JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' WHERE d.refobjid = $1 AND d.deptype = 'a'
             UNION ALL
             SELECT 'grant', a.privilege_type || ' to '
                      || CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END, NULL
               FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = $1 AND a.grantee <> c.relowner
             UNION ALL
             SELECT 'policy', polname, NULL FROM pg_policy WHERE polrelid = $1
             UNION ALL
             SELECT 'publication', p.pubname, NULL FROM pg_publication_rel r
               JOIN pg_publication p ON p.oid = r.prpubid
              WHERE r.prrelid = $1 AND p.pubname NOT LIKE 'switchyard%'
             ORDER BY 1, 2",
            &[&table.oid, &to],
        )
        .await
        .map_err(side.failed("cannot read what depends on the source"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let (kind_name, name): (String, String) = (r.get(0), r.get(1));
            let problem: Option<String> = r.get(2);
            let (blocks, handling) = match carrying {
                Some(_) => carried(&kind_name, problem),
                None => left(&kind_name),
            };
            Dependent {
                kind: kind_name,
                name,
                blocks_cutover: blocks && kind == JobKind::Copy,
                handling,
            }
        })
        .collect())
}

/// What a carrying cutover does with a dependent of `kind`, or why it cannot.
fn carried(kind: &str, problem: Option<String>) -> (bool, String) {
    let done = match (kind, problem.as_deref()) {
        ("trigger", Some(_)) => "the new table has a trigger of that name: it is kept",
        (_, Some(problem)) => {
            return (
                true,
                format!("{problem}: cannot be carried; change it first, or set [cutover] dependents = \"refuse\" and move it yourself"),
            )
        }
        ("view", _) => "re-created on the new table at cutover",
        ("materialized view", _) => {
            "keeps its rows through cutover, then is rebuilt on the new table and swapped in"
        }
        ("foreign key", _) => {
            "re-pointed at the new table at cutover (NOT VALID), validated right after without blocking writes"
        }
        ("sequence", _) => "moves to the new table's column at cutover",
        _ => "copied to the new table at cutover",
    };
    (false, done.to_string())
}

/// What a cutover that carries nothing does with a dependent of `kind`.
fn left(kind: &str) -> (bool, String) {
    let (blocks, handling) = match kind {
        "view" | "materialized view" => (true, "would keep reading the old table after the rename: drop it first, and re-create it on the new table after cutover"),
        "foreign key" => (true, "would keep pointing at the old table: drop it first, and add it to the new table after cutover"),
        "sequence" => (false, "moves to the new table's column at cutover"),
        _ => (false, "stays with the old table"),
    };
    (blocks, handling.to_string())
}

/// Refuses a cutover that would break something depending on `table`.
pub async fn refuse_blocking(
    side: &Side,
    table: &TableInfo,
    kind: JobKind,
    carrying: Option<Carrying>,
) -> Result<()> {
    let blocking: Vec<String> = dependents(side, table, kind, carrying)
        .await?
        .into_iter()
        .filter(|d| d.blocks_cutover)
        .map(|d| format!("{} {}: {}", d.kind, d.name, d.handling))
        .collect();
    if blocking.is_empty() {
        Ok(())
    } else {
        Err(Error::Refused(format!(
            "cutover refused, it would break:\n{}",
            blocking.join("\n")
        )))
    }
}
