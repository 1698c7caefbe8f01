//! Tokens and terms acceptances held in memory, so that an authenticated
//! request costs no database query (it cost two: the token, then the
//! acceptances).
//!
//! Only positive answers are kept ("this token is Alice's", "Alice accepted
//! every current policy"), in bounded LRU maps. A new token or a new
//! acceptance is therefore seen by every instance at once: they ask the
//! database about anything they do not hold. What takes an answer back, a
//! logout or an erasure, is written to `auth_changes` in the same
//! transaction, and each instance reads that log at most a second after the
//! last read (as the identity lookup index follows binds), so instances
//! sharing a database agree within a second.

use crate::store;
use hearth_core::MatrixError;
use hearth_core::ids::UserId;
use hearth_core::storage::Database;
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Tokens, and users with accepted terms, held per service. A token costs
/// about 150 bytes here, so each map stays under 2 MB.
const ENTRIES: usize = 10_000;
/// How stale an instance may be about other instances' logouts.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// Changes older than this are pruned; an instance that has not read the
/// log for half of it forgets everything it holds instead.
pub(crate) const RETENTION: Duration = Duration::from_secs(3600);
/// Changes re-read behind the last one seen: PostgreSQL hands out sequence
/// numbers before commit, so a lower one can appear late. Applying a change
/// twice is harmless.
const LOOKBACK: i64 = 1000;
/// How often one instance deletes old changes.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// A logout (`token_hash`) or an erasure (`user_id`).
#[derive(Debug)]
pub(crate) struct Change {
    pub(crate) seq: i64,
    pub(crate) token_hash: Option<String>,
    pub(crate) user_id: Option<String>,
}

pub(crate) struct Cache {
    state: Mutex<State>,
    /// One reader of the change log at a time; requests meanwhile use what
    /// is held.
    refreshing: tokio::sync::Mutex<()>,
}

struct State {
    /// Token hash to its user.
    tokens: LruCache<String, UserId>,
    /// Users who accepted every current policy.
    accepted: LruCache<UserId, ()>,
    /// The last change seen.
    seq: i64,
    refreshed: Option<Instant>,
    pruned: Option<Instant>,
    /// Counts refreshes that saw a new change. An answer read from the
    /// database across one may predate that change, and is not kept.
    generation: u64,
}

/// When a database answer was asked for, to keep it only if no change was
/// seen meanwhile.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Generation(u64);

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("Cache")
            .field("tokens", &state.tokens.len())
            .field("accepted", &state.accepted.len())
            .field("seq", &state.seq)
            .finish_non_exhaustive()
    }
}

