//! The introspection cache's storage: what is known about a credential, by
//! the SHA-256 digest of its secret, for a while.
//!
//! Built for a large fleet: an entry is the digest, a pointer and an expiry
//! in a `quick_cache` table (scan-resistant eviction, no background work, a
//! few dozen bytes of bookkeeping), where a general cache with per-entry
//! timers and deques spent about 420 bytes on each. Loads are coalesced
//! here: however many requests miss the same digest, one load runs and its
//! answer, or its error, is theirs.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

/// A digest: the key of every entry.
pub type Digest = [u8; 32];

/// Where a digest is kept: its first 128 bits. Secrets are made by keyplane,
/// not chosen by callers, so to share a slot with a real key a made-up one
/// would need a second preimage of 128 bits (2^128 tries); half a digest
/// keeps every entry 16 bytes smaller.
type Slot = [u8; 16];

fn slot(digest: &Digest) -> Slot {
    let mut slot = [0; 16];
    slot.copy_from_slice(&digest[..16]);
    slot
}

/// What is known about a digest: a credential, or that there is none.
pub type Known<V> = Option<Arc<V>>;

/// One entry: what is known, until when (milliseconds since the cache began).
struct Entry<V> {
    known: Known<V>,
    expires_ms: u64,
}

// Not derived: that would ask for `V: Clone`, and only the pointer is cloned.
impl<V> Clone for Entry<V> {
    fn clone(&self) -> Self {
        Entry {
            known: self.known.clone(),
            expires_ms: self.expires_ms,
        }
    }
}

type Load<V, E> = Shared<BoxFuture<'static, Result<Known<V>, Arc<E>>>>;

/// A load under way, and which one (a later load of the same digest is another).
struct Running<V, E> {
    id: u64,
    load: Load<V, E>,
}

/// A bounded cache of what is known by digest, with loads coalesced.
pub struct DigestCache<V, E> {
    entries: quick_cache::sync::Cache<Slot, Entry<V>>,
    loads: Mutex<HashMap<Digest, Running<V, E>>>,
    /// The id of the next load.
    next_load: AtomicU64,
    began: Instant,
    /// How long a known credential is kept, and how long "none".
    known_for: Duration,
    unknown_for: Duration,
}

impl<V, E> DigestCache<V, E>
where
    V: Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// A cache of at most about `capacity` entries (at least one).
    pub fn new(capacity: u64, known_for: Duration, unknown_for: Duration) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX).max(1);
        DigestCache {
            entries: quick_cache::sync::Cache::new(capacity),
            loads: Mutex::default(),
            next_load: AtomicU64::new(0),
            began: Instant::now(),
            known_for,
            unknown_for,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.began.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// What is known about `digest`, unless it is not cached or has expired.
    pub fn get(&self, digest: &Digest) -> Option<Known<V>> {
        let entry = self.entries.get(&slot(digest))?;
        let now = self.now_ms();
        if entry.expires_ms <= now {
            self.entries
                .remove_if(&slot(digest), |entry| entry.expires_ms <= now);
            return None;
        }
        Some(entry.known)
    }

    /// Keeps `known` for `digest`.
    pub fn insert(&self, digest: Digest, known: Known<V>) {
        let lifetime = match known {
            Some(_) => self.known_for,
            None => self.unknown_for,
        };
        let expires_ms = self
            .now_ms()
            .saturating_add(u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX));
        self.entries
            .insert(slot(&digest), Entry { known, expires_ms });
    }

    /// What is known about `digest`, loaded by `load` (and kept) when it
    /// is not cached. Requests that miss the same digest meanwhile wait on
    /// the same load and share its answer or its error; when every one of
    /// them has gone (their clients hung up), the load is dropped with
    /// them, never left holding what it holds (a connection, a turn).
    pub async fn try_get_with<F>(&self, digest: Digest, load: F) -> Result<Known<V>, Arc<E>>
    where
        F: Future<Output = Result<Known<V>, E>> + Send + 'static,
    {
        let mut waiter = {
            let mut loads = self.loads.lock().unwrap_or_else(PoisonError::into_inner);
            // A load that finished since the caller looked has kept its answer.
            if let Some(known) = self.get(&digest) {
                return Ok(known);
            }
            let running = loads.entry(digest).or_insert_with(|| Running {
                id: self.next_load.fetch_add(1, Ordering::Relaxed),
                load: load.map(|r| r.map_err(Arc::new)).boxed().shared(),
            });
            Waiter {
                cache: self,
                digest,
                id: running.id,
                load: running.load.clone(),
                done: false,
            }
        };
        let result = (&mut waiter.load).await;
        waiter.done = true;
        // Whoever sees the load finish first keeps its answer and retires it.
        let mut loads = self.loads.lock().unwrap_or_else(PoisonError::into_inner);
        if loads
            .get(&digest)
            .is_some_and(|running| running.id == waiter.id)
        {
            loads.remove(&digest);
            if let Ok(known) = &result {
                self.insert(digest, known.clone());
            }
        }
        result
    }

    /// Forgets `digest`.
    pub fn invalidate(&self, digest: &Digest) {
        self.entries.remove(&slot(digest));
    }

    /// Forgets every entry `stale` says is.
    pub fn invalidate_entries_if(&self, stale: impl Fn(&Known<V>) -> bool) {
        self.entries.retain(|_, entry| !stale(&entry.known));
    }

    /// Forgets everything.
    pub fn invalidate_all(&self) {
        self.entries.clear();
    }

    /// How many entries are cached (expired ones included until evicted).
    pub fn entry_count(&self) -> u64 {
        self.entries.len() as u64
    }
}

