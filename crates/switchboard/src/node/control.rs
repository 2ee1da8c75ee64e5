//! Control messages between the nodes of a cluster, over the broker's control channel: what
//! the API asks of a user's connections wherever they are, each node's announcement of itself
//! (which makes `info` list the cluster), and the channel survey behind the API's `channels`.
//!
//! Messages are small JSON objects with a `type`; a node ignores, with a warning, one it does
//! not understand (a newer node in a rolling upgrade).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{lock, Node};
use crate::broker::Broker;
use crate::conn::ServerCommand;
use crate::error::{ClientError, CloseReason};
use crate::kind::Door;

/// How long the API's `channels` waits for the other nodes' answers.
const SURVEY_TIMEOUT: Duration = Duration::from_secs(1);

/// One node as `info` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Unique per start.
    pub uid: String,
    /// The configured (or host) name.
    pub name: String,
    /// Switchboard's version.
    pub version: String,
    /// Open connections.
    pub num_clients: usize,
    /// Distinct users among them.
    pub num_users: usize,
    /// Channels with a local subscriber.
    pub num_channels: usize,
    /// Local subscriptions.
    pub num_subs: usize,
    /// Seconds since start.
    pub uptime: u64,
    /// Messages received from clients since start, every door (absent from a node of an
    /// older version: 0). The admin UI's rates are differences of these over `uptime`.
    #[serde(default)]
    pub messages_in: u64,
    /// Bytes of those messages.
    #[serde(default)]
    pub bytes_in: u64,
    /// Frames written to clients since start, every door.
    #[serde(default)]
    pub messages_out: u64,
    /// Bytes written to clients since start.
    #[serde(default)]
    pub bytes_out: u64,
}

/// What the API asks of every connection of one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case")]
pub(crate) enum UserCommand {
    /// Close with 3503 (plain doors: 4003).
    Disconnect { user: String },
    /// Subscribe to a channel (server-side subscription).
    Subscribe { user: String, channel: String },
    /// Unsubscribe from a channel.
    Unsubscribe { user: String, channel: String },
    /// Move the session's expiry (`expired`: close with 3005 now).
    Refresh {
        user: String,
        expire_at: u64,
        expired: bool,
    },
}

impl UserCommand {
    /// The user it is for.
    fn user(&self) -> &str {
        match self {
            UserCommand::Disconnect { user }
            | UserCommand::Subscribe { user, .. }
            | UserCommand::Unsubscribe { user, .. }
            | UserCommand::Refresh { user, .. } => user,
        }
    }

    /// Carries the command out on this node's connections of the user (found through the
    /// registry's user index: the cost is the user's connections, not the node's); returns
    /// how many it reached.
    ///
    /// # Errors
    /// The first refusal of a connection's inbox ([`Conn::request`](crate::conn::Conn::request)):
    /// error 106 for a subscribe past `client.max_subscriptions`, 111 for a full inbox. The
    /// user's other connections still got the command.
    pub(crate) fn apply(&self, node: &Node) -> Result<usize, ClientError> {
        let mut reached = 0;
        let mut refused = None;
        node.conns.for_user(self.user(), |conn| {
            let requested = match self {
                // Flags, not inbox entries: never refused, never lost.
                UserCommand::Disconnect { .. } => {
                    conn.close(CloseReason::DisconnectedByServer);
                    Ok(())
                }
                UserCommand::Refresh { expired: true, .. } => {
                    conn.close(CloseReason::TokenExpired);
                    Ok(())
                }
                // Plain doors have no subscriptions or session to change.
                _ if conn.door != Door::Protocol => return,
                // Already there (the common retry after a 106 or 111): nothing to queue.
                UserCommand::Subscribe { channel, .. }
                    if node.hub.is_subscribed(channel, conn.id) =>
                {
                    Ok(())
                }
                UserCommand::Subscribe { channel, .. } => {
                    conn.request(ServerCommand::Subscribe(channel.as_str().into()))
                }
                UserCommand::Unsubscribe { channel, .. } => {
                    conn.request(ServerCommand::Unsubscribe(channel.as_str().into()))
                }
                UserCommand::Refresh { expire_at, .. } => {
                    conn.request(ServerCommand::Refresh(*expire_at))
                }
            };
            match requested {
                Ok(()) => reached += 1,
                Err(error) => {
                    tracing::warn!(event = "server_command_refused", conn_id = conn.id, user = %conn.user(), code = error.code(), %error, "an API request for a user could not be queued on one of its connections");
                    refused.get_or_insert(error);
                }
            }
        });
        refused.map_or(Ok(reached), Err)
    }
}

/// A control message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Control {
    /// A user's connections, on every node.
    User(UserCommand),
    /// A node says it is alive, and what it holds.
    Node(NodeInfo),
    /// A node that just started asks every node to announce itself now (rather than within
    /// an announce interval), so its `info` and channel surveys know the cluster at once.
    Hello { from: String },
    /// A node asks every node for its channels.
    ChannelsAsked { survey: u64, from: String },
    /// A node's answer to `ChannelsAsked`.
    ChannelsAnswered {
        survey: u64,
        to: String,
        from: String,
        channels: Vec<(String, usize)>,
    },
    /// Commands an HTTP-streaming or SSE client posted to another node's emulation endpoint,
    /// for its session on node `to` (`data`: the commands, base64).
    Emulation {
        to: String,
        session: String,
        data: String,
    },
}

impl Control {
    /// The bytes on the control channel.
    pub(crate) fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// The other nodes, as last announced.
#[derive(Default)]
pub(super) struct Peers(Mutex<HashMap<String, (NodeInfo, Instant)>>);

impl Peers {
    fn seen(&self, info: NodeInfo) {
        lock(&self.0).insert(info.uid.clone(), (info, Instant::now()));
    }

