//! Tables as jobs see them: names (always quoted when written into SQL, so nothing in a
//! job file can inject SQL), columns with their types, and the batch key.

use tokio_postgres::Client;

use crate::engine::row::{Field, Key, Schema};
use crate::error::{Error, Result};

/// `ident("a\"b")` → `"a""b"`: a quoted identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `literal("it's")` → `'it''s'`: a quoted string constant.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `schema.table` or `table`, as written in a job file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

impl TableName {
    pub fn parse(text: &str) -> TableName {
        match text.split_once('.') {
            Some((schema, name)) => TableName {
                schema: Some(schema.to_string()),
                name: name.to_string(),
            },
            None => TableName {
                schema: None,
                name: text.to_string(),
            },
        }
    }

    /// The quoted name for SQL.
    pub fn sql(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", ident(schema), ident(&self.name)),
            None => ident(&self.name),
        }
    }

    /// The same schema, another name.
    pub fn sibling(&self, name: &str) -> TableName {
        TableName {
            schema: self.schema.clone(),
            name: name.to_string(),
        }
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// `format_type` of the column, used to cast text values back.
    pub type_sql: String,
    /// `GENERATED ALWAYS AS IDENTITY`: inserts take its value only with `OVERRIDING
    /// SYSTEM VALUE`, and an update may set it to `DEFAULT` only.
    pub always_identity: bool,
}

impl Column {
    /// Whether binary COPY of this column's type is the same on every server: a
    /// built-in type (or an array of one), whose binary form names no server-local
    /// type id.
    pub fn portable_binary(&self) -> bool {
        const BUILT_IN: &[&str] = &[
            "smallint",
            "integer",
            "bigint",
            "real",
            "double precision",
            "numeric",
            "boolean",
            "text",
            "character varying",
            "character",
            "bytea",
            "date",
            "time without time zone",
            "timestamp without time zone",
            "timestamp with time zone",
            "interval",
            "uuid",
            "json",
            "jsonb",
            "inet",
            "cidr",
            "macaddr",
            "oid",
        ];
        let base = self.type_sql.trim_end_matches("[]");
        let base = base.split('(').next().unwrap_or(base).trim();
        BUILT_IN.contains(&base)
    }
}

#[derive(Debug, Clone)]
pub struct TableInfo {
    pub name: TableName,
    pub oid: u32,
    /// Columns in attribute order, without generated or dropped ones.
    pub columns: Vec<Column>,
    /// Stored generated columns, in attribute order.
    pub computed: Vec<Column>,
    /// The batch key, in order.
    pub key: Vec<Column>,
}

/// A column that takes its values from a sequence (see [`column_sequences`]).
pub struct ColumnSequence {
    pub column: String,
    pub sequence: String,
    /// The last value it handed out; `None` before its first.
    pub last_value: Option<i64>,
}

/// Each column of `table` that takes its values from a sequence, with that sequence: an
/// identity column's own, or the one its default calls (`serial`, `nextval(…)`).
pub async fn column_sequences(
    client: &Client,
    database: &str,
    table: &TableName,
) -> Result<Vec<ColumnSequence>> {
    client
        .query(
            "SELECT a.attname::text, s.oid::regclass::text, pg_sequence_last_value(s.oid)
             FROM pg_attribute a
             JOIN pg_class s ON s.relkind = 'S' AND s.oid = COALESCE(
                 CASE WHEN a.attidentity <> '' THEN pg_get_serial_sequence($1, a.attname::text)::regclass::oid END,
                 (SELECT d.refobjid FROM pg_attrdef ad
                  JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
                   AND d.refclassid = 'pg_class'::regclass
                  JOIN pg_class r ON r.oid = d.refobjid AND r.relkind = 'S'
                  WHERE ad.adrelid = a.attrelid AND ad.adnum = a.attnum LIMIT 1))
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            &[&table.sql()],
        )
        .await
        .map(|rows| {
            rows.iter()
                .map(|r| ColumnSequence {
                    column: r.get(0),
                    sequence: r.get(1),
                    last_value: r.get(2),
                })
                .collect()
        })
        .map_err(|e| Error::database(database, format!("cannot read the sequences of {table}"), e))
}

