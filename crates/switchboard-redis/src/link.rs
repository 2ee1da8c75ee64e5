//! One shard's command link: where its server is (a URL, a master that Sentinels name, or a
//! Redis Cluster), a connection made on first use and remade after a failure, and the one
//! helper, [`Shard::call`], through which every command goes, bounded by the call timeout.
//!
//! A cluster's connection ([`redis::cluster_async::ClusterConnection`]) sends each command to
//! the master owning its key's slot and follows `MOVED`/`ASK` itself; every script names only
//! keys of one channel, which share a hash tag, so each script runs on one slot.
//!
//! The engine keeps its own reconnection rather than `redis::aio::ConnectionManager`, because
//! under Sentinel the master's address must be asked again on every reconnect, and because a
//! failure must be answered at once with a [`BrokerError`] (the node decides about retries),
//! never with a retry loop that outlives the caller's deadline.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection, PubSub};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, Pipeline, RedisConnectionInfo, RedisError,
    RedisFuture, ServerErrorKind, Value,
};
use switchboard::broker::BrokerError;
use tokio::sync::Mutex as AsyncMutex;

use crate::settings::ShardAddress;

/// How a shard's server is reached.
enum Target {
    Direct(Client),
    // The Sentinel client caches nothing we rely on; the lock only serialises its `&mut` use.
    Sentinel(AsyncMutex<SentinelClient>),
    Cluster(ClusterClient),
}

/// A command connection: to one server, or to a whole cluster. Both run the same commands and
/// scripts, so the engine's calls do not care which.
#[derive(Clone)]
pub(crate) enum Connection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(connection) => connection.req_packed_commands(cmd, offset, count),
            Connection::Cluster(connection) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

/// One shard's server and command connection.
pub(crate) struct Shard {
    target: Target,
    /// The command connection and the lineage of the server it reaches.
    connection: AsyncMutex<Option<(Connection, Lineage)>>,
    timeout: Duration,
}

/// Which history a server's data continues: its replication id (`master_replid`). A
/// replica promoted by a failover starts a new one, and may have missed the last writes its
/// master acknowledged; the publish script starts a new epoch when a stream was last written
/// under another lineage, so offsets are never reused for different publications. Empty for
/// a cluster (each master has its own; not checked there).
pub(crate) type Lineage = std::sync::Arc<str>;

/// The replication id in an `INFO replication` answer.
fn lineage_in(info: &str) -> Lineage {
    info.lines()
        .find_map(|line| line.strip_prefix("master_replid:"))
        .map(str::trim)
        .unwrap_or("")
        .into()
}

/// A Redis error as the contract's error.
pub(crate) fn broker_error(error: &RedisError) -> BrokerError {
    // A cluster that is re-electing a master, migrating a slot or has lost one answers these
    // until it settles: the broker is unavailable, not speaking another protocol.
    let cluster_unsettled = matches!(
        error.kind(),
        ErrorKind::Server(
            ServerErrorKind::ClusterDown
                | ServerErrorKind::TryAgain
                | ServerErrorKind::MasterDown
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
                // A master demoted by a failover: reconnect to where Sentinel points now.
                | ServerErrorKind::ReadOnly
        )
    );
    if error.is_timeout() {
        BrokerError::Timeout
    } else if cluster_unsettled
        || error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_unrecoverable_error()
    {
        BrokerError::Unavailable(error.to_string())
    } else {
        BrokerError::Protocol(error.to_string())
    }
}