/// A request waiting on a load. Gone before the load finished (its
/// client hung up), and the last to wait on it, it drops the load too.
struct Waiter<'a, V, E> {
    cache: &'a DigestCache<V, E>,
    digest: Digest,
    id: u64,
    load: Load<V, E>,
    done: bool,
}

impl<V, E> Drop for Waiter<'_, V, E> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut loads = self
            .cache
            .loads
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Two holders left, the table and this waiter: nobody else waits.
        if loads
            .get(&self.digest)
            .is_some_and(|running| running.id == self.id && running.load.strong_count() == Some(2))
        {
            loads.remove(&self.digest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type Cache = DigestCache<u32, String>;

    fn cache() -> Cache {
        DigestCache::new(100, Duration::from_secs(60), Duration::from_millis(50))
    }

    #[tokio::test]
    async fn one_load_answers_every_request_that_missed_meanwhile() {
        let cache = Arc::new(cache());
        let loads = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = released.shared();
        let mut waiting = Vec::new();
        for _ in 0..8 {
            let (cache, loads, released) = (cache.clone(), loads.clone(), released.clone());
            waiting.push(tokio::spawn(async move {
                cache
                    .try_get_with([1; 32], async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        let _ = released.await;
                        Ok(Some(Arc::new(7)))
                    })
                    .await
            }));
        }
        tokio::task::yield_now().await;
        let _ = release.send(());
        for request in waiting {
            let known = request.await.unwrap().unwrap();
            assert_eq!(known.as_deref(), Some(&7));
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(cache.get(&[1; 32]).flatten().as_deref(), Some(&7), "kept");
    }

    #[tokio::test]
    async fn an_error_is_shared_and_nothing_is_kept() {
        let cache = cache();
        let err = cache
            .try_get_with([2; 32], async { Err("down".to_owned()) })
            .await
            .unwrap_err();
        assert_eq!(*err, "down");
        assert!(cache.get(&[2; 32]).is_none());
        let known = cache
            .try_get_with([2; 32], async { Ok(None) })
            .await
            .unwrap();
        assert!(known.is_none(), "a later load runs again");
        assert!(
            matches!(cache.get(&[2; 32]), Some(None)),
            "none is kept too"
        );
    }

    #[tokio::test]
    async fn a_load_nobody_waits_for_any_more_is_dropped_with_what_it_holds() {
        let cache = cache();
        let held = Arc::new(());
        let load = {
            let held = held.clone();
            async move {
                let _held = held;
                std::future::pending::<()>().await;
                Ok(None)
            }
        };
        let waiting = cache.try_get_with([5; 32], load);
        let gave_up = tokio::time::timeout(Duration::from_millis(20), waiting).await;
        assert!(gave_up.is_err(), "the load never finishes");
        assert_eq!(
            Arc::strong_count(&held),
            1,
            "the load, and what it held, are gone"
        );
        let known = cache
            .try_get_with([5; 32], async { Ok(None) })
            .await
            .unwrap();
        assert!(known.is_none(), "a later request loads again");
    }

    #[tokio::test]
    async fn unknown_digests_are_forgotten_sooner_than_known_ones() {
        let cache = cache();
        cache.insert([3; 32], None);
        cache.insert([4; 32], Some(Arc::new(4)));
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(cache.get(&[3; 32]).is_none(), "the short lifetime is over");
        assert!(cache.get(&[4; 32]).is_some());
    }

    #[test]
    fn entries_are_dropped_by_predicate_or_all_at_once() {
        let cache = cache();
        for n in 0..10u8 {
            cache.insert([n; 32], Some(Arc::new(u32::from(n))));
        }
        cache.invalidate_entries_if(|known| known.as_deref().is_some_and(|n| n % 2 == 0));
        assert!(cache.get(&[2; 32]).is_none());
        assert!(cache.get(&[3; 32]).is_some());
        cache.invalidate(&[3; 32]);
        assert!(cache.get(&[3; 32]).is_none());
        cache.invalidate_all();
        assert_eq!(cache.entry_count(), 0);
    }

    #[test]
    fn it_holds_about_its_capacity() {
        let cache = DigestCache::<u32, String>::new(1000, Duration::from_secs(60), Duration::ZERO);
        for n in 0..5000u32 {
            let mut digest = [0; 32];
            digest[..4].copy_from_slice(&n.to_le_bytes());
            cache.insert(digest, Some(Arc::new(n)));
        }
        assert!(cache.entry_count() <= 1100, "{}", cache.entry_count());
    }
}
