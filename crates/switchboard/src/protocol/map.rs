//! Map subscriptions and keyed publications, one connection's side: the phased state sync
//! the SDK drives, and `publish` with a key (set) or `removed` (remove).
//!
//! A map subscribe is a series of subscribe commands for one channel. In the state phase
//! each reads a page of the map's state in key order; the first page's stream position
//! travels back with every later one (the client repeats it), and the last page goes live at
//! once: the connection joins the channel through the usual join, catching up on the stream
//! from that position under the broker's lock, so every change after the pages were read
//! arrives in the reply or live, none twice and none lost. A stream-phase subscribe (the SDK
//! recovering after a reconnect) joins the same way from the position it names. A catch-up
//! the stream no longer holds is error 112, and the SDK starts over from the state: a map
//! never goes live with a gap, which would leave a wrong value under some key for good.
//!
//! On a remote broker (Redis) a page is read asynchronously, in one script with the stream
//! position it holds, and answered from where the read completes; the join cannot be made
//! there, so the last page is answered as a state page with no cursor and the SDK goes live
//! through its stream phase from the first page's position (one round trip more).
//!
//! Every phase checks the subscribe permission again (token, hook or rules), so a page is
//! never served to someone who may not subscribe. Map channels take map subscriptions and
//! keyed publications only, and stream channels refuse both, each with a clear error.
//!
//! A subscriber asking for fossil deltas gets its state entries in the form the SDK keeps as
//! each key's delta base (the hub then sends each key's changes as deltas against it). In a
//! namespace with map-clients presence, a subscription that goes live sets its client id in
//! the companion map-clients channel, and leaving removes it (see `ClientSession::leave`);
//! map-clients channels take map-clients subscriptions and no client writes.

use std::sync::Arc;

use bytes::Bytes;

use super::results::{delta_state_bodies, fitting};
use super::{ClientSession, Granted, DELTA_FOSSIL};
use crate::broker::MapPage;
use crate::channels::ChannelRules;
use crate::config::MapClientKey;
use crate::error::ClientError;
use crate::filter::Filter;
use crate::keyed::check_key;
use crate::node::{encode_frame, PublishOrder};
use crate::publication::{ClientInfo, Publication};
use crate::wire::{
    self, Encoding, Reply, SubscribeRequest, SubscribeResult, MAP_PHASE_STATE, SUBSCRIPTION_MAP,
    SUBSCRIPTION_MAP_CLIENTS,
};

/// State entries per page when the client names no limit.
const DEFAULT_PAGE: usize = 100;
/// Most state entries per page, whatever the client asks.
const MAX_PAGE: usize = 1000;

/// Whether a subscribe of `kind` fits a channel under `rules`: map subscriptions to map
/// channels, map-clients subscriptions to map-clients maps, stream subscriptions to the
/// others.
pub(super) fn kind_fits(rules: &ChannelRules, kind: i32) -> Result<(), ClientError> {
    let clients = kind == SUBSCRIPTION_MAP_CLIENTS;
    match (rules.map, kind == SUBSCRIPTION_MAP || clients) {
        (true, false) => Err(ClientError::IsAMap),
        (false, true) if clients => Err(ClientError::NotMapClients),
        (false, true) => Err(ClientError::NotAMap),
        (true, true) if rules.map_clients && !clients => Err(ClientError::IsMapClients),
        (true, true) if !rules.map_clients && clients => Err(ClientError::NotMapClients),
        _ => Ok(()),
    }
}

/// What a state page read means for the subscribe that asked for it.
enum StateStep {
    /// A page to answer as it is (more follow, or the stream changed under the pages).
    Page(SubscribeResult),
    /// The last page: its entries, and where the catch-up starts (the first page's position).
    Last {
        state: Vec<wire::PublicationBody>,
        offset: u64,
        epoch: String,
    },
}

/// The answer to state-phase `request` from `page`: as many entries as fit in `budget`
/// bytes (at least one, or no page would ever end; the next page starts after the last one
/// sent), under the first page's position. A per-key delta subscriber's entries go as the
/// bases of its delta chains.
fn state_step(
    page: MapPage,
    request: &SubscribeRequest,
    encoding: Encoding,
    mut budget: usize,
) -> StateStep {
    let delta = per_key_delta(request);
    // A JSON delta subscriber's `data` is a JSON string, up to twice the text.
    if delta && encoding == Encoding::Json {
        budget /= 2;
    }
    let fit = fitting(page.entries.iter(), budget, encoding).max(1);
    let mut cursor = page.cursor;
    if fit < page.entries.len() {
        cursor = page.entries[fit - 1].key.clone();
    }
    let sent = page.entries[..fit.min(page.entries.len())].iter();
    let state: Vec<wire::PublicationBody> = if delta {
        delta_state_bodies(sent, encoding)
    } else {
        sent.map(|publication| publication.body(encoding)).collect()
    };
    // The catch-up starts where the first page was read: later pages repeat it back.
    let first_page = request.epoch.is_empty();
    let same_stream = first_page || *request.epoch == *page.position.epoch;
    let (offset, epoch) = if first_page || !same_stream {
        // A new stream since the first page (its state was lost): the client sees the
        // new epoch and starts over.
        (page.position.offset, page.position.epoch.to_string())
    } else {
        (request.offset, request.epoch.clone())
    };
    if cursor.is_some() || !same_stream {
        return StateStep::Page(SubscribeResult {
            phase: MAP_PHASE_STATE,
            cursor: cursor.map(String::from).unwrap_or_default(),
            state: if same_stream { state } else { Vec::new() },
            epoch,
            offset,
            ..SubscribeResult::default()
        });
    }
    StateStep::Last {
        state,
        offset,
        epoch,
    }
}

