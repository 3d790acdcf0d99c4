//! Dependents carried through a cutover within one database: what reads, references or
//! decorates the table giving up its name moves to the table taking it.
//!
//! - views reading it (and views reading those) are dropped before the renames and
//!   re-created after them from their definitions, with their options, owner, grants,
//!   comments and `INSTEAD OF` triggers;
//! - foreign keys referencing it are dropped and re-added on the new table `NOT VALID`
//!   (on each leaf partition of a partitioned referencing table, which PostgreSQL
//!   requires), then validated after the commit, without blocking writes;
//! - its triggers, grants (table and column), owner, row-level security and policies,
//!   comments and publications (other than switchyard's own) are copied onto the new
//!   table, unless the new table has one of the same name already;
//! - materialized views reading it keep their rows through the cutover and are rebuilt
//!   on the new table after the commit, then swapped in under their name.
//!
//! Invariants: definitions are read while the old table still has its name, so their
//! text names it, and run after the renames it names the new table. Everything up to
//! the renames' commit runs in the cutover transaction, under its lock and
//! `lock_timeout`: a failure leaves every dependent as it was. The tables whose foreign
//! keys are re-pointed are locked before the source, in the order their writers lock
//! them, so that the cutover never deadlocks with a writer. The old table keeps its
//! own triggers, grants and policies, so an abort (the same switch back) finds them.

use super::session::Side;
use crate::error::Result;

/// The statements that carry the dependents of one table to another.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Carry {
    /// Before the renames, in the cutover transaction: drop what is re-created.
    pub detach: Vec<String>,
    /// After the renames, in the cutover transaction.
    pub attach: Vec<String>,
    /// After the commit, each in a transaction of its own: validate foreign keys,
    /// rebuild materialized views.
    pub finish: Vec<Vec<String>>,
}

