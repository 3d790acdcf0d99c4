//! Splits a SQL script into statements, for scripts that must run one statement at a
//! time (`-- switchyard:no-transaction`: PostgreSQL refuses `CREATE INDEX CONCURRENTLY`
//! inside a multi-statement string). Semicolons inside quotes, quoted identifiers,
//! dollar-quoted bodies and comments do not split.

/// The statements of `sql`, trimmed, without empty or comment-only ones.
pub fn split_statements(sql: &str) -> Vec<String> {
    let bytes = sql.as_bytes();
    let mut statements = Vec::new();
    let mut start = 0;
    let mut has_code = false;
    let mut i = 0;
    while i < bytes.len() {
        let skip_to = match bytes[i] {
            b'\'' => {
                let escapes = i > 0
                    && matches!(bytes[i - 1], b'e' | b'E')
                    && !is_ident_byte(bytes.get(i.wrapping_sub(2)).copied());
                Some(end_of_quoted(bytes, i, b'\'', escapes))
            }
            b'"' => Some(end_of_quoted(bytes, i, b'"', false)),
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                let end = sql[i..].find('\n').map_or(bytes.len(), |n| i + n + 1);
                i = end;
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = end_of_block_comment(bytes, i);
                continue;
            }
            b'$' => dollar_tag(sql, i).map(|tag| {
                sql[i + tag.len()..]
                    .find(tag)
                    .map_or(bytes.len(), |n| i + tag.len() + n + tag.len())
            }),
            b';' => {
                if has_code {
                    statements.push(sql[start..i].trim().to_string());
                }
                start = i + 1;
                has_code = false;
                i += 1;
                continue;
            }
            _ => None,
        };
        if !bytes[i].is_ascii_whitespace() {
            has_code = true;
        }
        i = skip_to.unwrap_or(i + 1);
    }
    if has_code {
        statements.push(sql[start..].trim().to_string());
    }
    // Code was judged by ASCII whitespace; Unicode spaces alone are no statement either.
    statements.retain(|statement| !statement.is_empty());
    statements
}

fn is_ident_byte(byte: Option<u8>) -> bool {
    byte.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The index just past the closing quote (a doubled quote is an escaped one).
fn end_of_quoted(bytes: &[u8], open: usize, quote: u8, backslash_escapes: bool) -> usize {
    let mut i = open + 1;
    while i < bytes.len() {
        if backslash_escapes && bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    bytes.len()
}

/// The index just past a (possibly nested) `/* … */` comment.
fn end_of_block_comment(bytes: &[u8], open: usize) -> usize {
    let mut depth = 0;
    let mut i = open;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

/// `$tag$` or `$$` starting at `i`, unless the `$` belongs to an identifier or a
/// positional parameter (`$1`).
fn dollar_tag(sql: &str, i: usize) -> Option<&str> {
    let bytes = sql.as_bytes();
    if i > 0 && is_ident_byte(Some(bytes[i - 1])) {
        return None;
    }
    let rest = &sql[i + 1..];
    let len = rest.find('$')?;
    let tag = &rest[..len];
    let valid = tag
        .chars()
        .next()
        .is_none_or(|c| c.is_alphabetic() || c == '_')
        && tag.chars().all(|c| c.is_alphanumeric() || c == '_');
    valid.then(|| &sql[i..i + len + 2])
}

#[cfg(test)]
mod tests {
    use super::split_statements;

    #[test]
    fn splits_on_top_level_semicolons_only() {
        let sql = r#"
            -- a comment; with a semicolon
            CREATE INDEX CONCURRENTLY a ON t (x);
            /* block; /* nested; */ still comment; */
            INSERT INTO t VALUES ('semi;colon', 'it''s; here', E'back\'slash;');
            CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;
            DO $$ BEGIN PERFORM 1; END $$;
            SELECT "weird;name" FROM t
        "#;
        let statements = split_statements(sql);
        assert_eq!(statements.len(), 5, "{statements:#?}");
        assert_eq!(
            statements[0],
            "-- a comment; with a semicolon\n            CREATE INDEX CONCURRENTLY a ON t (x)"
        );
        assert!(statements[1].ends_with(r"E'back\'slash;')"));
        assert!(statements[2].ends_with("$body$ LANGUAGE sql"));
        assert_eq!(statements[3], "DO $$ BEGIN PERFORM 1; END $$");
        assert_eq!(statements[4], "SELECT \"weird;name\" FROM t");
    }

    #[test]
    fn comment_only_and_empty_parts_are_dropped() {
        assert!(split_statements("-- switchyard:no-transaction\n;;  \n-- done\n").is_empty());
    }

    #[test]
    fn positional_parameters_are_not_dollar_quotes() {
        assert_eq!(split_statements("SELECT $1; SELECT a$b FROM t;").len(), 2);
    }
}
