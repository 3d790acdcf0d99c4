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

/// Chunk leases: each chunk to one worker at a time, a greater fence for every lease,
/// an expired lease taken over (and its holder's renewal refused), chunks given back.
fn chunks_are_leased_one_worker_at_a_time(url: &str) {
    use std::time::Duration;
    use switchyard::state::chunks::{ChunkCounts, ChunkStatus};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store: Arc<dyn StateStore> = state::open(&SecretUrl::new(url)).await.unwrap();
        let long = Duration::from_secs(60);
        store
            .add_chunks("j", &[(0, false), (1, false), (2, true)])
            .await
            .unwrap();
        // Recorded chunks keep where they stand.
        store
            .add_chunks("j", &[(0, true), (3, false)])
            .await
            .unwrap();
        let a = store.lease_chunk("j", "a", long).await.unwrap().unwrap();
        let b = store.lease_chunk("j", "b", long).await.unwrap().unwrap();
        let c = store.lease_chunk("j", "c", long).await.unwrap().unwrap();
        let mut leased = vec![a.chunk, b.chunk, c.chunk];
        leased.sort();
        assert_eq!(leased, [0, 1, 3]);
        assert!(a.fence < b.fence && b.fence < c.fence);
        assert_eq!(store.lease_chunk("j", "d", long).await.unwrap(), None);
        assert_eq!(
            ChunkCounts::of(&store.chunks("j").await.unwrap()),
            ChunkCounts {
                done: 1,
                leased: 3,
                pending: 0
            }
        );
        // `a` finishes; `b` gives its chunk back; `c`'s runner is gone.
        assert!(store.finish_chunk("j", &a, "a").await.unwrap());
        store.release_chunk("j", &b).await.unwrap();
        store.release_worker_chunks("j", "c").await.unwrap();
        let again = store
            .lease_chunk("j", "d", Duration::from_millis(1))
            .await
            .unwrap()
            .unwrap();
        assert!(again.fence > c.fence);
        // An expired lease goes to the next taker, and its holder can no longer renew
        // or finish it.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut taken = Vec::new();
        while let Some(lease) = store.lease_chunk("j", "e", long).await.unwrap() {
            taken.push(lease);
        }
        assert_eq!(taken.len(), 2, "{taken:?}");
        assert!(taken
            .iter()
            .any(|t| t.chunk == again.chunk && t.fence > again.fence));
        assert!(!store.renew_chunk("j", &again, long).await.unwrap());
        assert!(!store.finish_chunk("j", &again, "d").await.unwrap());
        for lease in &taken {
            assert!(store.renew_chunk("j", lease, long).await.unwrap());
            assert!(store.finish_chunk("j", lease, "e").await.unwrap());
        }
        let chunks = store.chunks("j").await.unwrap();
        assert!(chunks.iter().all(|c| c.status == ChunkStatus::Done));
        assert_eq!(switchyard::state::chunks::workers(&chunks), ["a", "e"]);
        store.forget_chunks("j").await.unwrap();
        assert!(store.chunks("j").await.unwrap().is_empty());
    });
}

#[test]
fn sqlite_leases_chunks_one_worker_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("state.db").display());
    chunks_are_leased_one_worker_at_a_time(&url);
}

#[test]
fn postgresql_leases_chunks_one_worker_at_a_time() {
    let db = common::TestDb::new();
    chunks_are_leased_one_worker_at_a_time(&db.url);
}
