//! The state store's contract, the same on both implementations: the embedded SQLite
//! file and a PostgreSQL database (SWITCHYARD_TEST_POSTGRES_URL).

mod common;

use std::sync::Arc;

use switchyard::secret::SecretUrl;
use switchyard::state::{self, StateStore};

/// Checkpoints (an Elasticsearch target's) are kept per job, replaced by name, and
/// forgotten for one job only.
fn checkpoints_are_kept_per_job(url: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store: Arc<dyn StateStore> = state::open(&SecretUrl::new(url)).await.unwrap();
        assert_eq!(store.checkpoint("a", "state").await.unwrap(), None);
        store
            .put_checkpoint("a", "state", "{\"n\":1}")
            .await
            .unwrap();
        store
            .put_checkpoint("a", "state", "{\"n\":2}")
            .await
            .unwrap();
        store.put_checkpoint("a", "range:1", "{}").await.unwrap();
        store
            .put_checkpoint("b", "state", "{\"b\":true}")
            .await
            .unwrap();
        assert_eq!(
            store.checkpoint("a", "state").await.unwrap().as_deref(),
            Some("{\"n\":2}")
        );
        store.forget_checkpoints("a").await.unwrap();
        store.forget_checkpoints("a").await.unwrap();
        assert_eq!(store.checkpoint("a", "state").await.unwrap(), None);
        assert_eq!(store.checkpoint("a", "range:1").await.unwrap(), None);
        assert_eq!(
            store.checkpoint("b", "state").await.unwrap().as_deref(),
            Some("{\"b\":true}")
        );
    });
}

#[test]
fn sqlite_keeps_checkpoints_per_job() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("state.db").display());
    checkpoints_are_kept_per_job(&url);
}

#[test]
fn postgresql_keeps_checkpoints_per_job() {
    let db = common::TestDb::new();
    checkpoints_are_kept_per_job(&db.url);
}
