//! What depends on a source table, and whether cutover can keep it working.

use super::session::Side;
use super::table::TableInfo;
use crate::error::{Error, Result};
use crate::job::JobKind;

/// Something that depends on the source table.
#[derive(Debug, Clone, PartialEq)]
pub struct Dependent {
    pub kind: String,
    pub name: String,
    pub blocks_cutover: bool,
    pub handling: String,
}

/// What depends on `table`; for a copy, views and foreign keys block cutover.
pub async fn dependents(side: &Side, table: &TableInfo, kind: JobKind) -> Result<Vec<Dependent>> {
    let rows = side
        .client
        .query(
            "SELECT 'view', v.oid::regclass::text FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
               JOIN pg_class v ON v.oid = r.ev_class WHERE d.refobjid = $1 AND v.oid <> $1
             UNION SELECT 'foreign key', conname || ' on ' || conrelid::regclass::text FROM pg_constraint
               WHERE confrelid = $1 AND contype = 'f'
             UNION SELECT 'trigger', tgname FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal
               AND tgname NOT LIKE 'switchyard_fill_%'
             UNION SELECT 'sequence', s.oid::regclass::text FROM pg_depend d JOIN pg_class s ON s.oid = d.objid
               AND s.relkind = 'S' WHERE d.refobjid = $1 AND d.deptype = 'a'
             ORDER BY 1, 2",
            &[&table.oid],
        )
        .await
        .map_err(side.failed("cannot read what depends on the source"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let kind_name: String = r.get(0);
            let name: String = r.get(1);
            let (blocks, handling) = match kind_name.as_str() {
                "view" => (true, "would keep reading the old table after the rename: recreate it on the new table in [expand], or drop it first"),
                "foreign key" => (true, "would keep pointing at the old table: move it to the new table first"),
                "trigger" => (false, "stays on the old table: create it on the target in [expand] if it must keep firing"),
                _ => (false, "moves to the new table's column at cutover"),
            };
            Dependent {
                kind: kind_name,
                name,
                blocks_cutover: blocks && kind == JobKind::Copy,
                handling: handling.to_string(),
            }
        })
        .collect())
}

/// Refuses a cutover that would break something depending on `table`.
pub async fn refuse_blocking(side: &Side, table: &TableInfo, kind: JobKind) -> Result<()> {
    let blocking: Vec<String> = dependents(side, table, kind)
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
