//! The hook cache: an answer of an idempotent hook (connect, refresh, subscribe, sub_refresh),
//! kept for that hook's `cache_ttl`, so a reconnect storm of the same users does not become a
//! storm of the same backend calls.
//!
//! The key is the whole request as sent, less the per-connection client id: the hook, the
//! URL, the JSON body and the forwarded headers. Keys are kept whole, not hashed, so two
//! requests can never share an answer by collision. Only answers are kept (a result, a
//! refusal, a disconnect), never a failure. The cache is bounded by
//! `hooks.cache_max_entries`: when full, expired entries are swept, and if it is still full
//! the new answer is not kept.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Answer;

/// Answers by request.
pub(crate) struct Cache {
    entries: Mutex<HashMap<Box<str>, (Instant, Answer)>>,
    max_entries: usize,
}

impl Cache {
    pub(crate) fn new(max_entries: usize) -> Cache {
        Cache {
            entries: Mutex::new(HashMap::new()),
            max_entries,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, (Instant, Answer)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer kept for `key`, if it has not expired.
    pub(crate) fn get(&self, key: &str, now: Instant) -> Option<Answer> {
        let mut entries = self.lock();
        match entries.get(key) {
            Some((expires, answer)) if *expires > now => Some(answer.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `answer` for `ttl`.
    pub(crate) fn put(&self, key: Box<str>, answer: &Answer, ttl: Duration, now: Instant) {
        let mut entries = self.lock();
        if entries.len() >= self.max_entries {
            entries.retain(|_, (expires, _)| *expires > now);
            if entries.len() >= self.max_entries {
                return;
            }
        }
        entries.insert(key, (now + ttl, answer.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_expire_and_the_bound_holds() {
        let cache = Cache::new(2);
        let t = Instant::now();
        let ok = Answer::Result(serde_json::json!({"user": "a"}));
        cache.put("a".into(), &ok, Duration::from_secs(1), t);
        assert_eq!(cache.get("a", t), Some(ok.clone()));
        assert_eq!(cache.get("a", t + Duration::from_secs(1)), None);
        cache.put("b".into(), &ok, Duration::from_secs(5), t);
        cache.put("c".into(), &ok, Duration::from_secs(5), t);
        cache.put("d".into(), &ok, Duration::from_secs(5), t);
        assert_eq!(cache.get("d", t), None, "full: not kept");
        assert!(cache.get("b", t).is_some() && cache.get("c", t).is_some());
    }
}
