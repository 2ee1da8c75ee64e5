//! Pusher's view of channels and members: a presence member is announced once per user (its
//! first connection in the channel, on any node), not once per connection, and a channel is
//! occupied from its first Pusher subscriber to its last (the `channel_occupied` and
//! `channel_vacated` webhooks), on any node.
//!
//! This node counts its own Pusher subscribers per channel and its own connections per
//! (channel, user), and each Pusher app's connections. A count that leaves or reaches zero is
//! decided at once on the memory broker (one node is the cluster). On a remote broker the node
//! then reads entries from the broker's presence, after its own were written or removed (the
//! same ordered queue does both), and announces only when no other node holds any: for a
//! member, the channel's presence entries of that user; for a `presence-` channel's
//! occupancy, any of its entries; for any other channel's occupancy, the channel's occupancy
//! list, a presence list under a name no channel can have ([`occupancy_list`]) where each node
//! holding Pusher subscribers of the channel keeps one entry of its own (its node id),
//! refreshed like every presence entry of the node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;

use super::{lock, Chore, Engine, Node};
use crate::broker::Broker;
use crate::publication::ClientInfo;
use crate::webhooks::WebhookKind;

/// This node's Pusher counts.
#[derive(Default)]
pub(crate) struct PusherBook {
    counts: std::sync::Mutex<Counts>,
    /// Live connections per app id.
    connections: std::sync::Mutex<HashMap<Box<str>, Arc<AtomicUsize>>>,
}

#[derive(Default)]
struct Counts {
    /// Pusher subscribers per hub channel.
    channels: HashMap<Box<str>, usize>,
    /// Connections per (hub channel, user) of presence channels.
    members: HashMap<(Box<str>, Box<str>), usize>,
}

/// A count that reached one or left it, to settle across the cluster (remote broker).
#[derive(Debug)]
pub(super) struct PusherChange {
    channel: Box<str>,
    member: Option<Arc<ClientInfo>>,
    joined: bool,
    /// This node's first (or last) subscriber of the channel.
    edge_channel: bool,
    /// This node's first (or last) connection of the member's user.
    edge_member: bool,
}

/// A slot of an app's connection quota, given back when dropped.
pub(crate) struct AppSlot(Arc<AtomicUsize>);

impl Drop for AppSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Node {
    /// Takes one of app `app`'s `max` connection slots on this node (0: no bound), or `None`
    /// when they are all taken.
    pub(crate) fn pusher_app_slot(&self, app: &str, max: usize) -> Option<AppSlot> {
        let count = Arc::clone(
            lock(&self.pusher.connections)
                .entry(app.into())
                .or_default(),
        );
        let before = count.fetch_add(1, Ordering::AcqRel);
        let slot = AppSlot(count);
        (max == 0 || before < max).then_some(slot)
    }

    /// A Pusher connection joined hub channel `channel` (and, on presence channels, is
    /// `member`, already in the channel's presence).
    pub(crate) fn pusher_subscribed(
        self: &Arc<Self>,
        channel: &str,
        member: Option<&Arc<ClientInfo>>,
    ) {
        self.pusher_counted(channel, member, true);
    }

    /// A Pusher connection left hub channel `channel` (its presence entry already removed).
    pub(crate) fn pusher_unsubscribed(
        self: &Arc<Self>,
        channel: &str,
        member: Option<&Arc<ClientInfo>>,
    ) {
        self.pusher_counted(channel, member, false);
    }

    fn pusher_counted(
        self: &Arc<Self>,
        channel: &str,
        member: Option<&Arc<ClientInfo>>,
        joined: bool,
    ) {
        let (edge_channel, edge_member) = {
            let mut counts = lock(&self.pusher.counts);
            let edge_channel = step(&mut counts.channels, channel.into(), joined);
            let edge_member = member.is_some_and(|info| {
                step(
                    &mut counts.members,
                    (channel.into(), info.user.clone()),
                    joined,
                )
            });
            (edge_channel, edge_member)
        };
        if !edge_channel && !edge_member {
            return;
        }
        match &self.engine {
            Engine::Memory(_) => {
                if edge_member {
                    if let Some(info) = member {
                        self.announce_member(channel, info, joined);
                    }
                }
                if edge_channel {
                    self.announce_occupancy(channel, joined);
                }
            }
            Engine::Remote(_) => {
                if member.is_none() && edge_channel {
                    // Not a presence channel: this node's entry in its occupancy list, written
                    // (or removed) before the change is settled, in the same queue.
                    let list = occupancy_list(channel);
                    if joined {
                        let own = ClientInfo::new(&self.uid, "", None, None);
                        self.add_presence(&list, &Arc::new(own));
                    } else {
                        self.remove_presence(&list, &self.uid);
                    }
                }
                self.chore(Chore::Pusher(PusherChange {
                    channel: channel.into(),
                    member: member.cloned(),
                    joined,
                    edge_channel,
                    edge_member,
                }));
            }
        }
    }

