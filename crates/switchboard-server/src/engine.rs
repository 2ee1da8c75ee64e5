//! Which broker the node runs on, from `broker` in the configuration: the memory broker (no
//! other service), or an engine crate compiled in by its cargo feature (`redis`, `nats`; both
//! on by default). A binary built without an engine says so at start instead of falling back.

use std::sync::Arc;

use switchboard::broker::Broker;
use switchboard::config::{BrokerKind, Config, IngestSource};
use switchboard::ingest::LogSource;

/// The broker `config` asks for (`None`: the memory broker).
///
/// # Errors
/// When the engine's settings are unusable, or the engine is not compiled in.
pub fn broker_for(config: &Config) -> anyhow::Result<Option<Arc<dyn Broker>>> {
    match config.broker {
        BrokerKind::Memory => Ok(None),
        BrokerKind::Redis => redis(config),
        BrokerKind::Nats => nats(config),
    }
}

/// The log `config` asks to ingest from, read as consumer `node_name` (`None`: no ingestion).
///
/// # Errors
/// When the source's settings are unusable, or its engine is not compiled in.
pub fn ingest_for(config: &Config, node_name: &str) -> anyhow::Result<Option<Arc<dyn LogSource>>> {
    let ingest = &config.ingest;
    match ingest.source {
        IngestSource::None => Ok(None),
        IngestSource::Redis => redis_stream(config, node_name),
        IngestSource::Nats => jetstream(config),
    }
}

#[cfg(feature = "redis")]
fn redis_stream(config: &Config, node_name: &str) -> anyhow::Result<Option<Arc<dyn LogSource>>> {
    let settings = switchboard_redis::RedisSettings::from_config(&config.redis)
        .map_err(|error| anyhow::anyhow!("ingest: redis: {error}"))?;
    let ingest = &config.ingest;
    let source = switchboard_redis::RedisStreamSource::new(
        &settings,
        &ingest.stream,
        &ingest.group,
        node_name,
    )
    .map_err(|error| anyhow::anyhow!("ingest: redis: {error}"))?;
    Ok(Some(Arc::new(source)))
}

#[cfg(not(feature = "redis"))]
fn redis_stream(_: &Config, _: &str) -> anyhow::Result<Option<Arc<dyn LogSource>>> {
    anyhow::bail!("ingest.source = \"redis\": this binary was built without the `redis` feature")
}

#[cfg(feature = "nats")]
fn jetstream(config: &Config) -> anyhow::Result<Option<Arc<dyn LogSource>>> {
    let ingest = &config.ingest;
    Ok(Some(Arc::new(
        switchboard_nats::ingest::JetStreamSource::new(
            &config.nats.url.0,
            &ingest.stream,
            &ingest.subject,
            &ingest.group,
        ),
    )))
}

#[cfg(not(feature = "nats"))]
fn jetstream(_: &Config) -> anyhow::Result<Option<Arc<dyn LogSource>>> {
    anyhow::bail!("ingest.source = \"nats\": this binary was built without the `nats` feature")
}

#[cfg(feature = "redis")]
fn redis(config: &Config) -> anyhow::Result<Option<Arc<dyn Broker>>> {
    let broker = switchboard_redis::RedisBroker::from_config(&config.redis)
        .map_err(|error| anyhow::anyhow!("redis: {error}"))?;
    Ok(Some(Arc::new(broker)))
}

#[cfg(not(feature = "redis"))]
fn redis(_: &Config) -> anyhow::Result<Option<Arc<dyn Broker>>> {
    anyhow::bail!("broker = \"redis\": this binary was built without the `redis` feature")
}

#[cfg(feature = "nats")]
fn nats(config: &Config) -> anyhow::Result<Option<Arc<dyn Broker>>> {
    Ok(Some(Arc::new(switchboard_nats::NatsBroker::new(
        &config.nats,
    ))))
}

#[cfg(not(feature = "nats"))]
fn nats(_: &Config) -> anyhow::Result<Option<Arc<dyn Broker>>> {
    anyhow::bail!("broker = \"nats\": this binary was built without the `nats` feature")
}