    /// The nodes heard from within `ttl` (forgetting the others).
    pub(super) fn live(&self, ttl: Duration) -> Vec<NodeInfo> {
        let mut peers = lock(&self.0);
        peers.retain(|_, (_, seen)| seen.elapsed() < ttl);
        let mut live: Vec<NodeInfo> = peers.values().map(|(info, _)| info.clone()).collect();
        live.sort_by(|a, b| a.name.cmp(&b.name).then(a.uid.cmp(&b.uid)));
        live
    }
}

/// A node's uid and its channels, answering a survey.
type Answer = (String, Vec<(String, usize)>);
type Answers = mpsc::UnboundedSender<Answer>;

/// Channel surveys this node is waiting on.
#[derive(Default)]
pub(super) struct Surveys(Mutex<HashMap<u64, Answers>>);

/// Handles one control message from the broker.
pub(super) fn handle(node: &Arc<Node>, message: &[u8]) {
    let control: Control = match serde_json::from_slice(message) {
        Ok(control) => control,
        Err(error) => {
            tracing::warn!(event = "control_ignored", %error, "a control message this node does not understand (a newer node?)");
            return;
        }
    };
    match control {
        Control::User(command) => {
            // A refusal was logged by `apply`; the API caller on another node was answered
            // when the broker took the message.
            let reached = command.apply(node);
            tracing::debug!(event = "control_user", ?command, ?reached);
        }
        Control::Node(info) => node.peers.seen(info),
        Control::Hello { from } => {
            if from != node.uid {
                send(node, Control::Node(node.info()));
            }
        }
        Control::ChannelsAsked { survey, from } => {
            if from == node.uid {
                // The asking node counts its own channels itself.
                return;
            }
            let answer = Control::ChannelsAnswered {
                survey,
                to: from,
                from: node.uid.clone(),
                channels: node.hub.channels(),
            };
            send(node, answer);
        }
        Control::Emulation { to, session, data } => {
            if to != node.uid {
                return;
            }
            let Ok(data) = base64::engine::general_purpose::STANDARD.decode(data) else {
                tracing::warn!(
                    event = "control_ignored",
                    "an emulation request whose data is not base64"
                );
                return;
            };
            if let Err(error) = node.emulate_here(&session, Bytes::from(data)) {
                // The client's stream has ended (or ends on a full inbox); its SDK reconnects.
                tracing::info!(event = "emulation_refused", code = error.code(), %error, "an emulation request forwarded by another node was not delivered");
            }
        }
        Control::ChannelsAnswered {
            survey,
            to,
            from,
            channels,
        } => {
            if to == node.uid {
                if let Some(answers) = lock(&node.surveys.0).get(&survey) {
                    let _ = answers.send((from, channels));
                }
            }
        }
    }
}

/// Sends `control` to every node, from a task (the caller may be a broker's read loop).
pub(super) fn send(node: &Arc<Node>, control: Control) {
    let Some(broker) = node.remote.as_ref().map(|r| Arc::clone(&r.broker)) else {
        return;
    };
    let node = Arc::clone(node);
    tokio::spawn(async move {
        if let Err(error) = node.call(broker.publish_control(control.encode())).await {
            tracing::debug!(event = "control_send_failed", %error);
        }
    });
}

/// Asks every other node for its channels and sums their answers with this node's own,
/// waiting at most a second for an answer from each node in `others` (answers are counted by
/// the node that sent them, so a node that answers twice or one not yet known does not end
/// the wait early).
pub(super) async fn survey_channels(
    node: &Node,
    broker: &dyn Broker,
    others: &[String],
) -> Vec<(String, usize)> {
    let mut totals: HashMap<String, usize> = node.hub.channels().into_iter().collect();
    if others.is_empty() {
        return sorted(totals);
    }
    let survey = fastrand::u64(..);
    let (sender, mut answers) = mpsc::unbounded_channel();
    lock(&node.surveys.0).insert(survey, sender);
    let ask = Control::ChannelsAsked {
        survey,
        from: node.uid.clone(),
    };
    if node
        .call(broker.publish_control(ask.encode()))
        .await
        .is_ok()
    {
        let deadline = tokio::time::Instant::now() + SURVEY_TIMEOUT;
        let mut heard = std::collections::HashSet::new();
        while !others.iter().all(|uid| heard.contains(uid)) {
            match tokio::time::timeout_at(deadline, answers.recv()).await {
                Ok(Some((from, channels))) => {
                    if heard.insert(from) {
                        for (name, count) in channels {
                            *totals.entry(name).or_default() += count;
                        }
                    }
                }
                _ => break,
            }
        }
    }
    lock(&node.surveys.0).remove(&survey);
    sorted(totals)
}

fn sorted(totals: HashMap<String, usize>) -> Vec<(String, usize)> {
    let mut all: Vec<(String, usize)> = totals.into_iter().collect();
    all.sort();
    all
}

/// Announces this node to the others every `node.announce_interval`.
pub(super) async fn announce_loop(node: Arc<Node>, shutdown: CancellationToken) {
    let Some(broker) = node.remote.as_ref().map(|r| Arc::clone(&r.broker)) else {
        return;
    };
    send(
        &node,
        Control::Hello {
            from: node.uid.clone(),
        },
    );
    let mut tick = tokio::time::interval(node.settings.announce_interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let announcement = Control::Node(node.info()).encode();
        if let Err(error) = node.call(broker.publish_control(announcement)).await {
            tracing::debug!(event = "announce_failed", %error);
        }
    }
}
