//! Lease records ([`crate::backend::lease`]) in Elasticsearch: one document per lock in
//! the index `switchyard-locks`. Every change is conditional: taking a free lease is a
//! `_create` (refused with 409 when one exists); taking over, renewing and releasing
//! write only if the document is still at the `_seq_no` and `_primary_term` just read,
//! so two runs never both believe they hold it.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use elasticsearch::http::Method;
use serde_json::{json, Value};

use super::{path_segment, Es};
use crate::backend::lease::{Lease, LeaseRecord, LeaseStore};
use crate::error::Result;

const INDEX: &str = "switchyard-locks";

/// The lease `id` in `es`'s `switchyard-locks`.
pub fn lease(es: &Es, id: &str, holder: String) -> Lease {
    Lease::new(Arc::new(ElasticLeases { es: es.clone() }), id, holder)
}

struct ElasticLeases {
    es: Es,
}

/// A lease as stored, with the version it was read at.
struct Stored {
    lease: LeaseRecord,
    seq_no: u64,
    primary_term: u64,
}

fn document(lease: &LeaseRecord) -> Value {
    json!({
        "owner": lease.owner,
        "holder": lease.holder,
        "host": lease.host,
        "pid": lease.pid,
        "taken_at": lease.taken_at.to_rfc3339(),
        "expires_at": lease.expires_at.to_rfc3339(),
    })
}

impl ElasticLeases {
    fn path(id: &str, action: &str) -> String {
        format!("/{INDEX}/{action}/{}?refresh=true", path_segment(id))
    }

    async fn stored(&self, id: &str) -> Result<Option<Stored>> {
        let reply = self
            .es
            .call(
                Method::Get,
                &format!("/{INDEX}/_doc/{}", path_segment(id)),
                None,
            )
            .await?;
        if reply.status == 404 {
            return Ok(None);
        }
        if !reply.is_success() {
            return Err(self.es.refused("cannot read a lock's lease", &reply));
        }
        let source = &reply.body["_source"];
        let text = |field: &str| source[field].as_str().unwrap_or_default().to_string();
        let at = |field: &str| {
            DateTime::parse_from_rfc3339(source[field].as_str().unwrap_or_default())
                .map(|at| at.with_timezone(&Utc))
                .unwrap_or_default()
        };
        Ok(Some(Stored {
            lease: LeaseRecord {
                owner: text("owner"),
                holder: text("holder"),
                host: text("host"),
                pid: source["pid"].as_i64().unwrap_or_default(),
                taken_at: at("taken_at"),
                expires_at: at("expires_at"),
            },
            seq_no: reply.body["_seq_no"].as_u64().unwrap_or_default(),
            primary_term: reply.body["_primary_term"].as_u64().unwrap_or_default(),
        }))
    }

    /// Writes `lease` over `stored` if nobody wrote in between.
    async fn overwrite(&self, id: &str, stored: &Stored, lease: &LeaseRecord) -> Result<bool> {
        let path = format!(
            "{}&if_seq_no={}&if_primary_term={}",
            Self::path(id, "_doc"),
            stored.seq_no,
            stored.primary_term
        );
        let reply = self
            .es
            .call(Method::Put, &path, Some(&document(lease)))
            .await?;
        match reply.status {
            200 | 201 => Ok(true),
            409 => Ok(false),
            _ => Err(self.es.refused("cannot write a lock's lease", &reply)),
        }
    }
}

#[async_trait]
impl LeaseStore for ElasticLeases {
    async fn take(&self, id: &str, lease: &LeaseRecord, now: DateTime<Utc>) -> Result<bool> {
        let created = self
            .es
            .call(
                Method::Put,
                &Self::path(id, "_create"),
                Some(&document(lease)),
            )
            .await?;
        match created.status {
            200 | 201 => return Ok(true),
            409 => {}
            _ => return Err(self.es.refused("cannot take a lock's lease", &created)),
        }
        match self.stored(id).await? {
            Some(stored) if stored.lease.expires_at < now || stored.lease.owner == lease.owner => {
                self.overwrite(id, &stored, lease).await
            }
            _ => Ok(false),
        }
    }

    async fn replace(&self, id: &str, previous: &str, lease: &LeaseRecord) -> Result<bool> {
        match self.stored(id).await? {
            Some(stored) if stored.lease.owner == previous => {
                self.overwrite(id, &stored, lease).await
            }
            _ => Ok(false),
        }
    }

    async fn read(&self, id: &str) -> Result<Option<LeaseRecord>> {
        Ok(self.stored(id).await?.map(|stored| stored.lease))
    }

    async fn renew(&self, id: &str, owner: &str, expires_at: DateTime<Utc>) -> Result<bool> {
        match self.stored(id).await? {
            Some(stored) if stored.lease.owner == owner => {
                let renewed = LeaseRecord {
                    expires_at,
                    ..stored.lease.clone()
                };
                self.overwrite(id, &stored, &renewed).await
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, id: &str, owner: &str) -> Result<()> {
        let Some(stored) = self.stored(id).await? else {
            return Ok(());
        };
        if stored.lease.owner != owner {
            return Ok(());
        }
        let path = format!(
            "{}&if_seq_no={}&if_primary_term={}",
            Self::path(id, "_doc"),
            stored.seq_no,
            stored.primary_term
        );
        let reply = self.es.call(Method::Delete, &path, None).await?;
        match reply.status {
            200 | 404 | 409 => Ok(()),
            _ => Err(self.es.refused("cannot release a lock's lease", &reply)),
        }
    }
}