/// The tables whose foreign keys reference `from`, as SQL, for the cutover to lock
/// before the source: a writer to one of them locks it before the source (to check its
/// key), so locking them in the other order would deadlock with it.
pub async fn referencing_tables(side: &Side, from: u32) -> Result<Vec<String>> {
    let rows = side
        .client
        .query(
            "SELECT DISTINCT conrelid::regclass::text FROM pg_constraint
              WHERE confrelid = $1 AND contype = 'f' AND conparentid = 0 AND conrelid <> $1 ORDER BY 1",
            &[&from],
        )
        .await
        .map_err(side.failed("cannot read the foreign keys referencing the source"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A suffix for a materialized view while its replacement is built.
const REBUILT: &str = "_switchyard_rebuilt";

impl Carry {
    /// What carries the dependents of `from` (the table giving up its name, called
    /// `name` now) onto `to` (the table taking it). Run while `from` has the name.
    pub async fn read(side: &Side, from: u32, to: u32) -> Result<Carry> {
        let mut carry = Carry::default();
        carry.views(side, from).await?;
        carry.foreign_keys(side, from).await?;
        carry.triggers(side, from, to).await?;
        carry.decorations(side, from, to, "TABLE").await?;
        carry.policies(side, from, to).await?;
        carry.publications(side, from).await?;
        carry.materialized_views(side, from).await?;
        Ok(carry)
    }

    /// Views reading `from`, directly or through other views: dropped deepest first,
    /// re-created shallowest first. Materialized views are carried on their own.
    async fn views(&mut self, side: &Side, from: u32) -> Result<()> {
        let rows = side
            .client
            .query(
                "WITH RECURSIVE reading (oid, depth) AS (
                   SELECT r.ev_class, 1 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
                    WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = $1 AND r.ev_class <> $1
                   UNION ALL
                   SELECT r.ev_class, reading.depth + 1 FROM reading
                     JOIN pg_depend d ON d.refobjid = reading.oid AND d.classid = 'pg_rewrite'::regclass
                     JOIN pg_rewrite r ON r.oid = d.objid AND r.ev_class <> reading.oid
                 )
                 SELECT c.oid, c.oid::regclass::text, max(reading.depth),
                        pg_get_viewdef(c.oid), array_to_string(c.reloptions, ', ')
                   FROM reading JOIN pg_class c ON c.oid = reading.oid AND c.relkind = 'v'
                  GROUP BY c.oid ORDER BY 3, 2",
                &[&from],
            )
            .await
            .map_err(side.failed("cannot read the views of the source"))?;
        for row in rows.iter().rev() {
            let name: String = row.get(1);
            self.detach.push(format!("DROP VIEW {name}"));
        }
        for row in &rows {
            let (oid, name, definition): (u32, String, String) =
                (row.get(0), row.get(1), row.get(3));
            let options: Option<String> = row.get(4);
            let with = options
                .filter(|o| !o.is_empty())
                .map_or(String::new(), |o| format!(" WITH ({o})"));
            self.attach.push(format!(
                "CREATE VIEW {name}{with} AS {}",
                definition.trim_end().trim_end_matches(';')
            ));
            self.decorations(side, oid, 0, "VIEW").await?;
            let triggers = side
                .client
                .query(
                    "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal",
                    &[&oid],
                )
                .await
                .map_err(side.failed("cannot read the triggers of a view"))?;
            self.attach.extend(triggers.iter().map(|t| t.get(0)));
        }
        Ok(())
    }

    /// Foreign keys of other tables referencing `from`.
    async fn foreign_keys(&mut self, side: &Side, from: u32) -> Result<()> {
        let rows = side
            .client
            .query(
                "SELECT quote_ident(c.conname), c.conrelid::regclass::text, pg_get_constraintdef(c.oid),
                        c.convalidated, t.relkind = 'p',
                        ARRAY(SELECT p.relid::regclass::text FROM pg_partition_tree(c.conrelid) p
                               WHERE p.isleaf ORDER BY 1)
                   FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
                  WHERE c.confrelid = $1 AND c.contype = 'f' AND c.conparentid = 0 AND c.conrelid <> $1
                  ORDER BY 2, 1",
                &[&from],
            )
            .await
            .map_err(side.failed("cannot read the foreign keys referencing the source"))?;
        for row in rows {
            let (name, table, definition): (String, String, String) =
                (row.get(0), row.get(1), row.get(2));
            let (validated, partitioned): (bool, bool) = (row.get(3), row.get(4));
            let leaves: Vec<String> = row.get(5);
            self.detach
                .push(format!("ALTER TABLE {table} DROP CONSTRAINT {name}"));
            // PostgreSQL takes `NOT VALID` foreign keys on plain tables only: on a
            // partitioned one they go on each leaf, and the parent's is added (attaching
            // them, without a scan) once they are valid.
            let holders = if partitioned {
                leaves
            } else {
                vec![table.clone()]
            };
            let mut validate = Vec::new();
            for holder in &holders {
                self.attach.push(format!(
                    "ALTER TABLE {holder} ADD CONSTRAINT {name} {definition} NOT VALID"
                ));
                validate.push(format!("ALTER TABLE {holder} VALIDATE CONSTRAINT {name}"));
            }
            if validated {
                if partitioned {
                    validate.push(format!(
                        "ALTER TABLE {table} ADD CONSTRAINT {name} {definition}"
                    ));
                }
                self.finish.push(validate);
            }
        }
        Ok(())
    }

    /// `from`'s triggers that `to` has none of the same name of (switchyard's own aside).
    async fn triggers(&mut self, side: &Side, from: u32, to: u32) -> Result<()> {
        let rows = side
            .client
            .query(
                "SELECT pg_get_triggerdef(t.oid), quote_ident(t.tgname), t.tgenabled::text,
                        t.tgrelid::regclass::text
                   FROM pg_trigger t
                  WHERE t.tgrelid = $1 AND NOT t.tgisinternal AND t.tgname NOT LIKE 'switchyard%'
                    AND NOT EXISTS (SELECT FROM pg_trigger n WHERE n.tgrelid = $2 AND n.tgname = t.tgname)
                  ORDER BY t.tgname",
                &[&from, &to],
            )
            .await
            .map_err(side.failed("cannot read the triggers of the source"))?;
        for row in rows {
            let (definition, name, enabled, table): (String, String, String, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            self.attach.push(definition);
            let state = match enabled.as_str() {
                "D" => "DISABLE TRIGGER",
                "R" => "ENABLE REPLICA TRIGGER",
                "A" => "ENABLE ALWAYS TRIGGER",
                _ => continue,
            };
            self.attach
                .push(format!("ALTER TABLE {table} {state} {name}"));
        }
        Ok(())
    }

    /// The owner, grants (of the relation and of its columns) and comments of `from`,
    /// for the relation of the same name after the renames; for a table (`to` is its
    /// oid), only the comments `to` lacks, and the grants of the columns it has.
    async fn decorations(&mut self, side: &Side, from: u32, to: u32, kind: &str) -> Result<()> {
        let rows = side
            .client
            .query(
                "SELECT 'ALTER ' || $3 || ' ' || $1::oid::regclass::text || ' OWNER TO ' || quote_ident(pg_get_userbyid(c.relowner))
                   FROM pg_class c WHERE c.oid = $1
                    AND c.relowner <> COALESCE((SELECT relowner FROM pg_class WHERE oid = $2), (SELECT oid FROM pg_roles WHERE rolname = current_user))
                 UNION ALL
                 SELECT format('GRANT %s ON %s TO %s%s', a.privilege_type, $1::oid::regclass,
                               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
                               CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
                   FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = $1 AND a.grantee <> c.relowner
                 UNION ALL
                 SELECT format('GRANT %s (%I) ON %s TO %s%s', a.privilege_type, att.attname, $1::oid::regclass,
                               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
                               CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
                   FROM pg_attribute att, aclexplode(att.attacl) a
                  WHERE att.attrelid = $1 AND att.attnum > 0 AND NOT att.attisdropped
                    AND ($2 = 0::oid OR EXISTS (SELECT FROM pg_attribute n WHERE n.attrelid = $2 AND n.attname = att.attname AND NOT n.attisdropped))
                 UNION ALL
                 SELECT 'COMMENT ON ' || $3 || ' ' || $1::oid::regclass::text || ' IS ' || quote_literal(d.description)
                   FROM pg_description d
                  WHERE d.objoid = $1 AND d.classoid = 'pg_class'::regclass AND d.objsubid = 0
                    AND NOT EXISTS (SELECT FROM pg_description n WHERE n.objoid = $2 AND n.classoid = 'pg_class'::regclass AND n.objsubid = 0)
                 UNION ALL
                 SELECT format('COMMENT ON COLUMN %s.%I IS %L', $1::oid::regclass, att.attname, d.description)
                   FROM pg_description d JOIN pg_attribute att ON att.attrelid = d.objoid AND att.attnum = d.objsubid
                  WHERE d.objoid = $1 AND d.classoid = 'pg_class'::regclass AND d.objsubid > 0
                    AND ($2 = 0::oid OR EXISTS (SELECT FROM pg_attribute n WHERE n.attrelid = $2 AND n.attname = att.attname AND NOT n.attisdropped
                          AND NOT EXISTS (SELECT FROM pg_description nd WHERE nd.objoid = $2 AND nd.classoid = 'pg_class'::regclass AND nd.objsubid = n.attnum)))",
                &[&from, &to, &kind],
            )
            .await
            .map_err(side.failed("cannot read the owner, grants and comments of the source"))?;
        self.attach.extend(rows.iter().map(|r| r.get(0)));
        Ok(())
    }

    /// Row-level security and the policies `to` has none of the same name of.
    async fn policies(&mut self, side: &Side, from: u32, to: u32) -> Result<()> {
        let rows = side
            .client
            .query(
                "SELECT 'ALTER TABLE ' || $1::oid::regclass::text || ' ENABLE ROW LEVEL SECURITY'
                   FROM pg_class WHERE oid = $1 AND relrowsecurity
                 UNION ALL
                 SELECT 'ALTER TABLE ' || $1::oid::regclass::text || ' FORCE ROW LEVEL SECURITY'
                   FROM pg_class WHERE oid = $1 AND relforcerowsecurity
                 UNION ALL
                 SELECT format('CREATE POLICY %I ON %s AS %s FOR %s TO %s%s%s', p.polname, $1::oid::regclass,
                          CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
                          CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                                        WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
                          (SELECT string_agg(CASE WHEN r = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r)) END, ', ')
                             FROM unnest(p.polroles) r),
                          ' USING (' || pg_get_expr(p.polqual, p.polrelid) || ')',
                          ' WITH CHECK (' || pg_get_expr(p.polwithcheck, p.polrelid) || ')')
                   FROM pg_policy p
                  WHERE p.polrelid = $1
                    AND NOT EXISTS (SELECT FROM pg_policy n WHERE n.polrelid = $2 AND n.polname = p.polname)",
                &[&from, &to],
            )
            .await
            .map_err(side.failed("cannot read the policies of the source"))?;
        self.attach.extend(rows.iter().map(|r| r.get(0)));
        Ok(())
    }

    /// The publications of `from` (switchyard's own aside): the table taking the name
    /// takes its place in them, with the same column list and row filter.
    async fn publications(&mut self, side: &Side, from: u32) -> Result<()> {
        let rows = side
            .client
            .query(
                "SELECT quote_ident(p.pubname), $1::oid::regclass::text,
                        COALESCE(' (' || (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
                                            FROM pg_attribute a WHERE a.attrelid = r.prrelid AND a.attnum = ANY (r.prattrs)) || ')', '')
                        || COALESCE(' WHERE (' || pg_get_expr(r.prqual, r.prrelid) || ')', '')
                   FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
                  WHERE r.prrelid = $1 AND p.pubname NOT LIKE 'switchyard%'
                  ORDER BY 1",
                &[&from],
            )
            .await
            .map_err(side.failed("cannot read the publications of the source"))?;
        for row in rows {
            let (publication, table, filter): (String, String, String) =
                (row.get(0), row.get(1), row.get(2));
            self.detach.push(format!(
                "ALTER PUBLICATION {publication} DROP TABLE {table}"
            ));
            self.attach.push(format!(
                "ALTER PUBLICATION {publication} ADD TABLE {table}{filter}"
            ));
        }
        Ok(())
    }

    /// Materialized views reading `from` directly: built again on the new table under
    /// another name after the commit, then swapped in with their indexes, owner,
    /// grants and comments (until then they keep the rows they had).
    async fn materialized_views(&mut self, side: &Side, from: u32) -> Result<()> {
        let rows = side
            .client
            .query(
                "SELECT DISTINCT c.oid, c.oid::regclass::text, quote_ident(c.relname),
                        quote_ident(n.nspname) || '.' || quote_ident(c.relname || $2), pg_get_viewdef(c.oid),
                        ARRAY(SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indrelid = c.oid ORDER BY 1)
                   FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
                   JOIN pg_class c ON c.oid = r.ev_class AND c.relkind = 'm'
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = $1
                  ORDER BY 2",
                &[&from, &REBUILT],
            )
            .await
            .map_err(side.failed("cannot read the materialized views of the source"))?;
        for row in rows {
            let (oid, name, bare, rebuilt, definition): (u32, String, String, String, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
            let indexes: Vec<String> = row.get(5);
            let mut decorations = Carry::default();
            decorations
                .decorations(side, oid, 0, "MATERIALIZED VIEW")
                .await?;
            let mut swap = vec![
                format!("DROP MATERIALIZED VIEW {name}"),
                format!("ALTER MATERIALIZED VIEW {rebuilt} RENAME TO {bare}"),
            ];
            swap.extend(indexes);
            swap.extend(decorations.attach);
            self.finish.push(vec![format!(
                "DROP MATERIALIZED VIEW IF EXISTS {rebuilt}; CREATE MATERIALIZED VIEW {rebuilt} AS {}",
                definition.trim_end().trim_end_matches(';')
            )]);
            self.finish.push(swap);
        }
        Ok(())
    }
}
