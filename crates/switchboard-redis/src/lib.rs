//! The Redis engine for Switchboard: [`RedisBroker`] implements the node's
//! [`switchboard::broker::Broker`] contract on one or more Redis servers, so several nodes share
//! channel streams (offsets under an epoch), presence, and delivery of publications, join/leave
//! and control messages.
//!
//! # Deployments
//! - One server (`redis://`), or several as shards (a comma list): channels spread over them
//!   by jump consistent hash; classic pub/sub on each.
//! - Sentinel (`redis+sentinel://`): one shard whose master Sentinel names, asked again on
//!   every reconnect.
//! - Redis Cluster (`redis+cluster://host:port,host:port`, the seed nodes; Redis 7+): commands
//!   and scripts go through the `redis` crate's cluster connection, which sends each to the
//!   master owning its key's slot; every script names only keys of one channel, which share a
//!   hash tag, so it runs on one slot. Delivery is Redis 7 sharded pub/sub: a channel's
//!   pub/sub names carry its keys' tag, the publish script `SPUBLISH`es on the channel's
//!   master and nodes `SSUBSCRIBE` there, so a message is not copied to every cluster node
//!   (as classic `PUBLISH` on a cluster is). Control messages are sharded too, on one fixed
//!   tag. The workers probe every master and resubscribe everything, with backoff and jitter,
//!   when a node is lost, fails over, or a slot moves.
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
//! - [`settings`]: URLs (shards, Sentinel, Cluster), prefix and time bounds, validated up front.
//! - `hash`: which shard (jump consistent hash) and which pub/sub connection a channel uses;
//!   a name's cluster slot.
//! - `keys`: key and pub/sub channel names (one hash tag per channel), message bytes.
//! - `scripts`: the Lua scripts (publish with history, history read, presence; a map
//!   channel's keyed publish, state page and key expiry).
//! - `link`: one shard's command connection (a server's or a cluster's); every call bounded by
//!   the call timeout.
//! - `pubsub`: the pub/sub workers: read loop, probe, reconnect with backoff and jitter, over
//!   a transport; classic pub/sub on one server.
//! - `sharded`: the sharded pub/sub transport of a Redis Cluster (its masters and probes).
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
