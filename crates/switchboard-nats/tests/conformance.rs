//! The shared broker conformance suite against the NATS engine, one test per check (the list
//! is `conformance::run_all`'s), each on its own nats-server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use switchboard::broker::conformance::{self, Engine};
use switchboard::broker::Broker;

/// Brokers on one server; a namespace is a subject prefix, so brokers of one namespace are
/// nodes of one cluster and others share nothing.
struct Nats {
    url: String,
}

#[async_trait]
impl Engine for Nats {
    async fn make(&self, namespace: &str) -> Arc<dyn Broker> {
        common::broker(&self.url, namespace)
    }
}

/// Each check gets a minute at most, so a hang fails instead of stalling the run.
const CHECK: Duration = Duration::from_secs(60);

macro_rules! checks {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let Some(server) = common::NatsServer::start() else { return };
            let engine = Nats { url: server.url() };
            tokio::time::timeout(CHECK, conformance::$check(&engine))
                .await
                .unwrap_or_else(|_| panic!("{} did not finish in {CHECK:?}", stringify!($check)));
        }
    )*};
}

checks!(
    publications_reach_subscribers,
    no_delivery_after_unsubscribe,
    offsets_start_at_one,
    concurrent_publishes_from_two_nodes_get_distinct_offsets_in_one_order,
    history_keeps_size_and_ttl,
    meta_ttl_expiry_starts_a_new_epoch,
    reading_an_unknown_channel_creates_nothing,
    a_subscriber_starts_a_stream_that_publishes_continue,
    a_started_stream_nobody_publishes_to_expires_after_its_ttl,
    keep_stream_keeps_a_started_stream_alive,
    a_published_stream_keeps_its_meta_ttl,
    history_ranges,
    remove_history_keeps_the_position,
    idempotent_publish_applies_once,
    presence_add_remove_stats,
    presence_expires_and_re_add_refreshes,
    join_leave_and_control_reach_every_node,
    channels_without_history_get_no_offset,
    keyed_publications_change_the_map_and_pages_walk_it_in_key_order,
    a_state_page_and_the_stream_after_its_position_give_the_map,
    an_expired_key_is_removed_once_for_every_node,
    concurrent_keyed_publishes_from_two_nodes_leave_the_map_its_stream_says,
);