impl TableInfo {
    /// Reads a table's columns; the key is `key` when given, else the primary key. The
    /// key must be covered by a unique index, or batches could skip rows.
    pub async fn load(
        client: &Client,
        database: &str,
        name: &TableName,
        key: Option<&[String]>,
    ) -> Result<TableInfo> {
        let failed = |e| Error::database(database, format!("cannot read table {name}"), e);
        let oid: Option<u32> = client
            .query_one("SELECT to_regclass($1)::oid", &[&name.sql()])
            .await
            .map_err(failed)?
            .get(0);
        let oid = oid.ok_or_else(|| {
            Error::Refused(format!(
                "table {name} does not exist in database `{database}`"
            ))
        })?;
        let mut columns = Vec::new();
        let mut computed = Vec::new();
        for row in client
            .query(
                "SELECT attname::text, format_type(atttypid, atttypmod), attidentity = 'a', attgenerated <> ''
                 FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                &[&oid],
            )
            .await
            .map_err(failed)?
        {
            let column = Column {
                name: row.get(0),
                type_sql: row.get(1),
                always_identity: row.get(2),
            };
            if row.get(3) {
                computed.push(column);
            } else {
                columns.push(column);
            }
        }
        let key_names: Vec<String> = match key {
            Some(key) => key.to_vec(),
            None => client
                .query(
                    "SELECT a.attname::text FROM pg_index i
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                     WHERE i.indrelid = $1 AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)",
                    &[&oid],
                )
                .await
                .map_err(failed)?
                .iter()
                .map(|row| row.get(0))
                .collect(),
        };
        if key_names.is_empty() {
            return Err(Error::Refused(format!(
                "table {name} has no primary key: name a unique key in the job file (`key = \"id\"` under [source])"
            )));
        }
        let key = key_names
            .iter()
            .map(|k| {
                columns
                    .iter()
                    .find(|c| &c.name == k)
                    .cloned()
                    .ok_or_else(|| {
                        Error::Refused(format!("table {name} has no column `{k}` (the key)"))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let info = TableInfo {
            name: name.clone(),
            oid,
            columns,
            computed,
            key,
        };
        info.require_unique_key(client, database).await?;
        Ok(info)
    }

    /// Refuses a key that no unique index covers exactly.
    pub async fn require_unique_key(&self, client: &Client, database: &str) -> Result<()> {
        let names = self.key_names();
        let unique: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL
                   AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
                        WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)) =
                       (SELECT array_agg(k ORDER BY k) FROM unnest($2::text[]) AS k)
                   AND i.indnkeyatts = cardinality($2::text[]))",
                &[&self.oid, &names],
            )
            .await
            .map_err(|e| Error::database(database, format!("cannot read the indexes of {}", self.name), e))?
            .get(0);
        if unique {
            Ok(())
        } else {
            Err(Error::Refused(format!(
                "table {}: no unique index on ({}): the batch key must be unique (add a unique index or primary key)",
                self.name,
                names.join(", ")
            )))
        }
    }

    /// The key's column names, in order.
    pub fn key_names(&self) -> Vec<String> {
        self.key.iter().map(|c| c.name.clone()).collect()
    }

    /// Positions of the key columns among the columns.
    pub fn key_positions(&self) -> Vec<usize> {
        self.key
            .iter()
            .map(|k| {
                self.columns
                    .iter()
                    .position(|c| c.name == k.name)
                    .expect("key columns are columns")
            })
            .collect()
    }

    /// The table's rows as they travel between a source and a sink.
    pub fn schema(&self) -> Schema {
        Schema {
            fields: self
                .columns
                .iter()
                .map(|c| Field {
                    name: c.name.clone(),
                    type_name: c.type_sql.clone(),
                })
                .collect(),
            key: self.key_positions(),
            computed: self
                .computed
                .iter()
                .map(|c| Field {
                    name: c.name.clone(),
                    type_name: c.type_sql.clone(),
                })
                .collect(),
        }
    }

    /// The key range condition with the bounds written as constants (for statements
    /// that take no parameters, such as `COPY`).
    pub fn range_condition_literal(
        &self,
        qualifier: Option<&str>,
        lower: Option<&Key>,
        upper: Option<&Key>,
    ) -> String {
        let keys = format!("({})", self.key_list(qualifier));
        let values = |key: &Key| -> String {
            let items: Vec<String> = self
                .key
                .iter()
                .zip(key)
                .map(|(c, v)| format!("{}::text::{}", literal(v), c.type_sql))
                .collect();
            format!("({})", items.join(", "))
        };
        let mut parts = vec!["true".to_string()];
        if let Some(lower) = lower {
            parts.push(format!("{keys} > {}", values(lower)));
        }
        if let Some(upper) = upper {
            parts.push(format!("{keys} <= {}", values(upper)));
        }
        parts.join(" AND ")
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Why `[transform] columns` cannot write column `name`: it is missing, or the
    /// database computes it.
    pub fn unwritable(&self, name: &str) -> Option<String> {
        if self.computed.iter().any(|c| c.name == name) {
            Some(format!(
                "column `{name}` of {} is generated: the database computes it",
                self.name
            ))
        } else if self.column(name).is_none() {
            Some(format!(
                "table {} has no column `{name}` (add it in [expand] sql)",
                self.name
            ))
        } else {
            None
        }
    }

    /// `"a", "b"`, optionally qualified: `s."a", s."b"`.
    pub fn key_list(&self, qualifier: Option<&str>) -> String {
        let prefix = qualifier.map(|q| format!("{q}.")).unwrap_or_default();
        self.key
            .iter()
            .map(|c| format!("{prefix}{}", ident(&c.name)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `($n::text::t1, $n+1::text::t2)` for key values passed as text from `$first`.
    pub fn key_params(&self, first: usize) -> String {
        let params: Vec<String> = self
            .key
            .iter()
            .enumerate()
            .map(|(i, c)| format!("${}::text::{}", first + i, c.type_sql))
            .collect();
        format!("({})", params.join(", "))
    }

    /// The key range condition for a batch: after `lower` (exclusive) and up to `upper`
    /// (inclusive), with parameters numbered from `first`. Returns the SQL and the next
    /// free parameter number.
    pub fn range_condition(
        &self,
        qualifier: Option<&str>,
        lower: bool,
        upper: bool,
        first: usize,
    ) -> (String, usize) {
        let keys = format!("({})", self.key_list(qualifier));
        let mut parts = vec!["true".to_string()];
        let mut next = first;
        if lower {
            parts.push(format!("{keys} > {}", self.key_params(next)));
            next += self.key.len();
        }
        if upper {
            parts.push(format!("{keys} <= {}", self.key_params(next)));
            next += self.key.len();
        }
        (parts.join(" AND "), next)
    }

    /// `ARRAY["a"::text, "b"::text]`, the key in checkpoint form.
    pub fn key_text_array(&self, qualifier: Option<&str>) -> String {
        let prefix = qualifier.map(|q| format!("{q}.")).unwrap_or_default();
        let items: Vec<String> = self
            .key
            .iter()
            .map(|c| format!("{prefix}{}::text", ident(&c.name)))
            .collect();
        format!("ARRAY[{}]", items.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_always_quoted() {
        assert_eq!(
            TableName::parse("public.accounts").sql(),
            "\"public\".\"accounts\""
        );
        assert_eq!(
            TableName::parse("x\"; DROP TABLE y; --").sql(),
            "\"x\"\"; DROP TABLE y; --\""
        );
        assert_eq!(
            TableName::parse("public.accounts")
                .sibling("accounts_old")
                .to_string(),
            "public.accounts_old"
        );
    }

    #[test]
    fn range_conditions_number_their_parameters() {
        let column = |name: &str, type_sql: &str| Column {
            name: name.into(),
            type_sql: type_sql.into(),
            always_identity: false,
        };
        let table = TableInfo {
            name: TableName::parse("t"),
            oid: 1,
            columns: vec![column("a", "integer"), column("b", "text")],
            computed: Vec::new(),
            key: vec![column("a", "integer"), column("b", "text")],
        };
        let (sql, next) = table.range_condition(Some("s"), true, true, 3);
        assert_eq!(
            sql,
            "true AND (s.\"a\", s.\"b\") > ($3::text::integer, $4::text::text) AND (s.\"a\", s.\"b\") <= ($5::text::integer, $6::text::text)"
        );
        assert_eq!(next, 7);
    }
}
