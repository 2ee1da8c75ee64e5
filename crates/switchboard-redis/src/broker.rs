//! [`RedisBroker`]: the [`Broker`] contract on Redis. Streams, presence and idempotency keys
//! live in the shard a channel hashes to; every multi-key step is one Lua script
//! ([`crate::scripts`]); delivery goes through the pub/sub workers ([`crate::pubsub`]), over
//! classic pub/sub, or on a Redis Cluster over sharded pub/sub ([`crate::sharded`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use switchboard::broker::{
    codec, Broker, BrokerError, BrokerEvents, BrokerHealth, HistoryPage, HistoryRange, MapPage,
    Position, PublishOptions,
};
use switchboard::config::RedisConfig;
use switchboard::publication::{ClientInfo, Publication};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hash;
use crate::keys::{self, Names, Presence};
use crate::link::Shard;
use crate::pubsub::{lock, Classic, Shared, Timing, Worker};
use crate::scripts::Scripts;
use crate::settings::{RedisSettings, SettingsError, ShardAddress};
use crate::sharded::Sharded;

/// Why a [`RedisBroker`] cannot be built.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisBrokerError {
    /// The settings are unusable.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The client library refused a shard's address.
    #[error("redis: shard {shard}: {reason}")]
    Client {
        /// The shard's place in the URL list.
        shard: usize,
        /// The library's reason.
        reason: String,
    },
}

/// The pub/sub workers.
enum Delivery {
    /// Classic pub/sub on each shard: `workers[shard][connection]`.
    Shards(Vec<Vec<Arc<Worker<Classic>>>>),
    /// Sharded pub/sub on a Redis Cluster: `workers[connection]`.
    Cluster(Vec<Arc<Worker<Sharded>>>),
}

/// One channel's pub/sub worker.
enum WorkerRef<'a> {
    Shard(&'a Worker<Classic>),
    Cluster(&'a Worker<Sharded>),
}

impl WorkerRef<'_> {
    async fn subscribe(&self, names: &[String]) -> Result<(), BrokerError> {
        match self {
            WorkerRef::Shard(worker) => worker.subscribe(names).await,
            WorkerRef::Cluster(worker) => worker.subscribe(names).await,
        }
    }

    async fn unsubscribe(&self, names: &[String]) -> Result<(), BrokerError> {
        match self {
            WorkerRef::Shard(worker) => worker.unsubscribe(names).await,
            WorkerRef::Cluster(worker) => worker.unsubscribe(names).await,
        }
    }
}