impl Shard {
    /// A shard at `address` whose calls take at most `timeout`.
    ///
    /// # Errors
    /// The client library's refusal of the address (checked already by the settings, so
    /// unexpected).
    pub(crate) fn new(address: &ShardAddress, timeout: Duration) -> Result<Self, RedisError> {
        let target = match address {
            ShardAddress::Direct(url) => Target::Direct(Client::open(url.as_str())?),
            ShardAddress::Sentinel {
                sentinels,
                master,
                password,
                db,
            } => {
                let mut info = RedisConnectionInfo::default().set_db(*db);
                if let Some(password) = password {
                    info = info.set_password(password);
                }
                let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
                Target::Sentinel(AsyncMutex::new(SentinelClient::build(
                    sentinels.iter().map(String::as_str).collect(),
                    master.clone(),
                    Some(node),
                    SentinelServerType::Master,
                )?))
            }
            ShardAddress::Cluster { seeds } => Target::Cluster(
                ClusterClient::builder(seeds.iter().map(String::as_str))
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    // Redirections and a reconnect are worth a retry within the call bound;
                    // longer waits are the node's decision, not this link's.
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .build()?,
            ),
        };
        Ok(Shard {
            target,
            connection: AsyncMutex::new(None),
            timeout,
        })
    }

    /// A client for the server now (under Sentinel: the master the Sentinels name now).
    async fn client(&self) -> Result<Client, RedisError> {
        match &self.target {
            Target::Direct(client) => Ok(client.clone()),
            Target::Sentinel(sentinel) => sentinel.lock().await.async_get_client().await,
            Target::Cluster(_) => Err(RedisError::from((
                ErrorKind::Client,
                "a cluster has no single server",
            ))),
        }
    }

    fn config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
    }

    /// The command connection and its server's lineage, made if there is none.
    async fn connection(&self) -> Result<(Connection, Lineage), RedisError> {
        let mut slot = self.connection.lock().await;
        if let Some(made) = slot.as_ref() {
            return Ok(made.clone());
        }
        let made = match &self.target {
            Target::Cluster(cluster) => (
                Connection::Cluster(cluster.get_async_connection().await?),
                Lineage::from(""),
            ),
            Target::Direct(_) | Target::Sentinel(_) => {
                let mut connection = self
                    .client()
                    .await?
                    .get_multiplexed_async_connection_with_config(&self.config())
                    .await?;
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut connection)
                    .await?;
                (Connection::Single(connection), lineage_in(&info))
            }
        };
        *slot = Some(made.clone());
        Ok(made)
    }

    /// Drops the command connection so the next call makes a new one. Never waits: when a
    /// caller is connecting right now, its fresh connection is kept.
    fn forget_connection(&self) {
        if let Ok(mut slot) = self.connection.try_lock() {
            *slot = None;
        }
    }

    /// Runs `command` on the command connection within the call timeout. A timeout or a broken
    /// connection drops the connection, so the next call reconnects.
    ///
    /// # Errors
    /// [`BrokerError::Timeout`] past the bound; otherwise the Redis error's [`broker_error`].
    pub(crate) async fn call<T, F, Fut>(&self, command: F) -> Result<T, BrokerError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.call_in_lineage(|connection, _| command(connection))
            .await
    }

    /// [`Shard::call`], also handing `command` the lineage of the server the connection
    /// reaches.
    ///
    /// # Errors
    /// As [`Shard::call`].
    pub(crate) async fn call_in_lineage<T, F, Fut>(&self, command: F) -> Result<T, BrokerError>
    where
        F: FnOnce(Connection, Lineage) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let attempt = async {
            let (connection, lineage) = self.connection().await?;
            command(connection, lineage).await
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                let mapped = broker_error(&error);
                if !matches!(mapped, BrokerError::Protocol(_)) {
                    self.forget_connection();
                }
                Err(mapped)
            }
            Err(_elapsed) => {
                self.forget_connection();
                Err(BrokerError::Timeout)
            }
        }
    }

    /// A new pub/sub connection, within `bound`.
    ///
    /// # Errors
    /// [`BrokerError`] when the server cannot be reached in time.
    pub(crate) async fn open_pubsub(&self, bound: Duration) -> Result<PubSub, BrokerError> {
        let attempt = async { self.client().await?.get_async_pubsub().await };
        match tokio::time::timeout(bound, attempt).await {
            Ok(Ok(pubsub)) => Ok(pubsub),
            Ok(Err(error)) => Err(broker_error(&error)),
            Err(_elapsed) => Err(BrokerError::Timeout),
        }
    }
}
