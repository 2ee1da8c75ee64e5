//! The broker conformance suite against the memory broker: the same checks the Redis and NATS
//! engines pass (see `switchboard::broker::conformance`), one test each.

use switchboard::broker::conformance::{self, MemoryEngine};

#[tokio::test]
async fn publications_reach_subscribers() {
    conformance::publications_reach_subscribers(&MemoryEngine::default()).await;
}

#[tokio::test]
async fn no_delivery_after_unsubscribe() {
    conformance::no_delivery_after_unsubscribe(&MemoryEngine::default()).await;
}

#[tokio::test]
async fn offsets_start_at_one() {
    conformance::offsets_start_at_one(&MemoryEngine::default()).await;
}

#[tokio::test]
async fn concurrent_publishes_from_two_nodes_get_distinct_offsets_in_one_order() {
    conformance::concurrent_publishes_from_two_nodes_get_distinct_offsets_in_one_order(
        &MemoryEngine::default(),
    )
    .await;
}

#[tokio::test]
async fn history_keeps_size_and_ttl() {
    conformance::history_keeps_size_and_ttl(&MemoryEngine::default()).await;
}

#[tokio::test]
async fn meta_ttl_expiry_starts_a_new_epoch() {
    conformance::meta_ttl_expiry_starts_a_new_epoch(&MemoryEngine::default()).await;
}

#[tokio::test]
async fn reading_an_unknown_channel_creates_nothing() {
    conformance::reading_an_unknown_channel_creates_nothing(&MemoryEngine::default()).await;
}

#[tokio::test]
async fn a_subscriber_starts_a_stream_that_publishes_continue() {
    conformance::a_subscriber_starts_a_stream_that_publishes_continue(&MemoryEngine::default())
        .await;
}

#[tokio::test]
async fn history_ranges() {
    conformance::history_ranges(&MemoryEngine::default()).await;
}

#[tokio::test]
async fn remove_history_keeps_the_position() {
    conformance::remove_history_keeps_the_position(&MemoryEngine::default()).await;
}

#[tokio::test]
async fn idempotent_publish_applies_once() {
    conformance::idempotent_publish_applies_once(&MemoryEngine::default()).await;
}

#[tokio::test]
async fn presence_add_remove_stats() {
    conformance::presence_add_remove_stats(&MemoryEngine::default()).await;
}

#[tokio::test]
async fn presence_expires_and_re_add_refreshes() {
    conformance::presence_expires_and_re_add_refreshes(&MemoryEngine::default()).await;
}

#[tokio::test]
async fn join_leave_and_control_reach_every_node() {
    conformance::join_leave_and_control_reach_every_node(&MemoryEngine::default()).await;
}

#[tokio::test]
async fn channels_without_history_get_no_offset() {
    conformance::channels_without_history_get_no_offset(&MemoryEngine::default()).await;
}

#[tokio::test]
async fn a_started_stream_nobody_publishes_to_expires_after_its_ttl() {
    conformance::a_started_stream_nobody_publishes_to_expires_after_its_ttl(
        &MemoryEngine::default(),
    )
    .await;
}

#[tokio::test]
async fn keep_stream_keeps_a_started_stream_alive() {
    conformance::keep_stream_keeps_a_started_stream_alive(&MemoryEngine::default()).await;
}

#[tokio::test]
async fn a_published_stream_keeps_its_meta_ttl() {
    conformance::a_published_stream_keeps_its_meta_ttl(&MemoryEngine::default()).await;
}

#[tokio::test]
async fn keyed_publications_change_the_map_and_pages_walk_it_in_key_order() {
    conformance::keyed_publications_change_the_map_and_pages_walk_it_in_key_order(
        &MemoryEngine::default(),
    )
    .await;
}

#[tokio::test]
async fn a_state_page_and_the_stream_after_its_position_give_the_map() {
    conformance::a_state_page_and_the_stream_after_its_position_give_the_map(
        &MemoryEngine::default(),
    )
    .await;
}

#[tokio::test]
async fn an_expired_key_is_removed_once_for_every_node() {
    conformance::an_expired_key_is_removed_once_for_every_node(&MemoryEngine::default()).await;
}

#[tokio::test]
async fn concurrent_keyed_publishes_from_two_nodes_leave_the_map_its_stream_says() {
    conformance::concurrent_keyed_publishes_from_two_nodes_leave_the_map_its_stream_says(
        &MemoryEngine::default(),
    )
    .await;
}