    /// Settles a change against the broker's presence entries (remote broker, in the chore
    /// queue: this node's own entry was written or removed before).
    pub(super) async fn settle_pusher(&self, broker: &Arc<dyn Broker>, change: PusherChange) {
        let PusherChange {
            channel,
            member,
            joined,
            mut edge_channel,
            mut edge_member,
        } = change;
        // A connection may have come or gone here since: the latest local count decides.
        {
            let counts = lock(&self.pusher.counts);
            let here = counts.channels.get(&channel).copied().unwrap_or(0);
            let user_here = member.as_ref().map_or(0, |info| {
                counts
                    .members
                    .get(&(channel.clone(), info.user.clone()))
                    .copied()
                    .unwrap_or(0)
            });
            if joined {
                edge_channel &= here > 0;
                edge_member &= user_here > 0;
            } else {
                edge_channel &= here == 0;
                edge_member &= user_here == 0;
            }
        }
        if !edge_channel && !edge_member {
            return;
        }
        let Some(info) = member else {
            // Any other channel: occupied or vacated when no other node holds an entry in its
            // occupancy list (this node's own was just written, or removed).
            let list = occupancy_list(&channel);
            match self.call(broker.presence(&list)).await {
                Ok(holders) => {
                    if !holders.iter().any(|entry| *entry.client != *self.uid) {
                        self.announce_occupancy(&channel, joined);
                    }
                }
                Err(error) => {
                    tracing::warn!(event = "join_leave_lost", channel = %channel, %error, "occupancy unreadable; a Pusher occupancy change was not announced");
                }
            }
            return;
        };
        let present = match self.call(broker.presence(&channel)).await {
            Ok(present) => present,
            Err(error) => {
                tracing::warn!(event = "join_leave_lost", channel = %channel, %error, "presence unreadable; a Pusher member or occupancy change was not announced");
                return;
            }
        };
        let local: Vec<Box<str>> = self
            .remote
            .as_ref()
            .map(|remote| {
                lock(&remote.presence)
                    .keys()
                    .filter(|(c, _)| *c == channel)
                    .map(|(_, client)| client.clone())
                    .collect()
            })
            .unwrap_or_default();
        let elsewhere = |entry: &&Arc<ClientInfo>| !local.contains(&entry.client);
        let user_elsewhere = present
            .iter()
            .filter(elsewhere)
            .any(|entry| entry.user == info.user);
        let anyone_elsewhere = present.iter().any(|entry| elsewhere(&entry));
        if edge_member && !user_elsewhere {
            let published = if joined {
                self.call(broker.publish_join(&channel, &info)).await
            } else {
                self.call(broker.publish_leave(&channel, &info)).await
            };
            if let Err(error) = published {
                tracing::warn!(event = "join_leave_lost", channel = %channel, %error, "a Pusher member push could not be sent");
            }
            self.member_webhook(&channel, &info, joined);
        }
        if edge_channel && !anyone_elsewhere {
            self.announce_occupancy(&channel, joined);
        }
    }

    /// Tells this node's subscribers (memory broker: all of them) and the webhooks that a
    /// user joined or left.
    fn announce_member(&self, channel: &str, info: &Arc<ClientInfo>, joined: bool) {
        self.push_presence(channel, info, joined);
        self.member_webhook(channel, info, joined);
    }

    fn member_webhook(&self, channel: &str, info: &ClientInfo, joined: bool) {
        let kind = if joined {
            WebhookKind::MemberAdded
        } else {
            WebhookKind::MemberRemoved
        };
        self.webhooks
            .emit(channel, kind, &[("user_id", Value::from(&*info.user))]);
    }

    fn announce_occupancy(&self, channel: &str, occupied: bool) {
        let kind = if occupied {
            WebhookKind::ChannelOccupied
        } else {
            WebhookKind::ChannelVacated
        };
        self.webhooks.emit(channel, kind, &[]);
    }
}

/// The name, in the broker's presence, of the list of nodes holding Pusher subscribers of hub
/// channel `channel` (not a `presence-` one). Channel names hold no white space
/// (`channels::check_name`), so this is never a channel's own presence.
fn occupancy_list(channel: &str) -> String {
    format!("pusher-occupancy {channel}")
}

/// Counts one up (or down) under `key`; whether it went from 0 to 1 (or from 1 to 0).
fn step<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K, up: bool) -> bool {
    if up {
        let count = map.entry(key).or_insert(0);
        *count += 1;
        *count == 1
    } else {
        let Some(count) = map.get_mut(&key) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            map.remove(&key);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_report_the_first_and_the_last() {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        assert!(step(&mut counts, "a", true), "0 to 1");
        assert!(!step(&mut counts, "a", true), "1 to 2");
        assert!(!step(&mut counts, "a", false), "2 to 1");
        assert!(step(&mut counts, "a", false), "1 to 0");
        assert!(counts.is_empty());
        assert!(!step(&mut counts, "b", false), "never counted");
    }
}
