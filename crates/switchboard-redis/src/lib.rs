//! The Redis engine for Switchboard: [`RedisBroker`] implements the node's
//! [`switchboard::broker::Broker`] contract on one or more Redis servers, so several nodes share
//! channel streams (offsets under an epoch), presence, and delivery of publications, join/leave
//! and control messages.
//!
//! # Why the `redis` crate
//! `redis` (redis-rs) gives the pieces this engine needs and leaves it the policy: a multiplexed
//! async connection for commands, a split pub/sub connection whose stream ends when the socket
//! does (so a drop is seen at once), [`redis::Script`] (EVALSHA, loading the script on
//! `NOSCRIPT`), and a Sentinel client that names the current master. `fred` does more on its
//! own (reconnection, resubscription), but hides exactly the moments the contract must report
//! (`link_lost`, `link_restored` only once every channel is subscribed again) and when its
//! retries give up; owning the reconnect loop here keeps every call bounded by our timeout and
//! every resubscription visible.
//!
//! # Layout
//! - [`settings`]: URLs (shards, Sentinel), prefix and time bounds, validated up front.
//! - `hash`: which shard (jump consistent hash) and which pub/sub connection a channel uses.
//! - `keys`: key and pub/sub channel names (one hash tag per channel), message bytes.
//! - `scripts`: the Lua scripts (publish with history, history read, presence).
//! - `link`: one shard's command connection; every call bounded by the call timeout.
//! - `pubsub`: the pub/sub workers: read loop, probe, reconnect with backoff and jitter.
//! - `broker`: [`RedisBroker`] itself.
//! - `ingest`: [`RedisStreamSource`], publications read from a Redis Stream by a consumer group.

mod broker;
mod hash;
mod ingest;
mod keys;
mod link;
mod pubsub;
mod scripts;
pub mod settings;
mod sharded;

pub use broker::{RedisBroker, RedisBrokerError};
pub use ingest::RedisStreamSource;
pub use settings::{RedisSettings, SettingsError, ShardAddress};
