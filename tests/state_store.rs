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

/// The job's lease: one holder at a time; taken back by its own worker, over a fence
/// found gone, or once expired; each take a greater fence; the record written only
/// under the current fence; renewal and release by an old fence change nothing.
fn the_job_lease_has_one_holder_and_fences_record_writes(url: &str) {
    use std::time::Duration;
    use switchyard::state::job_lease::JobHolder;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store: Arc<dyn StateStore> = state::open(&SecretUrl::new(url)).await.unwrap();
        let long = Duration::from_secs(60);
        let (a, b) = (JobHolder::this_process("a"), JobHolder::this_process("b"));
        let first = store.take_job("j", &a, long, None).await.unwrap().unwrap();
        assert_eq!(store.take_job("j", &b, long, None).await.unwrap(), None);
        let held = store.job_holder("j").await.unwrap().unwrap();
        assert_eq!((held.holder, held.fence), (a.clone(), first));
        assert!(store.save_job_under("j", "{\"n\":1}", first).await.unwrap());
        // The same worker (a restarted process) takes it back, with a new fence.
        let again = store.take_job("j", &a, long, None).await.unwrap().unwrap();
        assert!(again > first);
        assert!(!store.save_job_under("j", "{\"n\":2}", first).await.unwrap());
        assert!(!store.renew_job("j", first, long).await.unwrap());
        assert_eq!(store.job("j").await.unwrap().as_deref(), Some("{\"n\":1}"));
        // Over a fence (a holder found gone), and not over another.
        assert_eq!(
            store.take_job("j", &b, long, Some(first)).await.unwrap(),
            None
        );
        let taken = store
            .take_job("j", &b, long, Some(again))
            .await
            .unwrap()
            .unwrap();
        assert!(taken > again);
        store.release_job("j", again).await.unwrap();
        assert_eq!(store.job_holder("j").await.unwrap().unwrap().fence, taken);
        assert!(store.renew_job("j", taken, long).await.unwrap());
        // Expired: anybody takes it.
        assert!(store.renew_job("j", taken, Duration::ZERO).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
        let expired = store.take_job("j", &a, long, None).await.unwrap().unwrap();
        assert!(!store.save_job_under("j", "{\"n\":3}", taken).await.unwrap());
        assert!(store
            .save_job_under("j", "{\"n\":4}", expired)
            .await
            .unwrap());
        assert_eq!(store.job("j").await.unwrap().as_deref(), Some("{\"n\":4}"));
        store.release_job("j", expired).await.unwrap();
        assert_eq!(store.job_holder("j").await.unwrap(), None);
        assert!(!store.renew_job("j", expired, long).await.unwrap());
    });
}

#[test]
fn sqlite_job_lease_has_one_holder_and_fences_record_writes() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("state.db").display());
    the_job_lease_has_one_holder_and_fences_record_writes(&url);
}

#[test]
fn postgresql_job_lease_has_one_holder_and_fences_record_writes() {
    let db = common::TestDb::new();
    the_job_lease_has_one_holder_and_fences_record_writes(&db.url);
}
