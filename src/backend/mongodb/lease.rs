//! Lease records ([`crate::backend::lease`]) in MongoDB: one document per lock in
//! `switchyard_locks` (`{_id: "migrations"}`, `{_id: "job:<name>"}`). Taking one is a
//! single `findAndModify` that matches only an expired lease or one this run owns,
//! upserting when there is none; a live lease of another run makes the upsert collide
//! on `_id`, which means "held".

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::{Collection, Database};

use super::{error_code, store_error, DUPLICATE_KEY};
use crate::backend::lease::{Lease, LeaseRecord, LeaseStore};
use crate::error::{Error, Result};
use crate::secret::SecretUrl;

const COLLECTION: &str = "switchyard_locks";

/// The lease `id` in `database`'s `switchyard_locks`. `name` and `url` are the
/// configured database's, for messages.
pub fn lease(database: &Database, name: &str, url: &SecretUrl, id: &str, holder: String) -> Lease {
    let store = MongoLeases {
        locks: database.collection(COLLECTION),
        name: name.to_string(),
        url: url.clone(),
    };
    Lease::new(Arc::new(store), id, holder)
}

struct MongoLeases {
    locks: Collection<Document>,
    name: String,
    url: SecretUrl,
}

impl MongoLeases {
    fn error(&self, e: mongodb::error::Error) -> Error {
        store_error(&self.name, &self.url, "cannot keep a lock's lease", e)
    }
}

fn date(at: chrono::DateTime<Utc>) -> DateTime {
    DateTime::from_millis(at.timestamp_millis())
}

fn fields(lease: &LeaseRecord) -> Document {
    doc! {
        "owner": &lease.owner,
        "holder": &lease.holder,
        "host": &lease.host,
        "pid": lease.pid,
        "taken_at": date(lease.taken_at),
        "expires_at": date(lease.expires_at),
    }
}

#[async_trait]
impl LeaseStore for MongoLeases {
    async fn take(
        &self,
        id: &str,
        lease: &LeaseRecord,
        now: chrono::DateTime<Utc>,
    ) -> Result<bool> {
        let taken = self
            .locks
            .find_one_and_update(
                doc! {"_id": id, "$or": [{"expires_at": {"$lt": date(now)}}, {"owner": &lease.owner}]},
                doc! {"$set": fields(lease)},
            )
            .upsert(true)
            .await;
        match taken {
            Ok(_) => Ok(true),
            Err(e) if error_code(&e) == Some(DUPLICATE_KEY) => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn replace(&self, id: &str, previous: &str, lease: &LeaseRecord) -> Result<bool> {
        let replaced = self
            .locks
            .update_one(
                doc! {"_id": id, "owner": previous},
                doc! {"$set": fields(lease)},
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(replaced.modified_count == 1)
    }

    async fn read(&self, id: &str) -> Result<Option<LeaseRecord>> {
        let found = self
            .locks
            .find_one(doc! {"_id": id})
            .await
            .map_err(|e| self.error(e))?;
        let at = |lease: &Document, field: &str| {
            lease
                .get_datetime(field)
                .ok()
                .and_then(|at| chrono::DateTime::from_timestamp_millis(at.timestamp_millis()))
                .unwrap_or_default()
        };
        Ok(found.map(|lease| LeaseRecord {
            owner: lease.get_str("owner").unwrap_or_default().to_string(),
            holder: lease.get_str("holder").unwrap_or("another run").to_string(),
            host: lease.get_str("host").unwrap_or_default().to_string(),
            pid: lease.get_i64("pid").unwrap_or_default(),
            taken_at: at(&lease, "taken_at"),
            expires_at: at(&lease, "expires_at"),
        }))
    }

    async fn renew(
        &self,
        id: &str,
        owner: &str,
        expires_at: chrono::DateTime<Utc>,
    ) -> Result<bool> {
        let renewed = self
            .locks
            .update_one(
                doc! {"_id": id, "owner": owner},
                doc! {"$set": {"expires_at": date(expires_at)}},
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(renewed.matched_count == 1)
    }

    async fn release(&self, id: &str, owner: &str) -> Result<()> {
        self.locks
            .delete_one(doc! {"_id": id, "owner": owner})
            .await
            .map(drop)
            .map_err(|e| self.error(e))
    }
}