/// Whether a map subscribe asks for per-key fossil deltas it can have: not with a tags
/// filter, which would leave the subscriber without the value some delta is made against.
fn per_key_delta(request: &SubscribeRequest) -> bool {
    request.delta == DELTA_FOSSIL && request.tf.is_none()
}

/// The map-clients channel listing the subscribers of map channel `channel`, when its
/// namespace has map-clients presence.
fn presence_channel(channel: &str, rules: &ChannelRules) -> Option<String> {
    rules
        .map_clients_presence_prefix
        .as_deref()
        .map(|prefix| format!("{prefix}{channel}"))
}

/// The value a subscriber is listed with in a map-clients channel: who it is.
fn presence_value(info: &ClientInfo) -> Bytes {
    let value = serde_json::json!({ "client": &*info.client, "user": &*info.user });
    Bytes::from(value.to_string())
}

impl ClientSession {
    /// A granted map subscribe: serves a state page, or joins (last page, stream phase).
    pub(super) fn map_subscribe(
        &mut self,
        id: u32,
        request: SubscribeRequest,
        rules: ChannelRules,
        granted: Granted,
    ) {
        if let Err(error) = self.state.node.serves_maps() {
            return self.reply_error(id, error);
        }
        if let Some(listing) = presence_channel(&request.channel, &rules) {
            if let Err(error) = self.state.node.serves_map_clients_presence() {
                return self.reply_error(id, error);
            }
            // A channel whose listing cannot exist (its name too long) is refused, rather than
            // subscribed unlisted.
            if self.state.channels().rules(&listing).is_err() {
                tracing::info!(event = "subscribe_refused", conn_id = self.conn.id, channel = %request.channel, "its map-clients presence channel name is not valid");
                return self.reply_error(id, ClientError::BadRequest);
            }
        }
        if request.phase != MAP_PHASE_STATE {
            return self.map_join(id, request, rules, granted, Vec::new());
        }
        // Checked in `subscribe` (a bad one is error 107 there).
        let filter = request
            .tf
            .as_ref()
            .and_then(|tf| Filter::from_node(tf).ok());
        let limit = usize::try_from(request.limit)
            .ok()
            .filter(|limit| *limit > 0)
            .map_or(DEFAULT_PAGE, |limit| limit.min(MAX_PAGE));
        if !self.state.node.is_local() {
            return self.map_state_later(id, request, limit, filter);
        }
        let page = match self.state.node.map_state(
            &request.channel,
            &request.cursor,
            limit,
            filter.as_ref(),
        ) {
            Ok(page) => page,
            Err(error) => return self.reply_error(id, error),
        };
        match state_step(page, &request, self.encoding(), self.conn.reply_budget()) {
            StateStep::Page(result) => self.send(&Reply {
                id,
                subscribe: Some(result),
                ..Reply::default()
            }),
            // The last page: go live, catching up from the first page's position.
            StateStep::Last {
                state,
                offset,
                epoch,
            } => {
                let mut live = request;
                live.offset = offset;
                live.epoch = epoch;
                live.recover = false;
                self.map_join(id, live, rules, granted, state)
            }
        }
    }

    /// A state page from a remote broker, answered when read. The reply is always a
    /// state-phase one (the last page's with no cursor), since the join that would end the
    /// phase cannot be made from where the read completes: the SDK then goes on with a
    /// stream-phase subscribe from the first page's position, which joins as a map
    /// subscriber's reconnect does.
    fn map_state_later(
        &self,
        id: u32,
        request: SubscribeRequest,
        limit: usize,
        filter: Option<Filter>,
    ) {
        let conn = Arc::clone(&self.conn);
        let encoding = self.encoding();
        let (channel, cursor) = (request.channel.clone(), request.cursor.clone());
        self.state
            .node
            .map_state_then(&channel, &cursor, limit, filter, move |found| {
                let reply = match found {
                    Ok(page) => {
                        let result = match state_step(page, &request, encoding, conn.reply_budget())
                        {
                            StateStep::Page(result) => result,
                            StateStep::Last {
                                state,
                                offset,
                                epoch,
                            } => SubscribeResult {
                                phase: MAP_PHASE_STATE,
                                state,
                                epoch,
                                offset,
                                ..SubscribeResult::default()
                            },
                        };
                        Reply {
                            id,
                            subscribe: Some(result),
                            ..Reply::default()
                        }
                    }
                    Err(error) => Reply::error(id, error),
                };
                conn.push(&encode_frame(&reply, encoding));
            });
    }

