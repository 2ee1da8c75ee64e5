//! Which broker the node runs on, from `broker` in the configuration: the memory broker (no
//! other service), or an engine crate compiled in by its cargo feature (`redis`, `nats`; both
//! on by default). A binary built without an engine says so at start instead of falling back.

use std::sync::Arc;

use switchboard::broker::Broker;
use switchboard::config::{BrokerKind, Config};

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
