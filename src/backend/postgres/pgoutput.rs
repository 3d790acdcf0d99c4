//! Decoding of `pgoutput` logical replication messages (protocol version 1), as the
//! replication stream ([`super::replication`]) delivers them: one message per row.
//!
//! Only what catch-up needs is kept: transaction boundaries with their commit LSN and
//! time, relation descriptions, and row changes with values in text form. A TRUNCATE is
//! surfaced so that the caller can refuse it (it cannot be replayed row by row).

use chrono::{DateTime, TimeZone, Utc};

/// One column value of a replicated row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// A TOASTed value that the update did not change, so the server did not send it.
    UnchangedToast,
    Text(String),
}

/// A replicated message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Begin {
        final_lsn: u64,
        committed_at: DateTime<Utc>,
    },
    Commit {
        end_lsn: u64,
    },
    Relation {
        id: u32,
        schema: String,
        name: String,
        columns: Vec<String>,
    },
    Insert {
        relation: u32,
        new: Vec<Value>,
    },
    /// `old` is sent when the key changed (key columns only, the rest null) or, with
    /// REPLICA IDENTITY FULL, always (`OldRow::Full`).
    Update {
        relation: u32,
        old: Option<OldRow>,
        new: Vec<Value>,
    },
    Delete {
        relation: u32,
        old_key: Vec<Value>,
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// Types, origins and logical messages: not needed for catch-up.
    Other,
}

impl Message {
    /// A transaction's start: its commit's LSN and time (microseconds since 2000-01-01,
    /// as the server counts).
    pub fn begin(final_lsn: u64, commit_micros: i64) -> Message {
        Message::Begin {
            final_lsn,
            committed_at: Utc
                .timestamp_micros(commit_micros.saturating_add(POSTGRES_EPOCH_MICROS))
                .single()
                .unwrap_or_else(Utc::now),
        }
    }
}

/// The old version of an updated row, as the server sent it.
#[derive(Debug, Clone, PartialEq)]
pub enum OldRow {
    /// Key columns only; the others are `Null` placeholders.
    Key(Vec<Value>),
    /// Every column (REPLICA IDENTITY FULL).
    Full(Vec<Value>),
}

impl OldRow {
    pub fn values(&self) -> &[Value] {
        match self {
            OldRow::Key(values) | OldRow::Full(values) => values,
        }
    }
}

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or("message ends early")?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("two bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("four bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("eight bytes"),
        ))
    }
    fn string(&mut self) -> Result<String, String> {
        let rest = &self.bytes[self.at..];
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or("string without terminator")?;
        let text = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.at += end + 1;
        Ok(text)
    }
    fn tuple(&mut self) -> Result<Vec<Value>, String> {
        let count = self.u16()?;
        (0..count)
            .map(|_| match self.u8()? {
                b'n' => Ok(Value::Null),
                b'u' => Ok(Value::UnchangedToast),
                b't' => {
                    let len = self.u32()? as usize;
                    Ok(Value::Text(
                        String::from_utf8_lossy(self.take(len)?).into_owned(),
                    ))
                }
                other => Err(format!("unknown tuple value kind {:?}", other as char)),
            })
            .collect()
    }
}