/// The background tasks of a started broker.
struct Running {
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// The last PING round: whether every shard answered, and the slowest answer.
#[derive(Default, Clone, Copy)]
struct Pinged {
    ok: bool,
    round_trip: Option<Duration>,
}

struct Inner {
    settings: RedisSettings,
    shards: Vec<Arc<Shard>>,
    delivery: Delivery,
    shared: Arc<Shared>,
    scripts: Scripts,
    running: Mutex<Option<Running>>,
    pinged: Mutex<Pinged>,
}

/// The Redis engine. Cheap to clone (a handle).
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

/// A stream position as the position scripts answer it: the top offset as a decimal string and
/// the epoch.
fn position_from_reply((offset, epoch): (String, String)) -> Result<Position, BrokerError> {
    let offset: u64 = offset
        .parse()
        .map_err(|_| protocol("stream position offset"))?;
    Ok(Position {
        offset,
        epoch: epoch.into(),
    })
}

/// A map value as `MAP_STATE` answers it (`<offset> <codec bytes>`): the key's latest
/// publication, with its offset.
fn keyed_value(value: &[u8]) -> Result<Publication, BrokerError> {
    let space = value
        .iter()
        .position(|&b| b == b' ')
        .ok_or_else(|| protocol("map value"))?;
    let offset: u64 = std::str::from_utf8(&value[..space])
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| protocol("map value offset"))?;
    let mut publication = codec::decode_publication(&value[space + 1..])
        .map_err(|e| BrokerError::Protocol(e.to_string()))?;
    publication.offset = offset;
    Ok(publication)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn protocol(what: &str) -> BrokerError {
    BrokerError::Protocol(format!("redis: {what}"))
}

impl RedisBroker {
    /// A broker for `settings`; nothing is connected before [`Broker::start`].
    ///
    /// # Errors
    /// [`RedisBrokerError`] when a shard's address is refused.
    pub fn new(settings: RedisSettings) -> Result<Self, RedisBrokerError> {
        if settings.pubsub_connections == 0 {
            return Err(SettingsError::NoPubsubConnections.into());
        }
        let cluster_seeds = match settings.shards.as_slice() {
            [ShardAddress::Cluster { seeds }] => Some(seeds.clone()),
            _ => None,
        };
        let names = match cluster_seeds {
            Some(_) => Names::sharded(&settings.prefix),
            None => Names::new(&settings.prefix),
        };
        let timing = Timing {
            connect: settings.connect_timeout,
            call: settings.call_timeout,
            probe_interval: settings.probe_interval,
            probe_timeout: settings.probe_timeout,
            backoff_min: settings.backoff_min,
            backoff_max: settings.backoff_max,
        };
        let node = format!("{:08x}", fastrand::u32(..));
        let mut shards = Vec::new();
        let mut workers = Vec::new();
        for (index, address) in settings.shards.iter().enumerate() {
            let shard = Shard::new(address, settings.call_timeout).map_err(|e| {
                RedisBrokerError::Client {
                    shard: index,
                    reason: e.to_string(),
                }
            })?;
            let shard = Arc::new(shard);
            shards.push(Arc::clone(&shard));
            if cluster_seeds.is_some() {
                continue;
            }
            let of_shard = (0..settings.pubsub_connections)
                .map(|connection| {
                    // Control rides on the first connection of the first shard, for every node.
                    let fixed = if index == 0 && connection == 0 {
                        vec![names.control()]
                    } else {
                        Vec::new()
                    };
                    let probe = names.probe(&format!("{node}-{index}-{connection}"));
                    Arc::new(Worker::new(
                        Classic::new(probe),
                        Arc::clone(&shard),
                        fixed,
                        timing,
                    ))
                })
                .collect();
            workers.push(of_shard);
        }
        let delivery = match (cluster_seeds, shards.first()) {
            (Some(seeds), Some(link)) => Delivery::Cluster(
                (0..settings.pubsub_connections)
                    .map(|connection| {
                        // Control rides on the first connection, for every node.
                        let fixed = if connection == 0 {
                            vec![names.control()]
                        } else {
                            Vec::new()
                        };
                        Arc::new(Worker::new(
                            Sharded::new(seeds.clone(), format!("{node}-{connection}")),
                            Arc::clone(link),
                            fixed,
                            timing,
                        ))
                    })
                    .collect(),
            ),
            _ => Delivery::Shards(workers),
        };
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared::new(names)),
                settings,
                shards,
                delivery,
                scripts: Scripts::new(),
                running: Mutex::new(None),
                pinged: Mutex::new(Pinged::default()),
            }),
        })
    }

    /// A broker from the `[redis]` section.
    ///
    /// # Errors
    /// [`RedisBrokerError`] when the section is unusable.
    pub fn from_config(config: &RedisConfig) -> Result<Self, RedisBrokerError> {
        RedisBroker::new(RedisSettings::from_config(config)?)
    }

    /// The shard `channel` lives on (its index in the URL list; 0 on a Redis Cluster, which
    /// places channels on its masters by slot).
    pub fn shard_index(&self, channel: &str) -> usize {
        hash::shard_of(channel, self.inner.shards.len())
    }

    fn shard(&self, channel: &str) -> &Shard {
        &self.inner.shards[self.shard_index(channel)]
    }

    fn worker(&self, channel: &str) -> WorkerRef<'_> {
        match &self.inner.delivery {
            Delivery::Shards(workers) => {
                let of_shard = &workers[self.shard_index(channel)];
                WorkerRef::Shard(&of_shard[hash::connection_of(channel, of_shard.len())])
            }
            Delivery::Cluster(workers) => {
                WorkerRef::Cluster(&workers[hash::connection_of(channel, workers.len())])
            }
        }
    }

    fn names(&self) -> &Names {
        &self.inner.shared.names
    }

    async fn publish_raw(
        &self,
        shard: &Shard,
        channel: String,
        message: Bytes,
    ) -> Result<(), BrokerError> {
        let command = self.names().publish_command();
        shard
            .call(|mut connection| async move {
                redis::cmd(command)
                    .arg(channel)
                    .arg(&message[..])
                    .query_async::<i64>(&mut connection)
                    .await
            })
            .await
            .map(|_receivers| ())
    }

    /// A keyed publish or removal to map channel `channel` (see `scripts::MAP_PUBLISH`).
    async fn publish_keyed(
        &self,
        channel: &str,
        key: &str,
        publication: &Publication,
        options: &PublishOptions,
    ) -> Result<Option<Position>, BrokerError> {
        let names = self.names();
        let (idempotency, idempotency_ttl) = idempotency_of(names, channel, options);
        let body = codec::encode_publication(publication);
        let epoch = format!("{:016x}", fastrand::u64(..));
        let script = &self.inner.scripts.map_publish;
        let reply: (String, String) = self
            .shard(channel)
            .call_in_lineage(|mut connection, lineage| async move {
                script
                    .key(&names.stream_keys(channel))
                    .key(idempotency)
                    .arg(names.publications(channel))
                    .arg(&body[..])
                    // A map keeps history (the configuration insists): at least one.
                    .arg(options.history_size.max(1))
                    .arg(millis(options.history_ttl))
                    .arg(millis(options.history_meta_ttl))
                    .arg(epoch)
                    .arg(idempotency_ttl)
                    .arg(names.publish_command())
                    .arg(&*lineage)
                    .arg(key)
                    .arg(u8::from(publication.removed))
                    .arg(millis(options.key_ttl))
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        position_from_reply(reply).map(Some)
    }

    /// PINGs every shard and records the outcome for [`Broker::health`].
    async fn ping(&self) {
        let mut pinged = Pinged {
            ok: true,
            round_trip: None,
        };
        for shard in &self.inner.shards {
            let sent = Instant::now();
            let answer = shard
                .call(|mut connection| async move {
                    redis::cmd("PING")
                        .query_async::<String>(&mut connection)
                        .await
                })
                .await;
            match answer {
                Ok(_) => {
                    let took = sent.elapsed();
                    pinged.round_trip = Some(pinged.round_trip.map_or(took, |max| max.max(took)));
                }
                Err(_) => pinged.ok = false,
            }
        }
        *lock(&self.inner.pinged) = pinged;
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn start(&self, events: Arc<dyn BrokerEvents>) -> Result<(), BrokerError> {
        if lock(&self.inner.running).is_some() {
            return Ok(());
        }
        let _ = self.inner.shared.events.set(events);
        let cancel = CancellationToken::new();
        let shared = &self.inner.shared;
        let (mut tasks, firsts): (Vec<_>, Vec<_>) = match &self.inner.delivery {
            Delivery::Shards(workers) => workers
                .iter()
                .flatten()
                .map(|worker| worker.spawn(shared, cancel.child_token()))
                .unzip(),
            Delivery::Cluster(workers) => workers
                .iter()
                .map(|worker| worker.spawn(shared, cancel.child_token()))
                .unzip(),
        };
        let monitor = self.clone();
        let stop = cancel.child_token();
        tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(monitor.inner.settings.probe_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticks.tick() => monitor.ping().await,
                }
            }
        }));
        *lock(&self.inner.running) = Some(Running { cancel, tasks });
        let mut result = Ok(());
        for reported in firsts {
            if let Ok(Err(error)) = reported.await {
                if result.is_ok() {
                    result = Err(error);
                }
            }
        }
        self.ping().await;
        result
    }

    async fn stop(&self) {
        let running = lock(&self.inner.running).take();
        let Some(running) = running else {
            return;
        };
        running.cancel.cancel();
        for task in running.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(self.inner.settings.call_timeout, task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    fn health(&self) -> BrokerHealth {
        let pinged = *lock(&self.inner.pinged);
        let running = lock(&self.inner.running).is_some();
        let workers_up = match &self.inner.delivery {
            Delivery::Shards(workers) => workers.iter().flatten().all(|w| w.is_connected()),
            Delivery::Cluster(workers) => workers.iter().all(|w| w.is_connected()),
        };
        BrokerHealth {
            connected: running && pinged.ok && workers_up,
            round_trip: pinged.round_trip,
            reconnects: self.inner.shared.reconnects.load(Ordering::Relaxed),
        }
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let names = [
            self.names().publications(channel),
            self.names().join_leave(channel),
        ];
        self.worker(channel).subscribe(&names).await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let names = [
            self.names().publications(channel),
            self.names().join_leave(channel),
        ];
        self.worker(channel).unsubscribe(&names).await
    }

    async fn publish(
        &self,
        channel: &str,
        publication: &Publication,
        options: &PublishOptions,
    ) -> Result<Option<Position>, BrokerError> {
        if let Some(key) = publication.key.as_deref() {
            return self.publish_keyed(channel, key, publication, options).await;
        }
        let shard = self.shard(channel);
        let target = self.names().publications(channel);
        if options.history_size == 0 && options.idempotency_key.is_none() {
            let message = keys::publication_message(publication);
            self.publish_raw(shard, target, message).await?;
            return Ok(None);
        }
        let names = self.names();
        let (idempotency, idempotency_ttl) = idempotency_of(names, channel, options);
        let body = codec::encode_publication(publication);
        let epoch = format!("{:016x}", fastrand::u64(..));
        let script = &self.inner.scripts.publish;
        let (offset, epoch): (String, String) = shard
            .call_in_lineage(|mut connection, lineage| async move {
                script
                    .key(names.meta(channel))
                    .key(names.stream(channel))
                    .key(idempotency)
                    .arg(target)
                    .arg(&body[..])
                    .arg(options.history_size)
                    .arg(millis(options.history_ttl))
                    .arg(millis(options.history_meta_ttl))
                    .arg(epoch)
                    .arg(idempotency_ttl)
                    .arg(names.publish_command())
                    .arg(&*lineage)
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        let offset: u64 = offset.parse().map_err(|_| protocol("publish offset"))?;
        if options.history_size == 0 {
            return Ok(None);
        }
        Ok(Some(Position {
            offset,
            epoch: epoch.into(),
        }))
    }

    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        let message = keys::join_leave_message(Presence::Join, info);
        let target = self.names().join_leave(channel);
        self.publish_raw(self.shard(channel), target, message).await
    }

    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        let message = keys::join_leave_message(Presence::Leave, info);
        let target = self.names().join_leave(channel);
        self.publish_raw(self.shard(channel), target, message).await
    }

    async fn publish_control(&self, message: Bytes) -> Result<(), BrokerError> {
        let target = self.names().control();
        self.publish_raw(&self.inner.shards[0], target, message)
            .await
    }

    async fn history(
        &self,
        channel: &str,
        range: &HistoryRange,
    ) -> Result<HistoryPage, BrokerError> {
        let names = self.names();
        let since = range.since.map_or(String::new(), |since| since.to_string());
        let limit = range
            .limit
            .map_or(-1, |limit| i64::try_from(limit).unwrap_or(i64::MAX));
        let reverse = u8::from(range.reverse);
        let script = &self.inner.scripts.history;
        let (offset, epoch, flat): (String, String, Vec<Vec<u8>>) = self
            .shard(channel)
            .call(|mut connection| async move {
                script
                    .key(names.meta(channel))
                    .key(names.stream(channel))
                    .arg(since)
                    .arg(limit)
                    .arg(reverse)
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        let offset: u64 = offset.parse().map_err(|_| protocol("history offset"))?;
        let mut publications = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks(2) {
            let [entry_offset, data] = pair else {
                return Err(protocol("history entries"));
            };
            let entry_offset: u64 = std::str::from_utf8(entry_offset)
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| protocol("history entry offset"))?;
            let mut publication = codec::decode_publication(data)
                .map_err(|e| BrokerError::Protocol(e.to_string()))?;
            publication.offset = entry_offset;
            publications.push(Arc::new(publication));
        }
        Ok(HistoryPage {
            publications,
            position: Position {
                offset,
                epoch: epoch.into(),
            },
        })
    }

    async fn stream_position(&self, channel: &str, ttl: Duration) -> Result<Position, BrokerError> {
        let names = self.names();
        let epoch = format!("{:016x}", fastrand::u64(..));
        let script = &self.inner.scripts.stream_position;
        let reply: (String, String) = self
            .shard(channel)
            .call_in_lineage(|mut connection, lineage| async move {
                script
                    .key(&names.stream_keys(channel))
                    .arg(epoch)
                    // 0 would mean "never expires" to the script.
                    .arg(millis(ttl).max(1))
                    .arg(&*lineage)
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        position_from_reply(reply)
    }

    async fn keep_stream(&self, channel: &str, ttl: Duration) -> Result<Position, BrokerError> {
        let names = self.names();
        let script = &self.inner.scripts.keep_stream;
        let reply: (String, String) = self
            .shard(channel)
            .call(|mut connection| async move {
                script
                    .key(&names.stream_keys(channel))
                    .arg(millis(ttl))
                    .arg(names.publications(channel))
                    .arg(names.publish_command())
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        position_from_reply(reply)
    }

    fn serves_maps(&self) -> bool {
        true
    }

    async fn map_state(
        &self,
        channel: &str,
        after: &str,
        limit: usize,
        ttl: Duration,
    ) -> Result<MapPage, BrokerError> {
        let names = self.names();
        let epoch = format!("{:016x}", fastrand::u64(..));
        let script = &self.inner.scripts.map_state;
        let (offset, epoch, cursor, flat): (String, String, String, Vec<Vec<u8>>) = self
            .shard(channel)
            .call_in_lineage(|mut connection, lineage| async move {
                script
                    .key(&names.stream_keys(channel))
                    .arg(epoch)
                    // 0 would mean "never expires" to the script.
                    .arg(millis(ttl).max(1))
                    .arg(&*lineage)
                    .arg(after)
                    .arg(limit.max(1))
                    .arg(names.publications(channel))
                    .arg(names.publish_command())
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        let position = position_from_reply((offset, epoch))?;
        let mut entries = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks(2) {
            let [_key, value] = pair else {
                return Err(protocol("map state entries"));
            };
            entries.push(Arc::new(keyed_value(value)?));
        }
        Ok(MapPage {
            entries,
            cursor: (!cursor.is_empty()).then(|| cursor.into_boxed_str()),
            position,
        })
    }

    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        let stream = self.names().stream(channel);
        self.shard(channel)
            .call(|mut connection| async move {
                redis::cmd("DEL")
                    .arg(stream)
                    .query_async::<i64>(&mut connection)
                    .await
            })
            .await
            .map(|_removed| ())
    }

    async fn add_presence(
        &self,
        channel: &str,
        info: &ClientInfo,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        let names = self.names();
        let body = codec::encode_client_info(info);
        let script = &self.inner.scripts.add_presence;
        self.shard(channel)
            .call(|mut connection| async move {
                script
                    .key(names.presence(channel))
                    .key(names.presence_expiry(channel))
                    .arg(&*info.client)
                    .arg(&body[..])
                    .arg(millis(ttl).max(1))
                    .invoke_async::<i64>(&mut connection)
                    .await
            })
            .await
            .map(|_| ())
    }

    async fn remove_presence(&self, channel: &str, client: &str) -> Result<(), BrokerError> {
        let names = self.names();
        let script = &self.inner.scripts.remove_presence;
        self.shard(channel)
            .call(|mut connection| async move {
                script
                    .key(names.presence(channel))
                    .key(names.presence_expiry(channel))
                    .arg(client)
                    .invoke_async::<i64>(&mut connection)
                    .await
            })
            .await
            .map(|_| ())
    }

    async fn presence(&self, channel: &str) -> Result<Vec<Arc<ClientInfo>>, BrokerError> {
        let names = self.names();
        let script = &self.inner.scripts.presence;
        let entries: Vec<Vec<u8>> = self
            .shard(channel)
            .call(|mut connection| async move {
                script
                    .key(names.presence(channel))
                    .key(names.presence_expiry(channel))
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        let mut present = Vec::with_capacity(entries.len());
        for entry in entries {
            match codec::decode_client_info(&entry) {
                Ok(info) => present.push(Arc::new(info)),
                // A foreign entry must not hide everyone else.
                Err(error) => tracing::warn!(channel, %error, "undecodable presence entry"),
            }
        }
        Ok(present)
    }
}

/// The idempotency key a publish to `channel` names (an unused one when it names none) and
/// how long to keep it, ms (0: none is kept).
fn idempotency_of(names: &Names, channel: &str, options: &PublishOptions) -> (String, u64) {
    let key = names.idempotency(channel, options.idempotency_key.as_deref().unwrap_or(""));
    let ttl = if options.idempotency_key.is_some() {
        millis(options.idempotency_ttl).max(1)
    } else {
        0
    };
    (key, ttl)
}
