//! What storage answered, kept in memory for as long as it cannot have changed, so that an
//! idle fetch never reaches SQLite.
//!
//! Tansu answers a fetch by asking storage, for every topic named in it, for the topic's
//! metadata, and for every partition for records and for the partition's offsets; then it
//! sleeps out the fetch's wait. With a dozen consumers polling every 50 ms that is thousands
//! of SQLite queries a second while nothing happens. This broker is the only writer of its
//! database, so it knows when an answer can change: offsets after a produce to the partition
//! (or deletes, transactions, maintenance), metadata after topics are created or deleted.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub struct Memo<K, V> {
    answers: Mutex<HashMap<K, V>>,
    /// Bumped by every invalidation: an answer read before one must not be kept, since it
    /// may have been read before the write that caused it.
    generation: AtomicU64,
}

impl<K, V> Default for Memo<K, V> {
    fn default() -> Self {
        Memo {
            answers: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Memo<K, V> {
    /// The kept answer for `key`, if nothing could have changed it since it was read.
    pub fn get(&self, key: &K) -> Option<V> {
        self.lock().get(key).cloned()
    }

    /// The generation to hand back to [`Memo::keep`] after asking storage.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Keeps an answer read from storage, unless an invalidation happened since `generation`.
    pub fn keep(&self, key: &K, answer: V, generation: u64) {
        let mut answers = self.lock();
        if self.generation.load(Ordering::SeqCst) == generation {
            answers.insert(key.clone(), answer);
        }
    }

    /// Forgets one key's answer.
    pub fn invalidate(&self, key: &K) {
        let mut answers = self.lock();
        self.generation.fetch_add(1, Ordering::SeqCst);
        answers.remove(key);
    }

    /// Forgets every answer.
    pub fn invalidate_all(&self) {
        let mut answers = self.lock();
        self.generation.fetch_add(1, Ordering::SeqCst);
        answers.clear();
    }

    /// The kept answer, or else `ask`'s, kept unless something changed meanwhile.
    pub async fn get_or<E>(
        &self,
        key: &K,
        ask: impl Future<Output = Result<V, E>>,
    ) -> Result<V, E> {
        if let Some(answer) = self.get(key) {
            return Ok(answer);
        }
        let generation = self.generation();
        let answer = ask.await?;
        self.keep(key, answer.clone(), generation);
        Ok(answer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, V>> {
        self.answers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_that_raced_a_write_is_not_kept() {
        let memo = Memo::default();
        let before = memo.generation();
        memo.invalidate(&"a");
        memo.keep(&"a", 3, before);
        assert_eq!(memo.get(&"a"), None);

        memo.keep(&"a", 4, memo.generation());
        assert_eq!(memo.get(&"a"), Some(4));
    }

    #[test]
    fn invalidation_forgets_answers() {
        let memo = Memo::default();
        memo.keep(&"a", 1, memo.generation());
        memo.keep(&"b", 1, memo.generation());
        memo.invalidate(&"a");
        assert_eq!(memo.get(&"a"), None);
        assert_eq!(memo.get(&"b"), Some(1));
        memo.invalidate_all();
        assert_eq!(memo.get(&"b"), None);
    }

    #[tokio::test]
    async fn storage_is_asked_once_until_invalidated() {
        let memo = Memo::default();
        let asked = std::sync::atomic::AtomicU32::new(0);
        let ask = || async {
            asked.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(7)
        };
        assert_eq!(memo.get_or(&"a", ask()).await, Ok(7));
        assert_eq!(memo.get_or(&"a", ask()).await, Ok(7));
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        memo.invalidate(&"a");
        assert_eq!(memo.get_or(&"a", ask()).await, Ok(7));
        assert_eq!(asked.load(Ordering::SeqCst), 2);
    }
}