    /// Joins a map channel, catching up from the position `request` names (none: from now),
    /// and replies with `state` (the last state page, if this ends the state phase), the
    /// catch-up and the position, in the live phase.
    fn map_join(
        &mut self,
        id: u32,
        request: SubscribeRequest,
        rules: ChannelRules,
        granted: Granted,
        state: Vec<wire::PublicationBody>,
    ) {
        let channel = request.channel.clone();
        let recovering = request.recover;
        let conn = Arc::clone(&self.conn);
        let encoding = self.encoding();
        let listing = presence_channel(&channel, &rules);
        let joined = self.join(
            &channel,
            rules,
            granted,
            Some(&request),
            move |result: Result<&SubscribeResult, ClientError>| {
                let reply = match result {
                    // A gap: going live now would leave some key's old value for good.
                    Ok(result) if result.was_recovering && !result.recovered => {
                        Err(ClientError::Unrecoverable)
                    }
                    Ok(result) => {
                        let mut result = result.clone();
                        result.state = state;
                        result.phase = wire::MAP_PHASE_LIVE;
                        // Only a client that asked to recover is told it did: the SDK then
                        // skips its full `sync`, which a first subscribe needs.
                        result.was_recovering &= recovering;
                        result.recovered &= recovering;
                        Ok(result)
                    }
                    Err(error) => Err(error),
                };
                let (reply, go) = match reply {
                    Ok(result) => (
                        Reply {
                            id,
                            subscribe: Some(result),
                            ..Reply::default()
                        },
                        true,
                    ),
                    Err(error) => (Reply::error(id, error), false),
                };
                conn.push(&encode_frame(&reply, encoding));
                go
            },
        );
        // Live (at once on the memory broker, the only one that serves map-clients
        // presence): listed in the map-clients channel, if the namespace has one.
        if let (Some(true), Some(listing)) = (joined, listing) {
            if let Some(subscription) = self.subscriptions.get(channel.as_str()) {
                let info = Arc::clone(&subscription.info);
                self.list_in_presence(&listing, &info, true);
            }
        }
    }

    /// Sets (or with `present` false, removes) this connection's key in map-clients channel
    /// `listing`: its client id, with who it is as the value and its info as the
    /// publication's. Published as the server, whatever the client may do there.
    pub(super) fn list_in_presence(&self, listing: &str, info: &Arc<ClientInfo>, present: bool) {
        let Ok(rules) = self.state.channels().rules(listing) else {
            // Checked before subscribing.
            return;
        };
        let mut publication = if present {
            Publication::json(presence_value(info)).keyed(&info.client)
        } else {
            Publication::removal(&info.client)
        };
        publication.info = Some(Arc::clone(info));
        let (conn_id, channel) = (self.conn.id, listing.to_owned());
        let done = move |published: Result<_, ClientError>| {
            if let Err(error) = published {
                tracing::warn!(event = "map_clients_presence_failed", conn_id, channel = %channel, %error, present, "could not change a map-clients presence entry");
            }
        };
        let mut order = PublishOrder::default();
        self.state
            .node
            .publish_then(&mut order, listing, rules, publication, done);
    }

    /// A keyed publish or removal (`publish` with `type` 1) to a map channel.
    pub(super) fn map_publish(
        &mut self,
        id: u32,
        request: wire::PublishRequest,
        rules: &ChannelRules,
    ) -> Result<(), ClientError> {
        if request.kind != SUBSCRIPTION_MAP {
            return Err(ClientError::BadRequest);
        }
        if rules.map_clients {
            // Its entries are the server's record of who is subscribed.
            return Err(ClientError::PermissionDenied);
        }
        // With `map_client_key = "client_id"` (or `"user_id"`) a client writes (and removes)
        // only its own entry: whatever key it sent (even none) is replaced by its client id
        // (its user id; an anonymous connection has none, and the empty key is refused).
        let user = self.conn.user();
        let key = match rules.map_client_key {
            MapClientKey::Sent => request.key.as_str(),
            MapClientKey::ClientId => &*self.client_id,
            MapClientKey::UserId if user.is_empty() => return Err(ClientError::PermissionDenied),
            MapClientKey::UserId => user,
        };
        check_key(key).map_err(|_| ClientError::BadRequest)?;
        let channel = request.channel.as_str();
        let mut publication = if request.removed {
            Publication::removal(key)
        } else {
            if self.encoding() == Encoding::Json && request.data.is_empty() {
                return Err(ClientError::BadRequest);
            }
            let publication = match self.encoding() {
                Encoding::Json => Publication::json(request.data),
                Encoding::Protobuf => Publication::bytes(request.data),
            };
            publication.keyed(key)
        };
        publication.info = Some(match self.subscriptions.get(channel) {
            Some(subscription) => Arc::clone(&subscription.info),
            None => Arc::new(ClientInfo::new(
                &self.client_id,
                self.conn.user(),
                self.conn_info.as_ref(),
                None,
            )),
        });
        publication.trace = self.conn.trace();
        let done = self.reply_later(id, |reply, _| reply.publish = Some(wire::Empty {}));
        self.state
            .node
            .publish_then(&mut self.order, channel, rules, publication, done);
        Ok(())
    }
}
