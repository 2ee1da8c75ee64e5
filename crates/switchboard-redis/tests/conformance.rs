//! The shared broker conformance suite against a private Redis.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use switchboard::broker::conformance::{self, Engine};
use switchboard::broker::Broker;
use switchboard_redis::RedisBroker;

struct RedisEngine {
    url: String,
}

#[async_trait]
impl Engine for RedisEngine {
    async fn make(&self, namespace: &str) -> Arc<dyn Broker> {
        let settings = common::quick_settings(&self.url, namespace);
        Arc::new(RedisBroker::new(settings).expect("broker"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_broker_conforms() {
    let Some(server) = common::RedisServer::start() else {
        return;
    };
    let engine = RedisEngine { url: server.url() };
    tokio::time::timeout(
        std::time::Duration::from_secs(120),
        conformance::run_all(&engine),
    )
    .await
    .expect("the suite finishes within two minutes");
}

#[tokio::test]
async fn reads_of_unknown_channels_create_no_keys() {
    let Some(server) = common::RedisServer::start() else {
        return;
    };
    let (broker, _events) = common::started(&server.url(), "empty").await;
    let page = broker
        .history("never", &Default::default())
        .await
        .expect("history");
    assert_eq!((page.position.offset, &*page.position.epoch), (0, ""));
    assert!(broker.presence("never").await.expect("presence").is_empty());
    assert_eq!(broker.presence_stats("never").await.expect("stats"), (0, 0));
    broker.remove_presence("never", "c").await.expect("remove");
    assert_eq!(server.dbsize().await, 0, "reads created keys");
    broker.stop().await;
}