impl Cache {
    pub(crate) fn new() -> Self {
        let entries = NonZeroUsize::new(ENTRIES).expect("not zero");
        Self {
            state: Mutex::new(State {
                tokens: LruCache::new(entries),
                accepted: LruCache::new(entries),
                seq: 0,
                refreshed: None,
                pruned: None,
                generation: 0,
            }),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fresh(state: &State) -> bool {
        state.refreshed.is_some_and(|t| t.elapsed() < REFRESH_EVERY)
    }

    /// Follows other instances' logouts and erasures, reading the change
    /// log at most once a second. Returns the generation to pass to
    /// [`Cache::keep_token`] and [`Cache::keep_accepted`].
    pub(crate) async fn refresh(
        &self,
        db: &Database,
        service: &str,
    ) -> Result<Generation, MatrixError> {
        {
            let state = self.lock();
            if Self::fresh(&state) {
                return Ok(Generation(state.generation));
            }
        }
        let _guard = self.refreshing.lock().await;
        let (seq, refreshed, pruned) = {
            let state = self.lock();
            if Self::fresh(&state) {
                return Ok(Generation(state.generation));
            }
            (state.seq, state.refreshed, state.pruned)
        };
        if pruned.is_none_or(|t| t.elapsed() > PRUNE_EVERY) {
            store::prune_changes(db, RETENTION).await?;
            self.lock().pruned = Some(Instant::now());
        }
        if refreshed.is_none_or(|t| t.elapsed() > RETENTION / 2) {
            // Changes it missed may be pruned: start again from nothing.
            let newest = store::newest_change(db).await?;
            let mut state = self.lock();
            state.tokens.clear();
            state.accepted.clear();
            state.seq = newest;
            state.generation += 1;
            state.refreshed = Some(Instant::now());
            return Ok(Generation(state.generation));
        }
        let changes = store::changes_since(db, service, seq - LOOKBACK).await?;
        let mut state = self.lock();
        let mut new = false;
        for change in &changes {
            new |= change.seq > state.seq;
            state.seq = state.seq.max(change.seq);
            if let Some(hash) = &change.token_hash {
                state.tokens.pop(hash);
            }
            if let Some(user_id) = change.user_id.as_deref() {
                forget_user(&mut state, user_id);
            }
        }
        if new {
            state.generation += 1;
        }
        state.refreshed = Some(Instant::now());
        Ok(Generation(state.generation))
    }

    pub(crate) fn token(&self, hash: &str) -> Option<UserId> {
        self.lock().tokens.get(hash).cloned()
    }

    /// Keeps a token the database vouched for, unless a change was seen
    /// since the question was asked.
    pub(crate) fn keep_token(&self, asked: Generation, hash: String, user_id: UserId) {
        let mut state = self.lock();
        if state.generation == asked.0 {
            state.tokens.put(hash, user_id);
        }
    }

    pub(crate) fn accepted(&self, user_id: &UserId) -> bool {
        self.lock().accepted.get(user_id).is_some()
    }

    pub(crate) fn keep_accepted(&self, asked: Generation, user_id: UserId) {
        let mut state = self.lock();
        if state.generation == asked.0 {
            state.accepted.put(user_id, ());
        }
    }

    /// This instance's own logout, at once.
    pub(crate) fn drop_token(&self, hash: &str) {
        self.lock().tokens.pop(hash);
    }

    /// Forgets every acceptance, for new policies. The generation moves, so
    /// an answer asked about the old policies is not kept either.
    pub(crate) fn drop_acceptances(&self) {
        let mut state = self.lock();
        state.accepted.clear();
        state.generation += 1;
    }

    /// This instance's own erasure, at once.
    pub(crate) fn drop_user(&self, user_id: &UserId) {
        forget_user(&mut self.lock(), user_id.as_str());
    }
}

fn forget_user(state: &mut State, user_id: &str) {
    let tokens: Vec<String> = state
        .tokens
        .iter()
        .filter(|(_, user)| user.as_str() == user_id)
        .map(|(hash, _)| hash.clone())
        .collect();
    for hash in tokens {
        state.tokens.pop(&hash);
    }
    if let Ok(user_id) = UserId::parse(user_id) {
        state.accepted.pop(&user_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10 item 10 asks for a bounded cache: tokens past the bound
    /// push out the least recently used.
    #[test]
    fn the_cache_holds_at_most_its_bound() {
        let cache = Cache::new();
        let user = UserId::parse("@alice:example.org").unwrap();
        for i in 0..ENTRIES + 100 {
            cache.keep_token(Generation(0), format!("hash{i}"), user.clone());
        }
        assert_eq!(cache.lock().tokens.len(), ENTRIES);
        assert!(cache.token("hash0").is_none());
        assert!(cache.token(&format!("hash{}", ENTRIES + 99)).is_some());
    }

    /// An answer read from the database before a refresh saw a new change
    /// may predate that change (a logout), so it is not kept.
    #[test]
    fn answers_asked_before_a_change_are_not_kept() {
        let cache = Cache::new();
        let user = UserId::parse("@alice:example.org").unwrap();
        let asked = Generation(0);
        cache.lock().generation = 1;
        cache.keep_token(asked, "hash".to_owned(), user.clone());
        cache.keep_accepted(asked, user.clone());
        assert!(cache.token("hash").is_none());
        assert!(!cache.accepted(&user));
    }
}
