//! A JetStream KV bucket made on first write, whose `max_age` grows to the longest TTL asked
//! of it: presence and idempotency entries each carry their own expiry (the bucket's age only
//! bounds how long an expired entry takes up storage), and a bucket made for a short TTL must
//! not drop an entry written later with a longer one.
//!
//! Two nodes growing one bucket at once may both write the stream's config; the last one wins,
//! so in that race a bucket can end up with the shorter of two ages until the next write with
//! the longer TTL grows it again. Nodes of one cluster use one configured TTL, so this is a
//! corner of a corner; entries that outlive the bucket's age are lost early, never kept late.

use std::time::Duration;

use async_nats::jetstream::kv::Store;
use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType, Stream};
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::{self, context::GetStreamErrorKind};
use switchboard::broker::BrokerError;
use tokio::sync::Mutex;

use crate::error::{protocol, unavailable};

/// The shortest bucket age: JetStream refuses a duplicate window longer than the age, and
/// sub-second ages only churn.
const MIN_AGE: Duration = Duration::from_secs(1);

/// One KV bucket.
pub struct Bucket {
    js: jetstream::Context,
    name: String,
    /// The store and the age it is known to have, once written to.
    known: Mutex<Option<(Store, Duration)>>,
}

impl Bucket {
    /// The bucket `name` (not made until [`Bucket::ensure`]).
    pub fn new(js: jetstream::Context, name: String) -> Self {
        Bucket {
            js,
            name,
            known: Mutex::new(None),
        }
    }

    /// The subject a key's entries are stored under.
    pub fn subject(&self, key: &str) -> String {
        format!("$KV.{}.{}", self.name, key)
    }

    /// The bucket's stream, without asking the server whether it exists.
    ///
    /// # Errors
    /// [`BrokerError::Protocol`] when the name is not a valid stream name.
    pub async fn stream(&self) -> Result<Stream<()>, BrokerError> {
        self.js
            .get_stream_no_info(format!("KV_{}", self.name))
            .await
            .map_err(|e| protocol("bucket name", e))
    }

    /// Forgets what is known of the bucket (the server said it is gone).
    pub async fn forget(&self) {
        *self.known.lock().await = None;
    }

    /// The bucket, made or grown so that entries live at least `age`.
    ///
    /// # Errors
    /// [`BrokerError`] when the server cannot be reached or refuses.
    pub async fn ensure(&self, age: Duration) -> Result<Store, BrokerError> {
        // Whole seconds, so TTLs that differ by milliseconds do not rewrite the config.
        let age = Duration::from_secs(age.max(MIN_AGE).as_secs_f64().ceil() as u64);
        let mut known = self.known.lock().await;
        if let Some((store, known_age)) = known.as_ref() {
            if known_age.is_zero() || *known_age >= age {
                return Ok(store.clone());
            }
        }
        let stream_name = format!("KV_{}", self.name);
        let have = match self.js.get_stream(&stream_name).await {
            Ok(stream) => Some(stream.cached_info().config.clone()),
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(js)
                    if js.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    None
                }
                _ => return Err(unavailable("look up bucket", e)),
            },
        };
        let age = match have {
            Some(mut config) => {
                if !config.max_age.is_zero() && config.max_age < age {
                    config.max_age = age;
                    self.js
                        .update_stream(config)
                        .await
                        .map_err(|e| unavailable("grow bucket", e))?;
                    age
                } else {
                    config.max_age
                }
            }
            None => {
                // The stream a KV bucket is, made directly: async-nats's bucket constructor
                // asks for settings a 2.9 server answers in a form the client cannot read.
                let made = self
                    .js
                    .create_stream(stream::Config {
                        name: stream_name.clone(),
                        subjects: vec![format!("$KV.{}.>", self.name)],
                        max_messages_per_subject: 1,
                        max_age: age,
                        duplicate_window: age.min(Duration::from_secs(120)),
                        storage: StorageType::File,
                        discard: DiscardPolicy::New,
                        allow_rollup: true,
                        deny_delete: true,
                        allow_direct: true,
                        ..Default::default()
                    })
                    .await;
                if let Err(e) = made {
                    // Another node may have made it first; if not, opening it fails below.
                    tracing::debug!(bucket = self.name, error = %e, "nats: bucket create");
                }
                age
            }
        };
        let store = self
            .js
            .get_key_value(&self.name)
            .await
            .map_err(|e| unavailable("open bucket", e))?;
        *known = Some((store.clone(), age));
        Ok(store)
    }
}