/// Decodes one message.
pub fn decode(bytes: &[u8]) -> Result<Message, String> {
    let mut r = Reader { bytes, at: 0 };
    let message = match r.u8()? {
        b'B' => {
            let final_lsn = r.u64()?;
            Message::begin(final_lsn, r.u64()? as i64)
        }
        b'C' => {
            let _flags = r.u8()?;
            let _commit_lsn = r.u64()?;
            Message::Commit { end_lsn: r.u64()? }
        }
        b'R' => {
            let id = r.u32()?;
            let schema = r.string()?;
            let name = r.string()?;
            let _replica_identity = r.u8()?;
            let count = r.u16()?;
            let mut columns = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let _flags = r.u8()?;
                columns.push(r.string()?);
                let _type_oid = r.u32()?;
                let _type_modifier = r.u32()?;
            }
            Message::Relation {
                id,
                schema,
                name,
                columns,
            }
        }
        b'I' => {
            let relation = r.u32()?;
            expect(&mut r, b'N')?;
            Message::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let mut old = None;
            let mut marker = r.u8()?;
            if marker == b'K' {
                old = Some(OldRow::Key(r.tuple()?));
                marker = r.u8()?;
            } else if marker == b'O' {
                old = Some(OldRow::Full(r.tuple()?));
                marker = r.u8()?;
            }
            if marker != b'N' {
                return Err(format!(
                    "update without a new tuple (marker {:?})",
                    marker as char
                ));
            }
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            let marker = r.u8()?;
            if marker != b'K' && marker != b'O' {
                return Err(format!(
                    "delete without an old tuple (marker {:?})",
                    marker as char
                ));
            }
            Message::Delete {
                relation,
                old_key: r.tuple()?,
            }
        }
        b'T' => {
            let count = r.u32()?;
            let _options = r.u8()?;
            Message::Truncate {
                relations: (0..count).map(|_| r.u32()).collect::<Result<_, _>>()?,
            }
        }
        _ => Message::Other,
    };
    Ok(message)
}

fn expect(r: &mut Reader<'_>, marker: u8) -> Result<(), String> {
    let found = r.u8()?;
    if found == marker {
        Ok(())
    } else {
        Err(format!(
            "expected {:?}, found {:?}",
            marker as char, found as char
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(values: &[Option<&str>]) -> Vec<u8> {
        let mut out = (values.len() as u16).to_be_bytes().to_vec();
        for value in values {
            match value {
                None => out.push(b'n'),
                Some(text) => {
                    out.push(b't');
                    out.extend((text.len() as u32).to_be_bytes());
                    out.extend(text.as_bytes());
                }
            }
        }
        out
    }

    #[test]
    fn decodes_relation_and_row_changes() {
        let mut relation = vec![b'R'];
        relation.extend(16478u32.to_be_bytes());
        relation.extend(b"public\0t1\0d");
        relation.extend(2u16.to_be_bytes());
        relation.extend(b"\x01id\0");
        relation.extend([0, 0, 0, 23, 0xff, 0xff, 0xff, 0xff]);
        relation.extend(b"\x00v\0");
        relation.extend([0, 0, 0, 25, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            decode(&relation).unwrap(),
            Message::Relation {
                id: 16478,
                schema: "public".into(),
                name: "t1".into(),
                columns: vec!["id".into(), "v".into()]
            }
        );

        let mut update = vec![b'U'];
        update.extend(16478u32.to_be_bytes());
        update.push(b'K');
        update.extend(tuple(&[Some("1"), None]));
        update.push(b'N');
        update.extend(tuple(&[Some("2"), Some("x")]));
        assert_eq!(
            decode(&update).unwrap(),
            Message::Update {
                relation: 16478,
                old: Some(OldRow::Key(vec![Value::Text("1".into()), Value::Null])),
                new: vec![Value::Text("2".into()), Value::Text("x".into())],
            }
        );

        let mut delete = vec![b'D'];
        delete.extend(16478u32.to_be_bytes());
        delete.push(b'K');
        delete.extend(tuple(&[Some("2"), None]));
        assert!(matches!(
            decode(&delete).unwrap(),
            Message::Delete {
                relation: 16478,
                ..
            }
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn arbitrary_tails_of_each_message_kind_never_panic(
            kind in proptest::sample::select(b"BCRIUDTYO".to_vec()),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120),
        ) {
            let mut bytes = vec![kind];
            bytes.extend(tail);
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        assert!(decode(b"U\0\0").is_err());
        assert!(decode(b"R\0\0\0\x01public").is_err());
        assert!(decode(b"").is_err());
    }

    #[test]
    fn begin_carries_the_commit_time() {
        let mut begin = vec![b'B'];
        begin.extend(0x2E2D930u64.to_be_bytes());
        begin.extend(0u64.to_be_bytes());
        begin.extend(774u32.to_be_bytes());
        let Message::Begin {
            final_lsn,
            committed_at,
        } = decode(&begin).unwrap()
        else {
            panic!()
        };
        assert_eq!(final_lsn, 0x2E2D930);
        assert_eq!(committed_at.to_rfc3339(), "2000-01-01T00:00:00+00:00");
    }
}
