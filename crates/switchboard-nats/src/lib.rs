//! Switchboard's NATS engine: the `switchboard::broker::Broker` contract on one NATS
//! connection per node, with JetStream for what must be kept (nats-server 2.9 or later).
//!
//! Build one with [`NatsBroker::new`] from the node's `[nats]` config and hand it to the node.
//!
//! # Layout
//!
//! - [`broker`]: [`NatsBroker`], the contract's calls, and the per-channel delivery tasks.
//! - [`link`]: the connection, its events (`link_lost`/`link_restored`) and `health()`.
//! - [`subject`]: the reversible escaping of channel names, and every subject, stream and
//!   bucket name under the prefix.
//! - [`history`]: channel streams on one JetStream stream: gapless offsets by optimistic
//!   concurrency, per-publish size and TTL, delivery by the stream's republish.
//! - [`map`]: map channels: keyed changes in the channel's stream (publish, expiry, state
//!   pages); `map::index`, each key's latest change in an index beside it; `map::change`,
//!   the headers a change and its copy carry.
//! - [`meta`]: the headers a kept publication carries (offset, epoch, expiry, size).
//! - [`presence`]: presence in a KV bucket with per-entry expiry.
//! - [`idempotency`]: idempotency keys in a KV bucket.
//! - [`ingest`]: [`ingest::JetStreamSource`], publications read from a JetStream stream by a
//!   durable consumer.
//! - [`bucket`]: a KV bucket made on first write and grown to the longest TTL.
//! - [`reader`]: reading a subject's stored messages in one pass.
//! - [`reorder`]: kept publications put back in offset order when the republish swaps them.
//! - [`error`]: client failures as the contract's `BrokerError`, and the call deadline.
//!
//! # What is kept where (prefix `P`, `T` = `P` with `.` and the like replaced by `_`)
//!
//! | what | where |
//! | --- | --- |
//! | deliveries of channel `c` | core subjects `P.ch.<c>.{p,j,l}` |
//! | control | core subject `P.control` |
//! | kept publications | stream `T_history`, subjects `P.st.<c>` |
//! | map channels' changes | stream `T_history`, subjects `P.st.<c>` (each carries its key) |
//! | map channels' state | stream `T_history`, subjects `P.mk.<c>.<key>` (latest change per key) |
//! | presence | KV bucket `T_presence`, keys `<c>.<client>` |
//! | idempotency keys | KV bucket `T_idempotency` |

pub mod broker;
pub mod bucket;
pub mod error;
pub mod history;
pub mod idempotency;
pub mod ingest;
pub mod link;
pub mod map;
pub mod meta;
pub mod presence;
pub mod reader;
pub mod reorder;
pub mod subject;

pub use broker::{NatsBroker, NatsOptions};
